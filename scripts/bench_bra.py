"""Forward+backward time and memory of `bra` against `mhsa` (fused SDPA) at BiFormer-T's stage shapes.

Both attention blocks (projections, kernel, LCE for bra) run side by side in one process, interleaved,
and the script prints the ratios bra / mhsa. Memory: on CUDA the peak allocated during forward+backward;
on CPU the bytes saved for backward (activations), counted once per storage.

    python scripts/bench_bra.py                 # CPU
    python scripts/bench_bra.py --device cuda   # GPU
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from search_spaces import StageArch
from supernets.nas_vit import Attention
from supernets.ops import PLAIN_OPS

# BiFormer-T: (side, channels, topk) of stages 1-3, S = 7; the CPU targets of the issue.
SHAPES = [(56, 64, 1, 0.25), (28, 128, 4, 1.0), (14, 256, 16, 1.3)]
HEAD_DIM = 32


def build(kind: str, side: int, dim: int, topk: int, regions: int, device: str) -> Attention:
    genes = StageArch(1, dim, 1, ("layer",), kind, topk, regions, 4.0)
    return Attention(dim, dim // HEAD_DIM, genes.attn, genes.topk, genes.regions, PLAIN_OPS).to(device)


def step(module: Attention, x: torch.Tensor, side: int) -> None:
    out, _ = module(x, (side, side))
    out.sum().backward()


def saved_bytes(module: Attention, x: torch.Tensor, side: int) -> int:
    """Bytes of the tensors autograd keeps for backward, each storage counted once."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = module(x, (side, side))
    out.sum().backward()
    return sum(seen.values())


def peak_cuda_bytes(module: Attention, x: torch.Tensor, side: int) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(module, x, side)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def timed(module: Attention, x: torch.Tensor, side: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(module, x, side)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8, as BiFormer's measurement)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--regions", type=int, default=7, help="S, regions per side (default 7)")
    args = parser.parse_args()
    torch.manual_seed(0)
    memory = peak_cuda_bytes if args.device == "cuda" else saved_bytes
    memory_name = "peak MB" if args.device == "cuda" else "saved MB"
    print(f"device={args.device} batch={args.batch} S={args.regions} threads={torch.get_num_threads()}")
    print(f"{'shape':>18} {'bra ms':>8} {'mhsa ms':>8} {'time ratio':>10} {'target':>7} "
          f"{'bra ' + memory_name:>12} {'mhsa ' + memory_name:>13} {'mem ratio':>9}")
    for side, dim, topk, target in SHAPES:
        x = torch.randn(args.batch, side * side, dim, device=args.device, requires_grad=True)
        variants = {kind: build(kind, side, dim, topk, args.regions, args.device) for kind in ("bra", "mhsa")}
        for module in variants.values():  # warm-up
            for _ in range(2):
                step(module, x, side)
        times: dict[str, list[float]] = {kind: [] for kind in variants}
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for kind, module in variants.items():
                times[kind].append(timed(module, x, side, args.device))
        ms = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
        mem = {kind: memory(module, x, side) / 2**20 for kind, module in variants.items()}
        ratio = ms["bra"] / ms["mhsa"]
        verdict = "ok" if ratio <= target or args.device == "cuda" else "MISSED"
        print(f"{f'{side}x{side} C={dim} k={topk}':>18} {ms['bra']:8.2f} {ms['mhsa']:8.2f} {ratio:10.2f} "
              f"{target:>5.2f} {verdict if args.device == 'cpu' else '':>3} {mem['bra']:12.1f} {mem['mhsa']:13.1f} "
              f"{mem['bra'] / mem['mhsa']:9.2f}")


if __name__ == "__main__":
    main()
