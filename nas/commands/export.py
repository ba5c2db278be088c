"""`nas export`: a subnet of a trained supernet as a standalone model folder, with its inherited top-1."""
from __future__ import annotations

import argparse
import json
import shlex

from rich.console import Console
from rich.table import Table

from nas.commands import SPACE_HELP, config_from_args, hint
from nas.options import DATA_HELP, DEPLOY_FORMATS, FITNESS_BATCH_SIZE, add_device_option, add_threads_option

DATA = DATA_HELP.replace("'digits' (default: ", "'digits' (")  # the default here is another

DESCRIPTION = """Export the subnet ARCH.yaml of a trained supernet as a standalone model that needs
nothing of the supernet (a timm model, 'nas_vit'). The arch is validated against the space
of the checkpoint. The subnet's inherited top-1 is measured on the held-out part of the train
set (the images 'nas evolve' ranks subnets on; BatchNorm statistics are recalibrated first in
a BatchNorm space), then its weights are copied into the standalone model.

Writes OUT/arch.yaml, OUT/model.safetensors and OUT/meta.json (space and arch hashes, checkpoint
and weights sha256, MACs, params, inherited top-1 and how it was measured; docs/export.md), as a
whole: a crash or --force leaves the old export or the new one. 'nas eval OUT' measures the
exported model on the same images and reproduces the inherited top-1."""
EXAMPLE = """example:
  nas export --supernet runs/supernet/checkpoint.pt --arch archs/arch_000.yaml --out exports/a0
  nas export --supernet runs/in1k/checkpoint.pt --arch best.yaml --out exports/best \\
      --data imagefolder:/data/imagenet --holdout 10000 --device cuda --json

load it: timm.create_model("nas_vit", arch="OUT/arch.yaml", num_classes=K,
                           checkpoint_path="OUT/model.safetensors")   # after 'import nas'"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a subnet as a standalone model (arch, weights, meta)",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    add = parser.add_argument
    add("--supernet", required=True, metavar="CHECKPOINT",
        help="checkpoint of 'nas train-supernet' (RUN/checkpoint.pt); its EMA weights if the run kept an EMA")
    add("--arch", required=True, metavar="ARCH.yaml",
        help="the subnet: an arch YAML of the checkpoint's space (from 'nas evolve' or 'nas sample')")
    add("--out", required=True, metavar="DIR", help="export folder to write (created if needed)")
    add("--data", metavar="SOURCE", help=f"{DATA}; default: the data the supernet was trained on "
                                         f"(from the checkpoint)")
    add("--holdout", type=int, metavar="N",
        help="train images held out to measure the inherited top-1 (a fixed draw: the same images as "
             "'nas evolve'); default: the search's when ARCH.yaml is a 'nas evolve' best.yaml (its search.json), "
             "else the images the training run held out, else 1000")
    add("--batch-size", type=int, metavar="N", default=FITNESS_BATCH_SIZE,
        help="images per batch when measuring (and recalibrating BatchNorm); default %(default)s")
    add_device_option(parser)
    add("--space", metavar="NAME|PATH",
        help=f"{SPACE_HELP}; only for a checkpoint that does not hold its space (default: the checkpoint's)")
    add("--format", action="append", choices=DEPLOY_FORMATS, default=[], dest="formats",
        help="also write the model as onnx (OUT/model.onnx, run with onnxruntime; needs 'pip install "
             "vit-nas[deploy]') or torch-export (OUT/model.pt2, torch.export.load), each with a dynamic batch "
             "size and checked against the PyTorch output before it is written; repeatable")
    add("--force", action="store_true", help="replace an export already in --out")
    add_threads_option(parser)
    add("--json", action="store_true", help="print meta.json (and the folder) as one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    from nas.export.subnet import ExportConfig, export_subnet  # torch-heavy: only when exporting

    meta = export_subnet(config_from_args(ExportConfig, args), console=Console(stderr=True))
    if args.json:
        print(json.dumps({"out": str(args.out), **meta}, indent=2))
    else:
        _print_table(args, meta)
    hint(f"nas eval {shlex.quote(str(args.out))}")


def _print_table(args: argparse.Namespace, meta: dict) -> None:
    from nas.units import percent
    from nas.units import human

    measured = meta["measured"]
    table = Table(title=f"exported {args.arch} -> {args.out}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("arch", f"{meta['arch_hash']} (space {meta['space']})")
    table.add_row("MACs / params", f"{human(meta['macs'])} / {human(meta['params'])}")
    table.add_row("inherited top-1", f"{percent(meta['inherited_top1'])} on the {measured['images']:,} "
                                     f"held-out train images of {measured['data']} (holdout seed "
                                     f"{measured['holdout_seed']}; size: {measured['holdout_from']})")
    if measured["trained_on"]:
        table.add_row("note", "the training run did not hold these images out: it was trained on them")
    recalibration = measured["bn_recalibration"]
    if recalibration:
        table.add_row("BatchNorm", f"recalibrated on {recalibration['images']:,} other train images")
    table.add_row("supernet", f"{meta['checkpoint']} ({meta['checkpoint_weights']} weights, "
                              f"sha256 {meta['checkpoint_sha256'][:12]})")
    files = ["arch.yaml", "model.safetensors", "meta.json", *(f["file"] for f in meta.get("formats", {}).values())]
    table.add_row("files", f"{args.out}/" + ", ".join(files))
    for fmt, written in meta.get("formats", {}).items():
        table.add_row(fmt, f"output within {written['max_abs_difference']:.1e} of PyTorch's")
    Console().print(table)
