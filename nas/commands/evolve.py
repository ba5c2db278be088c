"""`nas evolve`: evolutionary search of a trained supernet under a MACs / params budget."""
from __future__ import annotations

import argparse
import json
import shlex

from nas.commands import SPACE_HELP, config_from_args, hint
from nas.options import (DATA_HELP, FITNESS_BATCH_SIZE, HEARTBEAT_S, STORAGE_HELP, add_device_option,
                         add_threads_option)
from nas.units import parse_count

DESCRIPTION = """Search a trained supernet for the most accurate subnet within a budget, with the
evolutionary algorithm of single-path one-shot (SPOS), on inherited weights (no training).

Generation 0 is --population random archs within the budget; every later generation takes the
--topk best so far as parents and adds --mutations mutated children (each gene redrawn with
--mutation-prob), --crossovers children of two parents, and random archs up to --population.
Candidates over budget, outside the space or seen before are rejected before evaluation. The
fitness is the mean cross-entropy of the subnet on images held out of the train set (--holdout),
or with --fitness top1 its top-1 there (SPOS's). The loss is the finer signal: it ranked archs
closer to stand-alone training and its winners retrained better (docs/search_quality.md).
--strategy random evaluates as many random archs within the budget instead: the baseline of a
search.

The search is an optuna study (--storage, --study): run the same command again to resume it after a
crash, or on several machines at once to share it; no arch is evaluated twice. Writes
OUT/best.yaml, OUT/candidates.csv (every candidate), OUT/search.png (the fitness against MACs) and
OUT/search.json (how far it got, its settings and best: what 'nas show OUT' reads). Every
candidate's inherited top-1 and loss are recorded, whichever ranks them."""
EXAMPLE = """budgets are MACs (multiply-accumulates) and params: 4G, 4.5G, 600M, 4e9, 4000000000.

example:
  nas evolve --supernet runs/supernet/checkpoint.pt --flops 20M
  nas evolve --supernet runs/in1k/checkpoint.pt --flops 4G --storage sqlite:///search.db --out runs/search
  nas evolve --supernet runs/supernet/checkpoint.pt --flops 50M --objective pareto
  nas evolve --supernet runs/supernet/checkpoint.pt --flops 20M --strategy random --out runs/random
  optuna-dashboard runs/evolve/study.journal      # watch it (pip install optuna-dashboard)"""


def budget(option: str):
    def parse(text: str) -> int:
        try:
            return parse_count(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option} ")) from None
    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evolve", help="search the supernet under a MACs / params budget (SPOS evolution)",
                                   description=DESCRIPTION, epilog=EXAMPLE)
    add = parser.add_argument
    add("--supernet", required=True, metavar="CKPT", help="checkpoint.pt of 'nas train-supernet'")
    add("--flops", type=budget("--flops"), metavar="BUDGET", help="max MACs of one image, e.g. 4G or 600M")
    add("--params", type=budget("--params"), metavar="BUDGET", help="max parameters, e.g. 25M")
    add("--objective", choices=("top1", "pareto"), default="top1",
        help="top1: the single best subnet by --fitness within the budget (SPOS, default); pareto: NSGA-II on the "
             "fitness and MACs, reporting the whole fitness-MACs front within the budget")
    add("--fitness", choices=("loss", "top1"), default="loss",
        help="what ranks a subnet: loss, its inherited mean cross-entropy on the held-out images, lower is better "
             "(default: it moves with every image's confidence, not in steps of one image, and ranked archs closer "
             "to stand-alone training); top1, its inherited top-1 there (SPOS's)")
    add("--strategy", choices=("evolution", "random"), default="evolution",
        help="evolution: SPOS's evolutionary search (default); random: every candidate a random arch within the "
             "budget, --population x --generations of them: the baseline a search should beat")
    add("--population", type=int, metavar="N", default=50, help="candidates per generation (default %(default)s)")
    add("--topk", type=int, metavar="N", default=10, help="parents kept for the next generation (default %(default)s; "
                                             "with --objective pareto the NSGA-II elite is --population)")
    add("--generations", type=int, metavar="N", default=20, help="generations, including the random first one (default "
                                                    "%(default)s; a finished search resumed with more continues)")
    add("--mutations", type=int, metavar="N", help="mutated children per generation; with --crossovers at most "
                                                   "--population (default --population // 2, as SPOS's 25 of 50)")
    add("--mutation-prob", type=float, metavar="P", default=0.1,
        help="probability to redraw each gene (default %(default)s)")
    add("--crossovers", type=int, metavar="N",
        help="children of two parents per generation (default --population // 2, as SPOS's 25 of 50)")
    add("--seed", type=int, metavar="N", default=0, help="seed of the plans: (seed, generation) fixes a generation's "
                                            "candidates given its parents (default %(default)s)")
    add("--out", default="runs/evolve", metavar="DIR", help="output folder (default %(default)s)")
    add("--storage", metavar="URL", help=STORAGE_HELP)
    add("--study", default="evolve", metavar="NAME", help="study name in the storage (default %(default)s)")
    add("--heartbeat", type=int, metavar="S", default=HEARTBEAT_S,
        help="RDB storages: each worker records a heartbeat of its running trial every S seconds; a trial without one "
             "for 2*S (its worker died, on any host) is failed and its arch planned again (default %(default)s)")
    add("--repair-journal", action="store_true",
        help="first cut a torn end of the journal file (a writer killed while appending) back to its last complete "
             "record, keeping every complete one, and say how many trials survived")
    add("--space", metavar="NAME|PATH", help=f"{SPACE_HELP}; only for a checkpoint that does not record it")
    add("--data", metavar="SOURCE", help=f"{DATA_HELP}; default: the data the supernet was trained on")
    add("--holdout", type=int, metavar="N", help="images held out of the train set to rank subnets (a fixed "
                                                 "split); default: the supernet run's --holdout, else 1000")
    add("--batch-size", type=int, metavar="N", default=FITNESS_BATCH_SIZE,
        help="images per forward pass (default %(default)s)")
    add_device_option(parser)
    add_threads_option(parser)
    add("--json", action="store_true", help="print the best candidate as one JSON object on stdout (the table goes "
                                            "to stderr)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    from rich.console import Console

    from nas.search.evolve import EvolveConfig, run_evolution  # torch-heavy: only when searching

    result = run_evolution(config_from_args(EvolveConfig, args), results=Console(stderr=args.json))
    hint(f"nas export --supernet {shlex.quote(args.supernet)} --arch {shlex.quote(str(result.out / 'best.yaml'))} "
         f"--out {shlex.quote(str(result.out / 'model'))}")
    if args.json:
        best = result.best
        print(json.dumps({"arch": best.arch.hash, "top1": best.top1, "loss": best.loss, "macs": best.macs,
                          "params": best.params,
                          "trial": best.trial, "generation": best.generation, "candidates": len(result.rows),
                          "best_yaml": str(result.out / "best.yaml"), "genes": best.arch.to_dict()}, indent=2))
