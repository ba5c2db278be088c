"""Elastic ops: each holds its largest weight and uses the leading slice (AutoFormer's weight entanglement).

`set_active(...)` picks the slice; `active_weights()` returns it by state-dict name, which `Supernet.export`
copies into the standalone model's plain modules. Slicing keeps whole heads because q, k and v are separate
weights and the heads of a width are its leading head_dim-sized groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from supernets.ops import Ops


class Elastic:
    """Mixin of every elastic op: the active slice of its tensors.

    `active_view(name, t)` slices any tensor shaped like the parameter or buffer `name` (the weight
    itself, its gradient, optimizer state) to the active part, as a view. `slice_config()` is a hashable
    snapshot of what that slice depends on, and `config_view(config, name, t)` the slice of such a snapshot
    whatever is active now (the optimizer guard steps the slices of a step's earlier archs by them)."""

    def slice_config(self) -> tuple:
        raise NotImplementedError

    def config_view(self, config: tuple, name: str, tensor: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def active_view(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.config_view(self.slice_config(), name, tensor)

    def active_weights(self) -> dict[str, torch.Tensor]:
        tensors = [*self.named_parameters(recurse=False), *self.named_buffers(recurse=False)]
        return {name: self.active_view(name, t) for name, t in tensors}


def _leading(tensor: torch.Tensor, *sizes: int) -> torch.Tensor:
    return tensor[tuple(slice(0, n) for n in sizes)]


class ElasticLinear(Elastic, nn.Linear):
    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__(max_in, max_out, bias=bias)
        self.active_in, self.active_out = max_in, max_out

    def set_active(self, in_features: int, out_features: int) -> None:
        self.active_in, self.active_out = in_features, out_features

    def slice_config(self):
        return self.active_out, self.active_in

    def config_view(self, config, name, tensor):
        out, in_ = config
        return _leading(tensor, out, in_) if name == "weight" else tensor[:out]

    def forward(self, x):
        bias = None if self.bias is None else self.bias[:self.active_out]
        return F.linear(x, self.weight[:self.active_out, :self.active_in], bias)


class ElasticConv2d(Elastic, nn.Conv2d):
    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int = 1, bias: bool = False):
        super().__init__(max_in, max_out, kernel, stride, kernel // 2, bias=bias)
        self.active_in, self.active_out = max_in, max_out

    def set_active(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        self.active_in, self.active_out, self.stride = in_channels, out_channels, (stride, stride)

    def slice_config(self):
        return self.active_out, self.active_in

    def config_view(self, config, name, tensor):
        out, in_ = config
        return _leading(tensor, out, in_) if name == "weight" else tensor[:out]

    def forward(self, x):
        bias = None if self.bias is None else self.bias[:self.active_out]
        return F.conv2d(x, self.weight[:self.active_out, :self.active_in], bias, self.stride, self.padding)


class ElasticDWConv2d(Elastic, nn.Conv2d):
    """Depthwise conv: channel c uses filter c, so a width is the leading filters."""

    def __init__(self, max_channels: int, kernel: int, stride: int = 1, bias: bool = False):
        super().__init__(max_channels, max_channels, kernel, stride, kernel // 2, groups=max_channels, bias=bias)
        self.active = max_channels

    def set_active(self, channels: int, stride: int = 1) -> None:
        self.active, self.stride = channels, (stride, stride)

    def slice_config(self):
        return (self.active,)

    def config_view(self, config, name, tensor):
        return tensor[:config[0]]

    def forward(self, x):
        bias = None if self.bias is None else self.bias[:self.active]
        return F.conv2d(x, self.weight[:self.active], bias, self.stride, self.padding, groups=self.active)


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

    def slice_config(self):
        return self.active_out, self.blocks, self.block

    def config_view(self, config, name, tensor):  # (out, blocks, block): the active columns of every active block
        out, blocks, block = config
        return tensor[:out].view(out, self.max_blocks, self.max_block)[:, :blocks, :block]

    def active_weights(self):
        w = self.active_view("weight", self.weight)
        return {"weight": w.reshape(self.active_out, self.blocks * self.block, 1, 1)}

    def forward(self, x):
        return F.conv2d(x, self.active_weights()["weight"])


class _ElasticNorm(Elastic):
    """A norm over the leading `active` channels of its affine weight and bias."""

    def set_active(self, channels: int) -> None:
        self.active = channels

    def slice_config(self):
        return (self.active,)

    def config_view(self, config, name, tensor):  # num_batches_tracked (a scalar) is whole
        return tensor[:config[0]] if tensor.dim() else tensor


class ElasticLayerNorm(_ElasticNorm, nn.LayerNorm):
    def __init__(self, max_dim: int, eps: float = 1e-5):
        super().__init__(max_dim, eps=eps)
        self.active = max_dim

    def forward(self, x):  # (..., C)
        return F.layer_norm(x, (self.active,), self.weight[:self.active], self.bias[:self.active], self.eps)


class ElasticLayerNorm2d(ElasticLayerNorm):
    def __init__(self, max_channels: int):
        super().__init__(max_channels, eps=LayerNorm2d(1).eps)  # the plain twin's eps

    def forward(self, x):  # (B, C, H, W), normalised over C
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ElasticBatchNorm2d(_ElasticNorm, nn.BatchNorm2d):
    """Running statistics are sliced views, so training updates only the active channels' entries."""

    def __init__(self, max_channels: int):
        super().__init__(max_channels)
        self.active = max_channels

    def forward(self, x):
        c = self.active
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average, as nn.BatchNorm2d (used by BN recalibration)
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, momentum or 0.0, self.eps)


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
