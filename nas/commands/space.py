"""`nas space`: the genes of a search space, its number of archs and its range of MACs and params."""
from __future__ import annotations

import argparse
import json
import shlex

from rich.console import Console
from rich.table import Table

from nas.commands import SPACE_HELP, hint
from nas.cost_model import space_cost_range
from nas.units import human
from search_spaces import SearchSpace, load_space
from search_spaces.operators import live_genes

DESCRIPTION = """Show the gene choices of every stage of a search space, its number of distinct
(canonical) archs and the exact min/max MACs and params over them."""
EXAMPLE = """example:
  nas space unified-224
  nas space my_space.yaml --json"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("space", help="show a search space: gene choices, size, MACs and params range",
                                   description=DESCRIPTION,
                                   epilog=EXAMPLE)
    parser.add_argument("space", metavar="NAME|PATH", help=SPACE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    space = load_space(args.space)
    summary = {**space.to_dict(), "hash": space.hash, "size": space.size, **space_cost_range(space)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        console = Console()
        console.print(_genes_table(space))
        console.print(_summary_table(space, summary))
    hint(f"nas sample --space {shlex.quote(args.space)} -n 8 --out archs/")


def _genes_table(space: SearchSpace) -> Table:
    table = Table(title=f"space {space.name} (hash {space.hash})")
    table.add_column("gene")
    for i in range(len(space.stages)):
        table.add_column(f"stage {i + 1}")
    # a gene that no choice of cells, attn and mixer of a stage reads shows "-" there (e.g. window without ipsa)
    read = [set().union(*(live_genes(s.cells, attn, mixer) for attn in s.attn for mixer in s.mixer))
            for s in space.stages]

    def optional(gene: str) -> list[str]:
        return [_choices(getattr(s, gene)) if gene in genes else "-" for s, genes in zip(space.stages, read)]

    rows = {
        "pool": [_choices(s.pool) for s in space.stages],
        "dim": [_choices(s.dim) for s in space.stages],
        "paths": [_choices(s.paths) for s in space.stages],
        "max_cells": [str(s.max_cells) for s in space.stages],
        "cells": [_choices(s.cells) for s in space.stages],
        "attn": [_choices(s.attn) for s in space.stages],
        "topk (bra)": optional("topk"),
        "regions (bra)": optional("regions"),
        "window (ipsa, cpsa)": optional("window"),
        "mixer": [_choices(s.mixer) for s in space.stages],
        "mlp_ratio": [_choices(s.mlp_ratio) for s in space.stages],
    }
    for gene, cells in rows.items():
        if any(c != "-" for c in cells):  # a gene no stage reads is left out
            table.add_row(gene, *cells)
    return table


def _choices(values: tuple) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _summary_table(space: SearchSpace, summary: dict) -> Table:
    table = Table(show_header=False)
    table.add_row("input", f"{space.in_chans} x {space.img_size} x {space.img_size}")
    table.add_row("classes", str(space.num_classes))
    table.add_row("head_dim", str(space.head_dim))
    table.add_row("stem stride", str(space.stem_stride))
    table.add_row("conv norm", space.conv_norm)
    table.add_row("archs", f"{space.size:,} ({space.size:.2e})")
    table.add_row("MACs", f"{human(summary['min_macs'])} .. {human(summary['max_macs'])}")
    table.add_row("params", f"{human(summary['min_params'])} .. {human(summary['max_params'])}")
    return table
