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


AttentionKernel = Callable[..., tuple[torch.Tensor, AttentionState | None]]
ATTENTION_KERNELS: dict[str, AttentionKernel] = {"mhsa": mhsa}


def attention_kernel(name: str) -> AttentionKernel:
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention {name!r} is not available; choose from {sorted(ATTENTION_KERNELS)}")
    return ATTENTION_KERNELS[name]
