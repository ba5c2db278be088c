"""Forward+backward time and memory of the token mixers against `mhsa` (fused SDPA) at BiFormer-T's stage shapes.

Every attention block (projections, kernel, the mixer's own module: LCE for bra, CRPE for factorized) runs side
by side in one process, interleaved, and the script prints each kind's ratios to mhsa side by side: bra (S = 7,
BiFormer-T's top-k), factorized (MPViT), ipsa and cpsa (CAT, 7x7 windows). Memory: on CUDA the peak allocated
during forward+backward; on CPU the bytes saved for backward (activations), counted once per storage.

    python scripts/bench_bra.py                 # CPU
    python scripts/bench_bra.py --device cuda   # GPU
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from supernets.nas_vit import Attention
from supernets.ops import PLAIN_OPS

# BiFormer-T: (side, channels, topk) of stages 1-3, S = 7; the CPU targets of the issue.
SHAPES = [(56, 64, 1, 0.25), (28, 128, 4, 1.0), (14, 256, 16, 1.3)]
HEAD_DIM = 32
KINDS = ("bra", "factorized", "ipsa", "cpsa")


def build(kind: str, dim: int, topk: int, regions: int, window: int, device: str) -> Attention:
    genes = {"bra": {"topk": topk, "regions": regions}, "ipsa": {"window": window},
             "cpsa": {"window": window}}.get(kind, {})
    return Attention(dim, dim // HEAD_DIM, kind, genes, PLAIN_OPS).to(device)


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
    parser.add_argument("--window", type=int, default=7, help="window of ipsa and cpsa (default 7, CAT's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    memory = peak_cuda_bytes if args.device == "cuda" else saved_bytes
    memory_name = "peak" if args.device == "cuda" else "saved"
    print(f"device={args.device} batch={args.batch} S={args.regions} window={args.window} "
          f"threads={torch.get_num_threads()}; ratios are kind / mhsa (time, {memory_name} memory)")
    columns = " ".join(f"{kind + ' ms':>13} {'t':>5} {'mem':>5}" for kind in KINDS)
    print(f"{'shape':>18} {'mhsa ms':>8} {'MB':>7} {columns} {'bra target':>10}")
    for side, dim, topk, target in SHAPES:
        x = torch.randn(args.batch, side * side, dim, device=args.device, requires_grad=True)
        variants = {kind: build(kind, dim, topk, args.regions, args.window, args.device) for kind in ("mhsa", *KINDS)}
        for module in variants.values():  # warm-up
            for _ in range(2):
                step(module, x, side)
        times: dict[str, list[float]] = {kind: [] for kind in variants}
        for _ in range(args.repeats):  # interleaved, so every kind sees the same machine load
            for kind, module in variants.items():
                times[kind].append(timed(module, x, side, args.device))
        ms = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
        mem = {kind: memory(module, x, side) / 2**20 for kind, module in variants.items()}
        ratio = ms["bra"] / ms["mhsa"]
        verdict = ("ok" if ratio <= target else "MISSED") if args.device == "cpu" else ""
        cells = " ".join(f"{ms[kind]:13.2f} {ms[kind] / ms['mhsa']:5.2f} {mem[kind] / mem['mhsa']:5.2f}"
                         for kind in KINDS)
        print(f"{f'{side}x{side} C={dim} k={topk}':>18} {ms['mhsa']:8.2f} {mem['mhsa']:7.1f} {cells} "
              f"{target:>5.2f} {verdict:>4}")


if __name__ == "__main__":
    main()
