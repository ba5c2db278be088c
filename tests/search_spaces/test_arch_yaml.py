"""Arch YAML round-trip and the canonical hash (docs/design.md section 2)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from search_spaces import Arch, builtin_spaces, load_arch, load_space

REPO = Path(__file__).resolve().parents[2]


def _stage_where(space, pred, seed: int = 0) -> tuple[Arch, int]:
    """A sampled arch of `space` and the index of a stage satisfying `pred`."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        arch = space.sample(rng)
        for i, stage in enumerate(arch.stages):
            if pred(stage):
                return arch, i
    raise AssertionError("no sampled arch has such a stage")


def test_builtin_spaces_are_found():
    assert {"tiny-32", "unified-224"} <= set(builtin_spaces())


@pytest.mark.parametrize("name", ["tiny-32", "unified-224"])
def test_yaml_round_trip(name, tmp_path):
    space = load_space(name)
    rng = np.random.default_rng(0)
    for i in range(50):
        arch = space.sample(rng)
        path = tmp_path / f"a{i}.yaml"
        arch.save(path)
        loaded, loaded_space = load_arch(path)
        assert loaded == arch
        assert loaded.hash == arch.hash
        assert loaded_space is space  # the arch names its space; nothing else is needed to load it
        assert yaml.safe_load(arch.to_yaml()) == arch.to_dict()


def test_round_trip_with_a_space_given_by_path(tiny_space, tmp_path):
    arch = tiny_space.sample(np.random.default_rng(1))
    assert arch.space == tiny_space.ref
    arch.save(tmp_path / "a.yaml")
    loaded, space = load_arch(tmp_path / "a.yaml")
    assert loaded == arch and loaded.hash == arch.hash and space.hash == tiny_space.hash


def test_mhsa_stage_ignores_topk_and_regions(tmp_path, write_yaml):
    space = load_space("tiny-32")
    arch, i = _stage_where(space, lambda s: s.has_layers and s.attn == "mhsa")
    data = arch.to_dict()
    assert data["stages"][i]["topk"] is None and data["stages"][i]["regions"] is None
    data["stages"][i].update(topk=4, regions=4)  # any values, even ones that would be invalid for bra
    loaded, _ = load_arch(write_yaml(tmp_path / "a.yaml", data))
    assert loaded == arch and loaded.hash == arch.hash
    assert loaded.stages[i].topk is None and loaded.stages[i].regions is None


def test_all_skip_stage_ignores_attention_genes(tmp_path, write_yaml):
    space = load_space("tiny-32")
    arch, i = _stage_where(space, lambda s: not s.has_layers)
    data = arch.to_dict()
    data["stages"][i].update(attn="bra", topk=2, regions=2, mlp_ratio=4)
    loaded, _ = load_arch(write_yaml(tmp_path / "a.yaml", data))
    assert loaded == arch and loaded.hash == arch.hash
    # the same stage with the optional genes left out entirely
    for gene in ("attn", "topk", "regions", "mlp_ratio"):
        del data["stages"][i][gene]
    loaded, _ = load_arch(write_yaml(tmp_path / "b.yaml", data))
    assert loaded == arch and loaded.hash == arch.hash


def test_non_canonical_arch_hashes_like_its_canonical_form():
    space = load_space("tiny-32")
    arch, i = _stage_where(space, lambda s: s.has_layers and s.attn == "mhsa")
    stages = list(arch.stages)
    s = stages[i]
    stages[i] = type(s)(s.pool, s.dim, s.paths, s.cells, "mhsa", 2, 2, s.mlp_ratio)
    raw = Arch(arch.space, tuple(stages))
    assert raw != arch and raw.canonical() == arch and raw.hash == arch.hash


def test_integer_mlp_ratio_in_yaml_loads_as_float(tmp_path, write_yaml):
    space = load_space("tiny-32")
    arch, i = _stage_where(space, lambda s: s.has_layers)
    data = arch.to_dict()
    data["stages"][i]["mlp_ratio"] = int(data["stages"][i]["mlp_ratio"])
    loaded, _ = load_arch(write_yaml(tmp_path / "a.yaml", data))
    assert loaded == arch and loaded.hash == arch.hash


@pytest.mark.parametrize("name", ["tiny-32", "unified-224"])
def test_different_archs_have_different_hashes(name):
    space = load_space(name)
    rng = np.random.default_rng(2)
    archs = {space.sample(rng) for _ in range(500)}
    assert len(archs) > 450
    assert len({a.hash for a in archs}) == len(archs)


def test_single_gene_changes_change_the_hash():
    space = load_space("tiny-32")
    arch = space.sample(np.random.default_rng(3))
    genome = space.encode(arch)
    seen = {arch.hash}
    for pos, choices in enumerate(space.genome_choices):
        for value in range(len(choices)):
            other = space.decode(genome[:pos] + [value] + genome[pos + 1:])
            if other != arch:
                assert other.hash != arch.hash
                seen.add(other.hash)
    assert len(seen) > 10


def test_hash_is_stable_across_processes(tmp_path):
    rng = np.random.default_rng(4)
    archs = [load_space(name).sample(rng) for name in ("tiny-32", "unified-224") for _ in range(3)]
    paths = []
    for i, arch in enumerate(archs):
        paths.append(str(tmp_path / f"a{i}.yaml"))
        arch.save(paths[-1])
    code = ("import sys\nfrom search_spaces import load_arch\n"
            "for p in sys.argv[1:]:\n    print(load_arch(p)[0].hash)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}  # a different str hash seed
    out = subprocess.run([sys.executable, "-c", code, *paths], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.split() == [a.hash for a in archs]


def test_validate_normalises_gene_types():
    space = load_space("tiny-32")
    arch, i = _stage_where(space, lambda s: s.has_layers)
    stages = list(arch.stages)
    s = stages[i]
    stages[i] = type(s)(s.pool, s.dim, s.paths, list(s.cells), s.attn, s.topk, s.regions, int(s.mlp_ratio))
    other = space.validate(Arch(arch.space, tuple(stages)))
    assert other == arch
    assert other.hash == arch.hash
    stages[i] = type(s)(float(s.pool), s.dim, s.paths, s.cells, s.attn, s.topk, s.regions, s.mlp_ratio)
    with pytest.raises(ValueError, match=r"gene 'pool' = 2?[12]\.0 is not allowed"):  # integer genes stay integers
        space.validate(Arch(arch.space, tuple(stages)))
