"""Op factories: the blocks of `nas_vit.py` build their layers through one of these.

`PLAIN_OPS` builds ordinary torch/timm modules (the standalone model); `elastic_ops.ELASTIC_OPS` builds
modules of the same interface that hold the largest weight and slice it (the supernet). Sharing the
block code between both is what makes an exported model compute exactly what the supernet computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from timm.layers import LayerNorm2d
from torch import nn


@dataclass(frozen=True)
class Ops:
    linear: Callable[..., nn.Module]          # (in, out, bias=True)
    conv: Callable[..., nn.Module]            # (in, out, kernel, stride=1, bias=False), padding kernel // 2
    dwconv: Callable[..., nn.Module]          # (channels, kernel, stride=1, bias=False), depthwise
    concat_conv: Callable[..., nn.Module]     # (block, blocks, out): 1x1 conv over `blocks` concatenated maps
    layer_norm: Callable[..., nn.Module]      # (dim): over the last axis of tokens (B, N, C)
    conv_norm: Callable[..., nn.Module]       # (kind, channels): over channels of maps (B, C, H, W)


def _plain_conv_norm(kind: str, channels: int) -> nn.Module:
    return LayerNorm2d(channels) if kind == "ln" else nn.BatchNorm2d(channels)


PLAIN_OPS = Ops(
    linear=lambda i, o, bias=True: nn.Linear(i, o, bias=bias),
    conv=lambda i, o, k, stride=1, bias=False: nn.Conv2d(i, o, k, stride, k // 2, bias=bias),
    dwconv=lambda c, k, stride=1, bias=False: nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=bias),
    concat_conv=lambda block, blocks, o: nn.Conv2d(block * blocks, o, 1, bias=False),
    layer_norm=nn.LayerNorm,
    conv_norm=_plain_conv_norm,
)
