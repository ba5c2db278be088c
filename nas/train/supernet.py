"""SPOS supernet training (docs/design.md sections 4, 6 and 7): each step trains the subnet(s) its sampler draws.

The loop is `nas.train.loop`'s (timm's AdamW, cosine schedule with warmup, label smoothing, mixup/cutmix, EMA,
AMP, DDP, checkpoints and resume), shared with `nas retrain`. What is the supernet's: each step trains the arch(s)
of a sampler, and the step is guarded so that weights outside the step's subnet do not change
(`SubnetOptimizer`). At the end, the inherited val top-1 of a few subnets.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nas.atomic_files import atomic_write
from nas.cost_model import arch_cost, extreme_arch
from nas.data.loaders import make_loader
from nas.options import torch_threads
from nas.run_folders import FINAL_EVAL
from nas.train import distributed
from nas.train.accuracy import BN_RECALIBRATION_BATCHES, recalibrate_batchnorm, top1
from nas.train.arch_samplers import build_sampler
from nas.train.config import TrainConfig
from nas.train.loop import (
    CHECKPOINT,
    Trainee,
    TrainingDiverged,
    final_evaluation,
    load_training_data,
    make_optimizer,
    train_loop,
)
from nas.train.subnet_optimizer import SubnetOptimizer
from nas.units import human
from search_spaces import Arch, load_space
from supernets.supernet import Supernet

__all__ = ["CHECKPOINT", "RunResult", "TrainingDiverged", "evaluate_subnets", "train_supernet"]


@dataclass
class RunResult:
    out: Path
    step: int
    finished: bool
    table: list[dict]  # inherited val top-1 of the evaluated subnets (empty when stopped early)


def train_supernet(cfg: TrainConfig, console: Console | None = None, clock=time.monotonic,
                   results: Console | None = None) -> RunResult:
    """Train, checkpoint, and evaluate a few subnets at the end: progress and notes on `console` (default stderr),
    the final table on `results` (default `console`). ValueError for user mistakes. `clock` (seconds) times
    --save-minutes."""
    cfg.validate()
    console = console or Console(stderr=True)
    with torch_threads(cfg.threads) as cfg.threads:  # config.yaml records the count; a resume uses it again
        return _train_and_evaluate(cfg, console, clock, results or console)


def _train_and_evaluate(cfg: TrainConfig, console: Console, clock, results: Console) -> RunResult:
    runtime = distributed.setup(cfg.device)
    out = Path(cfg.out)

    space = load_space(cfg.space)
    data, steps_per_epoch = load_training_data(cfg, space.img_size, space.num_classes, runtime.world_size)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    supernet = Supernet(space, num_classes=data.num_classes).to(runtime.device)
    optimizer = make_optimizer(supernet, cfg)
    sampler = build_sampler(cfg.sampler, space, cfg.seed, round(cfg.warmup_largest * steps_per_epoch))

    def check_resume(state: dict) -> None:
        if state.get("kind", "supernet") != "supernet":
            raise ValueError(f"checkpoint {str(out / CHECKPOINT)!r} is not of a 'nas train-supernet' run")
        if state["space_hash"] != space.hash:
            raise ValueError(f"checkpoint {str(out / CHECKPOINT)!r} was trained on space {state['space_name']!r}, "
                             f"not on {space.name!r} (--space)")

    trainee = Trainee(
        model=supernet, optimizer=optimizer, stepper=SubnetOptimizer(optimizer, supernet), archs=sampler.archs,
        activate=supernet.set_active, space=space, find_unused_parameters=True,  # each step trains another subnet
        label="subnet", check_resume=check_resume, command="train-supernet",
        teacher=extreme_arch(space, largest=True) if cfg.distill else None,
        checkpoint={"kind": "supernet", "space": space.to_dict(), "space_name": space.name, "space_ref": space.ref,
                    "space_hash": space.hash,
                    "sampler": {"name": cfg.sampler, "seed": cfg.seed,  # arch of step t = f(seed, t)
                                "warmup_largest": cfg.warmup_largest, "distill": cfg.distill}})
    loop = train_loop(cfg, trainee, data, steps_per_epoch, runtime, console, clock)

    table = []
    if loop.finished:
        with final_evaluation(loop):
            table = evaluate_subnets(loop.final, space, data, cfg, runtime)
            if runtime.is_main:
                atomic_write(out / FINAL_EVAL, json.dumps(table, indent=2).encode())
                _print_table(results, table, data.num_classes)
    return RunResult(out, loop.step, loop.finished, table)


def evaluate_subnets(supernet: Supernet, space, data, cfg: TrainConfig, runtime) -> list[dict]:
    """Inherited val top-1 of the largest, the smallest and `eval_random` random subnets (BatchNorm statistics
    recalibrated on the images the run trained on)."""
    rng = np.random.default_rng([cfg.seed, 7919])  # a fixed draw, independent of training's
    named: list[tuple[str, Arch]] = [("largest", extreme_arch(space, largest=True)),
                                     ("smallest", extreme_arch(space, largest=False))]
    named += [(f"random {i + 1}", space.sample(rng)) for i in range(cfg.eval_random)]
    val = make_loader(data.val, cfg.batch_size, train=False, rank=runtime.rank, world_size=runtime.world_size,
                      workers=cfg.workers)
    calibration = make_loader(data.train, cfg.batch_size, train=True, seed=cfg.seed, rank=runtime.rank,
                              world_size=runtime.world_size, workers=cfg.workers)
    rows = []
    for name, arch in named:
        recalibrate_batchnorm(supernet, arch, calibration, runtime.device, BN_RECALIBRATION_BATCHES)
        macs, params = arch_cost(arch, space, data.num_classes)
        rows.append({"subnet": name, "arch": arch.hash, "macs": macs, "params": params,
                     "top1": top1(supernet, val, runtime.device, arch), "genes": arch.to_dict()})
    return rows


def _print_table(console: Console, rows: list[dict], num_classes: int) -> None:
    table = Table(title="inherited val top-1 of subnets",
                  caption=f"chance level: {100 / num_classes:.2f}% ({num_classes} classes)")
    for column in ("subnet", "arch", "MACs", "params", "top-1"):
        table.add_column(column, justify="left" if column in ("subnet", "arch") else "right")
    for row in rows:
        table.add_row(row["subnet"], row["arch"], human(row["macs"]), human(row["params"]), f"{100 * row['top1']:.2f}%")
    console.print(table)
