"""`nas sample`: write random valid archs of a space as YAML files."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from nas.commands import SPACE_HELP, hint
from nas.cost_model import arch_cost, extreme_arch
from nas.units import human
from search_spaces import load_space

DESCRIPTION = """Draw N distinct random archs of a space (every gene uniform, invalid draws
rejected) and write them to DIR/arch_000.yaml, DIR/arch_001.yaml, ...
The same space and seed give the same archs. --extreme writes the space's largest or smallest
arch (by MACs) to DIR/largest.yaml or DIR/smallest.yaml instead."""
EXAMPLE = """example:
  nas sample --space tiny-32 -n 8 --seed 0 --out archs/
  nas sample --space tiny-32 --extreme largest --out archs/
  nas flops archs/arch_000.yaml"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sample", help="write N random valid archs of a space as YAML files",
                                   description=DESCRIPTION,
                                   epilog=EXAMPLE)
    parser.add_argument("--space", required=True, metavar="NAME|PATH", help=SPACE_HELP)
    parser.add_argument("-n", "--num", type=positive_int, default=1, metavar="N",
                        help="number of archs, >= 1 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="directory for the arch YAML files (created if missing; files of the same name "
                             "are overwritten)")
    parser.add_argument("--extreme", choices=("largest", "smallest"),
                        help="write the space's arch of most / fewest MACs (DIR/largest.yaml, DIR/smallest.yaml) "
                             "instead of random ones")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    space = load_space(args.space)
    if args.extreme and args.num != 1:
        raise ValueError(f"-n {args.num}: --extreme writes one arch")
    if args.num > space.size:
        raise ValueError(f"-n {args.num} exceeds the {space.size} distinct archs of space {space.name!r}")
    if args.extreme:
        named = {f"{args.extreme}.yaml": extreme_arch(space, largest=args.extreme == "largest")}
    else:
        rng = np.random.default_rng(args.seed)
        archs = {}  # hash -> arch, in draw order; duplicates are redrawn so the N files differ
        while len(archs) < args.num:
            arch = space.sample(rng)
            archs.setdefault(arch.hash, arch)
        width = max(3, len(str(args.num - 1)))  # keep file names sorting in draw order
        named = {f"arch_{i:0{width}d}.yaml": arch for i, arch in enumerate(archs.values())}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, arch in named.items():
        path = args.out / name
        arch.save(path)
        macs, params = arch_cost(arch, space)
        rows.append({"file": str(path), "hash": arch.hash, "macs": macs, "params": params})
    if args.json:
        print(json.dumps({"space": space.name, "seed": None if args.extreme else args.seed,
                          "extreme": args.extreme, "archs": rows}, indent=2))
    else:
        _print_table(args, space, rows)
    hint(f"nas flops {shlex.quote(rows[0]['file'])}")


def _print_table(args: argparse.Namespace, space, rows: list[dict]) -> None:
    title = (f"the {args.extreme} arch of space {space.name}" if args.extreme else
             f"{args.num} archs of space {space.name} (seed {args.seed})")
    table = Table(title=title, caption=f"written to {args.out}")
    for column in ("file", "hash", "MACs", "params"):
        table.add_column(column, justify="right" if column in ("MACs", "params") else "left")
    for row in rows:
        table.add_row(Path(row["file"]).name, row["hash"], human(row["macs"]), human(row["params"]))
    Console().print(table)
