"""`nas eval`: top-1 of an exported model, by default on the images its inherited top-1 was measured on."""
from __future__ import annotations

import argparse
import json
import shlex

from rich.console import Console
from rich.table import Table

from nas.commands import config_from_args, hint
from nas.options import DATA_HELP, add_device_option, add_threads_option

DATA = DATA_HELP.replace("'digits' (default: ", "'digits' (")  # the default here is another

DESCRIPTION = """Measure the top-1 accuracy of the standalone model in an export folder (written by
'nas export'). With no options it measures the images of the export (the data, held-out split,
held-out size and batch size recorded in DIR/meta.json), so it reproduces the inherited top-1
that the export measured on the supernet; both and their difference are printed. --split val
measures the data's val set instead (images no search has seen)."""
EXAMPLE = """example:
  nas eval exports/a0                            # reproduces the export's inherited top-1
  nas eval exports/a0 --split val --json
  nas eval exports/best --data imagefolder:/data/imagenet --split val --device cuda"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="top-1 of an exported model (reproduces its inherited top-1)",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    add = parser.add_argument
    add("folder", metavar="DIR", help="export folder (arch.yaml, model.safetensors, meta.json)")
    add("--data", metavar="SOURCE", help=f"{DATA}; default: the data of the export (meta.json)")
    add("--split", choices=("holdout", "val"),
        help="holdout: the fixed held-out part of the train set ('nas export' and 'nas evolve' measure it); "
             "val: the data's val set; default: the export's (holdout)")
    add("--holdout", type=int, metavar="N",
        help="held-out size for --split holdout; default: the export's")
    add("--batch-size", type=int, metavar="N",
        help="images per batch; default: the export's (250), which makes the result bit-for-bit comparable")
    add_device_option(parser)
    add_threads_option(parser)
    add("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    from nas.export.measure import EvalConfig, evaluate_export  # torch-heavy: only when evaluating

    result = evaluate_export(config_from_args(EvalConfig, args), console=Console(stderr=True))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(args.folder, result)
    if result["split"] == "holdout":
        hint(f"nas eval {shlex.quote(str(args.folder))} --split val   # on images no search has seen")


def _print_table(folder: str, result: dict) -> None:
    from nas.units import percent

    where = "held-out train" if result["split"] == "holdout" else "val"
    table = Table(title=f"{folder}: arch {result['arch_hash']} (space {result['space']})", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("top-1", percent(result["top1"]),
                  f"{result['images']:,} {where} images of {result['data']}, on {result['device']}")
    measured = result["inherited_measured"] or {}
    if result["inherited_top1"] is not None:
        if measured:
            split = "held-out train" if measured.get("split") == "holdout" else measured.get("split")
            note = f"at export: {measured.get('images', 0):,} {split} images of {measured.get('data')}"
        else:
            note = "at export (meta.json does not say on which images)"
        table.add_row("inherited top-1", percent(result["inherited_top1"]), note)
    if result["difference"] is not None:
        table.add_row("difference", percent(result["difference"], signed=True),
                      "points" + (" (reproduced exactly)" if result["difference"] == 0 else ""))
    elif result["inherited_top1"] is not None:
        table.add_row("difference", "—", "not comparable: other images than the export's")
    Console().print(table)
