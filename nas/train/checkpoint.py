"""Checkpoints: written atomically (temp file in the same folder, then rename), read with clear errors.

A checkpoint carries the sha256 of its tensors' bytes: torch.load reads flipped bytes inside tensor data without
complaint, and a resume or a search would carry on with damaged weights."""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from nas.atomic_files import atomic_path


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` so that `path` always holds a complete checkpoint, whenever the process dies."""
    with atomic_path(path) as tmp:
        torch.save({**state, "sha256": tensor_digest(state)}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The state written by `save_checkpoint`; ValueError for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a checkpoint ({exc})") from None
    if not isinstance(state, dict) or "model" not in state or "space" not in state:
        raise ValueError(f"checkpoint {str(path)!r} is not a checkpoint of this toolkit (no model and space)")
    recorded = state.pop("sha256", None)  # None: written before checkpoints carried it
    if recorded is not None and recorded != tensor_digest(state):
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: its tensors do not match the sha256 recorded when it "
                         "was saved")
    return state


def tensor_digest(state) -> str:
    """sha256 over the bytes of every tensor in `state` (nested dicts, lists and tuples), in a fixed order."""
    digest = hashlib.sha256()

    def visit(obj):
        if isinstance(obj, torch.Tensor):
            digest.update(obj.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                digest.update(str(key).encode())
                visit(obj[key])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)

    visit(state)
    return digest.hexdigest()
