"""`nas show`: what a run folder is, how far it got, its best figures and what to run next."""
from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from nas.commands import hint
from nas.commands.run_summary import summarize
from nas.units import human, percent

DESCRIPTION = """Summarise a run folder of any command: what it is (supernet training, retrain, search,
export; told by its files), how far it got (steps of the total, candidates evaluated of those
planned; complete or not), its best figures (the final table, the best top-1, the exported
accuracy) and the command that resumes it or goes on. A folder holding run folders (such as a
'nas pipeline' folder) is summarised run by run. Reads only the small files of the folder."""
EXAMPLE = """example:
  nas show runs/supernet
  nas show runs/evolve --json"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("show", help="summarise a run folder: kind, progress, best figures, next step",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    parser.add_argument("folder", metavar="RUN_DIR", help="a folder written by train-supernet, retrain, evolve, "
                                                          "export or pipeline")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    summary = summarize(args.folder)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    runs = summary["runs"] if summary["kind"] == "folder of runs" else [summary]
    console = Console()
    for one in runs:
        console.print(_table(one), soft_wrap=True)
    for one in runs:
        if one.get("next") and not (one["complete"] and len(runs) > 1):
            hint(one["next"])


def _table(summary: dict) -> Table:
    state = "complete" if summary["complete"] else "not complete"
    table = Table(title=f"{summary['folder']}: {KIND_NAMES[summary['kind']]}, {state}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _rows(summary):
        table.add_row(name, value)
    return table


KIND_NAMES = {"supernet": "supernet training (nas train-supernet)", "retrain": "retraining (nas retrain)",
              "search": "search (nas evolve)", "export": "export folder (nas export)",
              "pipeline": "pipeline run (nas pipeline)"}


def _rows(summary: dict) -> list[tuple[str, str]]:
    kind, progress, rows = summary["kind"], summary.get("progress") or {}, []
    if kind in ("supernet", "retrain"):
        total = progress.get("total_steps")
        steps = f"{progress['steps']:,}" + (f" of {total:,}" if total else "")
        epoch = f" (epoch {progress['epoch']} of {progress['epochs']})" if progress.get("epoch") else ""
        rows += [("steps", steps + epoch), ("data", str(summary.get("data")))]
        rows += [("space", str(summary["space"]))] if kind == "supernet" else [("arch", str(summary["arch"]))]
    elif kind == "pipeline":
        stages = progress["stages"]
        done = [name for name, finished in stages.items() if finished]
        rows.append(("stages", f"{len(done)} finished: {', '.join(done) or 'none yet'}"
                               + "".join(f"; {name}: not finished" for name, ok in stages.items() if not ok)))
        rows += [("runs", f"{len(summary['runs'])} run folders ('nas show' on each, or --json)"),
                 ("report", summary["report"] or "not written yet")]
    elif kind == "search":
        planned = progress.get("planned")
        rows.append(("evaluated", f"{progress.get('evaluated')}" + (f" of {planned} planned" if planned else "")))
        if summary.get("strategy"):
            budget = summary["budget"]
            rows += [("strategy", f"{summary['strategy']}, objective {summary['objective']}"),
                     ("budget", ", ".join(f"{human(v)} {unit}" for unit, v in (("MACs", budget["macs"]),
                                                                             ("params", budget["params"])) if v)
                      or "none"),
                     ("fitness", f"top-1 on {summary['holdout']} held-out train images of {summary['data']}")]
    else:
        rows += [("arch", f"{summary['arch']} (space {summary['space']})"),
                 ("MACs / params", f"{human(summary['macs'])} / {human(summary['params'])}")]
        if summary["missing"]:
            rows.append(("missing", ", ".join(summary["missing"])))
    rows += _best_rows(summary)
    if summary.get("next"):
        rows.append(("resume" if not summary["complete"] else "next", summary["next"]))
    return rows


def _best_rows(summary: dict) -> list[tuple[str, str]]:
    best = summary.get("best")
    if not best:
        return []
    if summary["kind"] == "search":
        loss = f", loss {best['loss']:.4f}" if best.get("loss") is not None else ""
        by = f" (ranked by --fitness {summary['fitness']})"  # run_summary fills in the fitness of older searches
        return [("best", f"{percent(best.get('top1'))} top-1{loss}{by}, {human(best['macs'])} MACs, "
                         f"{human(best['params'])} params: {best.get('file')}")]
    rows = []
    for name, figures in best.items():
        where = f" on {figures['images']:,} {figures['split']} images" if figures.get("images") else ""
        macs = f", {human(figures['macs'])} MACs" if figures.get("macs") else ""
        rows.append((name, f"{percent(figures.get('top1'))}{where}{macs}"))
    return rows
