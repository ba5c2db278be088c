"""SPOS supernet training (DESIGN sections 4, 6 and 7): each step trains the subnet(s) its sampler draws.

Built from timm's pieces: AdamW with no weight decay on norms and biases (`create_optimizer_v2`), a
per-step cosine schedule with warmup, label smoothing, mixup/cutmix, EMA. The step is guarded so
that weights outside the step's subnet do not change (`SubnetOptimizer`). Runs under torchrun with DDP.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from nas import distributed
from nas.checkpoint import load_checkpoint, save_checkpoint
from nas.cost_model import arch_cost, extreme_arch
from nas.data import load_datasets, make_loader, parse_data
from nas.evaluate import recalibrate_batchnorm, top1
from nas.samplers import build_sampler
from nas.subnet_optimizer import SubnetOptimizer
from nas.train_config import TrainConfig
from nas.units import human
from search_spaces import Arch, load_space
from supernets.supernet import Supernet

CHECKPOINT = "checkpoint.pt"
BN_RECALIBRATION_BATCHES = 20


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


@dataclass
class RunResult:
    out: Path
    step: int
    finished: bool
    table: list[dict]  # inherited val top-1 of the evaluated subnets (empty when stopped early)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def train_supernet(cfg: TrainConfig, console: Console | None = None) -> RunResult:
    """Train, checkpoint, and evaluate a few subnets at the end. ValueError for user mistakes."""
    cfg.validate()
    runtime = distributed.setup(cfg.device)
    console = console or Console(stderr=True)
    show = runtime.is_main
    out = Path(cfg.out)
    device = runtime.device

    space = load_space(cfg.space)
    data = load_datasets(parse_data(cfg.data), space.img_size, num_classes=space.num_classes, seed=cfg.seed)
    steps_per_epoch = len(data.train) // (cfg.batch_size * runtime.world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {cfg.batch_size}: larger than the train set ({len(data.train)} images) "
                         f"split over {runtime.world_size} process(es)")
    total_steps = cfg.epochs * steps_per_epoch

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    supernet = Supernet(space, num_classes=data.num_classes).to(device)
    optimizer = create_optimizer_v2(supernet, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    guard = SubnetOptimizer(optimizer, supernet)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps // 2)  # the cosine gets >= half
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps - warmup, lr_min=cfg.min_lr, warmup_t=warmup,
                                  warmup_lr_init=cfg.lr / 100, warmup_prefix=True, t_in_epochs=False)
    ema = ModelEmaV3(supernet, decay=cfg.ema) if cfg.ema else None
    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                   num_classes=data.num_classes) if cfg.mixup or cfg.cutmix else None)
    if mixup is not None:
        criterion = SoftTargetCrossEntropy()
    elif cfg.label_smoothing:
        criterion = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    amp_dtype = _amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    sampler = build_sampler(cfg.sampler, space, cfg.seed)

    step = 0
    checkpoint_path = out / CHECKPOINT
    if cfg.resume:
        state = load_checkpoint(checkpoint_path, map_location=device)
        if state["space_hash"] != space.hash:
            raise ValueError(f"checkpoint {str(checkpoint_path)!r} was trained on space {state['space_name']!r}, "
                             f"not on {space.name!r} (--space)")
        supernet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
        step = state["step"]
    elif checkpoint_path.exists():
        raise ValueError(f"{str(checkpoint_path)!r} exists: pass --resume to continue that run, or another --out")
    if show:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")

    def save() -> None:
        if show:
            save_checkpoint({
                "model": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.module.state_dict() if ema else None, "step": step, "space": space.to_dict(),
                "space_name": space.name, "space_ref": space.ref, "space_hash": space.hash,
                "num_classes": data.num_classes, "config": cfg.to_dict(),
                "sampler": {"name": cfg.sampler, "seed": cfg.seed},  # arch of step t = f(seed, t)
            }, checkpoint_path)

    model = supernet
    if runtime.world_size > 1:
        model = DistributedDataParallel(supernet, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)  # each step trains a different subnet
    writer = _tensorboard(out) if cfg.tensorboard and show else None
    metrics = (out / "metrics.jsonl").open("a") if show else None
    stop_at = min(total_steps, step + cfg.stop_after) if cfg.stop_after else total_steps

    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  "
                                   "{task.fields[ips]:.0f} img/s  subnet {task.fields[macs]} MACs"),
                        TimeRemainingColumn(), console=console, disable=not show, transient=False)
    model.train()
    loader_iter, window = None, {"loss": 0.0, "steps": 0, "images": 0, "start": time.perf_counter()}
    with progress:
        task = progress.add_task("train", total=total_steps, completed=step, epoch=f"{step // steps_per_epoch + 1}/"
                                 f"{cfg.epochs}", loss=float("nan"), lr=cfg.lr, ips=0.0, macs="-")
        while step < stop_at:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if loader_iter is None or in_epoch == 0:
                loader_iter = iter(make_loader(data.train, cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                                               rank=runtime.rank, world_size=runtime.world_size,
                                               workers=cfg.workers, skip_batches=in_epoch))
            images, labels = next(loader_iter)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if data.augment is not None:
                generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000003 + step)
                images = data.augment(images, generator, shard=(runtime.rank, runtime.world_size))
            if mixup is not None:
                images, labels = mixup(images, labels)

            archs = sampler.archs(step)
            loss_sum = torch.zeros((), device=device)
            for i, arch in enumerate(archs):
                supernet.set_active(arch)
                sync = model.no_sync() if runtime.world_size > 1 and i < len(archs) - 1 else nullcontext()
                with sync, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = criterion(model(images), labels) / len(archs)
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach()
            if not distributed.all_finite(loss_sum):
                raise TrainingDiverged(f"the loss became {loss_sum.item()} at step {step} (subnet {archs[-1].hash}); "
                                       f"the last good checkpoint is {str(checkpoint_path)!r}. Lower --lr, or "
                                       "use --clip-grad / --amp off")
            if scaler is not None:
                scaler.unscale_(guard)
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(supernet.parameters(), cfg.clip_grad)
            if scaler is not None:
                scaler.step(guard)
                scaler.update()
            else:
                guard.step()
            guard.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(supernet, step=step)

            window["loss"] += loss_sum.item()  # this rank's loss
            window["steps"] += 1
            window["images"] += images.shape[0] * runtime.world_size
            if step % cfg.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - window["start"]
                record = {"step": step, "epoch": epoch + 1, "loss": window["loss"] / window["steps"],
                          "lr": optimizer.param_groups[0]["lr"], "images_per_s": window["images"] / max(elapsed, 1e-9),
                          "macs": [arch_cost(a, space, data.num_classes)[0] for a in archs],
                          "archs": [a.hash for a in archs]}
                if show:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    if writer is not None:
                        for key in ("loss", "lr", "images_per_s"):
                            writer.add_scalar(f"train/{key}", record[key], step)
                progress.update(task, completed=step, epoch=f"{epoch + 1}/{cfg.epochs}", loss=record["loss"],
                                lr=record["lr"], ips=record["images_per_s"], macs=human(max(record["macs"])))
                window = {"loss": 0.0, "steps": 0, "images": 0, "start": time.perf_counter()}
            if step % cfg.save_every == 0 or step == stop_at:
                save()

    table = []
    if step == total_steps:
        table = evaluate_subnets(ema.module if ema else supernet, space, data, cfg, runtime)
        if show:
            (out / "final_eval.json").write_text(json.dumps(table, indent=2))
            _print_table(console, table)
    if metrics is not None:
        metrics.close()
    if writer is not None:
        writer.close()
    return RunResult(out, step, step == total_steps, table)


def evaluate_subnets(supernet: Supernet, space, data, cfg: TrainConfig, runtime) -> list[dict]:
    """Inherited val top-1 of the largest, the smallest and `eval_random` random subnets."""
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


def _print_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="inherited val top-1 of subnets")
    for column in ("subnet", "arch", "MACs", "params", "top-1"):
        table.add_column(column, justify="left" if column in ("subnet", "arch") else "right")
    for row in rows:
        table.add_row(row["subnet"], row["arch"], human(row["macs"]), human(row["params"]), f"{100 * row['top1']:.2f}%")
    console.print(table)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))
