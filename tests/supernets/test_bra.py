"""BRA against a plain implementation written from the definition (loops over tokens and heads)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from supernets.attention import bra, bra_kernel, mhsa
from supernets.nas_vit import Attention
from supernets.ops import PLAIN_OPS

DIM, HEADS = 8, 2


def reference_bra(attn: Attention, x: torch.Tensor, reuse: dict | None = None) -> tuple[torch.Tensor, dict]:
    """BiFormer's BRA, token by token, over the tokens of the map only. x: (B, H, W, C) normed input; returns
    (B, H, W, C) and the routing / probabilities for a shared second layer.

    Regions are those of the map padded to a multiple of S, but a padded position is no token: region means
    average the map's tokens of a region, a region without any is never routed to, keys are map tokens, and
    LCE sees zeros beyond the map (a conv's own padding)."""
    B, H, W, C = x.shape
    S, topk, d = attn.genes["regions"], attn.genes["topk"], C // HEADS
    rh, rw = -(-H // S), -(-W // S)
    region_tokens = [[(i * rh + a, j * rw + b) for a in range(rh) for b in range(rw)
                      if i * rh + a < H and j * rw + b < W] for i in range(S) for j in range(S)]
    v = x @ attn.v.weight.T + attn.v.bias
    out = torch.zeros(B, H, W, C)
    state = {"route": {}, "probs": {}}
    for b in range(B):
        if reuse is None:
            q = x[b] @ attn.q.weight.T + attn.q.bias
            k = x[b] @ attn.k.weight.T + attn.k.bias
            adjacency = torch.full((S * S, S * S), float("-inf"))
            for r, r_tokens in enumerate(region_tokens):
                for j, j_tokens in enumerate(region_tokens):
                    if r_tokens and j_tokens:
                        adjacency[r, j] = torch.stack([q[t] for t in r_tokens]).mean(0) @ \
                            torch.stack([k[t] for t in j_tokens]).mean(0)
        for r, tokens in enumerate(region_tokens):
            if not tokens:
                continue
            routed = reuse["route"][b, r] if reuse else adjacency[r].topk(topk).indices.tolist()
            state["route"][b, r] = routed
            keys = [t for j in routed for t in region_tokens[j]]
            for t, h in itertools.product(tokens, range(HEADS)):
                heads = slice(h * d, (h + 1) * d)
                if reuse:
                    p = reuse["probs"][b, t, h]
                else:
                    scores = torch.stack([q[t][heads] @ k[key][heads] for key in keys]) * d ** -0.5
                    p = scores.softmax(0)
                state["probs"][b, t, h] = p
                out[b, t[0], t[1], heads] = sum(p[i] * v[b, key[0], key[1], heads] for i, key in enumerate(keys))
    lce = F.conv2d(v.permute(0, 3, 1, 2), attn.lce.weight, attn.lce.bias, padding=2, groups=C).permute(0, 2, 3, 1)
    return (out + lce) @ attn.proj.weight.T + attn.proj.bias, state


def make_attention(topk: int, regions: int, with_qk: bool = True) -> Attention:
    torch.manual_seed(topk * 10 + regions + with_qk)
    module = Attention(DIM, HEADS, "bra", {"topk": topk, "regions": regions}, PLAIN_OPS, with_qk=with_qk)
    for p in module.parameters():  # default init gives near-uniform routing; make it decisive
        torch.nn.init.normal_(p, std=0.5)
    return module


CASES = [  # (H, W, S, topk): divisible and not divisible by S, topk = 1 and topk = S^2; at 4x4 with S = 3 the
    # last row and column of regions lie wholly on padding (tiny-32's 4x4 maps), so topk = 9 routes to empty ones
    (4, 4, 2, 1), (4, 4, 2, 4), (5, 7, 2, 1), (5, 7, 3, 9), (6, 6, 3, 2), (3, 5, 3, 1), (4, 4, 3, 2), (4, 4, 3, 9),
]


@pytest.fixture(params=["gather", "dense"])
def kernel(request):
    """Both BRA kernels must compute the definition (the auto choice picks one of them by shape)."""
    with bra_kernel(request.param):
        yield request.param


@pytest.mark.parametrize("H,W,S,topk", CASES)
def test_bra_matches_reference(H, W, S, topk, kernel):
    attn = make_attention(topk, S)
    x = torch.randn(2, H, W, DIM)
    with torch.no_grad():
        fast, _ = attn(x.reshape(2, H * W, DIM), (H, W))
        expected, _ = reference_bra(attn, x)
    torch.testing.assert_close(fast.reshape(2, H, W, DIM), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H,W,S,topk", CASES)
def test_shared_bra_reuses_routing_and_probabilities(H, W, S, topk, kernel):
    first, second = make_attention(topk, S), make_attention(topk, S, with_qk=False)
    x1, x2 = torch.randn(2, H, W, DIM), torch.randn(2, H, W, DIM)
    with torch.no_grad():
        _, state = first(x1.reshape(2, H * W, DIM), (H, W), keep=True)
        fast, _ = second(x2.reshape(2, H * W, DIM), (H, W), reuse=state)
        _, ref_state = reference_bra(first, x1)
        expected, _ = reference_bra(second, x2, reuse=ref_state)
    torch.testing.assert_close(fast.reshape(2, H, W, DIM), expected, atol=1e-5, rtol=1e-5)


def test_kept_probabilities_give_the_same_output_as_the_fused_path(kernel):
    attn = make_attention(2, 3)
    x = torch.randn(2, 7 * 6, DIM)
    with torch.no_grad():
        fused, none = attn(x, (7, 6))
        kept, state = attn(x, (7, 6), keep=True)
    assert none is None and state.route.shape == (2, 9, 2)
    torch.testing.assert_close(fused, kept, atol=1e-5, rtol=1e-5)


def test_one_region_top1_is_global_attention_plus_lce():
    q, k, v = (torch.randn(2, 5, 6, DIM) for _ in range(3))
    routed, _ = bra(q, k, v, HEADS, topk=1, regions=1)
    dense, _ = mhsa(q, k, v, HEADS)
    torch.testing.assert_close(routed, dense, atol=1e-6, rtol=1e-6)

    attn = make_attention(1, 1)  # at the module level the difference is exactly proj(LCE(V))
    x = torch.randn(2, 5, 6, DIM)
    with torch.no_grad():
        out, _ = attn(x.reshape(2, 30, DIM), (5, 6))
        v = attn.v(x)
        global_attn, _ = mhsa(attn.q(x), attn.k(x), v, HEADS)
        lce = attn.lce(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        expected = attn.proj((global_attn + lce).reshape(2, 30, DIM))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_auto_kernel_is_dense_only_when_routing_keeps_a_quarter_of_the_regions():
    q, k, v = (torch.randn(1, 4, 4, DIM) for _ in range(3))
    _, sparse = bra(q, k, v, HEADS, topk=1, regions=4, keep=True)  # 1 of 16 regions
    _, dense = bra(q, k, v, HEADS, topk=4, regions=4, keep=True)  # 4 of 16
    assert not sparse.dense and dense.dense
    with pytest.raises(ValueError, match="bra kernel 'fast'"):
        with bra_kernel("fast"):
            pass


def test_dense_and_gather_kernels_agree_on_gradients():
    attn = make_attention(4, 3)
    x = torch.randn(2, 7 * 8, DIM)
    grads = []
    for name in ("gather", "dense"):
        attn.zero_grad()
        with bra_kernel(name):
            out, _ = attn(x, (7, 8))
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in attn.parameters()]))
    # k's bias has a zero true gradient (softmax ignores a per-query constant): compare on the overall scale
    scale = grads[0].abs().max()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * scale, rtol=1e-4)


def test_routing_gets_no_gradient_but_attention_does(monkeypatch):
    """The routing is a non-differentiable choice (as BiFormer's): computing it from detached q and k changes no
    gradient, while q, k and v do get gradients through the attention itself."""
    import supernets.attention as attention

    attn = make_attention(2, 2)
    x = torch.randn(2, 16, DIM)

    def gradients():
        attn.zero_grad()
        inp = x.clone().requires_grad_()
        out, _ = attn(inp, (4, 4))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [inp.grad] + [p.grad.clone() for p in (attn.q.weight, attn.k.weight, attn.v.weight)]

    free = gradients()
    route = attention.route_regions
    monkeypatch.setattr(attention, "route_regions", lambda q, k, *a: route(q.detach(), k.detach(), *a))
    detached = gradients()
    assert all(g.abs().sum() > 0 for g in free[1:])  # q, k and v learn through the attention
    for g, h in zip(free, detached):
        assert torch.equal(g, h)
    q = torch.randn(1, 4, 4, DIM, requires_grad=True)
    assert route(q, q, 2, 2).grad_fn is None
