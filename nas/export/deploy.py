"""The standalone model in the formats people deploy with: ONNX (checked with onnxruntime) and a saved
`torch.export` program (checked by loading it back). Each file is verified against the PyTorch output before it
counts as written: a format that computes something else is an error, not a file.

Both go through torch.export's graph capture (ONNX through torch's dynamo exporter), which handles BRA's top-k
routing and gathers; the batch dimension stays dynamic.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import torch

from nas.atomic_files import atomic_path
from nas.options import DEPLOY_FORMATS
from supernets.nas_vit import NasViT

FORMATS = DEPLOY_FORMATS
FORMAT_FILES = {"onnx": "model.onnx", "torch-export": "model.pt2"}
ATOL = 1e-4  # float32 kernels of another runtime differ from PyTorch's in the last bits (measured: ~1e-6)


def check_formats(formats: tuple[str, ...]) -> None:
    """Before any work: ValueError for an unknown format, or one whose packages are not installed."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r}: choose from {list(FORMATS)}")
    if "onnx" in formats:
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"--format onnx needs {', '.join(missing)}: pip install 'vit-nas[deploy]'")


def example_images(model: NasViT, batch: int, seed: int = 0) -> torch.Tensor:  # (batch, C, H, W)
    space = model.space
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, space.in_chans, space.img_size, space.img_size, generator=generator)


def exported_program(model: NasViT) -> torch.export.ExportedProgram:
    """`torch.export` of the model in eval mode, with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model.eval(), (example_images(model, 2),), dynamic_shapes=({0: batch},))


def write_format(model: NasViT, fmt: str, path: str | Path) -> float:
    """Write the model as `fmt` at `path` (atomically) and return the largest absolute difference of its output
    from PyTorch's on 3 random images (another batch size than the one exported with); ValueError above ATOL."""
    check_formats((fmt,))
    path = Path(path)
    program = exported_program(model)
    with atomic_path(path) as tmp:
        if fmt == "onnx":
            _save_onnx(program, tmp)
        else:
            torch.export.save(program, tmp)
        difference = _difference(model, fmt, tmp)
        if difference > ATOL:
            raise ValueError(f"the {fmt} model computes another function: its output differs from PyTorch's by "
                             f"{difference:.2e} (more than {ATOL:g}); nothing written")
    return difference


def _save_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["images"], output_names=["logits"],
                                         verbose=False)
    onnx_program.save(str(path))


def _difference(model: NasViT, fmt: str, path: Path) -> float:
    images = example_images(model, 3, seed=1)
    with torch.no_grad():
        expected = model.eval()(images)
    if fmt == "onnx":
        import onnxruntime  # optional: pip install -e ".[deploy]"

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    else:
        with torch.no_grad():
            got = torch.export.load(path).module()(images)
    return float((got - expected).abs().max())
