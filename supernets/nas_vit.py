"""The NAS-ViT network: blocks, model, builder, timm registration.

The blocks build their layers through an `Ops` factory. With `PLAIN_OPS` and a concrete arch they
make the standalone model that `nas export` ships; the supernet (`supernet.py`) builds the same blocks
with elastic ops at the largest size and switches them per arch. One forward code serves both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from search_spaces import Arch, SearchSpace, StageArch, load_arch, load_space
from search_spaces.space import STEM_STRIDES, stem_hidden
from search_spaces.operators import CELL_KINDS, CHANNEL_MIXERS, TOKEN_MIXERS, layer_mixers
from supernets.attention import AttentionState
from supernets.ops import PLAIN_OPS, Ops
from supernets.token_mixers import resolve


def tokens_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    B, N, C = x.shape
    return x.transpose(1, 2).reshape(B, C, *size)  # (B, C, H, W)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, H*W, C)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (timm's Mlp, but with the linear layer from the op factory): the `mlp` channel mixer.
    Channel mixers are built as (dim, num_heads, stage genes, ops)."""

    def __init__(self, dim: int, num_heads: int, genes: StageArch, ops: Ops):
        super().__init__()
        hidden = genes.mlp_hidden()
        self.fc1 = ops.linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = ops.linear(hidden, dim)

    def set_active(self, genes: StageArch, num_heads: int) -> None:  # the supernet's switch (its ops are elastic)
        self.fc1.set_active(genes.dim, genes.mlp_hidden())
        self.fc2.set_active(genes.mlp_hidden(), genes.dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Fan(nn.Module):
    """FAN's attentional channel processing (the `fan` channel mixer): the MLP's normed output, gated per channel
    by sigmoid(softmax_N(q)^T mean_d(softmax_N(x))) per head, q a linear map of the input without bias."""

    def __init__(self, dim: int, num_heads: int, genes: StageArch, ops: Ops):
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.linear(dim, dim, bias=False)
        self.mlp = Mlp(dim, num_heads, genes, ops)
        self.norm = ops.layer_norm(dim)

    def set_active(self, genes: StageArch, num_heads: int) -> None:
        self.num_heads = num_heads
        self.q.set_active(genes.dim, genes.dim)
        self.mlp.set_active(genes, num_heads)
        self.norm.set_active(genes.dim)

    def forward(self, x):  # (B, N, C)
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).view(B, N, h, C // h).softmax(dim=1).permute(0, 2, 3, 1)  # (B, h, d, N), over the tokens
        k = x.view(B, N, h, C // h).softmax(dim=1).mean(dim=3, keepdim=True).transpose(1, 2)  # (B, h, N, 1)
        gate = torch.sigmoid(q @ k).reshape(B, 1, C)  # (B, 1, C): a weight per channel
        return gate * self.norm(self.mlp(x))


class DWSepConv(nn.Module):
    """Depthwise 3x3 (stride) -> pointwise 1x1 -> norm -> Hardswish: MPViT's patch embedding."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, ops: Ops):
        super().__init__()
        self.dw = ops.dwconv(c_in, 3, stride)
        self.pw = ops.conv(c_in, c_out, 1)
        self.norm = ops.conv_norm(norm, c_out)
        self.act = nn.Hardswish()

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        return self.act(self.norm(self.pw(self.dw(x))))


@dataclass(frozen=True)
class Superset:
    """What the supernet's layers of one stage hold beyond one arch: the modules of every token mixer and channel
    mixer of the stage's choices, and per layer position of a cell whether it has q/k (a cell kind of the stage
    has a layer there with its own attention)."""

    token_mixers: tuple[str, ...]
    channel_mixers: tuple[str, ...]
    with_qk: tuple[bool, ...]


def mixer_genes(genes: StageArch, mixer: str) -> dict[str, object]:
    """The genes that token mixer `mixer` reads, as its kernel's keywords."""
    return {gene: getattr(genes, gene) for gene in TOKEN_MIXERS[mixer].genes}


class Attention(nn.Module):
    """q/k/v/output projections around the kernel of a registered token mixer, plus the module that mixer adds
    (BRA's LCE). `holds` names the mixers whose modules it builds (the supernet's: every mixer of the stage).

    `with_qk=False` builds the second layer of a `shared` cell, which reuses the first layer's attention.
    """

    def __init__(self, dim: int, num_heads: int, kind: str, genes: dict[str, object], ops: Ops,
                 with_qk: bool = True, holds: tuple[str, ...] | None = None, stage: StageArch | None = None):
        super().__init__()
        self.num_heads, self.kind, self.genes = num_heads, kind, genes
        self.q = ops.linear(dim, dim) if with_qk else None
        self.k = ops.linear(dim, dim) if with_qk else None
        self.v = ops.linear(dim, dim)
        for name in holds or (kind,):
            mixer = resolve(TOKEN_MIXERS[name].module)
            if mixer.local and mixer.local not in self._modules:
                self.add_module(mixer.local, mixer.build_local(dim, num_heads, stage, ops))
        self.proj = ops.linear(dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int], reuse: AttentionState | None = None,
                keep: bool = False) -> tuple[torch.Tensor, AttentionState | None]:
        B, N, C = x.shape
        x = x.view(B, *size, C)
        v = self.v(x)
        q, k = (None, None) if reuse is not None else (self.q(x), self.k(x))
        mixer = resolve(TOKEN_MIXERS[self.kind].module)
        out, state = mixer.kernel(q, k, v, self.num_heads, reuse=reuse, keep=keep, **self.genes)  # (B, H, W, C)
        if mixer.local:
            out = mixer.add_local(getattr(self, mixer.local), q, v, out)
        return self.proj(out.reshape(B, N, C)), state


class TransformerLayer(nn.Module):
    """Pre-norm layer: conditional position encoding (DW 3x3), token mixer, channel mixer; each residual.
    `drop_path` > 0 drops both branches per sample while training (stochastic depth, for retraining)."""

    def __init__(self, genes: StageArch, mixer: str, head_dim: int, ops: Ops, with_qk: bool = True,
                 drop_path: float = 0.0, superset: Superset | None = None):
        super().__init__()
        dim = genes.dim
        self.cpe = ops.dwconv(dim, 3, bias=True)
        self.norm1 = ops.layer_norm(dim)
        self.attn = Attention(dim, dim // head_dim, mixer, mixer_genes(genes, mixer), ops, with_qk,
                              superset.token_mixers if superset else None, genes)
        self.norm2 = ops.layer_norm(dim)
        self.channel_mixer = genes.mixer
        for name in superset.channel_mixers if superset else (genes.mixer,):  # an attribute by its name: `mlp`
            self.add_module(name, resolve(CHANNEL_MIXERS[name].module)(dim, dim // head_dim, genes, ops))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, size, reuse=None, keep=False):  # x: (B, N, C)
        x = x + map_to_tokens(self.cpe(tokens_to_map(x, size)))
        attn, state = self.attn(self.norm1(x), size, reuse, keep)
        x = x + self.drop_path(attn)
        return x + self.drop_path(getattr(self, self.channel_mixer)(self.norm2(x))), state


class Cell(nn.Module):
    """PSViT's cell, of a registered kind: its layers (layer_a, layer_b) in order, each with its token mixer, or
    reusing the previous layer's attention (`shared`); `skip` has none (identity)."""

    def __init__(self, kind: str, genes: StageArch, head_dim: int, ops: Ops, drop_paths: tuple[float, float] = (0, 0),
                 superset: Superset | None = None):
        super().__init__()
        self.plan = layer_mixers((kind,), genes.attn)  # (token mixer, with_qk) per layer
        if superset:
            built = [(superset.token_mixers[0], with_qk) for with_qk in superset.with_qk]
        else:
            built = self.plan
        layers = [TransformerLayer(genes, mixer, head_dim, ops, with_qk, rate, superset)
                  for (mixer, with_qk), rate in zip(built, drop_paths)]
        self.layer_a, self.layer_b = (layers + [None, None])[:2]

    def forward(self, x, size):  # (B, N, C) -> (B, N, C)
        state = None
        for i, (_, with_qk) in enumerate(self.plan):
            keep = i + 1 < len(self.plan) and not self.plan[i + 1][1]  # the next layer reuses this attention
            x, state = (self.layer_a, self.layer_b)[i](x, size, reuse=None if with_qk else state, keep=keep)
        return x


class ScalePath(nn.Module):
    """One MPViT path: its patch embedding, then its own stack of cells over the embedded tokens."""

    def __init__(self, c_in: int, stride: int, genes: StageArch, head_dim: int, norm: str, ops: Ops,
                 drop_paths: list[tuple[float, float]], superset: Superset | None = None):
        super().__init__()
        self.embed = DWSepConv(c_in, genes.dim, stride, norm, ops)
        self.cells = nn.ModuleList(Cell(kind, genes, head_dim, ops, rates, superset)
                                   for kind, rates in zip(genes.cells, drop_paths))

    def forward(self, x):  # (B, C_in, H, W) -> embedding e_j and path output g_j, both (B, C, H', W')
        e = self.embed(x)
        size = e.shape[-2:]
        t = map_to_tokens(e)
        for cell in self.cells:
            t = cell(t, size)
        return e, tokens_to_map(t, size)


class LocalConv(nn.Module):
    """MPViT's local branch on e_1: 1x1 -> DW 3x3 -> 1x1 with norms, plus the residual."""

    def __init__(self, dim: int, norm: str, ops: Ops):
        super().__init__()
        self.conv1, self.norm1 = ops.conv(dim, dim, 1), ops.conv_norm(norm, dim)
        self.dw, self.norm2 = ops.dwconv(dim, 3), ops.conv_norm(norm, dim)
        self.conv2, self.norm3 = ops.conv(dim, dim, 1), ops.conv_norm(norm, dim)
        self.act = nn.Hardswish()

    def forward(self, x):  # (B, C, H, W)
        y = self.act(self.norm1(self.conv1(x)))
        y = self.act(self.norm2(self.dw(y)))
        return x + self.norm3(self.conv2(y))


class Aggregate(nn.Module):
    """Global-to-local aggregation: Hardswish(norm(Conv1x1(concat[local, g_1 .. g_P])))."""

    def __init__(self, dim: int, blocks: int, norm: str, ops: Ops):
        super().__init__()
        self.conv = ops.concat_conv(dim, blocks, dim)
        self.norm = ops.conv_norm(norm, dim)
        self.act = nn.Hardswish()

    def forward(self, maps: list[torch.Tensor]):  # P + 1 maps (B, C, H, W) -> (B, C, H, W)
        return self.act(self.norm(self.conv(torch.cat(maps, dim=1))))


class Stage(nn.Module):
    """Token pooling + multi-scale embedding, `num_paths` paths, and their aggregation with the local branch.

    A single path is aggregated too (with the local branch, as MPViT would): then every arch's stage output is the
    same aggregation conv's output, of more or fewer blocks. Returning the path's tokens instead (the first design)
    made a 1-path stage's output a different function of the shared weights than a 2-path stage's, and uniform SPOS
    training stayed at chance (docs/search_quality.md)."""

    def __init__(self, c_in: int, genes: StageArch, head_dim: int, norm: str, ops: Ops,
                 drop_paths: list[tuple[float, float]] | None = None, superset: Superset | None = None):
        super().__init__()
        self.num_paths = genes.paths
        drop_paths = drop_paths or [(0.0, 0.0)] * len(genes.cells)
        self.paths = nn.ModuleList(
            ScalePath(c_in if j == 0 else genes.dim, genes.pool if j == 0 else 1, genes, head_dim, norm, ops,
                      drop_paths, superset)
            for j in range(genes.paths))
        self.local = LocalConv(genes.dim, norm, ops)
        self.aggregate = Aggregate(genes.dim, genes.paths + 1, norm, ops)

    def forward(self, x):  # (B, C_in, H, W) -> (B, C, H / pool, W / pool)
        e, outs = x, []
        for path in self.paths[:self.num_paths]:
            e, g = path(e)
            if not outs:
                e_1 = e
            outs.append(g)
        return self.aggregate([self.local(e_1), *outs])


class Stem(nn.Module):
    """conv3x3 to C/2 -> norm -> GELU -> conv3x3 to C -> norm, total stride = the space's stem_stride."""

    def __init__(self, in_chans: int, dim: int, stem_stride: int, norm: str, ops: Ops):
        super().__init__()
        s1, s2 = STEM_STRIDES[stem_stride]
        hidden = stem_hidden(dim)
        self.conv1, self.norm1 = ops.conv(in_chans, hidden, 3, s1), ops.conv_norm(norm, hidden)
        self.act = nn.GELU()
        self.conv2, self.norm2 = ops.conv(hidden, dim, 3, s2), ops.conv_norm(norm, dim)

    def forward(self, x):  # (B, 3, H, W) -> (B, C, H / stride, W / stride)
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class Head(nn.Module):
    """LayerNorm over channels -> global average pool -> Linear."""

    def __init__(self, dim: int, num_classes: int, ops: Ops):
        super().__init__()
        self.norm = ops.layer_norm(dim)
        self.fc = ops.linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x, pre_logits: bool = False):  # (B, C, H, W) -> (B, num_classes)
        x = self.norm(map_to_tokens(x)).mean(dim=1)
        return x if pre_logits else self.fc(x)


def init_linear(module: nn.Module) -> None:
    """timm's ViT initialisation of linear layers: weights trunc_normal(std 0.02), biases zero (PyTorch's default
    scales with the fan-in, which gives the wide layers of a supernet much smaller weights than the narrow ones).
    Convs and norms keep PyTorch's defaults, as in timm's ViTs."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class NasViT(nn.Module):
    """The network of one arch. Built with `PLAIN_OPS` (default) it is the standalone exported model.

    It follows timm's model interface: `forward_features` / `forward_head`, `get_classifier` / `reset_classifier`,
    `feature_info` (one entry per stage) and `forward_intermediates` / `prune_intermediate_layers`, which
    `timm.create_model("nas_vit", ..., features_only=True)` uses to return the stage maps of a backbone.
    """

    def __init__(self, arch: Arch, space: SearchSpace, num_classes: int | None = None, ops: Ops = PLAIN_OPS,
                 drop_path_rate: float = 0.0, supersets: tuple[Superset, ...] | None = None):
        super().__init__()
        self.arch, self.space = arch, space
        self.num_classes = space.num_classes if num_classes is None else num_classes
        first = arch.stages[0].dim
        self.stem = Stem(space.in_chans, first, space.stem_stride, space.conv_norm, ops)
        drop_paths = _drop_path_rates(arch, drop_path_rate)
        stages, c_in, reduction, self.feature_info = [], first, space.stem_stride, []
        for i, genes in enumerate(arch.stages):
            stages.append(Stage(c_in, genes, space.head_dim, space.conv_norm, ops, drop_paths[i],
                                supersets[i] if supersets else None))
            c_in, reduction = genes.dim, reduction * genes.pool
            self.feature_info.append(dict(num_chs=c_in, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.num_features = self.head_hidden_size = c_in
        self.head = Head(c_in, self.num_classes, ops)
        self.apply(init_linear)

    def forward_features(self, x):  # (B, 3, H, W) -> (B, C_4, H_4, W_4)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, randomly initialised classifier for `num_classes` (0: none, the model returns pooled features)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"nas_vit pools by the mean of its tokens; global_pool={global_pool!r} is not supported")
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.fc.apply(init_linear)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """The output maps of the stages in `indices` (None: all; an int n: the last n; negative counts from the
        end), each (B, C_i, H_i, W_i). `norm` applies the head's LayerNorm to the last stage's map. Returns the
        maps, or (final features, maps) unless `intermediates_only`; `stop_early` skips the stages after the last
        one taken."""
        if output_fmt != "NCHW":
            raise ValueError(f"nas_vit's intermediates are NCHW maps; output_fmt={output_fmt!r} is not supported")
        take = self._take_indices(indices)
        last = len(self.stages) - 1
        x, maps = self.stem(x), []
        for i, stage in enumerate(self.stages[:max(take) + 1] if stop_early or intermediates_only else self.stages):
            x = stage(x)
            if i in take:
                maps.append(self._norm_map(x) if norm and i == last else x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one in `indices` (and the head): what a features-only backbone keeps."""
        take = self._take_indices(indices)
        self.stages = self.stages[:max(take) + 1]
        self.feature_info = self.feature_info[:max(take) + 1]
        if prune_head:
            self.reset_classifier(0)
        if prune_norm:
            self.head.norm = nn.Identity()
        return take

    def _take_indices(self, indices) -> list[int]:
        count = len(self.stages)
        if indices is None:
            indices = count
        if isinstance(indices, int):
            if not 0 < indices <= count:
                raise ValueError(f"indices={indices}: take the last 1 to {count} stages")
            return list(range(count - indices, count))
        take = [i + count if i < 0 else i for i in indices]
        if not take or any(not 0 <= i < count for i in take):
            raise ValueError(f"indices={list(indices)}: stage indices are in [{-count}, {count - 1}]")
        return take

    def _norm_map(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) normed over C, as the head norms it
        return tokens_to_map(self.head.norm(map_to_tokens(x)), x.shape[-2:])


def _drop_path_rates(arch: Arch, rate: float) -> list[list[tuple[float, float]]]:
    """Stochastic depth's linear rule: the k-th of the arch's K sequential layers drops with rate * k / (K - 1).
    Per stage, per cell position, the rates of its first and second layer; the parallel paths of a stage share
    them (they run at the same depth). Skip cells count no layer."""
    layers = [(s, c) for s, genes in enumerate(arch.stages) for c, kind in enumerate(genes.cells)
              for _ in CELL_KINDS[kind].layers]
    depth = {}
    for k, key in enumerate(layers):
        depth.setdefault(key, []).append(rate * k / max(len(layers) - 1, 1))
    return [[tuple(depth.get((s, c), []) + [0.0, 0.0])[:2] for c in range(len(genes.cells))]
            for s, genes in enumerate(arch.stages)]


def resolve_arch(arch: Arch | str | Path, space: SearchSpace | str | None = None) -> tuple[Arch, SearchSpace]:
    """An arch given as an Arch or a YAML path, validated against its space (or `space`)."""
    if isinstance(arch, Arch):
        space = load_space(arch.space) if space is None else space
        space = load_space(space) if isinstance(space, str) else space
        return space.validate(arch), space
    return load_arch(arch, space)


def pretrained_cfg(space: SearchSpace, num_classes: int, meta: dict | None = None) -> dict:
    """timm's pretrained_cfg of a model of `space`: input size, classifier, first conv, and what an export's
    meta.json records (the mean and std its images were normalised with)."""
    cfg = dict(input_size=(space.in_chans, space.img_size, space.img_size), num_classes=num_classes,
               classifier="head.fc", first_conv="stem.conv1", crop_pct=1.0, interpolation="bilinear")
    recorded = (meta or {}).get("pretrained_cfg", {})
    return {**cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}}  # JSON has no tuples
