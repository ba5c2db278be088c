"""Export a subnet of a trained supernet as a standalone model (`nas export`), and measure one again (`nas eval`).

`export_subnet` validates an arch against the space of a train-supernet checkpoint, recalibrates the subnet's
BatchNorm statistics (BatchNorm spaces only), measures its inherited top-1 on the held-out split of the train set
(the images evolution ranks subnets on), copies its weights into a `NasViT` and writes the export folder
(`nas.exported_model`). meta.json records how the accuracy was measured, so that `evaluate_export` on the folder
measures the same images with the same batch size and reproduces it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch.utils.data import Dataset

from nas.atomic_files import FOLDER_SUFFIX
from nas.data import make_loader, parse_data
from nas.deploy import check_formats
from nas.distributed import resolve_device
from nas.evaluate import top1
from nas.exported_model import ARCH_FILE, META_FILE, WEIGHTS_FILE, model_meta, read_exported, write_exported
from nas.fitness import Fitness
from nas.interrupts import Stopped
from nas.progress import ProgressBars
from nas.run_folders import SEARCH_SUMMARY
from nas.trained_supernet import (DEFAULT_HOLDOUT, HOLDOUT_SEED, default_holdout, load_data, load_trained_supernet,
                                  split_held_out)
from search_spaces import SearchSpace, load_arch

SPLITS = ("holdout", "val")
DEFAULT_BATCH_SIZE = 250


@dataclass
class MeasurementData:
    """The images a top-1 is measured on, and the train images left for BatchNorm recalibration."""
    data: str  # the canonical --data value (on-disk paths made absolute)
    split: str  # "holdout" or "val"
    holdout: int | None  # held-out size (split "holdout" only)
    images: Dataset
    rest: Dataset | None  # the train set minus the held-out images (split "holdout" only)
    preprocessing: dict  # the data's mean, std, ... (`Datasets.preprocessing`)


# ---------------------------------------------------------------------------------------------------- helpers

def canonical_data(text: str) -> str:
    """The --data value with an on-disk path made absolute, so that meta.json names the data from any folder.
    ValueError (from `parse_data`) for a malformed value or a path that does not hold the expected files."""
    source = parse_data(text)
    return source.kind if source.path is None else f"{source.kind}:{source.path.resolve()}"


def _check_positive(option: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{option} {value!r}: expected an int >= 1")


def load_measurement_data(data: str, split: str, holdout: int | None, space: SearchSpace,
                          num_classes: int) -> MeasurementData:
    """The images of `split` of `data` at the space's image size.

    "holdout": the `holdout` train images that `nas.trained_supernet.fitness_split` sets aside (the same seed, so
    the same images that `train-supernet --holdout` leaves out and `nas evolve` ranks subnets on); "val": the
    data's val set. ValueError when the data's classes are not the model's, or for a held-out size out of range."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose from {list(SPLITS)}")
    _check_positive("--holdout", holdout)
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
def _progress(console: Console | None, description: str, total: int):
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


def _measure(model, dataset: Dataset, batch_size: int, device: torch.device, console: Console | None,
             description: str, arch=None) -> float:
    """top1 over `dataset`, in order, in batches of `batch_size`."""
    loader = make_loader(dataset, batch_size, train=False)
    with _progress(console, description, len(loader)) as track:
        return top1(model, track(loader), device, arch)


def _recorded(data: str, where: str) -> None:
    """Check a --data value that comes from a file rather than the command line; the error says where it is from."""
    try:
        parse_data(data)
    except ValueError as exc:
        raise ValueError(f"{exc} ({where}; pass --data to give it)") from None


def _trained_on(sets: MeasurementData, config: dict) -> bool | None:
    """Whether the training run trained on (some of) the held-out images: it held out fewer or none (the draws
    of the held-out split are nested: a smaller size takes the first images of a larger one). None when the
    images are not from the run's data."""
    try:
        same_data = canonical_data(config.get("data") or "") == sets.data
    except ValueError:  # no data recorded, or the run's data is no longer where it was
        return None
    return sets.holdout > (config.get("holdout") or 0) if same_data else None


def _search_of(arch_file: str | Path, checkpoint_sha256: str) -> dict:
    """The summary of the `nas evolve` run that wrote `arch_file` (its OUT/search.json, beside it) when that search
    ran on this checkpoint, so that the export measures the images the search ranked the arch on; else {}."""
    try:
        summary = json.loads((Path(arch_file).parent / SEARCH_SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) and summary.get("checkpoint_sha256") == checkpoint_sha256 else {}


def _check_out(out: Path, force: bool) -> None:
    """Refuse, before any work, an --out that the export cannot write as a whole: a file, a folder that holds files
    of no export (they would go with it), an export without --force, or a place where no folder can be made."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    names = sorted(entry.name for entry in out.iterdir()) if out.is_dir() else []
    others = [name for name in names if name not in (ARCH_FILE, WEIGHTS_FILE, META_FILE)]
    if others:
        raise ValueError(f"--out {str(out)!r} holds files that are not an export's ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); the export replaces the whole folder: choose a new "
                         f"or empty one")
    if names and not force:
        raise ValueError(f"--out {str(out)!r} already holds an export ({', '.join(names)}); pass --force to "
                         f"replace it, or choose another folder")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """The nearest existing folder above --out lets this process make a folder in it: tried, since permissions,
    read-only file systems and root's rights are not all told by the mode bits."""
    above = next(folder for folder in Path(os.path.realpath(out)).parents if folder.exists())
    if not above.is_dir():
        raise ValueError(f"--out {str(out)!r}: {str(above)!r} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=FOLDER_SUFFIX, dir=above))  # a leftover goes too
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r}: cannot write in {str(above)!r} ({exc.strerror})") from None


# ---------------------------------------------------------------------------------------------------- export

def export_subnet(checkpoint: str | Path, arch_file: str | Path, out: str | Path, *, data: str | None = None,
                  holdout: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "auto",
                  space: str | None = None, force: bool = False, console: Console | None = None,
                  formats: tuple[str, ...] = ()) -> dict:
    """Export the subnet `arch_file` of the supernet in `checkpoint` to the folder `out`; returns its meta.json.

    `data` defaults to the training run's data and `holdout` to `default_holdout` of the run's config. The
    inherited top-1 is measured on the supernet (after BatchNorm recalibration in a BatchNorm space), as evolution
    measures fitness; the exported model holds the same weights and statistics, so `evaluate_export` reproduces it.
    The folder is written as a whole (`write_exported`): a crash leaves the export that was there or the new one,
    and a Ctrl-C (`Stopped`) says which in its note. ValueError for user mistakes (missing or foreign files, an
    arch outside the checkpoint's space, bad options)."""
    _check_positive("--batch-size", batch_size)
    _check_positive("--holdout", holdout)
    check_formats(formats)
    out = Path(out)
    _check_out(out, force)
    before = _folder_identity(out)
    try:
        return _export(checkpoint, arch_file, out, data, holdout, batch_size, resolve_device(device), space, console,
                       formats)
    except Stopped as stop:
        if _folder_identity(out) == before:  # the new folder was not put in place: its temp folder is gone too
            stop.note = f"nothing was written ({str(out)!r} is as it was); rerun the same command to export"
        else:
            stop.note = f"the new export was complete before the stop: {str(out)!r} holds it"
        raise


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """Which folder is at `folder` (None: none); the export's folder replaces it whole, with another identity."""
    try:
        status = folder.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _export(checkpoint: str | Path, arch_file: str | Path, out: Path, data: str | None, holdout: int | None,
            batch_size: int, dev: torch.device, space: str | None, console: Console | None,
            formats: tuple[str, ...]) -> dict:
    """export_subnet after the checks of its options."""
    trained = load_trained_supernet(checkpoint, space, dev)
    try:
        arch, _ = load_arch(arch_file, trained.space)
    except ValueError as exc:
        raise ValueError(f"{exc} (checkpoint {str(checkpoint)!r} holds a supernet of space "
                         f"{trained.space.name!r})") from None
    search = _search_of(arch_file, trained.sha256)
    if data is None:
        data = search.get("data") or trained.config.get("data")
        if not data:
            raise ValueError(f"checkpoint {str(checkpoint)!r} does not record its training data: pass --data")
        _recorded(data, f"the training data recorded in checkpoint {str(checkpoint)!r}")
    if holdout is not None:
        holdout_from = "--holdout"
    elif search.get("holdout"):
        holdout, holdout_from = search["holdout"], f"the search's ({Path(arch_file).parent / SEARCH_SUMMARY})"
    else:
        holdout = default_holdout(trained.config)
        holdout_from = "the supernet run's --holdout" if trained.config.get("holdout") else "the default"
    sets = load_measurement_data(data, "holdout", holdout, trained.space, trained.num_classes)
    trained_on = _trained_on(sets, trained.config)

    supernet = trained.supernet
    fitness = Fitness(supernet, sets.images, sets.rest, batch_size, dev)  # exactly what `nas evolve` measures
    with _progress(console, f"inherited top-1 on {len(sets.images)} held-out images", None):
        inherited = fitness(arch)
    recalibration = fitness.recalibration
    model = supernet.export(arch).eval()
    meta = model_meta(
        arch, trained.space, trained.num_classes, arch_file, sets.preprocessing,
        checkpoint=str(trained.path.resolve()), checkpoint_sha256=trained.sha256, checkpoint_weights=trained.weights,
        inherited_top1=inherited,
        measured={"data": sets.data, "split": sets.split, "holdout": sets.holdout, "images": len(sets.images),
                  "batch_size": batch_size, "device": dev.type, "bn_recalibration": recalibration,
                  "trained_on": trained_on, "holdout_seed": HOLDOUT_SEED, "holdout_from": holdout_from})
    if formats and console is not None:
        console.print(f"writing {', '.join(formats)}, each checked against the PyTorch output ...")
    return write_exported(out, model, meta, formats)


# ---------------------------------------------------------------------------------------------------- eval

def evaluate_export(folder: str | Path, *, data: str | None = None, split: str | None = None,
                    holdout: int | None = None, batch_size: int | None = None, device: str = "auto",
                    console: Console | None = None) -> dict:
    """Top-1 of the standalone model of an export folder.

    Unset options come from meta.json's `measured`: the same data, split, held-out size and batch size as the
    export, so that the result equals `inherited_top1` (`difference` is their difference, or None when the
    images measured are not the export's). A folder without that record defaults to the val split."""
    _check_positive("--batch-size", batch_size)
    _check_positive("--holdout", holdout)
    try:
        return _evaluate(folder, data, split, holdout, batch_size, device, console)
    except Stopped as stop:
        stop.note = "nothing was written (nas eval only reads the folder); rerun the same command to measure"
        raise


def _evaluate(folder: str | Path, data: str | None, split: str | None, holdout: int | None, batch_size: int | None,
              device: str, console: Console | None) -> dict:
    """evaluate_export after the checks of its options."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose from {list(SPLITS)}")
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
        _recorded(data, f"the data recorded in {str(Path(folder) / META_FILE)!r}")
    batch_size = batch_size or measured.get("batch_size") or DEFAULT_BATCH_SIZE
    dev = resolve_device(device)
    num_classes = meta.get("num_classes") or exported.model.num_classes
    sets = load_measurement_data(data, split, holdout, exported.space, num_classes)

    model = exported.model.to(dev)
    accuracy = _measure(model, sets.images, batch_size, dev, console,
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


def format_points(value: float | None, signed: bool = False) -> str:
    """A [0, 1] accuracy (or a difference of two) in percent, for tables; an em dash for None."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:{'+' if signed else ''}.2f}" + ("" if signed else "%")
