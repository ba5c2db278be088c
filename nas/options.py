"""What the CLI's parsers need from the heavy modules, kept here so that building them imports neither torch, timm
nor optuna (`nas --help` and the light commands start at once), and the one `--threads` option of the commands that
compute, with the helper that applies it."""
from __future__ import annotations

import argparse
from contextlib import contextmanager

DATA_HELP = (
    "the data: 'digits' (default: scikit-learn's bundled 8x8 handwritten digits, upsampled to the space's image "
    "size; 1437 train / 360 val images, 10 classes, no download), 'cifar10:PATH' or 'cifar100:PATH' (the python "
    "pickle batches: PATH is the extracted 'cifar-10-batches-py' / 'cifar-100-python' folder or its parent), "
    "'imagefolder:PATH' (ImageNet layout: PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg, read with timm's "
    "DeiT-style transforms), 'idx:DIR' (MNIST-format IDX files in DIR: train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, plain or .gz; grey images "
    "treated as the digits), 'fashion-mnist[:DIR]' (idx:DIR, DIR defaulting to /usr/share/datasets/fashion-mnist "
    "of Debian's dataset-fashion-mnist package; 60000 train / 10000 val images, 10 classes), or 'synthetic' "
    "(random images and labels, for benchmarks only: nothing to learn)"
)

DEVICES = ("auto", "cpu", "cuda")  # --device of every command that computes ("auto": CUDA if available)
FITNESS_BATCH_SIZE = 250  # images per forward pass when a subnet's top-1 is measured (evolve, export, eval)
DEPLOY_FORMATS = ("onnx", "torch-export")  # nas export --format (nas.export.deploy writes them)
HEARTBEAT_S = 30  # default interval of the heartbeat of a running trial on an RDB storage; 2x is the grace period
STORAGE_HELP = ("where the study lives: an RDB URL (sqlite:///search.db, postgresql://user:pass@host/db, "
                "mysql+pymysql://...) or the path of an optuna journal file; default OUT/study.journal. Workers "
                "that run the same command on one storage share the search; running it again resumes it")

THREADS_HELP = ("torch threads; on a CPU shared with other work torch's default (one per core) can run several times "
                "slower than 1; 0 = torch's default (default 0)")


DEVICE_HELP = "auto: CUDA if available, else CPU (default auto)"


def add_device_option(parser: argparse.ArgumentParser, default: str | None = "auto", help: str = DEVICE_HELP) -> None:
    parser.add_argument("--device", choices=DEVICES, default=default, help=help)


def add_threads_option(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    parser.add_argument("--threads", type=int, metavar="N", help=help)


@contextmanager
def torch_threads(count: int | None):
    """Run the block with `count` torch threads (0 or None: the count torch uses now); yields the count in use and
    restores the one before afterwards. ValueError naming --threads for a negative count."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"--threads must be an int >= 0, got {count!r}")
    import torch  # here, not at the top: the parsers import this module

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
