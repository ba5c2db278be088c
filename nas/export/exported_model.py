"""The folder `nas export` writes, and reading it back: a standalone model that needs nothing of the supernet.

    DIR/arch.yaml           the arch (names its space)
    DIR/model.safetensors   the NasViT state dict (inherited or retrained weights)
    DIR/meta.json           space name and hash, checkpoint hash, MACs, params, classes, inherited accuracy,
                            the sha256 of model.safetensors, ...

The folder is written as a whole (`nas.atomic_files.atomic_folder`), and its weights are read only when their
sha256 is the one meta.json records: a damaged file, or the weights of another export, is an error.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from nas.atomic_files import atomic_folder, file_sha256
from nas.cost_model import arch_cost
from nas.run_folders import ARCH_FILE, META_FILE, WEIGHTS_FILE
from search_spaces import Arch, SearchSpace, load_arch
from supernets.nas_vit import NasViT, pretrained_cfg

FORMAT = 1  # of meta.json; bumped when a field changes meaning


@dataclass
class ExportedModel:
    model: NasViT
    arch: Arch
    space: SearchSpace
    meta: dict
    folder: Path


def model_meta(arch: Arch, space: SearchSpace, num_classes: int, arch_file: str | Path, preprocessing: dict,
               **fields) -> dict:
    """meta.json of an export folder: what every folder records (space, arch, cost, timm's pretrained_cfg with the
    data's preprocessing), then `fields` (how the weights were made and measured: export's or retrain's)."""
    macs, params = arch_cost(arch, space, num_classes)
    return {
        "format": FORMAT,
        "space": space.name,
        "space_ref": space.ref or space.name,
        "space_hash": space.hash,
        "arch_hash": arch.hash,
        "arch_file": str(Path(arch_file).resolve()),
        "num_classes": num_classes,
        "img_size": space.img_size,
        "macs": macs,
        "params": params,
        "pretrained_cfg": {**pretrained_cfg(space, num_classes), **preprocessing},
        **fields,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_exported(folder: str | Path, model: NasViT, meta: dict, formats: tuple[str, ...] = ()) -> dict:
    """Write the folder with its three files, and the model in each deployment format of `formats`
    (`nas.export.deploy`: each checked against the PyTorch output), replacing the folder at `folder` (if any) as a whole:
    a crash leaves the old folder or the new one. Returns meta.json as written: `meta`, `weights_sha256` and, per
    format, its file and its largest output difference from PyTorch."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = save(state, metadata={"arch_hash": model.arch.hash})
    meta = {**meta, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    with atomic_folder(folder) as tmp:
        (tmp / ARCH_FILE).write_bytes(model.arch.to_yaml().encode())
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        if formats:
            from nas.export.deploy import (  # torch.export and the ONNX exporter: only when asked
                FORMAT_FILES,
                write_format,
            )

            cpu_model = copy.deepcopy(model).cpu().eval()  # the formats are checked on the CPU
            meta["formats"] = {fmt: {"file": FORMAT_FILES[fmt],
                                     "max_abs_difference": write_format(cpu_model, fmt, tmp / FORMAT_FILES[fmt])}
                               for fmt in formats}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(folder / META_FILE)!r} is not valid JSON: {exc}") from None


def check_weights(folder: Path, meta: dict) -> None:
    """ValueError when model.safetensors is not the file meta.json records (damaged, or of another export)."""
    recorded = meta.get("weights_sha256")
    if recorded is None:  # written before meta.json recorded it: nothing to check against
        return
    found = file_sha256(folder / WEIGHTS_FILE)
    if found != recorded:
        raise ValueError(f"{str(folder / WEIGHTS_FILE)!r}: the weights do not match {META_FILE} (sha256 "
                         f"{found[:12]}..., {META_FILE} records {recorded[:12]}...): the file is damaged or from "
                         f"another export; export it again")


def read_exported(folder: str | Path) -> ExportedModel:
    """The model of an export folder with its weights; ValueError naming the folder and the missing or bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"export folder {str(folder)!r} does not exist")
    for name in (ARCH_FILE, WEIGHTS_FILE, META_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"export folder {str(folder)!r} has no {name} (written by 'nas export')")
    meta = read_meta(folder)
    check_weights(folder, meta)
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

