"""Retraining the standalone network of an arch (`nas retrain`): from scratch, or fine-tuned from an export folder.

The loop is `nas.train.loop`'s, the one `nas train-supernet` runs, so the options, checkpoints, resume, DDP,
NaN stop and logs are the same. What differs: the network is a `NasViT` (every step trains its one arch, with a
plain AdamW step), and at the end its val top-1 is measured and the result is written as an export folder
(OUT/model) that `nas eval` and `read_exported` load.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nas.atomic_files import atomic_write
from nas.data.loaders import make_loader
from nas.data.source import canonical_data
from nas.export.exported_model import ARCH_FILE, ExportedModel, model_meta, read_exported, write_exported
from nas.options import torch_threads
from nas.run_folders import FINAL_EVAL, MODEL_FOLDER
from nas.train import distributed
from nas.train.accuracy import top1
from nas.train.config import RetrainConfig
from nas.train.loop import CHECKPOINT, Trainee, final_evaluation, load_training_data, make_optimizer, train_loop
from nas.units import human
from search_spaces import Arch, SearchSpace, load_arch
from supernets.nas_vit import NasViT


@dataclass
class RetrainResult:
    out: Path
    step: int
    finished: bool
    top1: float | None  # val top-1 of the retrained network (None when stopped early)
    model: Path | None  # its export folder (None when stopped early)


def arch_to_retrain(cfg: RetrainConfig) -> tuple[Arch, SearchSpace, ExportedModel | None]:
    """The arch (from --arch, else INIT/arch.yaml), its space, and the export folder of --init (None without it,
    or when resuming: the checkpoint holds the weights). ValueError when --arch and --init are different networks."""
    try:
        init = read_exported(cfg.init) if cfg.init and not cfg.resume else None
    except ValueError as exc:
        raise ValueError(f"--init: {exc}") from None
    path = Path(cfg.arch) if cfg.arch else Path(cfg.init) / ARCH_FILE
    try:
        arch, space = load_arch(path)
    except ValueError as exc:
        raise ValueError(f"--arch: {exc}") from None
    if init is not None:
        if init.arch.hash != arch.hash:
            raise ValueError(f"--init {cfg.init!r} holds arch {init.arch.hash}, not the arch {arch.hash} of --arch "
                             f"{str(path)!r}: retrain the export's own arch (leave out --arch), or omit --init")
        if init.space.hash != space.hash:
            raise ValueError(f"--init {cfg.init!r} is a network of space {init.space.name!r}, but --arch {str(path)!r} "
                             f"names space {space.name!r}, which builds another network")
    return arch, space, init


def retrain(cfg: RetrainConfig, console: Console | None = None, clock=time.monotonic,
            results: Console | None = None) -> RetrainResult:
    """Train the arch's standalone network, checkpoint it, and at the end measure its val top-1 and write
    OUT/model. ValueError for user mistakes; TrainingDiverged when the loss is not finite. `clock` (seconds) times
    --save-minutes. Progress and notes go to `console` (default stderr), the result table to `results` (default
    `console`)."""
    cfg.validate()
    console = console or Console(stderr=True)
    with torch_threads(cfg.threads) as cfg.threads:  # config.yaml records the count; a resume uses it again
        return _train_and_export(cfg, console, clock, results or console)


def _train_and_export(cfg: RetrainConfig, console: Console, clock, results: Console) -> RetrainResult:
    arch, space, init = arch_to_retrain(cfg)
    if not cfg.arch:
        cfg.arch = str(Path(cfg.init) / ARCH_FILE)  # config.yaml names the arch file a resume reads
    runtime = distributed.setup(cfg.device)
    out = Path(cfg.out)
    data, steps_per_epoch = load_training_data(cfg, space.img_size, space.num_classes, runtime.world_size)
    if init is not None and init.model.num_classes != data.num_classes:
        raise ValueError(f"--init {cfg.init!r} classifies {init.model.num_classes} classes, but --data {cfg.data!r} "
                         f"has {data.num_classes}: fine-tune on data with the export's classes, or train from "
                         f"scratch (leave out --init)")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = NasViT(arch, space, data.num_classes, drop_path_rate=cfg.drop_path).to(runtime.device)
    if init is not None:
        model.load_state_dict(init.model.state_dict())
    optimizer = make_optimizer(model, cfg)

    def check_resume(state: dict) -> None:
        if state.get("kind") != "retrain":
            raise ValueError(f"checkpoint {str(out / CHECKPOINT)!r} is not of a 'nas retrain' run")
        if state["arch_hash"] != arch.hash or state["space_hash"] != space.hash:
            raise ValueError(f"checkpoint {str(out / CHECKPOINT)!r} trains arch {state['arch_hash']} of space "
                             f"{state['space_name']!r}, not the arch {arch.hash} of space {space.name!r} of "
                             f"--arch {cfg.arch!r}")

    trainee = Trainee(
        model=model, optimizer=optimizer, stepper=optimizer, archs=lambda step: [arch], activate=lambda arch: None,
        space=space, find_unused_parameters=False, label="model", check_resume=check_resume, command="retrain",
        checkpoint={"kind": "retrain", "space": space.to_dict(), "space_name": space.name, "space_ref": space.ref,
                    "space_hash": space.hash, "arch": arch.to_dict(), "arch_hash": arch.hash, "init": cfg.init})
    loop = train_loop(cfg, trainee, data, steps_per_epoch, runtime, console, clock)
    if not loop.finished:
        return RetrainResult(out, loop.step, False, None, None)
    with final_evaluation(loop):
        final = loop.final.eval()
        val = make_loader(data.val, cfg.batch_size, train=False, rank=runtime.rank, world_size=runtime.world_size,
                          workers=cfg.workers)
        accuracy = top1(final, val, runtime.device)
        folder = out / MODEL_FOLDER
        if runtime.is_main:
            meta = model_meta(
                arch, space, data.num_classes, cfg.arch, data.preprocessing,
                retrained={"init": str(Path(cfg.init).resolve()) if cfg.init else None,
                           "init_meta": init.meta if init is not None else None,
                           "checkpoint": str((out / CHECKPOINT).resolve()), "weights": "ema" if cfg.ema else "model",
                           "steps": loop.step, "epochs": cfg.epochs, "lr": cfg.lr, "holdout": cfg.holdout,
                           "drop_path": cfg.drop_path},
                val_top1=accuracy,
                measured={"data": canonical_data(cfg.data), "split": "val", "holdout": None, "images": len(data.val),
                          "batch_size": cfg.batch_size, "device": runtime.device.type, "bn_recalibration": None})
            write_exported(folder, final, meta)
            row = {"arch": arch.hash, "macs": meta["macs"], "params": meta["params"], "top1": accuracy, "init": cfg.init,
                   "model": str(folder)}
            atomic_write(out / FINAL_EVAL, json.dumps(row, indent=2).encode())
            _print_result(results, row, data.num_classes)
    return RetrainResult(out, loop.step, True, accuracy, folder)


def _print_result(console: Console, row: dict, num_classes: int) -> None:
    table = Table(title="val top-1 of the retrained network",
                  caption=f"chance level: {100 / num_classes:.2f}% ({num_classes} classes)")
    for column in ("arch", "MACs", "params", "top-1", "export folder"):
        table.add_column(column, justify="right" if column in ("MACs", "params", "top-1") else "left")
    table.add_row(row["arch"], human(row["macs"]), human(row["params"]), f"{100 * row['top1']:.2f}%", row["model"])
    console.print(table)
