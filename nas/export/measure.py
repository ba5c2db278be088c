"""The images a top-1 is measured on (`load_measurement_data`: the held-out split or the val set) and
`evaluate_export` (`nas eval`): the top-1 of an export folder's standalone model, by default on the images and
with the batch size that meta.json records, so that it reproduces the export's inherited top-1."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch.utils.data import Dataset

from nas.data.loaders import make_loader
from nas.data.source import canonical_data, parse_data
from nas.data.splits import DEFAULT_HOLDOUT, load_data, split_held_out
from nas.export.exported_model import ARCH_FILE, META_FILE, read_exported
from nas.interrupts import Stopped
from nas.options import FITNESS_BATCH_SIZE, torch_threads
from nas.progress import ProgressBars
from nas.train.accuracy import top1
from nas.train.distributed import resolve_device
from search_spaces import SearchSpace

SPLITS = ("holdout", "val")


DEFAULT_BATCH_SIZE = FITNESS_BATCH_SIZE


@dataclass
class MeasurementData:
    """The images a top-1 is measured on, and the train images left for BatchNorm recalibration."""
    data: str  # the canonical --data value (on-disk paths made absolute)
    split: str  # "holdout" or "val"
    holdout: int | None  # held-out size (split "holdout" only)
    images: Dataset
    rest: Dataset | None  # the train set minus the held-out images (split "holdout" only)
    preprocessing: dict  # the data's mean, std, ... (`Datasets.preprocessing`)


def check_positive(option: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{option} {value!r}: expected an int >= 1")


def load_measurement_data(data: str, split: str, holdout: int | None, space: SearchSpace,
                          num_classes: int) -> MeasurementData:
    """The images of `split` of `data` at the space's image size.

    "holdout": the `holdout` train images that `nas.data.splits.fitness_split` sets aside (the same seed, so
    the same images that `train-supernet --holdout` leaves out and `nas evolve` ranks subnets on); "val": the
    data's val set. ValueError when the data's classes are not the model's, or for a held-out size out of range."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose from {list(SPLITS)}")
    check_positive("--holdout", holdout)
    data = canonical_data(data)
    held = holdout or DEFAULT_HOLDOUT
    sets = load_data(data, held, space.img_size, num_classes)
    if sets.num_classes != num_classes:
        raise ValueError(f"--data {data!r} has {sets.num_classes} classes, but the model has {num_classes}: "
                         f"measure it on the data it was trained for")
    if split == "val":
        return MeasurementData(data, split, None, sets.val, None, sets.preprocessing)
    rest, held_out = split_held_out(sets.train, held, data)
    return MeasurementData(data, split, held, held_out, rest, sets.preprocessing)


@contextmanager
def progress_bar(console: Console | None, description: str, total: int):
    """track(iterable): the iterable, advancing a transient progress bar on `console` (nothing when it is None)."""
    if console is None:
        yield lambda iterable: iterable
        return
    with ProgressBars(console, lambda fields: description, plain_steps=0, transient=True) as progress:
        task = progress.add(total)

        def track(iterable):
            for done, item in enumerate(iterable, 1):
                yield item
                progress.update(task, done)
        yield track


def measure(model, dataset: Dataset, batch_size: int, device: torch.device, console: Console | None,
             description: str, arch=None) -> float:
    """top1 over `dataset`, in order, in batches of `batch_size`."""
    loader = make_loader(dataset, batch_size, train=False)
    with progress_bar(console, description, len(loader)) as track:
        return top1(model, track(loader), device, arch)


def check_recorded_data(data: str, where: str) -> None:
    """Check a --data value that comes from a file rather than the command line; the error says where it is from."""
    try:
        parse_data(data)
    except ValueError as exc:
        raise ValueError(f"{exc} ({where}; pass --data to give it)") from None


def seen_in_training(sets: MeasurementData, config: dict) -> bool | None:
    """Whether the training run trained on (some of) the held-out images: it held out fewer or none (the draws
    of the held-out split are nested: a smaller size takes the first images of a larger one). None when the
    images are not from the run's data."""
    try:
        same_data = canonical_data(config.get("data") or "") == sets.data
    except ValueError:  # no data recorded, or the run's data is no longer where it was
        return None
    return sets.holdout > (config.get("holdout") or 0) if same_data else None


@dataclass
class EvalConfig:
    """The options of `nas eval`; unset ones come from the folder's meta.json (`evaluate_export`)."""
    folder: str  # an export folder
    data: str | None = None
    split: str | None = None  # "holdout" or "val"
    holdout: int | None = None  # split "holdout" only
    batch_size: int | None = None
    device: str = "auto"
    threads: int = 0  # torch threads; 0 = torch's default

    def validate(self) -> EvalConfig:
        """Check every option (ValueError naming it), before any work."""
        check_positive("--batch-size", self.batch_size)
        check_positive("--holdout", self.holdout)
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"--split {self.split!r}: choose from {list(SPLITS)}")
        resolve_device(self.device)
        return self


def evaluate_export(cfg: EvalConfig, console: Console | None = None) -> dict:
    """Top-1 of the standalone model of an export folder.

    Unset options come from meta.json's `measured`: the same data, split, held-out size and batch size as the
    export, so that the result equals `inherited_top1` (`difference` is their difference, or None when the
    images measured are not the export's). A folder without that record defaults to the val split."""
    cfg.validate()
    try:
        with torch_threads(cfg.threads):
            return _evaluate(cfg.folder, cfg.data, cfg.split, cfg.holdout, cfg.batch_size, cfg.device, console)
    except Stopped as stop:
        stop.note = "nothing was written (nas eval only reads the folder); rerun the same command to measure"
        raise


def _evaluate(folder: str | Path, data: str | None, split: str | None, holdout: int | None, batch_size: int | None,
              device: str, console: Console | None) -> dict:
    """evaluate_export after the checks of its options."""
    exported = read_exported(folder)
    meta = exported.meta
    recorded = meta.get("arch_hash")
    if recorded is not None and recorded != exported.arch.hash:
        raise ValueError(f"export folder {str(folder)!r}: {META_FILE} is about arch {recorded}, but {ARCH_FILE} "
                         f"is arch {exported.arch.hash} (files of two exports mixed?)")
    measured = meta.get("measured") or {}
    split = split or measured.get("split") or "val"
    if split == "val" and holdout is not None:
        raise ValueError(f"--holdout {holdout}: applies to --split holdout only")
    if split == "holdout" and holdout is None:
        holdout = measured.get("holdout") if measured.get("split") == "holdout" else None
        holdout = holdout or DEFAULT_HOLDOUT
    if data is None:
        data = measured.get("data")
        if not data:
            raise ValueError(f"export folder {str(folder)!r} does not record the data it was measured on: "
                             f"pass --data")
        check_recorded_data(data, f"the data recorded in {str(Path(folder) / META_FILE)!r}")
    batch_size = batch_size or measured.get("batch_size") or DEFAULT_BATCH_SIZE
    dev = resolve_device(device)
    num_classes = meta.get("num_classes") or exported.model.num_classes
    sets = load_measurement_data(data, split, holdout, exported.space, num_classes)

    model = exported.model.to(dev)
    accuracy = measure(model, sets.images, batch_size, dev, console,
                        f"top-1 on {len(sets.images)} {'held-out' if split == 'holdout' else 'val'} images")
    inherited = meta.get("inherited_top1")
    same_images = (inherited is not None and measured.get("data") == sets.data and measured.get("split") == split
                   and (split == "val" or measured.get("holdout") == sets.holdout))
    return {
        "folder": str(folder),
        "arch_hash": exported.arch.hash,
        "space": exported.space.name,
        "data": sets.data,
        "split": split,
        "holdout": sets.holdout,
        "images": len(sets.images),
        "batch_size": batch_size,
        "device": dev.type,
        "top1": accuracy,
        "inherited_top1": inherited,
        "inherited_measured": measured or None,
        "difference": accuracy - inherited if same_images else None,
    }
