"""The weight-sharing supernet: the NAS-ViT blocks at their largest size, built from elastic ops.

`set_active(arch)` switches every elastic op to the arch's slice and every block to the arch's
structure (paths, cell kinds, token and channel mixers); `forward` is the blocks' own. `export(arch)` builds the
standalone `NasViT` of the arch with plain ops and copies the active weights into it.
"""
from __future__ import annotations

import torch

from search_spaces import Arch, SearchSpace, StageArch, StageChoices
from search_spaces.operators import TOKEN_MIXERS, layer_mixers
from search_spaces.space import STEM_STRIDES, stem_hidden
from supernets.elastic_ops import ELASTIC_OPS, Elastic
from supernets.nas_vit import DWSepConv, NasViT, Stage, Superset, TransformerLayer, mixer_genes
from supernets.token_mixers import resolve


def largest_arch(space: SearchSpace) -> Arch:
    """A superset of every arch of the space in sizes: widest dims, all paths, the largest window and mlp_ratio.
    Its kinds are placeholders (the stage supersets decide which modules exist); it need not be in the space."""
    stages = tuple(
        StageArch(pool=1, dim=max(c.dim), paths=max(c.paths), cells=(c.cells[0],) * c.max_cells, attn=c.attn[0],
                  topk=1, regions=1, mlp_ratio=max(c.mlp_ratio), window=max(c.window), mixer=c.mixer[0])
        for c in space.stages)
    return Arch(space.ref or space.name, stages)


def stage_superset(choices: StageChoices) -> Superset:
    """The modules a supernet stage holds: those of every token mixer its cells can run (the `attn` choices and
    the cells' fixed mixers) and every channel mixer, and q/k at a layer position where some cell kind attends
    anew (not at the second layer of `shared`, which reuses the first's attention)."""
    plans = [layer_mixers((cell,), attn) for cell in choices.cells for attn in choices.attn]
    token_mixers = tuple(dict.fromkeys(mixer for plan in plans for mixer, _ in plan)) or choices.attn[:1]
    depth = max(len(plan) for plan in plans)
    with_qk = tuple(any(len(plan) > i and plan[i][1] for plan in plans) for i in range(depth))
    return Superset(token_mixers, choices.mixer, with_qk)


class Supernet(NasViT):
    def __init__(self, space: SearchSpace, num_classes: int | None = None):
        super().__init__(largest_arch(space), space, num_classes, ops=ELASTIC_OPS,
                         supersets=tuple(stage_superset(c) for c in space.stages))
        self.active_arch: Arch | None = None

    def forward(self, x, arch: Arch | None = None):
        if arch is not None:
            self.set_active(arch)
        if self.active_arch is None:
            raise RuntimeError("Supernet.forward needs an arch: call set_active(arch) or pass arch=")
        return super().forward(x)

    # ---- switching to an arch ----------------------------------------------------------------

    def set_active(self, arch: Arch) -> None:
        """Switch to `arch` (validated against the space). Cheap: only sizes and flags change."""
        arch = self.space.validate(arch)
        if arch == self.active_arch:
            return
        space = self.space
        first = arch.stages[0].dim
        hidden = stem_hidden(first)
        self.stem.conv1.set_active(space.in_chans, hidden, STEM_STRIDES[space.stem_stride][0])
        self.stem.norm1.set_active(hidden)
        self.stem.conv2.set_active(hidden, first, STEM_STRIDES[space.stem_stride][1])
        self.stem.norm2.set_active(first)
        c_in = first
        for stage, genes in zip(self.stages, arch.stages):
            _activate_stage(stage, c_in, genes, space.head_dim)
            c_in = genes.dim
        self.head.norm.set_active(c_in)
        self.head.fc.set_active(c_in, self.num_classes)
        self.active_arch = arch

    # ---- export ------------------------------------------------------------------------------

    def export(self, arch: Arch) -> NasViT:
        """The standalone model of `arch`: plain modules, its own copy of the active weights."""
        self.set_active(arch)
        model = NasViT(self.active_arch, self.space, self.num_classes)
        model.load_state_dict(self.active_state_dict(model.state_dict().keys()))
        return model.train(self.training)

    def active_state_dict(self, keys) -> dict[str, torch.Tensor]:
        """The active slice of every weight named in `keys` (state-dict names of the standalone model)."""
        owners = {name: module for name, module in self.named_modules() if isinstance(module, Elastic)}
        state = {}
        for key in keys:
            owner, _, leaf = key.rpartition(".")
            state[key] = owners[owner].active_weights()[leaf].detach().clone()
        return state


def _activate_stage(stage: Stage, c_in: int, genes: StageArch, head_dim: int) -> None:
    dim = genes.dim
    stage.num_paths = genes.paths
    for j, path in enumerate(stage.paths[:genes.paths]):
        _activate_dwsep(path.embed, c_in if j == 0 else dim, dim, genes.pool if j == 0 else 1)
        for cell, kind in zip(path.cells, genes.cells):
            cell.plan = layer_mixers((kind,), genes.attn)
            for layer, (mixer, _) in zip((cell.layer_a, cell.layer_b), cell.plan):
                _activate_layer(layer, genes, mixer, head_dim)
    local = stage.local
    local.conv1.set_active(dim, dim), local.norm1.set_active(dim)
    local.dw.set_active(dim), local.norm2.set_active(dim)
    local.conv2.set_active(dim, dim), local.norm3.set_active(dim)
    stage.aggregate.conv.set_active(dim, genes.paths + 1, dim)
    stage.aggregate.norm.set_active(dim)


def _activate_dwsep(block: DWSepConv, c_in: int, c_out: int, stride: int) -> None:
    block.dw.set_active(c_in, stride)
    block.pw.set_active(c_in, c_out)
    block.norm.set_active(c_out)


def _activate_layer(layer: TransformerLayer, genes: StageArch, mixer: str, head_dim: int) -> None:
    dim = genes.dim
    layer.cpe.set_active(dim)
    layer.norm1.set_active(dim)
    layer.norm2.set_active(dim)
    attn = layer.attn
    attn.num_heads, attn.kind, attn.genes = dim // head_dim, mixer, mixer_genes(genes, mixer)
    for proj in (attn.q, attn.k, attn.v, attn.proj):
        if proj is not None:
            proj.set_active(dim, dim)
    local = resolve(TOKEN_MIXERS[mixer].module).local
    if local:
        getattr(attn, local).set_active(dim)
    layer.channel_mixer = genes.mixer
    getattr(layer, genes.mixer).set_active(genes, dim // head_dim)
