"""The folder `nas export` writes, and reading it back: a standalone model that needs nothing of the supernet.

    DIR/arch.yaml           the arch (names its space)
    DIR/model.safetensors   the NasViT state dict (inherited or retrained weights)
    DIR/meta.json           space name and hash, checkpoint hash, MACs, params, classes, inherited accuracy, ...

The folder is written as a whole (`nas.atomic_files.atomic_folder`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from nas.atomic_files import atomic_folder
from search_spaces import Arch, SearchSpace, load_arch
from supernets.nas_vit import NasViT

ARCH_FILE, WEIGHTS_FILE, META_FILE = "arch.yaml", "model.safetensors", "meta.json"


@dataclass
class ExportedModel:
    model: NasViT
    arch: Arch
    space: SearchSpace
    meta: dict
    folder: Path


def write_exported(folder: str | Path, model: NasViT, meta: dict) -> None:
    """Write the folder with its three files, replacing the folder at `folder` (if any) as a whole: a crash leaves
    the old folder or the new one."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = save(state, metadata={"arch_hash": model.arch.hash})
    with atomic_folder(folder) as tmp:
        (tmp / ARCH_FILE).write_bytes(model.arch.to_yaml().encode())
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_exported(folder: str | Path) -> ExportedModel:
    """The model of an export folder with its weights; ValueError naming the folder and the missing or bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"export folder {str(folder)!r} does not exist")
    for name in (ARCH_FILE, WEIGHTS_FILE, META_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"export folder {str(folder)!r} has no {name} (written by 'nas export')")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(folder / META_FILE)!r} is not valid JSON: {exc}") from None
    arch, space = load_arch(folder / ARCH_FILE)
    model = NasViT(arch, space, meta.get("num_classes"))
    try:
        state = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{str(folder / WEIGHTS_FILE)!r} is not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise ValueError(f"{str(folder / WEIGHTS_FILE)!r} does not hold the weights of {ARCH_FILE} "
                         f"({str(exc).splitlines()[0]} ...)") from None
    return ExportedModel(model.eval(), arch, space, meta, folder)

