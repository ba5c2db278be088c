"""Weight-sharing overhead of a training step, and the cost of keeping unused weights still.

For each of N sampled archs, on the same batch and side by side (interleaved repeats):
  - supernet step: set_active, forward, backward, guarded AdamW step (`SubnetOptimizer`);
  - standalone step: the exported model of the same arch, forward, backward, plain AdamW step;
  - unguarded supernet step: the supernet with plain AdamW (which moves unused weights).
Prints the median over archs of supernet / standalone and of guarded / unguarded.

    python scripts/bench_supernet.py [--space tiny-32] [--archs 10] [--batch 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from timm.optim import create_optimizer_v2

from nas.train.subnet_optimizer import SubnetOptimizer
from search_spaces import load_space
from supernets.supernet import Supernet

TARGET_RATIO, TARGET_GUARD = 1.15, 1.05


def timed_step(model, optimizer, x, y, arch=None) -> float:
    start = time.perf_counter()
    if arch is not None:
        model.set_active(arch)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="tiny-32", help="built-in space name or space YAML (default tiny-32)")
    parser.add_argument("--archs", type=int, default=10, help="sampled archs (default 10)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant and arch (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    space = load_space(args.space)
    supernet = Supernet(space)
    guarded = SubnetOptimizer(create_optimizer_v2(supernet, "adamw", lr=1e-4, weight_decay=0.05, foreach=True),
                              supernet)
    plain_opt = create_optimizer_v2(supernet, "adamw", lr=1e-4, weight_decay=0.05, foreach=True)
    x = torch.randn(args.batch, space.in_chans, space.img_size, space.img_size)
    y = torch.randint(0, space.num_classes, (args.batch,))
    rng = np.random.default_rng(args.seed)
    print(f"space={space.name} batch={args.batch} archs={args.archs} threads={torch.get_num_threads()}")
    print(f"{'arch':>18} {'supernet ms':>12} {'standalone ms':>14} {'ratio':>6} {'unguarded ms':>13} {'guard':>6}")
    ratios, guards = [], []
    for _ in range(args.archs):
        arch = space.sample(rng)
        standalone = supernet.export(arch)
        standalone_opt = create_optimizer_v2(standalone, "adamw", lr=1e-4, weight_decay=0.05, foreach=True)
        variants = {"supernet": lambda: timed_step(supernet, guarded, x, y, arch),
                    "standalone": lambda: timed_step(standalone, standalone_opt, x, y),
                    "unguarded": lambda: timed_step(supernet, plain_opt, x, y, arch)}
        for run in variants.values():  # warm-up (creates optimizer state)
            run()
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                times[name].append(run())
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        ratios.append(ms["supernet"] / ms["standalone"])
        guards.append(ms["supernet"] / ms["unguarded"])
        print(f"{arch.hash:>18} {ms['supernet']:12.1f} {ms['standalone']:14.1f} {ratios[-1]:6.2f} "
              f"{ms['unguarded']:13.1f} {guards[-1]:6.2f}")
    ratio, guard = statistics.median(ratios), statistics.median(guards)
    print(f"median supernet / standalone step: {ratio:.3f} (target <= {TARGET_RATIO}: "
          f"{'met' if ratio <= TARGET_RATIO else 'MISSED'})")
    print(f"median guarded / unguarded supernet step: {guard:.3f} (overhead {100 * (guard - 1):+.1f}%, target <= "
          f"{100 * (TARGET_GUARD - 1):.0f}%: {'met' if guard <= TARGET_GUARD else 'MISSED'})")


if __name__ == "__main__":
    main()
