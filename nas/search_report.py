"""What a search leaves behind: every evaluated candidate as rows, the Pareto front, OUT/candidates.csv,
OUT/best.yaml, OUT/search.png (accuracy against MACs) and the final table."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from nas.atomic_files import atomic_write
from nas.evolution_sampler import CLAIM_KEY, params_arch, rank_key
from nas.units import human
from search_spaces import Arch, SearchSpace

CSV_COLUMNS = ("trial", "generation", "arch", "top1", "macs", "params", "on_front", "genes")


@dataclass(frozen=True)
class Candidate:
    trial: int
    generation: int
    arch: Arch
    top1: float
    macs: int
    params: int
    on_front: bool = False


def candidates(study: optuna.Study, space: SearchSpace, generation_key: str) -> list[Candidate]:
    """Every evaluated arch of the study, best first (top-1, then fewer MACs, then hash), with its front flag."""
    trials = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.system_attrs.get(CLAIM_KEY)), key=rank_key)
    rows = [Candidate(t.number, t.system_attrs[generation_key], params_arch(space, t.params), t.values[0],
                      t.user_attrs["macs"], t.user_attrs["params"]) for t in trials]
    front = {c.trial for c in pareto_front(rows)}
    return [Candidate(**{**c.__dict__, "on_front": c.trial in front}) for c in rows]


def pareto_front(rows: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both accuracy (higher) and MACs (lower), by increasing MACs."""
    front: list[Candidate] = []
    for c in sorted(rows, key=lambda c: (c.macs, -c.top1, c.arch.hash)):
        if not front or c.top1 > front[-1].top1:
            front.append(c)
    return front


def write_outputs(out: Path, rows: list[Candidate], budget_macs: int | None, title: str) -> None:
    """OUT/candidates.csv, OUT/best.yaml and OUT/search.png, each replaced atomically (workers may race)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for c in sorted(rows, key=lambda c: c.trial):
        writer.writerow([c.trial, c.generation, c.arch.hash, f"{c.top1:.6f}", c.macs, c.params, int(c.on_front),
                         json.dumps(c.arch.to_dict()["stages"], separators=(",", ":"))])
    atomic_write(out / "candidates.csv", buffer.getvalue().encode())
    if rows:
        atomic_write(out / "best.yaml", rows[0].arch.to_yaml().encode())
        from nas.search_plot import plot_search  # matplotlib: only when there is something to draw

        atomic_write(out / "search.png", plot_search(rows, budget_macs, title))


def print_table(console: Console, rows: list[Candidate], pareto: bool, top: int = 10) -> None:
    shown = [c for c in rows if c.on_front] if pareto else rows[:top]
    if pareto:
        shown.sort(key=lambda c: c.macs)
    table = Table(title="Pareto front (accuracy vs MACs)" if pareto else f"top {len(shown)} of {len(rows)} candidates",
                  caption="inherited top-1 on the held-out split")
    for column in ("rank", "trial", "gen", "arch", "top-1", "MACs", "params"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    order = {c.trial: i + 1 for i, c in enumerate(rows)}
    for c in shown:
        table.add_row(str(order[c.trial]), str(c.trial), str(c.generation), c.arch.hash, f"{100 * c.top1:.2f}%",
                      human(c.macs), human(c.params))
    console.print(table)

