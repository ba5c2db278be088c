"""What a search leaves behind: OUT/candidates.csv, OUT/search.png (the fitness against MACs) and the final
table."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nas.atomic_files import atomic_write
from nas.search.candidates import CSV_COLUMNS, Candidate
from nas.search.fitness_kinds import FITNESS_NAMES
from nas.units import human


def write_outputs(out: Path, rows: list[Candidate], budget_macs: int | None, title: str) -> None:
    """OUT/candidates.csv, OUT/best.yaml and OUT/search.png, each replaced atomically (workers may race)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for c in sorted(rows, key=lambda c: c.trial):
        loss = "" if c.loss is None else f"{c.loss:.6f}"
        writer.writerow([c.trial, c.generation, c.arch.hash, f"{c.top1:.6f}", loss, c.macs, c.params, int(c.on_front),
                         json.dumps(c.arch.to_dict()["stages"], separators=(",", ":"))])
    atomic_write(out / "candidates.csv", buffer.getvalue().encode())
    if rows:
        atomic_write(out / "best.yaml", rows[0].arch.to_yaml().encode())
        from nas.search.plot import plot_search  # matplotlib: only when there is something to draw

        atomic_write(out / "search.png", plot_search(rows, budget_macs, title))


def print_table(console: Console, rows: list[Candidate], pareto: bool, top: int = 10) -> None:
    shown = [c for c in rows if c.on_front] if pareto else rows[:top]
    if pareto:
        shown.sort(key=lambda c: c.macs)
    by = FITNESS_NAMES[rows[0].fitness] if rows else "the fitness"
    table = Table(title=f"Pareto front ({by} vs MACs)" if pareto else f"top {len(shown)} of {len(rows)} candidates",
                  caption=f"inherited top-1 and loss on the held-out split, ranked by {by}")
    for column in ("rank", "trial", "gen", "arch", "top-1", "loss", "MACs", "params"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    order = {c.trial: i + 1 for i, c in enumerate(rows)}
    for c in shown:
        table.add_row(str(order[c.trial]), str(c.trial), str(c.generation), c.arch.hash, f"{100 * c.top1:.2f}%",
                      "-" if c.loss is None else f"{c.loss:.4f}", human(c.macs), human(c.params))
    console.print(table)
