"""A trained supernet read back from `nas train-supernet`'s checkpoint, and the held-out split that judges its
subnets (the fitness of `nas evolve`, the inherited accuracy of `nas export`, what `nas eval` reproduces)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from nas.checkpoint import load_checkpoint
from nas.data import Datasets, holdout_split, load_datasets, parse_data
from search_spaces import SearchSpace, load_space
from search_spaces.space import space_from_dict
from supernets.supernet import Supernet

DEFAULT_HOLDOUT = 1000  # SPOS holds out part of the train set to rank subnets; 1,000 images when the run held none
HOLDOUT_SEED = 0  # the split is fixed: train-supernet, evolve, export and eval all hold out the same images


@dataclass
class TrainedSupernet:
    supernet: Supernet  # in eval mode, on the requested device
    space: SearchSpace
    num_classes: int
    config: dict  # the training run's resolved options (its config.yaml)
    path: Path
    sha256: str  # of the checkpoint file: names the exact weights an export came from
    weights: str  # "ema" or "model"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def default_holdout(config: dict) -> int:
    """The held-out size of a search on a supernet: the images its run held out of training, if any."""
    return config.get("holdout") or DEFAULT_HOLDOUT


def load_data(data: str, holdout: int, img_size: int, num_classes: int, seed: int = 0) -> Datasets:
    """The datasets of `data`; the synthetic source draws a train set larger than `holdout`, the same images
    whichever command (train-supernet, evolve, export) draws it."""
    return load_datasets(parse_data(data), img_size, num_classes=num_classes, seed=seed,
                         synthetic_size=(max(2048, holdout + 256), 512))


def split_held_out(train: Dataset, holdout: int, data: str) -> tuple[Dataset, Dataset]:
    """(rest, held_out): `holdout` images of `train` set aside with the fixed seed; ValueError naming --holdout
    unless 1 <= holdout < len(train)."""
    n = len(train)
    if not 1 <= holdout < n:
        raise ValueError(f"--holdout {holdout}: expected an int in [1, {n - 1}] (the train set of {data!r} "
                         f"has {n} images)")
    return holdout_split(train, holdout, HOLDOUT_SEED)


def fitness_split(data: str, holdout: int, space: SearchSpace, num_classes: int,
                  seed: int = 0) -> tuple[Dataset, Dataset]:
    """(rest, held_out) of the train set of `data`: `holdout` images set aside with a fixed seed, the same ones
    `train-supernet --holdout` leaves out of training. `rest` serves BatchNorm recalibration."""
    return split_held_out(load_data(data, holdout, space.img_size, num_classes, seed).train, holdout, data)
