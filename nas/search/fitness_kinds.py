"""What a search can rank its candidates by, and their names in every report. No imports: `nas show` and the
pipeline report name a search's fitness without loading torch or optuna."""

FITNESSES = {"top1": "maximize", "loss": "minimize"}  # a trial's first value, and which way is better
FITNESS_NAMES = {"top1": "inherited top-1", "loss": "inherited mean cross-entropy"}
FITNESS_BEFORE = "top1"  # what a search recorded before `--fitness` existed ranked by (SPOS's top-1)


def fitness_text(fitness: str) -> str:
    """The fitness's name with its direction, e.g. 'inherited mean cross-entropy (lower is better)'."""
    return f"{FITNESS_NAMES[fitness]} ({'higher' if FITNESSES[fitness] == 'maximize' else 'lower'} is better)"
