"""The evolutionary search (`nas evolve`): `evolve` runs it, `sampler` plans the generations as an optuna
sampler, `workers` keeps shared studies alive across dead workers, `study` opens the storage, `fitness` scores a
subnet (`fitness_kinds` names what it can rank by), `candidates` / `report` / `plot` write what a search leaves
behind, `ranking` measures how well inherited accuracy ranks archs."""
