"""The training loop shared by `nas train-supernet` and `nas retrain` (docs/design.md sections 6 and 9).

The loop owns what both commands do the same way: the train set less its held-out images, timm's AdamW, the
per-step cosine schedule with warmup, label smoothing or mixup/cutmix, the EMA, AMP on CUDA, gradient clipping,
DDP under torchrun, the NaN stop, atomic checkpoints (also on Ctrl-C and SIGTERM) and a bit-identical resume, the
rich progress bar and metrics.jsonl. What differs is a `Trainee`: the network, which arch(s) a step trains (a
supernet's sampler, or the one arch of a standalone network), what steps the optimizer (the supernet's
unused-weights guard, or the plain optimizer), and what its checkpoints hold besides the common state.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nas.atomic_files import atomic_write, remove_stale_temps
from nas.cost_model import arch_cost
from nas.data.datasets import Datasets
from nas.data.loaders import make_loader
from nas.data.splits import HOLDOUT_SEED, holdout_split, load_data, train_subset
from nas.interrupts import Stopped, signals_deferred
from nas.progress import ProgressBars
from nas.run_folders import CHECKPOINT, CONFIG, METRICS
from nas.train import distributed
from nas.train.checkpoint import load_checkpoint, save_checkpoint
from nas.train.config import RunConfig
from nas.train.distributed import Runtime
from nas.units import human
from search_spaces import Arch, SearchSpace

distillation = SoftTargetCrossEntropy()  # a student's loss against its teacher's probabilities


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


@dataclass
class Trainee:
    """What the loop trains, and the parts of a step that differ between a supernet and a single network."""
    model: nn.Module  # the unwrapped network, on the run's device
    optimizer: torch.optim.Optimizer  # from `make_optimizer(model, cfg)`: the schedule sets its lr; checkpointed
    stepper: object  # steps and zeroes the gradients: a SubnetOptimizer around `optimizer`, or `optimizer` itself
    archs: Callable[[int], list[Arch]]  # the arch(s) of step t, each one a forward and backward on the batch
    activate: Callable[[Arch], None]  # switches the model to an arch before its forward
    space: SearchSpace  # of the archs (their MACs go to metrics.jsonl)
    find_unused_parameters: bool  # DDP: True when a step leaves parameters without gradients (a subnet)
    label: str  # what the progress bar calls the arch of the step: "subnet", "model"
    checkpoint: dict  # entries of every checkpoint besides the common state (the space, the sampler, the arch ...)
    check_resume: Callable[[dict], None]  # raises ValueError when a checkpoint is not of this run
    command: str  # the `nas` subcommand that trains it ("train-supernet"), for the resume command of a stop
    teacher: Arch | None = None  # in-place distillation: each step trains this arch on the labels first, and the
    #                              step's other archs learn its soft predictions (BigNAS)


@dataclass
class LoopResult:
    step: int
    total_steps: int
    final: nn.Module  # the weights to evaluate and ship: the EMA's when the run keeps one, else the model
    resume_command: str  # what continues this run (to finish its final evaluation, when a stop cuts it short)

    @property
    def finished(self) -> bool:
        return self.step == self.total_steps


def load_training_data(cfg: RunConfig, img_size: int, num_classes: int,
                       world_size: int) -> tuple[Datasets, int]:
    """The run's datasets, whose `train` is the train set less the `cfg.holdout` held-out images (the split of
    `nas.data.splits.fitness_split`, which `nas evolve` and `nas export` rank subnets on), then, with
    `cfg.train_subset`, a fixed subset of the rest (taken after the split, so that the held-out images stay the same
    whatever the subset), and the number of steps per epoch. ValueError naming --holdout, --train-subset or
    --batch-size when they leave nothing to train on."""
    data = load_data(cfg.data, cfg.holdout, img_size, num_classes, cfg.seed)
    n = len(data.train)
    if cfg.holdout:
        if cfg.holdout >= n:
            raise ValueError(f"--holdout {cfg.holdout}: expected fewer than the {n} images of the train set of "
                             f"{cfg.data!r} (0 = train on all of them)")
        rest, _ = holdout_split(data.train, cfg.holdout, HOLDOUT_SEED)
        data = dataclasses.replace(data, train=rest)
    if cfg.train_subset:
        of = f"the train set of {cfg.data!r}" + (f" less the {cfg.holdout} of --holdout" if cfg.holdout else "")
        data = dataclasses.replace(data, train=train_subset(data.train, cfg.train_subset, of=of))
    steps_per_epoch = len(data.train) // (cfg.batch_size * world_size)
    if steps_per_epoch == 0:
        held = (f" of --train-subset {cfg.train_subset}" if cfg.train_subset else
                f" ({n} images less the {cfg.holdout} of --holdout)" if cfg.holdout else "")
        raise ValueError(f"--batch-size {cfg.batch_size}: larger than the train set ({len(data.train)} images"
                         f"{held}) split over {world_size} process(es)")
    return data, steps_per_epoch


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """timm's AdamW, with no weight decay on norms and biases."""
    return create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def train_loop(cfg: RunConfig, trainee: Trainee, data: Datasets, steps_per_epoch: int, runtime: Runtime,
               console: Console, clock: Callable[[], float] = time.monotonic) -> LoopResult:
    """Train `trainee` from its checkpoint in `cfg.out` (with `cfg.resume`) or from its current weights.

    Writes OUT/config.yaml, OUT/metrics.jsonl and OUT/checkpoint.pt (every --save-every steps, every
    --save-minutes by `clock` (seconds), and at the last step of this invocation). Stops at the end of the schedule
    or after `cfg.stop_after` steps. On `Stopped` (Ctrl-C, SIGTERM) it checkpoints the last completed step, notes
    how to resume and re-raises. Raises TrainingDiverged when the loss is not finite, ValueError when OUT holds
    another run's checkpoint."""
    show = runtime.is_main
    out = Path(cfg.out)
    device = runtime.device
    model = trainee.model
    total_steps = cfg.epochs * steps_per_epoch

    optimizer = trainee.optimizer
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps // 2)  # the cosine gets >= half
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps - warmup, lr_min=cfg.min_lr, warmup_t=warmup,
                                  warmup_lr_init=cfg.lr / 100, warmup_prefix=True, t_in_epochs=False)
    ema = ModelEmaV3(model, decay=cfg.ema) if cfg.ema else None
    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                   num_classes=data.num_classes) if cfg.mixup or cfg.cutmix else None)
    if mixup is not None:
        criterion = SoftTargetCrossEntropy()
    elif cfg.label_smoothing:
        criterion = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    autocast_dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None

    step, carried = 0, {"loss": 0.0, "steps": 0}  # carried: the log window's steps before the checkpoint
    checkpoint_path = out / CHECKPOINT
    if cfg.resume:
        state = load_checkpoint(checkpoint_path, map_location=device)
        trainee.check_resume(state)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
        step = state["step"]
        carried = state.get("log_window", {"loss": 0.0, "steps": 0})
    elif checkpoint_path.exists():
        raise ValueError(f"{str(checkpoint_path)!r} exists: pass --resume to continue that run, or another --out")
    if show:
        prepare_run_folder(out, cfg, step)

    def save() -> None:
        if show:
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.module.state_dict() if ema else None, "step": step, "num_classes": data.num_classes,
                "log_window": {"loss": window["loss"], "steps": window["steps"]},  # a resume logs the same lines
                "config": cfg.to_dict(), **trainee.checkpoint,
            }, checkpoint_path)

    wrapped = model
    if runtime.world_size > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=trainee.find_unused_parameters)
    writer = tensorboard_writer(out) if cfg.tensorboard and show else None
    metrics = (out / METRICS).open("a") if show else None
    stop_at = min(total_steps, step + cfg.stop_after) if cfg.stop_after else total_steps
    stepper = trainee.stepper
    schedule = SaveSchedule(cfg.save_every, cfg.save_minutes, clock)
    resume = resume_command(trainee.command, cfg, runtime.world_size)

    def forward_backward(images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[list[Arch], torch.Tensor]:
        """The step's archs, each a forward and backward on the batch; their loss, summed. TrainingDiverged when it
        is not finite."""
        archs = step_archs(trainee, step)
        loss_sum, soft_targets = torch.zeros((), device=device), None
        for i, arch in enumerate(archs):
            trainee.activate(arch)
            sync = wrapped.no_sync() if runtime.world_size > 1 and i < len(archs) - 1 else nullcontext()
            with sync, torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = wrapped(images)  # (B, classes)
                if soft_targets is None:
                    loss = criterion(logits, labels) / len(archs)
                else:
                    loss = distillation(logits, soft_targets) / len(archs)
            if i == 0 and trainee.teacher is not None:
                soft_targets = logits.detach().float().softmax(dim=-1)  # (B, classes)
            (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach()
        if not distributed.all_finite(loss_sum):
            raise TrainingDiverged(f"the loss became {loss_sum.item()} at step {step} ({trainee.label} "
                                   f"{archs[-1].hash}); the last good checkpoint is "
                                   f"{str(checkpoint_path)!r}. Lower --lr, or use --clip-grad / --amp off")
        return archs, loss_sum

    def apply_gradients() -> None:
        """Clip the gradients, step the optimizer (through the scaler under fp16) and zero them."""
        if scaler is not None:
            scaler.unscale_(stepper)
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        if scaler is not None:
            scaler.step(stepper)
            scaler.update()
        else:
            stepper.step()
        stepper.zero_grad(set_to_none=True)

    progress = ProgressBars(console, lambda f: f"epoch {f['epoch']}",
                            lambda f: f"loss {f['loss']:.3f}  lr {f['lr']:.2e}  {f['ips']:.0f} img/s  "
                                      f"{trainee.label} {f['macs']} MACs", unit="step", disable=not show)
    wrapped.train()
    loader_iter, window = None, {**carried, "images": 0, "start": time.perf_counter()}
    try:
        with progress:
            task = progress.add(total_steps, step, epoch=f"{step // steps_per_epoch + 1}"
                                     f"/{cfg.epochs}", loss=float("nan"), lr=cfg.lr, ips=0.0, macs="-")
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

                with signals_deferred():  # a stop waits for the step's end: it saves a whole step
                    archs, loss_sum = forward_backward(images, labels, step)
                    apply_gradients()
                    step += 1
                    scheduler.step_update(num_updates=step)
                    if ema is not None:
                        ema.update(model, step=step)

                    window["loss"] += loss_sum.item()  # this rank's loss
                    window["steps"] += 1
                    window["images"] += images.shape[0] * runtime.world_size
                    if step % cfg.log_every == 0 or step == stop_at:
                        elapsed = time.perf_counter() - window["start"]
                        record = {"step": step, "total_steps": total_steps, "epoch": epoch + 1,
                                  "loss": window["loss"] / window["steps"], "lr": optimizer.param_groups[0]["lr"],
                                  "images_per_s": window["images"] / max(elapsed, 1e-9),
                                  "macs": [arch_cost(a, trainee.space, data.num_classes)[0] for a in archs],
                                  "archs": [a.hash for a in archs]}
                        if show:
                            metrics.write(json.dumps(record) + "\n")
                            metrics.flush()
                            if writer is not None:
                                for key in ("loss", "lr", "images_per_s"):
                                    writer.add_scalar(f"train/{key}", record[key], step)
                        progress.update(task, step, epoch=f"{epoch + 1}/{cfg.epochs}", loss=record["loss"],
                                        lr=record["lr"], ips=record["images_per_s"], macs=human(max(record["macs"])))
                        if step % cfg.log_every == 0:  # the line of a --stop-after leaves the window open
                            window = {"loss": 0.0, "steps": 0, "images": 0, "start": time.perf_counter()}
                    if schedule.due(step) or step == stop_at:
                        save()
    except Stopped as stop:
        with signals_deferred(deliver=False):  # a second Ctrl-C must not cut the checkpoint short
            save()
        stop.note = f"checkpoint of step {step} saved; resume with: {resume}"
        raise
    finally:
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    return LoopResult(step, total_steps, ema.module if ema is not None else model, resume)


def prepare_run_folder(out: Path, cfg: RunConfig, step: int) -> None:
    """Before the first step of a (resumed) run, on its only writer: remove the temp files that killed writes left,
    write config.yaml unless it holds these options, and cut metrics.jsonl back to `step`, the checkpoint's (0 for a
    new run): the resumed run logs the later steps again."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    cfg.save(out / CONFIG)
    cut_metrics(out / METRICS, step)


def cut_metrics(path: Path, step: int) -> None:
    """Keep the lines of a metrics.jsonl up to step `step`, and none after a torn line (a killed write's)."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        logged = _logged_step(line)
        if logged is None or logged > step:
            break
        kept.append(line)
    if len(kept) < len(lines):
        atomic_write(path, "".join(kept).encode())


def _logged_step(line: str) -> int | None:
    """The step of a whole line of metrics.jsonl; None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) and line.endswith("\n") else None
    return step if isinstance(step, int) else None


class SaveSchedule:
    """When the loop checkpoints besides the last step: every `every` steps, and once `minutes` have passed on
    `clock` (seconds) since the last such checkpoint (0 = never by time)."""

    def __init__(self, every: int, minutes: float, clock: Callable[[], float]):
        self.every, self.seconds, self.clock = every, 60 * minutes, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        """Whether to checkpoint after step `step`; reads the clock once."""
        now = self.clock()
        if step % self.every == 0 or (self.seconds and now - self.last >= self.seconds):
            self.last = now
            return True
        return False


@contextmanager
def final_evaluation(loop: LoopResult):
    """Around a command's work after its last step: a stop in it says that a resume finishes that work."""
    try:
        yield
    except Stopped as stop:
        stop.note = (f"training is complete (checkpoint of step {loop.step}) but its final evaluation was cut short; "
                     f"finish it with: {loop.resume_command}")
        raise


def resume_command(command: str, cfg: RunConfig, world_size: int) -> str:
    """The command line that continues the run in `cfg.out` (its config.yaml holds every other option)."""
    launcher = f"torchrun --nproc_per_node={world_size} -m nas" if world_size > 1 else "nas"
    return f"{launcher} {command} --out {shlex.quote(cfg.out)} --resume"


def step_archs(trainee: Trainee, step: int) -> list[Arch]:
    """The archs that step `step` runs, in order: the teacher first (when distilling), then the sampler's."""
    archs = trainee.archs(step)
    if trainee.teacher is None or archs[0] == trainee.teacher:
        return archs
    return [trainee.teacher, *archs]


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))
