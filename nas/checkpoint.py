"""Checkpoints: written atomically (temp file in the same folder, then rename), read with clear errors."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from nas.atomic_files import atomic_path


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` so that `path` always holds a complete checkpoint, whenever the process dies."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
    return state
