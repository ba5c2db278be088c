"""The archs the found one is compared with, under the same budget: the biggest arch the search saw within it, and
random archs within it (a seeded draw). Written once as OUT/archs (one YAML per arch and compared.json)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from nas.atomic_files import atomic_folder
from nas.cost_model import arch_cost
from search_spaces import Arch, SearchSpace
from search_spaces.arch import arch_from_dict

COMPARED_FILE = "compared.json"
RANDOM_TRIES = 10_000  # draws per random arch before the budget is called too tight for random archs
RANDOM_STREAM = 104729  # a stream of its own: the draw does not follow the search's or training's


def biggest_candidate(candidates_csv: Path, space: SearchSpace) -> Arch:
    """The candidate of most MACs (then params, then hash) among those the search evaluated: all are within the
    budget, so this is the biggest arch under it that the search knows of (the true one is a knapsack problem)."""
    with candidates_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{str(candidates_csv)!r} lists no candidates")
    row = max(rows, key=lambda r: (int(r["macs"]), int(r["params"]), r["arch"]))
    arch = arch_from_dict({"space": space.ref or space.name, "stages": json.loads(row["genes"])}, str(candidates_csv))
    return space.validate(arch)


def random_within(space: SearchSpace, num_classes: int, flops: int | None, params: int | None, n: int, seed: int,
                  taken: set[str]) -> list[Arch]:
    """`n` distinct random archs (uniform genes, as `nas sample`) within the budget and not in `taken`."""
    rng = np.random.default_rng([seed, RANDOM_STREAM])
    chosen: list[Arch] = []
    for _ in range(n):
        for _ in range(RANDOM_TRIES):
            arch = space.sample(rng)
            macs, count = arch_cost(arch, space, num_classes)
            if ((flops is None or macs <= flops) and (params is None or count <= params)
                    and arch.hash not in taken):
                taken.add(arch.hash)
                chosen.append(arch)
                break
        else:
            raise ValueError(f"no random arch of space {space.name!r} within the budget was found in {RANDOM_TRIES} "
                             f"draws: the budget is too tight for random baselines (use --random 0)")
    return chosen


def write_compared(folder: Path, found: Arch, biggest: Arch, randoms: list[Arch]) -> dict[str, str]:
    """OUT/archs: NAME.yaml per compared arch and compared.json ({name: arch hash}), as a whole. The biggest is
    left out when it is the found arch itself."""
    named = {"found": found}
    if biggest.hash != found.hash:
        named["biggest"] = biggest
    named.update({f"random-{i + 1}": arch for i, arch in enumerate(randoms)})
    compared = {name: arch.hash for name, arch in named.items()}
    with atomic_folder(folder) as tmp:
        for name, arch in named.items():
            (tmp / f"{name}.yaml").write_text(arch.to_yaml())
        (tmp / COMPARED_FILE).write_text(json.dumps({"archs": compared, "found_is_biggest": "biggest" not in named},
                                                    indent=2) + "\n")
    return compared


def read_compared(folder: Path) -> dict:
    return json.loads((folder / COMPARED_FILE).read_text())
