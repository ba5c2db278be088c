"""MACs and params of the primitive layers, the terms every operator's cost formula is written in.

MACs are multiply-accumulates: bias adds, norms, activations and element-wise ops count none (as
FlopCounterMode / 2 counts them); a norm's params are its affine weight and bias.
"""
from __future__ import annotations

Cost = tuple[int, int]  # (MACs, params)


def add(*costs: Cost) -> Cost:
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def linear(tokens: int, c_in: int, c_out: int, bias: bool = True) -> Cost:
    return tokens * c_in * c_out, c_in * c_out + (c_out if bias else 0)


def conv(side: int, c_in: int, c_out: int, kernel: int) -> Cost:  # no bias; `side` of the output
    return side * side * c_in * c_out * kernel * kernel, c_in * c_out * kernel * kernel


def dwconv(side: int, c: int, kernel: int, bias: bool = False) -> Cost:
    return side * side * c * kernel * kernel, c * kernel * kernel + (c if bias else 0)


def norm(c: int) -> Cost:
    return 0, 2 * c
