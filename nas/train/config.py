"""The configuration of a training run: defaults < `-c run.yaml` < command-line options.

`RunConfig` holds the options every training command shares (data, schedule, regularisation, checkpoints,
devices); `TrainConfig` (`nas train-supernet`) adds the space, the subnet sampler and the final table;
`RetrainConfig` (`nas retrain`) adds the arch and the export folder whose weights it starts from.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar

import yaml

from nas.atomic_files import atomic_write
from nas.options import DEVICES
from nas.train.arch_samplers import SAMPLERS

AMP_MODES = ("auto", "bf16", "fp16", "off")
SEEDS = 2 ** 32  # seeds are in [0, SEEDS): torch's generators take (seed x 1000003 + step) < 2 ** 64


@dataclass
class RunConfig:
    data: str = "digits"
    epochs: int = 100
    batch_size: int = 32            # per process; the global batch is batch_size x processes
    lr: float = 1e-3                # higher rates stall weight-shared training; retrain: also for --init (docs)
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0              # mixup alpha; 0 = off
    cutmix: float = 0.0             # cutmix alpha; 0 = off
    ema: float = 0.0                # EMA decay of the weights; 0 = off
    clip_grad: float = 5.0          # max global gradient norm; 0 = off
    amp: str = "auto"               # auto: bf16 on a CUDA device that has it, else fp16 on CUDA; off on CPU
    seed: int = 0
    out: str = "runs/supernet"
    save_every: int = 200           # steps between checkpoints (and one at the end)
    save_minutes: float = 10.0      # minutes between checkpoints besides --save-every's; 0 = off
    resume: bool = False
    stop_after: int = 0             # stop (with a checkpoint) after this many steps of this process; 0 = never
    workers: int = 0                # data loader worker processes
    log_every: int = 10             # steps between metrics.jsonl lines
    tensorboard: bool = False
    device: str = "auto"            # auto: cuda if available (one GPU per process under torchrun), else cpu
    threads: int = 0                # torch threads (results depend on it); 0 = torch's default, recorded as its count
    holdout: int = 0                # train-set images left out of training (HOLDOUT_SEED split); 0 = none
    train_subset: int = 0           # train on a fixed seeded subset of this many of the rest; 0 = all of them

    LEAD: ClassVar[tuple[str, ...]] = ()  # the command's own options, written first in config.yaml

    def validate(self):
        """Raise ValueError naming the option, its value and what is allowed; a float option is never NaN or
        infinite."""
        for name in ("epochs", "batch_size", "save_every", "log_every"):
            self.require(name, lambda value: value >= 1, ">= 1")
        for name in ("weight_decay", "warmup_epochs", "min_lr", "mixup", "cutmix", "clip_grad", "save_minutes",
                     "stop_after", "workers", "holdout", "train_subset", "threads"):
            self.require(name, lambda value: value >= 0, ">= 0")
        self.require("lr", lambda value: value > 0, "> 0")
        self.require("seed", lambda value: 0 <= value < SEEDS, f"in [0, {SEEDS})")
        self.require("label_smoothing", lambda value: 0 <= value < 1, "in [0, 1)")
        self.require("ema", lambda value: 0 <= value < 1, "in [0, 1) (the decay of the EMA; 0 = off)")
        if self.amp not in AMP_MODES:
            raise ValueError(f"--amp {self.amp!r}: choose from {list(AMP_MODES)}")
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r}: choose from {list(DEVICES)}")
        return self

    def require(self, name: str, allowed: Callable[[float], bool], what: str) -> None:
        """ValueError naming option `name` unless `allowed(value)`; for a float option, unless it is also finite."""
        value = getattr(self, name)
        finite = self.__dataclass_fields__[name].type == "float"  # annotations are strings (__future__)
        if (finite and not math.isfinite(value)) or not allowed(value):
            raise ValueError(f"--{_flag(name)} must be {'a finite number ' if finite else ''}{what}, got {value}")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {**{k: values[k] for k in self.LEAD}, **{k: v for k, v in values.items() if k not in self.LEAD}}

    def save(self, path: Path) -> None:
        """Write the run's options (not those of one invocation) to `path` atomically, unless it holds them already:
        a resume with the same options leaves the file as it is."""
        text = yaml.safe_dump({k: v for k, v in self.to_dict().items() if k not in PER_INVOCATION}, sort_keys=False)
        try:
            if path.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass  # missing or unreadable: written below
        atomic_write(path, text.encode())


@dataclass
class TrainConfig(RunConfig):
    """`nas train-supernet`."""
    space: str = "tiny-32"
    epochs: int = 40                # 1,400 steps on the digits: meets the accuracy targets (docs/search_quality.md)
    sampler: str = "uniform"
    holdout: int = 300              # the search ranks subnets on images the supernet never trained on
    eval_random: int = 3            # random subnets in the final table, besides the largest and smallest
    distill: bool = False           # in-place distillation from the largest subnet of each step (BigNAS)
    warmup_largest: float = 0.0     # epochs of training the largest subnet alone before sampling (once-for-all)

    LEAD: ClassVar[tuple[str, ...]] = ("space",)

    def validate(self) -> TrainConfig:
        super().validate()
        self.require("eval_random", lambda value: value >= 0, ">= 0")
        self.require("warmup_largest", lambda value: 0 <= value <= self.epochs, f"in [0, --epochs {self.epochs}]")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r}: choose from {list(SAMPLERS)}")
        return self


@dataclass
class RetrainConfig(RunConfig):
    """`nas retrain`: the defaults of a single network's training, not of weight sharing (docs/training.md)."""
    arch: str | None = None         # the arch YAML; None = INIT/arch.yaml
    init: str | None = None         # an export folder whose weights the run starts from; None = from scratch
    epochs: int = 30                # a single network needs far fewer steps than weight sharing (docs/training.md)
    drop_path: float = 0.0          # stochastic depth: the deepest layer's drop rate, linear from 0 (NasViT)
    out: str = "runs/retrain"

    LEAD: ClassVar[tuple[str, ...]] = ("arch", "init")

    def validate(self) -> RetrainConfig:
        if not self.arch and not self.init:
            raise ValueError("give --arch ARCH.yaml (train it from scratch) or --init DIR (fine-tune an export "
                             "folder), or both")
        super().validate()
        self.require("drop_path", lambda value: 0 <= value < 1, "in [0, 1)")
        return self


def _flag(name: str) -> str:
    return name.replace("_", "-")


PER_INVOCATION = ("resume", "stop_after")  # options of one command, not of the run: a resume does not inherit them


def load_config(path: str | Path | None, overrides: dict, base: dict | None = None,
                kind: type[RunConfig] = TrainConfig, validate: bool = True) -> RunConfig:
    """A `kind` config from its defaults, then `base` (a resumed run's saved config), then the YAML file's keys,
    then `overrides` (options given on the command line); validated unless `validate` is False."""
    values: dict = {k: v for k, v in (base or {}).items() if k not in PER_INVOCATION}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ValueError(f"-c {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"-c {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"-c {str(path)!r}: expected a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {path}; allowed: {sorted(known)}")
    for name, value in values.items():
        kind_name, optional = known[name].type.removesuffix(" | None"), known[name].type.endswith(" | None")
        if value is None and optional:
            continue
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[kind_name]
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise ValueError(f"option {name!r} = {value!r}: expected {kind_name}")
    config = kind(**values)
    return config.validate() if validate else config
