"""Archs per second of the analytic cost model against FlopCounterMode on built models, on one CPU core.

Both run in the same process on the same sampled archs: the analytic model (`arch_cost`) once with its
lru caches cleared (cold) and once more with them filled (warm); the traced count builds
`NasViT(arch, space)` and runs one image under `FlopCounterMode` with the math attention backend
(building the model counts). The script also checks analytic MACs == traced FLOPs / 2 on the traced archs.

    python scripts/bench_cost_model.py [--space unified-224] [-n 5000] [--traced 5] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nas import cost_model
from search_spaces import Arch, SearchSpace, load_space
from supernets.attention import bra_kernel
from supernets.nas_vit import NasViT

TARGET = 5000  # analytic archs per second on one core (docs/design.md section 5: tens of thousands a second)


def pin_one_core() -> str:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))  # core 0 where allowed, else the first core this process may use
        os.sched_setaffinity(0, {core})
        return f"core {core}, 1 torch thread"
    return "1 torch thread (no sched_setaffinity on this OS)"


def time_analytic(archs: list[Arch], space: SearchSpace) -> tuple[float, float]:
    """Seconds for all archs with cold caches, then with warm ones."""
    cost_model.stage_cost.cache_clear()
    cost_model.layer_cost.cache_clear()
    start = time.perf_counter()
    cold = [cost_model.arch_cost(a, space) for a in archs]
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = [cost_model.arch_cost(a, space) for a in archs]
    warm_s = time.perf_counter() - start
    assert cold == warm
    return cold_s, warm_s


def traced_flops(arch: Arch, space: SearchSpace) -> int:
    """Build the model and count one image's forward (FLOPs = 2 x MACs)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), bra_kernel("gather"):  # nominal MACs, as counted
        model = NasViT(arch, space).eval()
        x = torch.randn(1, space.in_chans, space.img_size, space.img_size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops()




def time_traced(archs: list[Arch], space: SearchSpace) -> tuple[float, list[int]]:
    """Seconds for all archs, and the FLOPs of each."""
    start = time.perf_counter()
    flops = [traced_flops(arch, space) for arch in archs]
    return time.perf_counter() - start, flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="unified-224", help="built-in space name or space YAML path")
    parser.add_argument("-n", type=int, default=5000, help="archs for the analytic cost model")
    parser.add_argument("--traced", type=int, default=5, help="archs for the traced count (the first of the -n)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.traced < 1:
        parser.error("-n and --traced must be positive")

    console = Console()
    pinned = pin_one_core()
    space = load_space(args.space)
    rng = np.random.default_rng(args.seed)
    archs = [space.sample(rng) for _ in range(max(args.n, args.traced))]

    cold_s, warm_s = time_analytic(archs[:args.n], space)
    traced_flops(archs[0], space)  # untimed warm-up of torch's one-time costs
    traced_s, flops = time_traced(archs[:args.traced], space)

    cold_rate, warm_rate, traced_rate = args.n / cold_s, args.n / warm_s, args.traced / traced_s
    table = Table(title=f"cost of an arch, space {space.name}, {pinned}")
    for col in ("method", "archs", "seconds", "archs/s", "analytic / traced"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, n, secs, rate in (("analytic, cold caches", args.n, cold_s, cold_rate),
                                  ("analytic, warm caches", args.n, warm_s, warm_rate),
                                  ("FlopCounterMode (build + forward)", args.traced, traced_s, traced_rate)):
        table.add_row(method, str(n), f"{secs:.3f}", f"{rate:,.1f}", f"{rate / traced_rate:,.0f}x")
    console.print(table)

    check = Table(title="analytic MACs vs traced FLOPs / 2")
    for col in ("arch hash", "bra stages", "analytic MACs", "traced / 2", "equal"):
        check.add_column(col, justify="right")
    all_equal = True
    for arch, traced in zip(archs, flops):
        macs = cost_model.arch_cost(arch, space)[0]
        equal = 2 * macs == traced
        all_equal &= equal
        half = f"{traced // 2:,}" if traced % 2 == 0 else f"{traced / 2:,.1f}"
        bra_stages = sum(s.attn == "bra" for s in arch.stages)
        check.add_row(arch.hash, str(bra_stages), f"{macs:,}", half, "yes" if equal else "NO")
    console.print(check)
    console.print(f"analytic MACs == traced FLOPs / 2 on all {len(flops)} traced archs: "
                  f"{'yes' if all_equal else 'NO'}")
    met = cold_rate >= TARGET
    console.print(f"ratio analytic / traced archs per second: {cold_rate / traced_rate:,.0f}x cold, "
                  f"{warm_rate / traced_rate:,.0f}x warm")
    console.print(f"target >= {TARGET:,} analytic archs/s on one core (cold caches): "
                  f"{'met' if met else 'NOT met'} ({cold_rate:,.0f} archs/s)")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
