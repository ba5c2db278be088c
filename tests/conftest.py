"""Shared fixtures: tiny custom spaces small enough to enumerate every genome, and their brute-force archs."""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from search_spaces import Arch, SearchSpace, load_space

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers share the machine's cores: one torch thread each (and in their child processes), since OpenMP
    # threads of two workers competing for 2 cores ran a training test 6x slower than alone.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

# tiny-32's genes on a 16x16 input at about a tenth of its MACs: for tests of the search, the pipeline and the
# training loop, where what is tested does not depend on the model's size but the time does.
TINY16 = str(Path(__file__).parent / "spaces" / "tiny-16.yaml")

# Both: 12x12 input, stem stride 4 -> a 3x3 map before stage 1; pooling takes it to 2x2 and 1x1, so the BRA
# constraints (regions <= side, topk <= regions^2) and BRA's padding (side 3, S = 2) all occur.
TINY_SPACES = {
    # 1 cell per stage, 2 choices on 16 genes (65536 genomes); overlapping dims exercise "dim never
    # shrinks", `skip` and `mhsa` choices exercise the canonical form.
    "tiny-enum": """\
name: tiny-enum
img_size: 12
in_chans: 3
num_classes: 5
head_dim: 16
stem_stride: 4
stages:
  - {pool: [1, 2], dim: [16, 32], paths: [1], max_cells: 1, cells: [layer, skip],
     attn: [mhsa, bra], topk: [1, 2], regions: [1, 2], mlp_ratio: [2]}
  - {pool: [1, 2], dim: [32], paths: [1, 2], max_cells: 1, cells: [shared, skip],
     attn: [bra], topk: [1], regions: [1, 2], mlp_ratio: [2, 4]}
  - {pool: [1], dim: [32, 48], paths: [1], max_cells: 1, cells: [layer, shared],
     attn: [mhsa], topk: [1], regions: [1], mlp_ratio: [2]}
  - {pool: [1], dim: [32, 48], paths: [3], max_cells: 1, cells: [skip, layer],
     attn: [mhsa, bra], topk: [1], regions: [1], mlp_ratio: [2]}
""",
    # Several cells per stage (all three kinds), a stage that can only skip, and no stage-1 pooling choice.
    "tiny-cells": """\
name: tiny-cells
img_size: 12
num_classes: 3
head_dim: 16
stem_stride: 4
conv_norm: bn
stages:
  - {pool: [1], dim: [16], paths: [1], max_cells: 3, cells: [layer, shared, skip],
     attn: [mhsa, bra], topk: [1, 4], regions: [1, 2], mlp_ratio: [2]}
  - {pool: [1, 2], dim: [16, 32], paths: [2], max_cells: 2, cells: [layer, skip],
     attn: [bra], topk: [1], regions: [1, 2], mlp_ratio: [2]}
  - {pool: [1], dim: [32], paths: [1], max_cells: 1, cells: [skip], attn: [mhsa], mlp_ratio: [2]}
  - {pool: [1], dim: [32, 48], paths: [1], max_cells: 2, cells: [shared, layer],
     attn: [mhsa], mlp_ratio: [2]}
""",
}


def enumerate_archs(space: SearchSpace) -> set[Arch]:
    """Every distinct canonical valid arch of `space`, by decoding every genome (brute force)."""
    sizes = [len(c) for c in space.genome_choices]
    assert math.prod(sizes) <= 2 ** 17, "space too large to enumerate in a unit test"
    archs = {space.decode(g) for g in itertools.product(*map(range, sizes))}
    return {a for a in archs if space.contains(a)}


@pytest.fixture(scope="session")
def tiny_space_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spaces")
    for name, text in TINY_SPACES.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.fixture(scope="session")
def tiny_space(tiny_space_dir) -> SearchSpace:
    """The 1-cell tiny space, loaded from its YAML path."""
    return load_space(str(tiny_space_dir / "tiny-enum.yaml"))


@pytest.fixture(scope="session", params=list(TINY_SPACES))
def enumerated_space(request, tiny_space_dir) -> tuple[SearchSpace, set[Arch]]:
    """Each tiny space with all its archs (computed once per session)."""
    space = load_space(str(tiny_space_dir / f"{request.param}.yaml"))
    return space, enumerate_archs(space)


@pytest.fixture
def tiny32_ln(tmp_path) -> Path:
    """tiny-32 with LayerNorm in its conv parts, as a space file. DDP tests need it: with BatchNorm (tiny-32's
    choice) each rank normalises with its own batch's statistics, so 2 processes differ from 1 by design."""
    text = (Path(__file__).parents[1] / "search_spaces" / "spaces" / "tiny-32.yaml").read_text()
    path = tmp_path / "tiny-32-ln.yaml"
    path.write_text(text.replace("conv_norm: bn", "conv_norm: ln").replace("name: tiny-32", "name: tiny-32-ln"))
    return path


@pytest.fixture
def write_yaml():
    """write_yaml(path, data) -> path: `data` dumped as YAML, or written as is when it is a string."""
    def write(path: Path, data: object) -> Path:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path
    return write
