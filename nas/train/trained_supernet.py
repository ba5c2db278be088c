"""A trained supernet read back from `nas train-supernet`'s checkpoint: what `nas evolve` searches and `nas export`
exports."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nas.atomic_files import file_sha256
from nas.train.checkpoint import load_checkpoint
from search_spaces import SearchSpace, load_space
from search_spaces.space import space_from_dict
from supernets.supernet import Supernet


@dataclass
class TrainedSupernet:
    supernet: Supernet  # in eval mode, on the requested device
    space: SearchSpace
    num_classes: int
    config: dict  # the training run's resolved options (its config.yaml)
    path: Path
    sha256: str  # of the checkpoint file: names the exact weights an export came from
    weights: str  # "ema" or "model"


def load_trained_supernet(path: str | Path, space: str | None = None,
                          device: str | torch.device = "cpu") -> TrainedSupernet:
    """The supernet of a train-supernet checkpoint (its EMA weights when the run kept an EMA).

    `space` (a name or YAML path) is only needed for a checkpoint that does not hold its space; when given, it
    must be the space the checkpoint was trained on. ValueError for a missing, corrupt or mismatched file."""
    path = Path(path)
    state = load_checkpoint(path)
    if state.get("kind", "supernet") != "supernet":
        raise ValueError(f"checkpoint {str(path)!r} is of a {state['kind']!r} run, not of 'nas train-supernet'")
    if space is not None:
        chosen = load_space(space)
        if state.get("space_hash") not in (None, chosen.hash):
            raise ValueError(f"--space {space!r}: checkpoint {str(path)!r} was trained on space "
                             f"{state.get('space_name')!r}, which differs")
    else:
        chosen = space_from_dict(state["space"], state.get("space_ref") or state.get("space_name", str(path)))
    num_classes = state.get("num_classes", chosen.num_classes)
    supernet = Supernet(chosen, num_classes=num_classes)
    weights = "ema" if state.get("ema") else "model"
    supernet.load_state_dict(state[weights])
    return TrainedSupernet(supernet.to(device).eval(), chosen, num_classes, state.get("config", {}), path,
                           file_sha256(path), weights)
