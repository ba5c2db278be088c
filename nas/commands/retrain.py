"""`nas retrain`: train the standalone network of an arch, from scratch or fine-tuned from an export folder."""
from __future__ import annotations

import argparse
import shlex

from nas.commands.train_supernet import add_training_options, resolve_config
from nas.train.config import RetrainConfig
from search_spaces.presets import preset_names, preset_path

DEFAULTS = RetrainConfig()
DESCRIPTION = f"""Train the standalone network of an arch (a NasViT, no supernet) from scratch, or
fine-tune it from the weights of an export folder (--init: what 'nas export' or an earlier
'nas retrain' wrote). The training is train-supernet's: the same options, atomic checkpoints,
bit-identical --resume, DDP under torchrun and logs; every step trains the one network with
plain AdamW. Without --arch, --init's own arch.yaml is trained. A single network needs fewer
epochs than a supernet: {DEFAULTS.epochs} by default; the lr is {DEFAULTS.lr:g} with or without --init
(docs/training.md says why).

Writes OUT/checkpoint.pt (every --save-every steps or --save-minutes, at the end, and on Ctrl-C or
SIGTERM, atomically), OUT/config.yaml (the resolved options), OUT/metrics.jsonl, and at the end
the network's val top-1 (OUT/final_eval.json) and its export folder OUT/model (arch.yaml,
model.safetensors, meta.json), which 'nas eval OUT/model' measures again."""
EXAMPLE = """example:
  nas sample --space tiny-32 -n 1 --out archs/ && nas retrain --arch archs/arch_000.yaml   # from scratch
  nas retrain --init exports/a0 --out runs/a0-finetuned     # fine-tune an export (its arch and weights)
  nas retrain --arch best.yaml --data imagefolder:/data/imagenet --epochs 300 --batch-size 128 \\
      --lr 1e-3 --ema 0.9998 --mixup 0.8 --cutmix 1.0 --out runs/best
  torchrun --nproc_per_node=8 -m nas retrain -c retrain.yaml
  nas retrain --out runs/best --resume                     # continue after a crash
  nas eval runs/best/model

options set in -c retrain.yaml (keys as below, with - or _) are defaults that the command line overrides."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("retrain", help="train an arch's standalone network, from scratch or from "
                                                   "an export's weights",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    add = parser.add_argument
    add("-c", "--config", metavar="RUN.yaml", help="a YAML file of options (the defaults for this run)")
    add("--arch", metavar="ARCH.yaml", help="the arch to train (from 'nas evolve', 'nas sample' or an export "
                                            "folder); default: INIT/arch.yaml")
    add("--preset", metavar="NAME", choices=preset_names(),
        help=f"train a published model's closest arch of unified-224 instead of --arch: {', '.join(preset_names())} "
             f"(docs/presets.md); the baselines a search result is compared against")
    add("--init", metavar="DIR", help="an export folder (arch.yaml, model.safetensors, meta.json) whose weights "
                                      "the network starts from; its arch must be --arch's. Default: from scratch "
                                      "(random weights from --seed)")
    add_training_options(
        parser, DEFAULTS,
        lr=f"peak learning rate of AdamW, also with --init: inherited supernet weights fine-tune best at the "
           f"scratch rate (docs/training.md); a lower one suits weights of an already trained network "
           f"(default {DEFAULTS.lr:g})",
        ema="decay of an EMA of the weights; the EMA is what is measured and exported; 0 = off (default 0)",
        seed=f"seed of the initial weights (without --init) and of the data order (default {DEFAULTS.seed})",
        holdout="leave N images of the train set out of training: the same images that 'train-supernet "
                "--holdout N' holds out and 'nas evolve' / 'nas export' rank subnets on, so that they stay "
                "unseen; 0 = train on all (default 0)")
    add("--drop-path", type=float, metavar="RATE",
        help="stochastic depth: each sample skips a layer's attention and MLP branches with a rate that grows "
             "linearly with the layer's depth, from 0 to RATE at the deepest (default 0: off)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from nas.commands.training import run_training_command
    from nas.train.retrain import retrain  # torch-heavy: only when training

    if args.preset:
        if args.arch:
            raise ValueError(f"--preset {args.preset!r} and --arch {args.arch!r}: give one of them")
        args.arch = str(preset_path(args.preset))
    cfg = resolve_config(args, RetrainConfig)

    def next_step(result) -> str:
        if not result.finished:
            return f"nas retrain --out {shlex.quote(cfg.out)} --resume"
        return f"nas eval {shlex.quote(str(result.model))} --split val"
    return run_training_command(retrain, cfg, args.prog, next_step)
