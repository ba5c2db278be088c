"""Fixed parts of a train set: the held-out split that ranks subnets (`fitness_split`: the images that
`train-supernet --holdout` leaves out, `nas evolve` scores on and `nas export` / `nas eval` measure) and the
`--train-subset` of quick studies. Both are drawn with their own fixed seeds, whatever the run's seed."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from nas.data.datasets import Datasets, load_datasets
from nas.data.source import parse_data
from search_spaces import SearchSpace

TRAIN_SUBSET_SEED = 1  # --train-subset draws the same images for every run and --seed (not HOLDOUT_SEED's 0)


def holdout_split(dataset: Dataset, size: int, seed: int = 0) -> tuple[Subset, Subset]:
    """(rest, held_out): a fixed split of `dataset` (a train set) with `size` items held out, chosen by a
    torch.Generator seeded with `seed`; both keep the dataset's order. ValueError unless 1 <= size < len(dataset)."""
    n = len(dataset)
    if not isinstance(size, int) or not 1 <= size < n:
        raise ValueError(f"held-out size {size!r}: expected an int in [1, {n - 1}] for a train set of {n} items")
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]] = True
    return Subset(dataset, (~held).nonzero().flatten().tolist()), Subset(dataset, held.nonzero().flatten().tolist())


def train_subset(dataset: Dataset, size: int, seed: int = TRAIN_SUBSET_SEED, of: str = "the train set") -> Subset:
    """`size` items of `dataset` (`--train-subset`), drawn by a torch.Generator seeded with `seed`, in the dataset's
    order. The seed is a fixed constant by default, not the run's --seed, so that every run and seed of a study
    trains on the same images. A subset of a Subset (the train set less its held-out images) is taken of the same
    underlying dataset, so its indices stay those of the full train set. `of` names the dataset in the error:
    ValueError naming --train-subset unless 1 <= size < len(dataset)."""
    n = len(dataset)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < n:
        raise ValueError(f"--train-subset {size!r}: expected an int in [1, {n - 1}] for the {n} images of {of} "
                         f"(0 = train on all of them)")
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values.tolist()
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, [dataset.indices[i] for i in chosen])
    return Subset(dataset, chosen)


DEFAULT_HOLDOUT = 1000  # SPOS holds out part of the train set to rank subnets; 1,000 images when the run held none


HOLDOUT_SEED = 0  # the split is fixed: train-supernet, evolve, export and eval all hold out the same images


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
