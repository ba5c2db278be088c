"""MPViT's factorized attention, CAT's IPSA and CPSA against loop-by-token references; they and CAT's `cross` cell
and FAN's channel mixer in the supernet and exported."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from search_spaces import load_space
from supernets.nas_vit import Attention
from supernets.ops import PLAIN_OPS
from supernets.supernet import Supernet
from tests.supernets.test_registry import assert_exported_and_costed

DIM, HEADS = 8, 2


def _attention(kind: str, genes: dict, with_qk: bool = True) -> Attention:
    torch.manual_seed(len(genes) + with_qk)
    module = Attention(DIM, HEADS, kind, genes, PLAIN_OPS, with_qk=with_qk)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module


def _project(attn: Attention, x: torch.Tensor):
    return [None if lin is None else x @ lin.weight.T + lin.bias for lin in (attn.q, attn.k, attn.v)]


def reference_factorized(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """out_t = d^-0.5 sum_c q_t[c] sum_j softmax_j(k[:, c])[j] v_j (within a head) + q_t * DWConv3x3(V)_t."""
    B, H, W, C = x.shape
    q, k, v = _project(attn, x)
    d = C // HEADS
    out = torch.zeros(B, H, W, C)
    tokens = list(itertools.product(range(H), range(W)))
    for b, h in itertools.product(range(B), range(HEADS)):
        heads = slice(h * d, (h + 1) * d)
        keys = torch.stack([k[b, i, j, heads] for i, j in tokens])  # (N, d)
        weights = keys.softmax(dim=0)  # over the tokens, per channel
        for i, j in tokens:
            total = torch.zeros(d)
            for c in range(d):
                total += q[b, i, j, heads][c] * sum(weights[t, c] * v[b, ti, tj, heads] for t, (ti, tj) in
                                                    enumerate(tokens))
            out[b, i, j, heads] = total * d ** -0.5
    crpe = F.conv2d(v.permute(0, 3, 1, 2), attn.crpe.weight, attn.crpe.bias, padding=1, groups=C).permute(0, 2, 3, 1)
    return (out + q * crpe) @ attn.proj.weight.T + attn.proj.bias


def reference_ipsa(attn: Attention, x: torch.Tensor, reuse: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Each token attends to the map's tokens of its window x window patch (patches tile the map from the top
    left; the last ones are cut by the map's edge)."""
    B, H, W, C = x.shape
    w, d = attn.genes["window"], C // HEADS
    q, k, v = _project(attn, x)
    out, probs = torch.zeros(B, H, W, C), {}
    for b, i, j, h in itertools.product(range(B), range(H), range(W), range(HEADS)):
        heads = slice(h * d, (h + 1) * d)
        rows, cols = range(i // w * w, min(i // w * w + w, H)), range(j // w * w, min(j // w * w + w, W))
        keys = list(itertools.product(rows, cols))
        if reuse:
            p = reuse[b, i, j, h]
        else:
            p = (torch.stack([q[b, i, j, heads] @ k[b, a, c, heads] for a, c in keys]) * d ** -0.5).softmax(0)
        probs[b, i, j, h] = p
        out[b, i, j, heads] = sum(p[t] * v[b, a, c, heads] for t, (a, c) in enumerate(keys))
    return out @ attn.proj.weight.T + attn.proj.bias, probs


def reference_cpsa(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Per channel, patch p attends to every patch p' with score (w^2)^-0.5 * sum over the offsets (a, b) inside
    a patch at which both patches lie on the map of q[p + (a, b)] * k[p' + (a, b)]; the value of p' at each
    offset is its v there (patches cut by the map's edge have fewer offsets)."""
    B, H, W, C = x.shape
    w = attn.genes["window"]
    q, k, v = _project(attn, x)
    corners = [(i, j) for i in range(0, H, w) for j in range(0, W, w)]
    offsets = list(itertools.product(range(w), range(w)))
    out = torch.zeros(B, H, W, C)

    def at(t, b, corner, off, c):
        i, j = corner[0] + off[0], corner[1] + off[1]
        return t[b, i, j, c] if i < H and j < W else torch.tensor(0.0)

    for b, c, p in itertools.product(range(B), range(C), corners):
        scores = torch.stack([sum(at(q, b, p, o, c) * at(k, b, r, o, c) for o in offsets) for r in corners])
        weights = (scores * (w * w) ** -0.5).softmax(0)
        for o in offsets:
            if p[0] + o[0] < H and p[1] + o[1] < W:
                out[b, p[0] + o[0], p[1] + o[1], c] = sum(weights[n] * at(v, b, r, o, c) for n, r in enumerate(corners))
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("H,window", [(4, 2), (6, 3), (5, 2), (4, 3), (3, 3)])
def test_cpsa_matches_reference(H, window):
    attn = _attention("cpsa", {"window": window})
    x = torch.randn(2, H, H, DIM)
    with torch.no_grad():
        fast, _ = attn(x.reshape(2, H * H, DIM), (H, H))
        torch.testing.assert_close(fast.reshape(2, H, H, DIM), reference_cpsa(attn, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H,W", [(4, 4), (5, 3), (1, 1)])
def test_factorized_matches_reference(H, W):
    attn = _attention("factorized", {})
    x = torch.randn(2, H, W, DIM)
    with torch.no_grad():
        fast, _ = attn(x.reshape(2, H * W, DIM), (H, W))
        torch.testing.assert_close(fast.reshape(2, H, W, DIM), reference_factorized(attn, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H,W,window", [(4, 4, 2), (6, 6, 3), (5, 5, 2), (7, 7, 3), (3, 3, 3), (4, 4, 3)])
def test_ipsa_matches_reference_and_its_shared_layer_reuses_it(H, W, window):
    first, second = _attention("ipsa", {"window": window}), _attention("ipsa", {"window": window}, with_qk=False)
    x1, x2 = torch.randn(2, H, W, DIM), torch.randn(2, H, W, DIM)
    with torch.no_grad():
        fast, state = first(x1.reshape(2, H * W, DIM), (H, W), keep=True)
        expected, probs = reference_ipsa(first, x1)
        torch.testing.assert_close(fast.reshape(2, H, W, DIM), expected, atol=1e-5, rtol=1e-5)
        fast, _ = second(x2.reshape(2, H * W, DIM), (H, W), reuse=state)
        expected, _ = reference_ipsa(second, x2, reuse=probs)
        torch.testing.assert_close(fast.reshape(2, H, W, DIM), expected, atol=1e-5, rtol=1e-5)


SPACE = {  # 16x16 input, stem stride 4: maps 4, 2 or 4, ...; windows 2 and 3 (3 pads a 4x4 map)
    "name": "mixers-space", "img_size": 16, "num_classes": 4, "head_dim": 8, "stem_stride": 4, "conv_norm": "bn",
    "stages": [{"pool": [1, 2], "dim": [8, 16], "paths": [1, 2], "max_cells": 2,
                "cells": ["layer", "shared", "skip", "cross"], "attn": ["factorized", "ipsa", "cpsa", "bra", "mhsa"],
                "topk": [1, 2], "regions": [1, 2], "window": [2, 3], "mixer": ["mlp", "fan"],
                "mlp_ratio": [2]}] * 4,
}


@pytest.fixture(scope="module")
def mixers_space(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixers") / "mixers.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return load_space(str(path))


def test_new_mixers_export_equal_to_the_supernet_and_cost_what_they_trace(mixers_space):
    torch.manual_seed(0)
    supernet = Supernet(mixers_space).eval()
    rng = np.random.default_rng(2)
    archs = [mixers_space.sample(rng) for _ in range(12)]
    kinds = {s.attn for a in archs for s in a.stages}
    assert {"factorized", "ipsa", "cpsa"} <= kinds and any("cross" in s.cells for a in archs for s in a.stages)
    assert {s.mixer for a in archs for s in a.stages} == {"mlp", "fan", None}
    assert not any(s.attn == "factorized" and "shared" in s.cells for a in archs for s in a.stages)
    x = torch.randn(2, 3, 16, 16)
    for arch in archs:
        assert_exported_and_costed(supernet, arch, x)


def test_fan_channel_mixer_matches_reference():
    """out[t, c] = sigmoid(sum_t' softmax_t'(q[:, c])[t'] * mean_{c' in head(c)} softmax_t'(x[:, c'])[t'])
    * LayerNorm(MLP(x))[t, c]."""
    from search_spaces import StageArch
    from supernets.nas_vit import Fan

    torch.manual_seed(0)
    fan = Fan(DIM, HEADS, StageArch(1, DIM, 1, ("layer",), "mhsa", None, None, 2.0), PLAIN_OPS)
    x = torch.randn(2, 6, DIM)
    d = DIM // HEADS
    with torch.no_grad():
        q = x @ fan.q.weight.T
        values = fan.norm(fan.mlp(x))
        expected = torch.zeros_like(values)
        for b, c in itertools.product(range(2), range(DIM)):
            head = slice(c // d * d, c // d * d + d)
            pooled = x[b, :, head].softmax(dim=0).mean(dim=1)  # (N,)
            gate = torch.sigmoid((q[b, :, c].softmax(dim=0) * pooled).sum())
            expected[b, :, c] = gate * values[b, :, c]
        torch.testing.assert_close(fan(x), expected, atol=1e-6, rtol=1e-5)
