"""A `--data` value (`parse_data` -> `DataSource`) and where its files are: every check of a path happens here,
before any image is read, with errors that name the value, the path and what was expected."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KINDS = ("digits", "synthetic", "imagefolder", "cifar10", "cifar100", "idx", "fashion-mnist")


NO_PATH = ("digits", "synthetic")  # kinds that take no path


OPTIONAL_PATH = ("fashion-mnist",)  # kinds whose path has a default; the others require one


FORMS = "digits, synthetic, imagefolder:PATH, cifar10:PATH, cifar100:PATH, idx:DIR, fashion-mnist[:DIR]"


CIFAR_LAYOUT = {  # kind: (folder name, train files, test file, label key, number of classes, expected)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
                "the python batches data_batch_1..5 and test_batch (the 'cifar-10-batches-py' folder)"),
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", 100,
                 "the python batches train and test (the 'cifar-100-python' folder)"),
}


# The four files of an IDX source, per split (train, val); each may also be gzipped as NAME.gz.
IDX_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


IDX_EXPECTED = (f"the MNIST-format IDX files {', '.join(name for split in IDX_FILES for name in split)} "
                "(each plain or .gz)")


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist puts the .gz files here


FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


@dataclass(frozen=True)
class DataSource:
    """A parsed `--data` value: the kind of source and, for the on-disk ones, the path as given."""
    kind: str  # one of KINDS
    path: Path | None = None  # None for digits, synthetic and fashion-mnist's default folder

    def __str__(self) -> str:  # the --data value that gives this source
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_data(text: str) -> DataSource:
    """Parse a `--data` value (one of FORMS) and check that its path (or fashion-mnist's default folder) holds what
    its kind expects; ValueError naming the value, the path and what was expected."""
    kind, sep, path = text.partition(":")
    if kind not in KINDS or (kind in NO_PATH and sep) or (not sep and kind not in NO_PATH + OPTIONAL_PATH):
        raise ValueError(f"--data {text!r}: expected one of {FORMS}")
    if not sep:
        source = DataSource(kind)
        if kind in OPTIONAL_PATH:
            check_path(source)
        return source
    if not path:
        raise ValueError(f"--data {text!r}: expected a path after '{kind}:'")
    source = DataSource(kind, Path(path).expanduser())
    check_path(source)
    return source


def canonical_data(text: str) -> str:
    """The --data value with an on-disk path made absolute, so that meta.json names the data from any folder.
    ValueError (from `parse_data`) for a malformed value or a path that does not hold the expected files."""
    source = parse_data(text)
    return source.kind if source.path is None else f"{source.kind}:{source.path.resolve()}"


def fail(source: DataSource, message: str) -> ValueError:
    return ValueError(f"--data '{source}': {message}")


def check_path(source: DataSource) -> Path:
    """The folder that holds the source's files (for CIFAR, PATH or PATH/<batches folder>); ValueError if none."""
    if source.kind in ("idx", "fashion-mnist"):
        idx_paths(source)
        return idx_folder(source)
    path = source.path
    if path is None:
        raise fail(source, "expected a path")
    if source.kind == "imagefolder":
        expected = f"expected class folders under {path / 'train'} and {path / 'val'}"
        if not path.is_dir():
            raise fail(source, f"no such folder {path}; {expected}")
        for split in ("train", "val"):
            if not class_folders(path / split):
                raise fail(source, f"{path / split} has no class folders; {expected}")
        return path
    folder_name, train_files, test_file, *_, expected = CIFAR_LAYOUT[source.kind]
    names = (*train_files, test_file)
    if not path.is_dir():
        raise fail(source, f"no such folder {path}; expected {expected}, or its parent")
    for folder in (path, path / folder_name):
        present = [name for name in names if (folder / name).is_file()]
        if len(present) == len(names):
            return folder
        if present:
            missing = ", ".join(name for name in names if name not in present)
            raise fail(source, f"{folder} lacks {missing}; expected {expected}")
    raise fail(source, f"expected {expected} at {path} or {path / folder_name}")


def idx_folder(source: DataSource) -> Path:
    """The folder of an IDX source: its path, or fashion-mnist's default folder."""
    return FASHION_MNIST_DIR if source.path is None else source.path


def idx_paths(source: DataSource) -> tuple[Path, Path, Path, Path]:
    """The four files of an IDX source (train images, train labels, val images, val labels), each NAME or else
    NAME.gz (the plain one is preferred when both exist: nothing to decompress); ValueError naming the folder and the
    missing files, and for fashion-mnist the Debian package that installs them."""
    folder = idx_folder(source)
    install = (f"; 'apt-get install {FASHION_MNIST_PACKAGE}' puts them in {FASHION_MNIST_DIR}"
               if source.kind == "fashion-mnist" else "")
    if not folder.is_dir():
        raise fail(source, f"no such folder {folder}; expected {IDX_EXPECTED}{install}")
    found, missing = [], []
    for name in (name for split in IDX_FILES for name in split):
        file = next((folder / n for n in (name, f"{name}.gz") if (folder / n).is_file()), None)
        found.append(file)
        if file is None:
            missing.append(f"{name}[.gz]")
    if missing:
        raise fail(source, f"{folder} lacks {', '.join(missing)}; expected {IDX_EXPECTED}{install}")
    return tuple(found)


def class_folders(folder: Path) -> list[str]:
    """The names of the sub-folders of `folder` (its classes), sorted; [] if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
