"""`nas pipeline`: train the supernet, search it under a budget, export, check, retrain the found arch against
baselines and write a report, in one resumable run folder."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nas.commands import SPACE_HELP, hint
from nas.commands.evolve import budget
from nas.options import add_device_option

DESCRIPTION = """From data to a shipped model in one command: train the supernet (nas train-supernet),
search it under the budget (nas evolve), export the found arch (nas export) and check it (nas eval),
then retrain the found arch, the biggest arch under the budget that the search saw and random archs
under it with one recipe (nas retrain), measure each model's CPU latency, and write OUT/report.md
and OUT/report.html (self-contained).

One run folder: OUT/supernet, OUT/search, OUT/model (the found arch's export), OUT/archs (the compared
archs), OUT/baselines (their exports), OUT/retrain/NAME, OUT/report.md, OUT/report.html.
Each stage is skipped when its output is complete and continued when it was interrupted: rerun the
same command after a crash or Ctrl-C. OUT/pipeline.yaml records the options; a rerun with others is
refused, naming them.

Stage options: -c PIPELINE.yaml with one section per stage (train-supernet, evolve, export, eval,
retrain; keys are the stage's long options), and --set STAGE.OPTION=VALUE, which overrides the file.
The pipeline sets the stages' --space, --data, --seed, --threads, --device, budgets and paths itself."""
DEFAULTS = {"out": "runs/pipeline", "space": "tiny-32", "data": "digits", "flops": None, "params": None, "seed": 0,
            "threads": 0, "device": "auto", "random": 2, "retrain_from": "inherited"}
EXAMPLE = """example:
  nas pipeline                                   # tiny-32 on the digits under 20M MACs (runs/pipeline)
  nas pipeline --flops 10M --out runs/p10        # another budget
  nas pipeline --set train-supernet.epochs=80 --set retrain.epochs=30
  nas pipeline -c pipeline.yaml --data fashion-mnist --out runs/fashion

pipeline.yaml:
  train-supernet: {epochs: 60, train-subset: 3000, holdout: 1000}
  evolve: {population: 30, generations: 8}
  retrain: {epochs: 20}"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("pipeline", help="train, search, export, retrain and report in one run folder",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    add = parser.add_argument
    add("-c", "--config", metavar="PIPELINE.yaml", help="stage options: one section per stage, keys as its options")
    add("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
        help="one stage option, e.g. evolve.population=10 (repeatable; overrides -c)")
    add("--out", default=DEFAULTS["out"], metavar="DIR", help="run folder (default %(default)s)")
    add("--space", default=DEFAULTS["space"], metavar="NAME|PATH", help=f"{SPACE_HELP} (default %(default)s)")
    add("--data", default=DEFAULTS["data"], metavar="SOURCE",
        help="the data, as in nas train-supernet: digits, fashion-mnist[:DIR], imagefolder:PATH, ... "
             "(default %(default)s)")
    add("--flops", type=budget("--flops"), metavar="BUDGET",
        help="max MACs of one image, as in nas evolve (default for tiny-32: 20M)")
    add("--params", type=budget("--params"), metavar="BUDGET", help="max parameters, as in nas evolve")
    add("--seed", type=int, default=DEFAULTS["seed"], metavar="N",
        help="seed of training, search, the random baselines and retraining (default %(default)s)")
    add("--threads", type=int, default=DEFAULTS["threads"], metavar="N",
        help="torch threads of every stage and of the latency runs; 0 = torch's default, recorded as its count "
             "(default 0)")
    add_device_option(parser, DEFAULTS["device"], "device of the stages (latency is always measured on the CPU); "
                                                  "default auto")
    add("--random", type=int, default=DEFAULTS["random"], metavar="N",
        help="random archs under the budget in the comparison (default %(default)s)")
    add("--retrain-from", choices=("inherited", "scratch"), default=DEFAULTS["retrain_from"],
        help="inherited: fine-tune every compared arch from its supernet weights (default); scratch: random "
             "initial weights")
    parser.set_defaults(func=run)
    return parser


def rerun_command(args: argparse.Namespace) -> str:
    """The command line of this run, to repeat it: the options given, differing from the defaults."""
    argv = ["nas", "pipeline"]
    if args.config:
        argv += ["-c", args.config]
    for item in args.set:
        argv += ["--set", item]
    for name, default in DEFAULTS.items():
        value = getattr(args, name)
        if value != default:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    import torch  # torch-heavy: only when running
    from rich.console import Console

    from nas.interrupts import Stopped
    from nas.pipeline.options import (
        PipelineConfig,
        check_budget,
        default_budget,
        parse_set,
        read_sections,
        resolve_stages,
        save_or_check,
    )
    from nas.pipeline.report import REPORT_HTML, REPORT_MD, write_report
    from nas.pipeline.stages import Pipeline, StageEnded

    for name in ("seed", "threads", "random"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    stages, invocation = resolve_stages(read_sections(args.config) if args.config else {}, parse_set(args.set))
    flops, params = default_budget(args.space, args.flops, args.params)
    check_budget(args.space, flops, params)
    cfg = PipelineConfig(space=args.space, data=args.data, flops=flops, params=params, seed=args.seed,
                         threads=args.threads or torch.get_num_threads(), device=args.device, random=args.random,
                         retrain_from=args.retrain_from, stages=stages)
    out = Path(args.out)
    rerun = rerun_command(args)
    console = Console(stderr=True)
    pipeline = Pipeline(cfg, out, invocation, rerun, console)
    pipeline.check()
    save_or_check(cfg, out)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # the in-process stages without --threads of their own
    try:
        pipeline.run()
        rows = write_report(out, rerun)
    except StageEnded as end:
        print(f"{args.prog}: {end}", file=sys.stderr)
        return end.status
    except Stopped as stop:
        stop.note = f"to continue, rerun the same command: {rerun}"
        raise
    finally:
        torch.set_num_threads(before)
    _print_summary(rows, out / REPORT_MD, out / REPORT_HTML)
    hint(f"nas eval {out / 'retrain' / 'found' / 'model'}   (the found arch retrained; the report ends with how to "
         f"load it with timm)")
    return 0


def _print_summary(rows, markdown: Path, page: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from nas.units import human

    table = Table(title="found arch against baselines under the budget")
    for column in ("arch", "as", "MACs", "params", "inherited", "retrained", "latency"):
        table.add_column(column, justify="left" if column in ("arch", "as") else "right")
    for row in rows:
        table.add_row(row.arch, row.name, human(row.macs), human(row.params), f"{100 * row.inherited:.2f}%",
                      f"{100 * row.retrained:.2f}%", f"{row.latency_ms:.2f} ms")
    Console().print(table)
    print(f"report: {page} (and {markdown})")
