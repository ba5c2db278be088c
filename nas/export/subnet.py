"""Export a subnet of a trained supernet as a standalone model (`nas export`).

`export_subnet` validates an arch against the space of a train-supernet checkpoint, recalibrates the subnet's
BatchNorm statistics (BatchNorm spaces only), measures its inherited top-1 on the held-out split of the train set
(the images evolution ranks subnets on), copies its weights into a `NasViT` and writes the export folder
(`nas.export.exported_model`). meta.json records how the accuracy was measured, so that `evaluate_export` on the
folder measures the same images with the same batch size and reproduces it."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from nas.atomic_files import FOLDER_SUFFIX
from nas.data.splits import HOLDOUT_SEED, default_holdout
from nas.export.deploy import check_formats
from nas.export.exported_model import ARCH_FILE, META_FILE, WEIGHTS_FILE, model_meta, write_exported
from nas.export.measure import (
    DEFAULT_BATCH_SIZE,
    check_positive,
    check_recorded_data,
    load_measurement_data,
    progress_bar,
    seen_in_training,
)
from nas.interrupts import Stopped
from nas.options import torch_threads
from nas.run_folders import SEARCH_SUMMARY
from nas.search.fitness import Fitness
from nas.train.distributed import resolve_device
from nas.train.trained_supernet import load_trained_supernet
from search_spaces import load_arch


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


@dataclass
class ExportConfig:
    """The options of `nas export`."""
    supernet: str  # a train-supernet checkpoint
    arch: str  # the arch YAML to export
    out: str  # the export folder
    data: str | None = None  # default: the data of the search that wrote the arch, else of the supernet run
    holdout: int | None = None  # default: the search's held-out size, else `default_holdout` of the run's config
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    space: str | None = None  # only for a checkpoint that does not hold its space
    force: bool = False  # replace an export already in `out`
    formats: tuple[str, ...] = ()  # also write these deploy formats (DEPLOY_FORMATS)
    threads: int = 0  # torch threads; 0 = torch's default

    def validate(self) -> ExportConfig:
        """Check every option (ValueError naming it), before any work."""
        check_positive("--batch-size", self.batch_size)
        check_positive("--holdout", self.holdout)
        self.formats = tuple(dict.fromkeys(self.formats))
        check_formats(self.formats)
        resolve_device(self.device)
        _check_out(Path(self.out), self.force)
        return self


def export_subnet(cfg: ExportConfig, console: Console | None = None) -> dict:
    """Export the subnet `cfg.arch` of the supernet in `cfg.supernet` to the folder `cfg.out`; returns its meta.json.

    The inherited top-1 is measured on the supernet (after BatchNorm recalibration in a BatchNorm space), as evolution
    measures fitness; the exported model holds the same weights and statistics, so `evaluate_export` reproduces it.
    The folder is written as a whole (`write_exported`): a crash leaves the export that was there or the new one,
    and a Ctrl-C (`Stopped`) says which in its note. ValueError for user mistakes (missing or foreign files, an
    arch outside the checkpoint's space, bad options)."""
    cfg.validate()
    out = Path(cfg.out)
    before = _folder_identity(out)
    try:
        with torch_threads(cfg.threads):
            return _export(cfg, out, resolve_device(cfg.device), console)
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


def _export(cfg: ExportConfig, out: Path, dev: torch.device, console: Console | None) -> dict:
    """export_subnet after the checks of its options."""
    checkpoint, arch_file, data, holdout, batch_size = cfg.supernet, cfg.arch, cfg.data, cfg.holdout, cfg.batch_size
    trained = load_trained_supernet(checkpoint, cfg.space, dev)
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
        check_recorded_data(data, f"the training data recorded in checkpoint {str(checkpoint)!r}")
    if holdout is not None:
        holdout_from = "--holdout"
    elif search.get("holdout"):
        holdout, holdout_from = search["holdout"], f"the search's ({Path(arch_file).parent / SEARCH_SUMMARY})"
    else:
        holdout = default_holdout(trained.config)
        holdout_from = "the supernet run's --holdout" if trained.config.get("holdout") else "the default"
    sets = load_measurement_data(data, "holdout", holdout, trained.space, trained.num_classes)
    trained_on = seen_in_training(sets, trained.config)

    supernet = trained.supernet
    fitness = Fitness(supernet, sets.images, sets.rest, batch_size, dev)  # exactly what `nas evolve` measures
    with progress_bar(console, f"inherited top-1 on {len(sets.images)} held-out images", None):
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
    if cfg.formats and console is not None:
        console.print(f"writing {', '.join(cfg.formats)}, each checked against the PyTorch output ...")
    return write_exported(out, model, meta, cfg.formats)
