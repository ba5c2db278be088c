"""`nas flops`: MACs and params of an arch YAML, per part (analytic, no model is built)."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nas.commands import SPACE_HELP, hint
from nas.cost_model import arch_cost_breakdown
from nas.units import human
from search_spaces import load_arch
from search_spaces.presets import preset_names, preset_path

DESCRIPTION = """Count the MACs and params of one image through an arch, with a breakdown over
stem, stages 1-4 (with the side of their token map) and head. The arch is
validated against its space first; nothing is built or traced."""
EXAMPLE = """MACs are multiply-accumulates (1 MAC = 2 FLOPs), as quoted by most NAS papers.

example:
  nas flops archs/arch_000.yaml
  nas flops archs/arch_000.yaml --space my_space.yaml --json
  nas flops --preset biformer-t     # the closest arch of unified-224 to a published model"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("flops", help="MACs and params of an arch, per stem / stage / head",
                                   description=DESCRIPTION,
                                   epilog=EXAMPLE)
    parser.add_argument("arch", type=Path, metavar="ARCH.yaml", nargs="?",
                        help="arch YAML file (as written by 'nas sample'); or give --preset")
    parser.add_argument("--preset", metavar="NAME", choices=preset_names(),
                        help=f"a published model's closest arch of unified-224 instead of ARCH.yaml: "
                             f"{', '.join(preset_names())} (docs/presets.md)")
    parser.add_argument("--space", metavar="NAME|PATH",
                        help=f"{SPACE_HELP}; default: the space the arch file names")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    if (args.arch is None) == (args.preset is None):
        raise ValueError("give an arch file ARCH.yaml or --preset NAME (one of them)")
    if args.preset:
        args.arch = preset_path(args.preset)
    arch, space = load_arch(args.arch, args.space)
    cost = arch_cost_breakdown(arch, space)
    if args.json:
        parts = [{"name": name, "side": side, "macs": macs, "params": params}
                 for name, side, macs, params in cost.parts]
        print(json.dumps({"arch": str(args.arch), "arch_hash": arch.hash, "space": space.name, "macs": cost.macs,
                          "params": cost.params, "parts": parts}, indent=2))
    else:
        _print_table(args, arch, space, cost)
    hint(f"nas train-supernet --space {shlex.quote(space.ref or space.name)}   # the supernet of its space")


def _print_table(args: argparse.Namespace, arch, space, cost) -> None:
    table = Table(title=str(args.arch), caption=f"arch {arch.hash}, space {space.name}")
    table.add_column("part")
    table.add_column("tokens", justify="right")
    for column in ("MACs", "% MACs", "params"):
        table.add_column(column, justify="right")
    for name, side, macs, params in cost.parts:
        table.add_row(name, f"{side}x{side}", human(macs), f"{100 * macs / cost.macs:.1f}", human(params))
    table.add_section()
    table.add_row("total", "", human(cost.macs), "100.0", human(cost.params))
    Console().print(table)
