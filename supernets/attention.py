"""Attention kernels; every kernel has the same signature (`supernets/token_mixers.py` registers them).

A kernel takes q, k, v as token maps (B, H, W, C) already projected, the number of heads, its mixer's
genes as keywords (BRA's `topk`, `regions`), `reuse` (the state of the first layer of a `shared` cell,
whose attention this layer reuses: then q and k are None) and `keep` (return that state). It returns the attended values
as (B, H, W, C) and the state or None. Scale: head_dim ** -0.5.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class AttentionState:
    """What the second layer of a `shared` cell reuses: post-softmax probabilities (and BRA's routing)."""

    probs: torch.Tensor
    route: torch.Tensor | None = None  # (B, S^2, topk) for bra
    dense: bool = False  # bra: probabilities over all tokens (masked), else over the gathered ones


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, H, W, C = x.shape
    return x.reshape(B, H * W, num_heads, C // num_heads).transpose(1, 2)  # (B, heads, N, d)


def mhsa(q, k, v, num_heads: int, *, reuse: AttentionState | None = None,
         keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """Multi-head self-attention over all tokens; fused SDPA unless probabilities are kept or reused."""
    B, H, W, C = v.shape
    q_h, k_h = (None, None) if reuse is not None else (_heads(q, num_heads), _heads(k, num_heads))
    out, probs = _attend(q_h, k_h, _heads(v, num_heads), reuse, keep)  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, H, W, C), AttentionState(probs) if keep else None


def _attend(q, k, v, reuse: AttentionState | None, keep: bool, mask=None):
    """Fused SDPA, or explicit softmax when the probabilities are kept or reused. q, k, v: (..., m, d)."""
    if reuse is None and not keep:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    if reuse is None:
        scores = q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)
    else:
        probs = reuse.probs
    return probs @ v, probs


def _to_regions(x: torch.Tensor, regions: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, regions, H // regions, regions, W // regions, C).transpose(2, 3)
    return x.reshape(B, regions * regions, -1, C)  # (B, S^2, n, C), n = tokens per region


def _from_regions(x: torch.Tensor, regions: int, H: int, W: int) -> torch.Tensor:
    B, _, _, C = x.shape
    x = x.view(B, regions, regions, H // regions, W // regions, C).transpose(2, 3)
    return x.reshape(B, H, W, C)


def region_means(x: torch.Tensor, regions: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, S^2, C). Average pooling of the channels-last map: ~40x faster on CPU than
    a mean over the strided region axes."""
    B, H, W, C = x.shape
    pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), (H // regions, W // regions))  # (B, C, S, S)
    return pooled.permute(0, 2, 3, 1).reshape(B, -1, C)


def valid_tokens(H: int, W: int, padded: tuple[int, int], regions: int, device) -> torch.Tensor:
    """(S^2, n) bool: which tokens of each of the S x S regions of the map padded to `padded` lie on the H x W map."""
    Hp, Wp = padded
    on_map = (torch.arange(Hp, device=device)[:, None] < H) & (torch.arange(Wp, device=device)[None, :] < W)
    return _to_regions(on_map.view(1, Hp, Wp, 1), regions).view(regions * regions, -1)


def route_regions(q: torch.Tensor, k: torch.Tensor, regions: int, topk: int,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k routed regions of every region, from the adjacency of region-mean q and k.

    q, k: (B, H, W, C) maps, zero-padded to a multiple of S; `valid` (S^2, n) marks the tokens on the map
    (None: all are). Means run over those tokens only, and a region without any is never routed to.
    Returns (B, S^2, topk) region indices. Not differentiated (as BiFormer)."""
    with torch.no_grad():
        q_mean, k_mean = region_means(q, regions), region_means(k, regions)  # (B, S^2, C)
        if valid is not None:  # padding is zeros: rescale the pooled sums from n tokens to the valid count
            counts = valid.sum(dim=1)  # (S^2,)
            scale = (valid.shape[1] / counts.clamp(min=1)).to(q.dtype)[:, None]
            q_mean, k_mean = q_mean * scale, k_mean * scale
        adjacency = q_mean @ k_mean.transpose(-2, -1)  # (B, S^2, S^2)
        if valid is not None:
            adjacency = adjacency.masked_fill(counts == 0, float("-inf"))
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


_KERNEL = {"bra": "auto"}


@contextmanager
def bra_kernel(name: str):
    """Force BRA's kernel: "gather" (nominal MACs; what the cost model counts), "dense" or "auto"."""
    if name not in ("auto", "gather", "dense"):
        raise ValueError(f"bra kernel {name!r}; choose from ['auto', 'gather', 'dense']")
    previous, _KERNEL["bra"] = _KERNEL["bra"], name
    try:
        yield
    finally:
        _KERNEL["bra"] = previous


def _use_dense(topk: int, regions: int) -> bool:
    """Dense masked attention when routing keeps >= 1/4 of the regions: it then does at most 4x the
    nominal attention MACs, in one large matmul instead of S^2 small ones over topk-fold copied keys."""
    kernel = _KERNEL["bra"]
    return kernel == "dense" or (kernel == "auto" and 4 * topk >= regions * regions)


def bra(q, k, v, num_heads: int, *, topk: int, regions: int, reuse: AttentionState | None = None,
        keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """BiFormer's bi-level routing attention; the maps are zero-padded right/bottom to a multiple of S = `regions`.

    Every query token attends to the tokens of the `topk` regions routed to its region; padded tokens are
    neither keys nor part of the region means (so a padded map computes what its H x W tokens define). LCE
    and the output projection are the caller's (they act on whole maps). Both kernels give the same output;
    the second layer of a shared cell uses the first layer's kernel (the choice depends on topk, S)."""
    B, H, W, C = v.shape
    pad_h, pad_w = -H % regions, -W % regions
    valid = None
    if pad_h or pad_w:
        q, k, v = (None if t is None else F.pad(t, (0, 0, 0, pad_w, 0, pad_h)) for t in (q, k, v))  # (B, Hp, Wp, C)
        valid = valid_tokens(H, W, v.shape[1:3], regions, v.device)
    if reuse is None:
        route, dense = route_regions(q, k, regions, topk, valid), _use_dense(topk, regions)
    else:
        route, dense = reuse.route, reuse.dense
    kernel = _dense_routed if dense else _gathered
    out, probs = kernel(q, k, v, num_heads, route, regions, valid, reuse, keep)  # (B, Hp, Wp, C)
    return out[:, :H, :W], AttentionState(probs, route, dense) if keep else None


def _gathered(q, k, v, num_heads, route, regions, valid, reuse, keep):
    """Per region: its n query tokens against the topk * n gathered tokens of its routed regions."""
    B, H, W, C = v.shape
    heads, d = num_heads, C // num_heads

    def split_heads(x):  # (B, S^2, m, C) -> (B * S^2, heads, m, d)
        return x.reshape(B * x.shape[1], x.shape[2], heads, d).transpose(1, 2)

    v_g = split_heads(_gather_regions(_to_regions(v, regions), route))  # (B * S^2, heads, topk * n, d)
    q_h = k_g = mask = None
    if reuse is None:
        q_h = split_heads(_to_regions(q, regions))  # (B * S^2, heads, n, d)
        k_g = split_heads(_gather_regions(_to_regions(k, regions), route))
        if valid is not None:
            mask = valid[route].view(B * regions * regions, 1, 1, -1)  # (B * S^2, 1, 1, topk * n)
    out, probs = _attend(q_h, k_g, v_g, reuse, keep, mask)  # (B * S^2, heads, n, d)
    out = out.transpose(1, 2).reshape(B, regions * regions, -1, C)
    return _from_regions(out, regions, H, W), probs


def _dense_routed(q, k, v, num_heads, route, regions, valid, reuse, keep):
    """All tokens against all tokens, masked to the routed regions (and the tokens on the map): exactly
    the gathered keys."""
    B, H, W, C = v.shape
    R = regions * regions
    # scatter with a tensor source, not a Python scalar: torch.jit.trace has no alias rule for the scalar overload
    allowed = torch.zeros(B, R, R, dtype=torch.bool, device=v.device).scatter(
        2, route, torch.ones_like(route, dtype=torch.bool))  # (B, S^2, S^2)
    rows = torch.arange(H, device=v.device) // (H // regions)
    cols = torch.arange(W, device=v.device) // (W // regions)
    region_of = (rows[:, None] * regions + cols[None, :]).reshape(-1)  # (N,) region of every token
    mask = allowed[:, region_of][:, :, region_of].unsqueeze(1)  # (B, 1, N, N)
    if valid is not None:
        mask = mask & _from_regions(valid.view(1, R, -1, 1), regions, H, W).reshape(1, 1, 1, -1)
    q_h = None if reuse is not None else _heads(q, num_heads)
    k_h = None if reuse is not None else _heads(k, num_heads)
    out, probs = _attend(q_h, k_h, _heads(v, num_heads), reuse, keep, mask)  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, H, W, C), probs


AttentionKernel = Callable[..., tuple[torch.Tensor, AttentionState | None]]


def factorized(q, k, v, num_heads: int, *, reuse: AttentionState | None = None,
               keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """MPViT's factorized attention: softmax of k over the tokens, K^T V first (d x d per head), then Q times it.
    Linear in the token count; keeps no probabilities (its mixer is not reusable). Scale: head_dim ** -0.5."""
    B, H, W, C = v.shape
    q_h, k_h, v_h = _heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads)  # (B, heads, N, d)
    context = k_h.softmax(dim=2).transpose(-2, -1) @ v_h  # (B, heads, d, d)
    out = q_h * q_h.shape[-1] ** -0.5 @ context  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, H, W, C), None


def ipsa(q, k, v, num_heads: int, *, window: int, reuse: AttentionState | None = None,
         keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """CAT's inner-patch self-attention: attention among the tokens of each window x window patch. The maps are
    zero-padded right/bottom to a multiple of the window and padded keys are masked, as in `bra`. Square maps
    (every map of the network is)."""
    B, H, W, C = v.shape
    assert H == W, "ipsa runs on square maps"
    pad_h, pad_w = -H % window, -W % window
    patches = -(-H // window)  # per side
    mask = None
    if pad_h or pad_w:
        q, k, v = (None if t is None else F.pad(t, (0, 0, 0, pad_w, 0, pad_h)) for t in (q, k, v))  # (B, Hp, Wp, C)
        valid = valid_tokens(H, W, v.shape[1:3], patches, v.device)  # (P^2, w^2)
        mask = valid.view(1, -1, 1, 1, window * window).expand(B, -1, -1, -1, -1).reshape(-1, 1, 1, window ** 2)
    heads, d = num_heads, C // num_heads

    def split_heads(x):  # (B, Hp, Wp, C) -> (B * P^2, heads, w^2, d)
        x = _to_regions(x, patches)
        return x.reshape(-1, x.shape[2], heads, d).transpose(1, 2)

    q_h = None if reuse is not None else split_heads(q)
    k_h = None if reuse is not None else split_heads(k)
    out, probs = _attend(q_h, k_h, split_heads(v), reuse, keep, mask)  # (B * P^2, heads, w^2, d)
    out = out.transpose(1, 2).reshape(B, patches * patches, -1, C)
    return _from_regions(out, patches, *v.shape[1:3])[:, :H, :W], AttentionState(probs) if keep else None


def cpsa(q, k, v, num_heads: int, *, window: int, reuse: AttentionState | None = None,
         keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
    """CAT's cross-patch self-attention: each channel's map is cut into window x window patches, and the patches
    of a channel attend to each other, a patch being a w^2-vector (one head per channel). q, k, v are the layer's
    own C -> C projections, shared with the other mixers; CAT projects each patch with w^2 x w^2 weights shared
    over the channels instead (docs/model.md). Zero padding to a multiple of the window adds nothing to a score.
    Scale: (w^2) ** -0.5."""
    B, H, W, C = v.shape
    pad_h, pad_w = -H % window, -W % window
    patches = -(-H // window)  # per side, square maps
    if pad_h or pad_w:
        q, k, v = (None if t is None else F.pad(t, (0, 0, 0, pad_w, 0, pad_h)) for t in (q, k, v))  # (B, Hp, Wp, C)

    def per_channel(x):  # (B, Hp, Wp, C) -> (B, C, P^2, w^2)
        return None if x is None else _to_regions(x, patches).permute(0, 3, 1, 2)

    out, probs = _attend(per_channel(q), per_channel(k), per_channel(v), reuse, keep)  # (B, C, P^2, w^2)
    out = _from_regions(out.permute(0, 2, 3, 1).contiguous(), patches, *v.shape[1:3])
    return out[:, :H, :W], AttentionState(probs) if keep else None
