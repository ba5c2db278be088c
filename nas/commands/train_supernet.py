"""`nas train-supernet`: SPOS training of the weight-sharing supernet.

The options of the training loop are defined here once (`add_training_options`) and shared with `nas retrain`,
as is the resolution of a run's config (`resolve_config`)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from nas.commands import SPACE_HELP
from nas.options import DATA_HELP, add_device_option, add_threads_option
from nas.run_folders import CHECKPOINT, suggested_budget
from nas.train.arch_samplers import SAMPLERS
from nas.train.config import AMP_MODES, RunConfig, TrainConfig, load_config

DEFAULTS = TrainConfig()
DESCRIPTION = """Train the supernet of a search space with single-path one-shot (SPOS): every step
samples a subnet (from a generator seeded by the seed and the step, so every process of a
distributed run builds the same one) and updates only its weights; weights outside it do not move.
With no options, trains tiny-32 on the bundled digits in a few minutes on a laptop CPU.

Writes OUT/checkpoint.pt (every --save-every steps or --save-minutes, at the end, and on Ctrl-C or
SIGTERM, atomically), OUT/config.yaml (the resolved options), OUT/metrics.jsonl, and at the end
OUT/final_eval.json with the inherited val top-1 of the largest, the smallest and a few random
subnets."""
EXAMPLE = """example:
  nas train-supernet                                     # tiny-32 on the bundled digits
  nas train-supernet --holdout 300                       # keep 300 train images unseen for nas evolve
  nas train-supernet --space unified-224 --data imagefolder:/data/imagenet --epochs 120 \\
      --batch-size 128 --lr 1e-3 --holdout 25000 --out runs/imagenet
  torchrun --nproc_per_node=8 -m nas train-supernet -c run.yaml
  nas train-supernet --out runs/imagenet --resume        # continue after a crash

options set in -c run.yaml (keys as below, with - or _) are defaults that the command line overrides."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train-supernet", help="train the supernet with SPOS (one subnet per step)",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    add = parser.add_argument
    add("-c", "--config", metavar="RUN.yaml", help="a YAML file of options (the defaults for this run)")
    add("--space", metavar="NAME|PATH", help=f"{SPACE_HELP} (default {DEFAULTS.space})")
    add("--sampler", choices=SAMPLERS, help="uniform: SPOS, one uniform subnet per step (default); flops-uniform: "
                                            "uniform over MAC bins; sandwich: largest + smallest + random")
    add_training_options(
        parser, DEFAULTS,
        lr=f"peak learning rate of AdamW (default {DEFAULTS.lr})",
        ema="decay of an EMA of the weights, evaluated at the end; 0 = off (default 0)",
        seed=f"seed of the weights, the data order and the subnets (default {DEFAULTS.seed})",
        holdout="leave N images of the train set out of training: the fixed split that 'nas evolve' and "
                "'nas export' rank subnets on (they default to the run's N), so that they judge subnets on images "
                f"the supernet never saw; 0 = train on all (default {DEFAULTS.holdout})")
    add("--distill", action=argparse.BooleanOptionalAction, default=None,
        help="in-place distillation (BigNAS): every step also trains the largest subnet on the labels, and the "
             "sampled subnets learn its soft predictions instead of the labels (one more forward and backward per "
             "step)")
    add("--warmup-largest", type=float, metavar="EPOCHS",
        help="train the largest subnet alone for this many epochs before the sampler takes over (once-for-all's "
             "warm-up; default 0)")
    add("--eval-random", type=int, help=f"random subnets in the final table (default {DEFAULTS.eval_random})")
    parser.set_defaults(func=run)
    return parser


def add_training_options(parser: argparse.ArgumentParser, defaults: RunConfig, *, lr: str, ema: str, seed: str,
                         holdout: str) -> None:
    """The options of `nas.train.loop` (the fields of RunConfig); the help of those whose meaning depends on
    the command is given."""
    add = parser.add_argument
    add("--data", metavar="SOURCE", help=f"{DATA_HELP} (default {defaults.data})")
    add("--holdout", type=int, metavar="N", help=holdout)
    add("--train-subset", type=int, metavar="N",
        help="train on N images of the train set (after --holdout's are removed), a fixed draw: the same images "
             "for every run and --seed, for quick studies; 0 = all (default 0)")
    add("--epochs", type=int, help=f"epochs over the train set (default {defaults.epochs})")
    add("--batch-size", type=int, help=f"images per step and process (default {defaults.batch_size})")
    add("--lr", type=float, help=lr)
    add("--weight-decay", type=float, help=f"AdamW weight decay; none on norms and biases "
                                           f"(default {defaults.weight_decay})")
    add("--warmup-epochs", type=float, help=f"linear warmup before the cosine decay (default {defaults.warmup_epochs})")
    add("--min-lr", type=float, help=f"learning rate at the end of the cosine (default {defaults.min_lr})")
    add("--label-smoothing", type=float, help=f"label smoothing (default {defaults.label_smoothing})")
    add("--mixup", type=float, help="mixup alpha, 0 = off (default 0); with mixup/cutmix a resumed run is "
                                    "not bit-identical (timm's Mixup draws from the global RNG)")
    add("--cutmix", type=float, help="cutmix alpha, 0 = off (default 0)")
    add("--ema", type=float, help=ema)
    add("--clip-grad", type=float, help=f"max global gradient norm, 0 = off (default {defaults.clip_grad})")
    add("--amp", choices=AMP_MODES, help="mixed precision on CUDA: auto = bf16 where supported else fp16; "
                                         "always off on a CPU (default auto)")
    add("--seed", type=int, help=seed)
    add("--out", metavar="DIR", help=f"run folder (default {defaults.out})")
    add("--save-every", type=int, help=f"steps between checkpoints (default {defaults.save_every})")
    add("--save-minutes", type=float, metavar="MINUTES",
        help="also checkpoint when this many minutes have passed since the last checkpoint; 0 = off "
             f"(default {defaults.save_minutes:g})")
    add("--resume", action="store_true", default=None,
        help="continue the run in --out from its checkpoint (its config.yaml, or the checkpoint's copy when that "
             "is missing or damaged, gives the defaults)")
    add("--stop-after", type=int, help="stop after this many steps with a checkpoint (to fit a job's time "
                                       "limit; --resume continues); 0 = never (default)")
    add("--workers", type=int, help="data loader worker processes (default 0)")
    add("--log-every", type=int, help=f"steps between lines of metrics.jsonl (default {defaults.log_every})")
    add("--tensorboard", action="store_true", default=None, help="also log to OUT/tensorboard")
    add_device_option(parser, default=None)
    add_threads_option(parser, help="torch threads per process; the figures depend on it, so config.yaml records "
                                    "the count and --resume uses it again; 0 = torch's default (default 0)")


def resolve_config(args: argparse.Namespace, kind: type[RunConfig] = TrainConfig) -> RunConfig:
    """Defaults < the resumed run's config.yaml < -c RUN.yaml < the options given here."""
    overrides = {k: v for k, v in vars(args).items() if k in kind.__dataclass_fields__}
    if not args.resume:
        return load_config(args.config, overrides, kind=kind)
    out = Path(args.out or load_config(args.config, {}, kind=kind, validate=False).out)
    base, source = saved_options(out)
    foreign = sorted(set(base) - set(kind.__dataclass_fields__))
    if foreign:
        raise ValueError(f"--resume: {source} is not the config of a run of this command (it has option(s) "
                         f"{foreign}); choose this command's run folder with --out")
    return load_config(args.config, overrides, base=base, kind=kind)


def saved_options(out: Path) -> tuple[dict, str]:
    """The options of the run in `out` and where they were read: its config.yaml or, when that is missing or damaged
    (a kill while it was written), the copy in its checkpoint. ValueError when neither can be read."""
    saved = out / "config.yaml"
    try:
        options = yaml.safe_load(saved.read_text())
        damage = None if isinstance(options, dict) else "empty" if options is None else "not a mapping of options"
    except FileNotFoundError:
        damage = "missing"
    except yaml.YAMLError:
        damage = "not valid YAML"
    except (OSError, UnicodeDecodeError) as exc:
        damage = f"unreadable ({type(exc).__name__})"
    if damage is None:
        return options, repr(str(saved))
    from nas.train.checkpoint import load_checkpoint  # torch-heavy: only for a damaged run folder

    checkpoint = out / CHECKPOINT
    if damage == "missing" and not checkpoint.exists():
        raise ValueError(f"--resume: no run to continue in {str(out)!r} (it has no config.yaml and no {CHECKPOINT})")
    try:
        options = load_checkpoint(checkpoint)["config"]
    except ValueError as exc:
        raise ValueError(f"--resume: {str(saved)!r} is {damage}, and the copy of the options in the checkpoint "
                         f"cannot be read: {exc}") from None
    return options, f"the config in {str(checkpoint)!r}"


def run(args: argparse.Namespace) -> int:
    from nas.train.supernet import train_supernet  # torch-heavy: only when training
    from nas.commands.training import run_training_command

    cfg = resolve_config(args)

    def next_step(result) -> str:
        if not result.finished:
            return f"nas train-supernet --out {shlex.quote(cfg.out)} --resume"
        return (f"nas evolve --supernet {shlex.quote(str(Path(cfg.out) / CHECKPOINT))} "
                f"--flops {suggested_budget(cfg.space)}")
    return run_training_command(train_supernet, cfg, args.prog, next_step)

