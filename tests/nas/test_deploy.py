"""Deployable formats of the standalone model: ONNX (run by onnxruntime), a saved torch.export program,
torch.jit.trace and torch.compile, each equal to the PyTorch output, for archs with BRA stages included."""
import pytest
import torch

from nas.export.deploy import ATOL, FORMAT_FILES, example_images, write_format
from search_spaces import Arch, StageArch, load_space
from supernets.nas_vit import NasViT


@pytest.fixture(scope="module")
def models():
    """A small tiny-32 arch with both BRA kernels: gathered routing on a padded map (S = 3 on 8x8, in a shared cell
    whose second layer reuses the routing) and dense masked routing (S = 2, topk 2)."""
    space = load_space("tiny-32")
    stage = dict(dim=32, paths=1, mlp_ratio=2.0)
    arch = space.validate(Arch("tiny-32", (
        StageArch(pool=1, cells=("shared",), attn="bra", topk=1, regions=3, **stage),
        StageArch(pool=2, cells=("layer",), attn="bra", topk=2, regions=2, **stage),
        StageArch(pool=1, dim=48, paths=1, cells=("skip", "skip"), attn=None, topk=None, regions=None, mlp_ratio=None),
        StageArch(pool=2, cells=("layer",), attn="mhsa", topk=None, regions=None, **{**stage, "dim": 64}))))
    torch.manual_seed(0)
    return [NasViT(arch, space).eval()]


def test_torch_export_program_computes_what_pytorch_computes(tmp_path, models):
    """(ONNX goes through the same torch.export capture; it is tested through `nas export --format onnx`.)"""
    model = models[0]
    path = tmp_path / FORMAT_FILES["torch-export"]
    difference = write_format(model, "torch-export", path)
    assert path.is_file() and difference <= ATOL
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left beside it
    program = torch.export.load(path)  # loaded again, at another batch size than the one it was traced with
    images = example_images(model, 5, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), model(images), atol=ATOL, rtol=0)


def test_unknown_format_is_refused(tmp_path, models):
    with pytest.raises(ValueError, match=r"--format 'tflite': choose from \['onnx', 'torch-export'\]"):
        write_format(models[0], "tflite", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_jit_trace_and_torch_compile_match_eager(models):
    images = example_images(models[0], 4, seed=3)
    with torch.no_grad():
        for model in models:
            expected = model(images)
            traced = torch.jit.trace(model, example_images(model, 2))  # the dense routing once failed to trace
            torch.testing.assert_close(traced(images), expected, atol=1e-5, rtol=0)
        compiled = torch.compile(models[0], dynamic=False)
        torch.testing.assert_close(compiled(images), models[0](images), atol=1e-4, rtol=0)
