"""Attention kernels, one factory by name; every kernel has the same signature.

A kernel takes q, k, v as token maps (B, H, W, C) already projected, the number of heads, the BRA genes
(ignored by `mhsa`), `reuse` (the state of the first layer of a `shared` cell, whose attention this
layer reuses: then q and k are None) and `keep` (return that state). It returns the attended values
as (B, H, W, C) and the state or None. Scale: head_dim ** -0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class AttentionState:
    """What the second layer of a `shared` cell reuses: post-softmax probabilities (and BRA's routing)."""

    probs: torch.Tensor
    route: torch.Tensor | None = None


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, H, W, C = x.shape
    return x.reshape(B, H * W, num_heads, C // num_heads).transpose(1, 2)  # (B, heads, N, d)


def mhsa(q, k, v, num_heads: int, *, topk=None, regions=None, reuse: AttentionState | None = None,
         keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """Multi-head self-attention over all tokens; fused SDPA unless probabilities are needed."""
    B, H, W, C = v.shape
    vh = _heads(v, num_heads)
    if reuse is None and not keep:
        out = F.scaled_dot_product_attention(_heads(q, num_heads), _heads(k, num_heads), vh)
        return out.transpose(1, 2).reshape(B, H, W, C), None
    if reuse is None:
        qh = _heads(q, num_heads) * (C // num_heads) ** -0.5
        probs = (qh @ _heads(k, num_heads).transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
    else:
        probs = reuse.probs
    out = probs @ vh  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, H, W, C), AttentionState(probs) if keep else None


def _to_regions(x: torch.Tensor, regions: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, regions, H // regions, regions, W // regions, C).transpose(2, 3)
    return x.reshape(B, regions * regions, -1, C)  # (B, S^2, n, C), n = tokens per region


def _from_regions(x: torch.Tensor, regions: int, H: int, W: int) -> torch.Tensor:
    B, _, _, C = x.shape
    x = x.view(B, regions, regions, H // regions, W // regions, C).transpose(2, 3)
    return x.reshape(B, H, W, C)


def route_regions(q: torch.Tensor, k: torch.Tensor, topk: int) -> torch.Tensor:
    """Top-k routed regions of every region, from the region-level adjacency of mean q and mean k.

    q, k: (B, S^2, n, C). Returns (B, S^2, topk) region indices. Not differentiated (as BiFormer)."""
    with torch.no_grad():
        adjacency = q.mean(dim=2) @ k.mean(dim=2).transpose(-2, -1)  # (B, S^2, S^2)
        return adjacency.topk(topk, dim=-1).indices


class _GatherRows(torch.autograd.Function):
    """x.index_select(0, rows) whose gradient is one index_add_ of the contiguous incoming gradient.

    The autograd formula of index_select falls back to a scatter that is ~10x slower on CPU when the
    incoming gradient is strided, as it is here (it comes through the head transposes)."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save_for_backward(rows)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.num_rows, *grad.shape[1:]))
        return out.index_add_(0, rows, grad.contiguous()), None


def _gather_regions(x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
    """Tokens of the routed regions: (B, S^2, n, C) -> (B, S^2, topk * n, C), one row copy per route.

    Rows are whole (batch, region) blocks, not a topk-fold expanded index over every token."""
    B, R, n, C = x.shape
    rows = (route + torch.arange(B, device=x.device).view(B, 1, 1) * R).reshape(-1)  # (B * S^2 * topk,)
    return _GatherRows.apply(x.reshape(B * R, n * C), rows).view(B, R, -1, C)


def bra(q, k, v, num_heads: int, *, topk: int, regions: int, reuse: AttentionState | None = None,
        keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """BiFormer's bi-level routing attention on a map padded to a multiple of S = `regions`.

    Every query token attends to the tokens of the `topk` regions routed to its region. LCE and the
    output projection are the caller's (they act on whole maps)."""
    B, H, W, C = v.shape
    heads, d = num_heads, C // num_heads

    def split_heads(x):  # (B, S^2, m, C) -> (B * S^2, heads, m, d)
        return x.reshape(B * x.shape[1], x.shape[2], heads, d).transpose(1, 2)

    v_r = _to_regions(v, regions)
    if reuse is None:
        q_r, k_r = _to_regions(q, regions), _to_regions(k, regions)
        route = route_regions(q_r, k_r, topk)
    else:
        route = reuse.route
    v_g = split_heads(_gather_regions(v_r, route))  # (B * S^2, heads, topk * n, d)
    if reuse is None and not keep:
        k_g = split_heads(_gather_regions(k_r, route))
        out = F.scaled_dot_product_attention(split_heads(q_r), k_g, v_g)  # (B * S^2, heads, n, d)
        probs = None
    else:
        if reuse is None:
            k_g = split_heads(_gather_regions(k_r, route))
            probs = (split_heads(q_r) * d ** -0.5 @ k_g.transpose(-2, -1)).softmax(dim=-1)  # (B*S^2, h, n, k*n)
        else:
            probs = reuse.probs
        out = probs @ v_g
    out = out.transpose(1, 2).reshape(B, regions * regions, -1, C)
    return _from_regions(out, regions, H, W), AttentionState(probs, route) if keep else None


AttentionKernel = Callable[..., tuple[torch.Tensor, AttentionState | None]]
ATTENTION_KERNELS: dict[str, AttentionKernel] = {"mhsa": mhsa, "bra": bra}


def attention_kernel(name: str) -> AttentionKernel:
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention {name!r} is not available; choose from {sorted(ATTENTION_KERNELS)}")
    return ATTENTION_KERNELS[name]
