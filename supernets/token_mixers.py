"""The network side of the token mixers registered in `search_spaces/operators.py`.

A `MixerModule` is a kernel of `supernets/attention.py`'s signature plus, optionally, one module that the
mixer adds beside the q/k/v/output projections every mixer shares (BRA's LCE). The supernet holds the added
module of every mixer of its space (built for the stage's largest genes); it is switched by `set_active(dim)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module
from typing import Callable

import torch
from torch import nn

from search_spaces import StageArch
from supernets.attention import AttentionKernel, bra, cpsa, factorized, ipsa, mhsa
from supernets.ops import Ops


@dataclass(frozen=True)
class MixerModule:
    kernel: AttentionKernel  # (q, k, v, num_heads, *, reuse, keep, **the mixer's genes) -> (B, H, W, C), state
    local: str | None = None  # attribute name of the module it adds (a name shared by two mixers shares it)
    build_local: Callable[[int, int, StageArch, Ops], nn.Module] | None = None  # (dim, num_heads, stage, ops)
    # (its module, q or None, v, kernel output), maps (B, H, W, C) -> the output with the module's term
    add_local: Callable[[nn.Module, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@lru_cache(maxsize=None)
def resolve(path: str) -> object:
    """The object named by a registry's "package.module:NAME"."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def _add_lce(lce: nn.Module, q, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out + lce(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # LCE(V): depthwise 5x5 over the map's V


def _add_crpe(crpe: nn.Module, q: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """MPViT's convolutional relative position encoding: q * DWConv(V), per channel."""
    return out + q * crpe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


MHSA = MixerModule(mhsa)
IPSA = MixerModule(ipsa)
CPSA = MixerModule(cpsa)
FACTORIZED = MixerModule(factorized, "crpe", lambda dim, heads, stage, ops: ops.dwconv(dim, 3, bias=True), _add_crpe)
BRA = MixerModule(bra, "lce", lambda dim, heads, stage, ops: ops.dwconv(dim, 5, bias=True), _add_lce)
