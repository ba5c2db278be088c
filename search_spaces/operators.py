"""The operator registry: one spec per token mixer (attention kind), per cell kind and per channel mixer.

A spec says which stage genes the operator reads (the others canonicalise to None), its rule on a stage,
its analytic MACs and params, and where its network module lives ("package.module:NAME", imported only
where a network is built, so validation and the cost model stay free of torch). The canonical form,
validation, counting, the cost model and its extremes, `NasViT` and `Supernet` all read these tables:
adding a kind is its module plus one `register` call (tests/supernets/test_registry.py registers a toy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from search_spaces.macs import Cost, add, dwconv, linear, norm

if TYPE_CHECKING:
    from search_spaces.arch import StageArch

# The genes a token mixer may read besides dim, and those of a channel mixer: a stage's optional genes.
TOKEN_GENES = ("topk", "regions", "window")
CHANNEL_GENES = ("mlp_ratio",)
ATTN, REUSE = "attn", "reuse"  # roles of a cell's layer besides a fixed token mixer's name


@dataclass(frozen=True)
class TokenMixer:
    name: str
    genes: tuple[str, ...]  # of TOKEN_GENES
    check: Callable[[StageArch, int], str | None]  # on a stage with this map side: the broken rule, or None
    cost: Callable[[int, StageArch, bool, int], Cost]  # (side, stage, with_qk, head_dim): its whole attention block
    module: str  # its `supernets.token_mixers.MixerModule`
    reusable: bool = True  # keeps a state that the second layer of a `shared` cell can reuse


@dataclass(frozen=True)
class CellKind:
    """`layers` holds a role per transformer layer (at most 2): ATTN (the stage's token mixer, `attn`), REUSE
    (the previous layer's attention, without q/k) or a token mixer's name (that mixer, whatever `attn` is)."""

    name: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class ChannelMixer:
    name: str
    genes: tuple[str, ...]  # of CHANNEL_GENES
    cost: Callable[[int, StageArch], Cost]  # (side, stage)
    module: str  # "package.module:CLASS": CLASS(dim, num_heads, stage, ops), switched by set_active(stage, num_heads)


TOKEN_MIXERS: dict[str, TokenMixer] = {}
CELL_KINDS: dict[str, CellKind] = {}
CHANNEL_MIXERS: dict[str, ChannelMixer] = {}
_TABLES = {TokenMixer: TOKEN_MIXERS, CellKind: CELL_KINDS, ChannelMixer: CHANNEL_MIXERS}


def register(spec: TokenMixer | CellKind | ChannelMixer) -> None:
    """Add an operator; its name must be new. A space may then list it among a gene's choices."""
    table = _TABLES[type(spec)]
    if spec.name in table:
        raise ValueError(f"{type(spec).__name__} {spec.name!r} is already registered")
    if isinstance(spec, CellKind) and (len(spec.layers) > 2 or spec.layers[:1] == (REUSE,)):
        raise ValueError(f"cell kind {spec.name!r}: layers {spec.layers}; allowed: at most 2, the first not {REUSE!r}")
    table[spec.name] = spec


def unregister(spec: TokenMixer | CellKind | ChannelMixer) -> None:
    del _TABLES[type(spec)][spec.name]


def roles(cell: str) -> tuple[str, ...]:
    """The layer roles of a cell kind; an unknown kind (not validated yet) counts as one layer of `attn`."""
    return CELL_KINDS[cell].layers if cell in CELL_KINDS else (ATTN,)


def layer_mixers(cells: tuple[str, ...], attn: str | None) -> list[tuple[str, bool]]:
    """(token mixer, with_qk) of every transformer layer of these cells, in order."""
    layers = []
    for cell in cells:
        previous = None
        for role in roles(cell):
            mixer = attn if role == ATTN else previous if role == REUSE else role
            layers.append((mixer, role != REUSE))
            previous = mixer
    return layers


def live_genes(cells: tuple[str, ...], attn: str | None, mixer: str | None) -> set[str]:
    """The optional genes that change the network of a stage with these cells (`attn` if a cell reads it)."""
    used = {role for cell in cells for role in roles(cell)}
    if not used:
        return set()
    live = {"mixer", *CHANNEL_MIXERS[mixer].genes} if mixer in CHANNEL_MIXERS else {"mixer", *CHANNEL_GENES}
    if ATTN in used:
        live.add("attn")
    for name in {m for m, _ in layer_mixers(cells, attn)}:
        live.update(TOKEN_MIXERS[name].genes if name in TOKEN_MIXERS else TOKEN_GENES)
    return live


# ---- the built-in operators ---------------------------------------------------------------------

def _regions_rule(stage: StageArch, side: int) -> str | None:
    if stage.regions > side:
        return (f"gene 'regions' = {stage.regions} exceeds the stage's token map side {side}; "
                f"allowed: regions <= {side}")
    if stage.topk > stage.regions ** 2:
        return f"gene 'topk' = {stage.topk} exceeds regions^2 = {stage.regions ** 2}"
    return None


def _projections(n: int, dim: int, with_qk: bool) -> Cost:
    """q, k (unless reused), v and the output projection."""
    return add(*[linear(n, dim, dim)] * (4 if with_qk else 2))


def _mhsa_cost(side: int, stage: StageArch, with_qk: bool, head_dim: int) -> Cost:
    n, dim = side * side, stage.dim
    return add(_projections(n, dim, with_qk), ((2 if with_qk else 1) * n * n * dim, 0))  # QK^T and AV


def _bra_cost(side: int, stage: StageArch, with_qk: bool, head_dim: int) -> Cost:
    """BiFormer's nominal count: projections and LCE on the map, routing of the region means, and attention of
    every position of the map zero-padded to a multiple of S over the topk * n tokens of its routed regions."""
    n, dim, regions = side * side, stage.dim, stage.regions
    padded = (-(-side // regions) * regions) ** 2
    gathered = stage.topk * padded // (regions * regions)
    attention = (2 * padded * gathered * dim + regions ** 4 * dim, 0) if with_qk else (padded * gathered * dim, 0)
    return add(_projections(n, dim, with_qk), dwconv(side, dim, 5, bias=True), attention)


def _window_rule(stage: StageArch, side: int) -> str | None:
    if stage.window > side:
        return (f"gene 'window' = {stage.window} exceeds the stage's token map side {side}; "
                f"allowed: window <= {side}")
    return None


def _ipsa_cost(side: int, stage: StageArch, with_qk: bool, head_dim: int) -> Cost:
    """Attention inside every window of the map zero-padded to a multiple of the window (padded keys masked)."""
    padded = (-(-side // stage.window) * stage.window) ** 2
    per_token = stage.window ** 2 * stage.dim
    return add(_projections(side * side, stage.dim, with_qk), ((2 if with_qk else 1) * padded * per_token, 0))


def _cpsa_cost(side: int, stage: StageArch, with_qk: bool, head_dim: int) -> Cost:
    """Per channel, every patch against every patch, a patch being window^2 positions of the padded map."""
    padded = (-(-side // stage.window) * stage.window) ** 2
    patches = padded // stage.window ** 2
    return add(_projections(side * side, stage.dim, with_qk), ((2 if with_qk else 1) * stage.dim * patches * padded, 0))


def _factorized_cost(side: int, stage: StageArch, with_qk: bool, head_dim: int) -> Cost:
    """K^T V and Q (K^T V): each N * C * head_dim; CRPE a depthwise 3x3 on V."""
    n, dim = side * side, stage.dim
    return add(_projections(n, dim, True), (2 * n * dim * head_dim, 0), dwconv(side, dim, 3, bias=True))


def _mlp_cost(side: int, stage: StageArch) -> Cost:
    n, hidden = side * side, stage.mlp_hidden()
    return add(linear(n, stage.dim, hidden), linear(n, hidden, stage.dim))


register(TokenMixer("mhsa", (), lambda stage, side: None, _mhsa_cost, "supernets.token_mixers:MHSA"))
register(TokenMixer("bra", ("topk", "regions"), _regions_rule, _bra_cost, "supernets.token_mixers:BRA"))
register(TokenMixer("factorized", (), lambda stage, side: None, _factorized_cost,
                    "supernets.token_mixers:FACTORIZED", reusable=False))
register(TokenMixer("ipsa", ("window",), _window_rule, _ipsa_cost, "supernets.token_mixers:IPSA"))
register(TokenMixer("cpsa", ("window",), _window_rule, _cpsa_cost, "supernets.token_mixers:CPSA"))
register(CellKind("layer", (ATTN,)))
register(CellKind("shared", (ATTN, REUSE)))
register(CellKind("skip", ()))
register(CellKind("cross", ("ipsa", "cpsa")))  # CAT's block: inner-patch, then cross-patch attention
def _fan_cost(side: int, stage: StageArch) -> Cost:
    """q (no bias), the per-head gate softmax(q)^T pooled softmax(x) (N * C), the MLP and its norm."""
    n, dim = side * side, stage.dim
    return add(linear(n, dim, dim, bias=False), (n * dim, 0), _mlp_cost(side, stage), norm(dim))


register(ChannelMixer("mlp", ("mlp_ratio",), _mlp_cost, "supernets.nas_vit:Mlp"))
register(ChannelMixer("fan", ("mlp_ratio",), _fan_cost, "supernets.nas_vit:Fan"))
