"""Elastic ops: each holds its largest weight and uses the leading slice (AutoFormer's weight entanglement).

`set_active(...)` picks the slice; `active_weights()` returns it by state-dict name; `export()` copies it
into a plain module. Slicing keeps whole heads because q, k and v are separate weights and the heads
of a width are its leading head_dim-sized groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from supernets.ops import PLAIN_OPS, Ops


class Elastic:
    """Mixin of every elastic op: the plain twin of the active slice, and the copy into it."""

    def active_weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def plain(self) -> nn.Module:
        raise NotImplementedError

    def export(self) -> nn.Module:
        module = self.plain()
        module.load_state_dict({k: v.detach() for k, v in self.active_weights().items()})
        return module


def _with_bias(weights: dict, bias: torch.Tensor | None, n: int) -> dict:
    if bias is not None:
        weights["bias"] = bias[:n]
    return weights


class ElasticLinear(Elastic, nn.Linear):
    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__(max_in, max_out, bias=bias)
        self.active_in, self.active_out = max_in, max_out

    def set_active(self, in_features: int, out_features: int) -> None:
        self.active_in, self.active_out = in_features, out_features

    def active_weights(self):
        return _with_bias({"weight": self.weight[:self.active_out, :self.active_in]}, self.bias, self.active_out)

    def plain(self):
        return PLAIN_OPS.linear(self.active_in, self.active_out, self.bias is not None)

    def forward(self, x):
        w = self.active_weights()
        return F.linear(x, w["weight"], w.get("bias"))


class ElasticConv2d(Elastic, nn.Conv2d):
    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int = 1, bias: bool = False):
        super().__init__(max_in, max_out, kernel, stride, kernel // 2, bias=bias)
        self.active_in, self.active_out = max_in, max_out

    def set_active(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        self.active_in, self.active_out, self.stride = in_channels, out_channels, (stride, stride)

    def active_weights(self):
        return _with_bias({"weight": self.weight[:self.active_out, :self.active_in]}, self.bias, self.active_out)

    def plain(self):
        return PLAIN_OPS.conv(self.active_in, self.active_out, self.kernel_size[0], self.stride[0],
                              self.bias is not None)

    def forward(self, x):
        w = self.active_weights()
        return F.conv2d(x, w["weight"], w.get("bias"), self.stride, self.padding)


class ElasticDWConv2d(Elastic, nn.Conv2d):
    """Depthwise conv: channel c uses filter c, so a width is the leading filters."""

    def __init__(self, max_channels: int, kernel: int, stride: int = 1, bias: bool = False):
        super().__init__(max_channels, max_channels, kernel, stride, kernel // 2, groups=max_channels, bias=bias)
        self.active = max_channels

    def set_active(self, channels: int, stride: int = 1) -> None:
        self.active, self.stride = channels, (stride, stride)

    def active_weights(self):
        return _with_bias({"weight": self.weight[:self.active]}, self.bias, self.active)

    def plain(self):
        return PLAIN_OPS.dwconv(self.active, self.kernel_size[0], self.stride[0], self.bias is not None)

    def forward(self, x):
        w = self.active_weights()
        return F.conv2d(x, w["weight"], w.get("bias"), self.stride, self.padding, groups=self.active)


class ElasticConcatConv(Elastic, nn.Conv2d):
    """1x1 conv over a concatenation of equal-width blocks; the input weight is sliced per block.

    weight: (max_out, max_blocks * max_block, 1, 1); block b's columns start at b * max_block.
    """

    def __init__(self, max_block: int, max_blocks: int, max_out: int):
        super().__init__(max_block * max_blocks, max_out, 1, bias=False)
        self.max_block, self.max_blocks = max_block, max_blocks
        self.block, self.blocks, self.active_out = max_block, max_blocks, max_out

    def set_active(self, block: int, blocks: int, out_channels: int) -> None:
        self.block, self.blocks, self.active_out = block, blocks, out_channels

    def active_weights(self):
        w = self.weight[:self.active_out].view(self.active_out, self.max_blocks, self.max_block)
        w = w[:, :self.blocks, :self.block].reshape(self.active_out, self.blocks * self.block, 1, 1)
        return {"weight": w}

    def plain(self):
        return PLAIN_OPS.concat_conv(self.block, self.blocks, self.active_out)

    def forward(self, x):
        return F.conv2d(x, self.active_weights()["weight"])


class _ElasticNorm(Elastic):
    """A norm over the leading `active` channels of its affine weight and bias."""

    def set_active(self, channels: int) -> None:
        self.active = channels

    def active_weights(self):
        return {"weight": self.weight[:self.active], "bias": self.bias[:self.active]}


class ElasticLayerNorm(_ElasticNorm, nn.LayerNorm):
    def __init__(self, max_dim: int, eps: float = 1e-5):
        super().__init__(max_dim, eps=eps)
        self.active = max_dim

    def plain(self):
        return PLAIN_OPS.layer_norm(self.active)

    def forward(self, x):  # (..., C)
        return F.layer_norm(x, (self.active,), eps=self.eps, **self.active_weights())


class ElasticLayerNorm2d(ElasticLayerNorm):
    def __init__(self, max_channels: int):
        super().__init__(max_channels, eps=LayerNorm2d(1).eps)  # the plain twin's eps

    def plain(self):
        return PLAIN_OPS.conv_norm("ln", self.active)

    def forward(self, x):  # (B, C, H, W), normalised over C
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ElasticBatchNorm2d(_ElasticNorm, nn.BatchNorm2d):
    """Running statistics are sliced views, so training updates only the active channels' entries."""

    def __init__(self, max_channels: int):
        super().__init__(max_channels)
        self.active = max_channels

    def active_weights(self):
        c = self.active
        return {**super().active_weights(), "running_mean": self.running_mean[:c],
                "running_var": self.running_var[:c], "num_batches_tracked": self.num_batches_tracked}

    def plain(self):
        return PLAIN_OPS.conv_norm("bn", self.active)

    def forward(self, x):
        c = self.active
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum, self.eps)


def _elastic_conv_norm(kind: str, channels: int) -> nn.Module:
    return ElasticLayerNorm2d(channels) if kind == "ln" else ElasticBatchNorm2d(channels)


ELASTIC_OPS = Ops(
    linear=ElasticLinear,
    conv=ElasticConv2d,
    dwconv=ElasticDWConv2d,
    concat_conv=ElasticConcatConv,
    layer_norm=ElasticLayerNorm,
    conv_norm=_elastic_conv_norm,
)
