"""Where the time of an evolutionary search goes: subnet inference against everything else.

Runs `nas evolve`'s search (`run_evolution`) on a freshly initialised tiny-32 supernet with a held-out split of
1,000 synthetic images and the default storage (a journal file in a temporary run folder). The fitness call
times itself (recalibration + forward passes); everything else in the search loop (planning and sampling,
budget checks, the optuna storage, progress and bookkeeping) is the rest of the loop's wall time. Both are
measured in the same run, so the ratio does not depend on how busy the machine is.

    python scripts/bench_evolve.py [--generations 5] [--population 50] [--flops 20M] [--holdout 1000]

Target: everything else <= 10% of the total.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from nas.options import FITNESS_BATCH_SIZE
from nas.search.evolve import EvolveConfig, run_evolution
from nas.train.checkpoint import save_checkpoint
from nas.units import parse_count
from search_spaces import load_space
from supernets.supernet import Supernet

TARGET_OTHER = 0.10


def fresh_checkpoint(folder: Path, space_name: str, holdout: int) -> Path:
    """A checkpoint in train-supernet's format, of an untrained supernet (inference costs the same)."""
    torch.manual_seed(0)
    space = load_space(space_name)
    supernet = Supernet(space, num_classes=space.num_classes)
    path = folder / "checkpoint.pt"
    save_checkpoint({"model": supernet.state_dict(), "ema": None, "space": space.to_dict(), "space_name": space.name,
                     "space_ref": space.ref, "space_hash": space.hash, "num_classes": space.num_classes,
                     "config": {"data": "synthetic", "holdout": holdout}, "step": 0}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="tiny-32")
    parser.add_argument("--flops", default="20M", help="MACs budget (default 20M)")
    parser.add_argument("--generations", type=int, default=5, help="generations (default 5; SPOS uses 20)")
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument("--holdout", type=int, default=1000, help="held-out images (default 1000)")
    parser.add_argument("--batch-size", type=int, default=FITNESS_BATCH_SIZE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = fresh_checkpoint(tmp, args.space, args.holdout)
        cfg = EvolveConfig(supernet=str(checkpoint), flops=parse_count(args.flops, "--flops"), out=str(tmp / "run"),
                           generations=args.generations, population=args.population,
                           mutations=args.population // 2, crossovers=args.population // 2,
                           holdout=args.holdout, batch_size=args.batch_size, device="cpu")
        result = run_evolution(cfg, console=Console(file=io.StringIO()))
    other = result.total_seconds - result.fitness_seconds
    n = result.evaluated_here
    print(f"space={args.space} budget={args.flops} generations={args.generations} population={args.population} "
          f"holdout={args.holdout} threads={torch.get_num_threads()} storage=journal file")
    print(f"evaluated {n} subnets in {result.total_seconds:.1f} s: inference {result.fitness_seconds:.1f} s "
          f"({1000 * result.fitness_seconds / n:.1f} ms per subnet), everything else {other:.1f} s "
          f"({1000 * other / n:.1f} ms per subnet)")
    share = other / result.total_seconds
    print(f"everything else / total = {share:.3f} (target <= {TARGET_OTHER}): {'met' if share <= TARGET_OTHER else 'MISSED'}")


if __name__ == "__main__":
    main()
