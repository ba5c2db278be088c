"""The train and val sets of a `DataSource` (`load_datasets` -> `Datasets`), with the number of classes, a
batch-level train augmentation and timm's preprocessing terms.

Sources:

- `digits` (the default, bundled with scikit-learn, no download): 1797 grey 8x8 digits, 10 classes, a fixed
  stratified split of 1437 train / 360 val items (20 % val, seed 0, whatever the run's seed). Upsampled to
  img_size (bilinear), replicated to 3 channels, normalised with the mean and std of the train split's pixels.
  Train augmentation: random translation by up to img_size/8 pixels (no flips: digits are not symmetric).
- `cifar10:PATH`, `cifar100:PATH`: the python pickle batches, resized to img_size if it is not 32 (bilinear),
  normalised with the usual CIFAR mean and std. Train augmentation: random crop with 4 pixels of padding (scaled to
  img_size) and horizontal flip.
- `idx:DIR`: MNIST-format IDX files in DIR (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte, each plain or gzipped as NAME.gz): grey uint8 images, t10k as val, max train label + 1
  classes. Handled as the digits: resized to img_size (bilinear), 3 channels, the train split's pixel mean and std,
  random translation by up to img_size/8 pixels, no flips.
- `fashion-mnist[:DIR]`: `idx:DIR` with DIR defaulting to /usr/share/datasets/fashion-mnist (where Debian's
  `dataset-fashion-mnist` package puts the four gzipped files): 60000 train / 10000 val 28x28 images, 10 classes.
- `imagefolder:PATH`: an ImageNet-layout tree PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg, read by timm's
  ImageDataset with timm's transforms (DeiT's recipe: RandAugment, bicubic, random erasing; mixup and cutmix are
  the training loop's). The augmentation happens in the dataset, so `Datasets.augment` is None.
- `synthetic`: uniform random images with random labels, for benchmarks only.

The in-memory sources (digits, IDX, CIFAR, synthetic) keep uint8 images at their native size and convert a batch at a
time (`TensorImages`): CIFAR-10 takes 150 MB at any img_size. Their train augmentation is a function of the batch and
an explicit `torch.Generator`, which the training loop seeds per step, so a resumed run is bit-identical to an
uninterrupted one. Nothing here touches the global RNG state."""
from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nas.data.source import CIFAR_LAYOUT, FORMS, KINDS, DataSource, check_path, class_folders, fail, idx_paths

DIGITS_VAL_FRACTION = 0.2


DIGITS_SPLIT_SEED = 0  # the split is fixed: the same for every run and test, whatever the run's seed


# The usual per-channel statistics of the train sets, for pixels in [0, 1].
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


IMAGENET_TRAIN_AUGMENT = dict(auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25,
                              re_mode="pixel")


IMAGENET_VAL_CROP_PCT = 0.875


@dataclass
class Datasets:
    """The train and val sets of a source, its number of classes, and its batch-level train augmentation.

    `augment(batch, generator)` takes the (B, 3, H, W) float train batch (on any device) and a torch.Generator (the
    random draws are made on the generator's device) and returns the augmented batch; None when the dataset's own
    transforms augment (imagefolder) or there is nothing to augment (synthetic).
    """
    train: Dataset
    val: Dataset
    num_classes: int
    augment: Callable[..., torch.Tensor] | None  # (batch, generator, shard=(rank, world_size)) -> batch
    preprocessing: dict  # how an image becomes the model's input, in timm's pretrained_cfg terms (mean, std, ...)


class TensorImages(Dataset):
    """In-memory uint8 images (N, C, h, w), C = 1 or 3, served as normalised float (3, S, S) images with int64 labels.

    An item is `((images[i] * scale) resized to S x S (bilinear), replicated to 3 channels, - mean) / std`. A loader
    fetches a whole batch at once (`__getitems__`), so the resize and normalisation are vectorised over the batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], scale: float):
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] in (1, 3), images.shape
        assert labels.shape == (len(images),), (labels.shape, images.shape)
        self.images = images  # (N, C, h, w) uint8
        self.labels = labels.long()  # (N,)
        self.img_size = img_size
        self.scale = scale
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def convert(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) uint8 -> (B, 3, S, S) normalised float."""
        x = images.float() * self.scale
        size = self.img_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < min(x.shape[-2:]))
        x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        return self.convert(self.images[index].unsqueeze(0))[0], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.convert(self.images[index]), self.labels[index]))

    def fill(self) -> tuple[float, ...]:
        """The normalised value of a black pixel per channel (the padding of the train augmentation)."""
        return tuple(float(v) for v in (-self.mean / self.std).flatten().expand(3))


@dataclass(frozen=True)
class RandomShift:
    """Batch augmentation of (B, C, H, W) float images: each image is padded by `pad` pixels of `fill` and cropped back
    to H x W at a random offset (a translation by up to `pad` pixels), then, with `flip`, mirrored left-right with
    probability 1/2. Draws, in this order, the row offsets, the column offsets and the flips from the generator
    (on its device), so that the result depends only on the batch and the generator's state.

    `shard=(rank, world_size)`: the batch is rank's block of a global batch of world_size x B images (as
    make_loader splits it); the draws are made for the global batch and this block's are used, so that
    DDP augments exactly as one process with the global batch."""
    pad: int
    fill: tuple[float, ...]  # per channel
    flip: bool

    def __call__(self, x: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        b, c, h, w = x.shape
        p, dev = self.pad, generator.device
        rank, world_size = shard
        mine = slice(rank * b, (rank + 1) * b)
        dy = torch.randint(0, 2 * p + 1, (b * world_size,), generator=generator, device=dev)[mine].to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b * world_size,), generator=generator, device=dev)[mine].to(x.device)
        padded = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1).repeat(b, 1, h + 2 * p,
                                                                                                  w + 2 * p)
        padded[:, :, p:p + h, p:p + w] = x  # (B, C, H + 2p, W + 2p)
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
        out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                     torch.arange(c, device=x.device)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)
        if self.flip:
            flips = (torch.rand(b * world_size, generator=generator, device=dev)[mine] < 0.5).to(x.device)  # (B,)
            out = torch.where(flips[:, None, None, None], out.flip(-1), out)
        return out


def load_datasets(source: DataSource, img_size: int, *, synthetic_size: tuple[int, int] = (2048, 512),
                  num_classes: int = 10, seed: int = 0) -> Datasets:
    """The train and val sets of `source` at img_size x img_size. `synthetic_size` (train, val items),
    `num_classes` and `seed` apply to the synthetic source only (the digits split is fixed; IDX, CIFAR and
    imagefolder have their own classes). ValueError for a bad path or unreadable files."""
    if source.kind not in KINDS:
        raise ValueError(f"--data {str(source)!r}: expected one of {FORMS}")
    if not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size {img_size!r}: expected a positive int")
    if source.kind == "digits":
        return _load_digits(img_size)
    if source.kind == "synthetic":
        return _load_synthetic(img_size, synthetic_size, num_classes, seed)
    folder = check_path(source)
    if source.kind == "imagefolder":
        return _load_imagefolder(source, folder, img_size)
    if source.kind in ("idx", "fashion-mnist"):
        return _load_idx(source, img_size)
    return _load_cifar(source, folder, img_size)


def _shift_augment(dataset: TensorImages, img_size: int, flip: bool) -> RandomShift:
    return RandomShift(pad=max(1, round(img_size / 8)), fill=dataset.fill(), flip=flip)


def _load_digits(img_size: int) -> Datasets:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=DIGITS_VAL_FRACTION,
                                          stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    pixels = images[train_idx].double() / 16
    mean, std = (pixels.mean().item(),) * 3, (pixels.std().item(),) * 3  # about 0.305 and 0.376
    train, val = (TensorImages(images[i], labels[i], img_size, mean, std, scale=1 / 16) for i in (train_idx, val_idx))
    return Datasets(train, val, 10, _shift_augment(train, img_size, flip=False), _resized(mean, std))


def _resized(mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """The in-memory sources: the whole image resized (bilinear) to img_size, then normalised."""
    return dict(mean=tuple(mean), std=tuple(std), interpolation="bilinear", crop_pct=1.0)


def _load_synthetic(img_size: int, size: tuple[int, int], num_classes: int, seed: int) -> Datasets:
    n_train, n_val = size
    if n_train < 1 or n_val < 1:
        raise ValueError(f"synthetic_size {size!r}: expected two positive sizes (train, val)")
    if num_classes < 1:
        raise ValueError(f"num_classes {num_classes!r}: expected a positive int")
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for n in (n_train, n_val):
        images = torch.randint(0, 256, (n, 3, img_size, img_size), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        sets.append(TensorImages(images, labels, img_size, (0.5,) * 3, (0.5,) * 3, scale=1 / 255))
    return Datasets(sets[0], sets[1], num_classes, None, _resized((0.5,) * 3, (0.5,) * 3))


def _read_idx(source: DataSource, file: Path, ndim: int, what: str) -> np.ndarray:
    """The values of one IDX file as a uint8 array of the sizes in its header.

    The format: a 4-byte magic number (two zero bytes, the type code, the number of dimensions), one big-endian int32
    size per dimension, then the values in C order. Only type code 0x08 (uint8) is read: MNIST-style images and labels
    are unsigned bytes. ValueError naming the file unless it is an `ndim`-D uint8 IDX file of exactly the bytes its
    header gives (a truncated download is caught here, not as a shape error later)."""
    expected = f"expected {what}: a {ndim}-D IDX file of uint8 (magic number 0x000008{ndim:02x})"
    try:
        if file.name.endswith(".gz"):
            with gzip.open(file, "rb") as f:
                raw = f.read()
        else:
            raw = file.read_bytes()
    except EOFError as exc:  # gzip: the compressed stream ends early
        raise fail(source, f"{file} is truncated ({exc}); {expected}") from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise fail(source, f"cannot read {file}: {exc.strerror or exc}") from exc
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise fail(source, f"{file} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number; "
                            f"{expected}")
    if raw[:2] != b"\0\0":
        gzipped = f" (a gzip stream: name it {file.name}.gz)" if raw[:2] == b"\x1f\x8b" else ""
        raise fail(source, f"{file} has magic number 0x{raw[:4].hex()}{gzipped}, not an IDX file; {expected}")
    if raw[2] != 0x08:
        raise fail(source, f"{file} holds {IDX_TYPES.get(raw[2], 'unknown')} values (type code 0x{raw[2]:02x}); "
                            f"only uint8 (0x08) is read; {expected}")
    if raw[3] != ndim:
        raise fail(source, f"{file} is {raw[3]}-D; {expected}")
    if len(raw) < header:
        raise fail(source, f"{file} is truncated: {len(raw)} bytes, shorter than its {header}-byte header; "
                            f"{expected}")
    sizes = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if min(sizes) < 0:
        raise fail(source, f"{file} has negative sizes {sizes} in its header; {expected}")
    count, body = int(np.prod(sizes)), len(raw) - header
    if body != count:
        problem = "is truncated" if body < count else "is too long"
        raise fail(source, f"{file} {problem}: its header gives {' x '.join(map(str, sizes))} = {count} bytes of "
                            f"values after the {header}-byte header, it holds {body}; {expected}")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(sizes).copy()  # writable


def _pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """The mean and (unbiased) std of uint8 pixels on a [0, 1] scale, from their 256-bin histogram: exact, and
    without a float copy of the images (376 MB in float64 for Fashion-MNIST's train set; numpy's bincount would make
    an int64 one)."""
    counts = torch.bincount(images.flatten(), minlength=256).double()  # (256,)
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum()
    mean = (counts * values).sum() / n
    std = ((counts * (values - mean) ** 2).sum() / max(n.item() - 1, 1)).sqrt().item()
    return mean.item(), std or 1.0  # images of one grey level: nothing to scale


def _load_idx(source: DataSource, img_size: int) -> Datasets:
    """An IDX source, handled as the digits: grey images resized to img_size, replicated to 3 channels, normalised
    with the train split's pixel mean and std, shifted (not flipped: digits and clothes have a handedness)."""
    train_images, train_labels, val_images, val_labels = idx_paths(source)
    splits = []
    for images_file, labels_file in ((train_images, train_labels), (val_images, val_labels)):
        images = _read_idx(source, images_file, 3, "images")  # (N, rows, cols) uint8
        labels = _read_idx(source, labels_file, 1, "labels")  # (N,) uint8
        if len(labels) != len(images):
            raise fail(source, f"{labels_file} has {len(labels)} labels for the {len(images)} images of "
                                f"{images_file}; expected one label per image")
        if not len(images):
            raise fail(source, f"{images_file} holds no images; expected at least one")
        splits.append((images, labels))
    num_classes = int(splits[0][1].max()) + 1
    if splits[1][1].max() >= num_classes:
        raise fail(source, f"{val_labels} has label {int(splits[1][1].max())}, but the train labels are "
                            f"0..{num_classes - 1}; expected val labels among the train's classes")
    splits = [(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
              for images, labels in splits]  # (N, 1, rows, cols) uint8, (N,) int64
    mean, std = _pixel_stats(splits[0][0])  # Fashion-MNIST: about 0.286 and 0.353
    train, val = (TensorImages(images, labels, img_size, (mean,) * 3, (std,) * 3, scale=1 / 255)
                  for images, labels in splits)
    return Datasets(train, val, num_classes, _shift_augment(train, img_size, flip=False),
                    _resized((mean,) * 3, (std,) * 3))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists and numpy arrays) and refuses every other global, so that a
    hostile file cannot run code."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.multiarray", name) for core in ("core", "_core")
                 for name in ("_reconstruct", "scalar")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(source: DataSource, file: Path, label_key: bytes, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) uint8 images and (N,) labels of one pickle batch; ValueError if it is not a CIFAR batch."""
    expected = f"expected a CIFAR batch: a pickled dict with b'data' (N, 3072) uint8 and b{label_key.decode()!r}"
    try:
        with open(file, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise fail(source, f"cannot read {file}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a corrupt pickle raises about any exception type
        raise fail(source, f"cannot unpickle {file} ({type(exc).__name__}: {exc}); {expected}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise fail(source, f"{file} lacks b'data' or b{label_key.decode()!r}; {expected}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise fail(source, f"{file}: b'data' is {found}; {expected}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise fail(source, f"{file}: b{label_key.decode()!r} is not a list of ints; {expected}") from exc
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise fail(source, f"{file}: b{label_key.decode()!r} is not {len(data)} labels in [0, {num_classes}); "
                            f"{expected}")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)  # rows are R, G, B planes
    return images, torch.from_numpy(labels)


def _load_cifar(source: DataSource, folder: Path, img_size: int) -> Datasets:
    _, train_files, test_file, label_key, num_classes, _ = CIFAR_LAYOUT[source.kind]
    mean, std = CIFAR_STATS[source.kind]
    sets = []
    for names in (train_files, (test_file,)):
        parts = [_read_cifar_batch(source, folder / name, label_key, num_classes) for name in names]
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        sets.append(TensorImages(images, labels, img_size, mean, std, scale=1 / 255))
    return Datasets(sets[0], sets[1], num_classes, _shift_augment(sets[0], img_size, flip=True), _resized(mean, std))


def _load_imagefolder(source: DataSource, path: Path, img_size: int) -> Datasets:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform

    train_root, val_root = path / "train", path / "val"
    try:
        train = ImageDataset(str(train_root), transform=create_transform(img_size, is_training=True,
                                                                         **IMAGENET_TRAIN_AUGMENT))
    except RuntimeError as exc:  # timm: "Found 0 images in subfolders of ..."
        raise fail(source, f"no images under the class folders of {train_root}; expected "
                            f"{train_root}/<class>/*.jpg (or .png, ...)") from exc
    class_to_idx = train.reader.class_to_idx  # sorted class names -> 0..K-1
    unknown = [name for name in class_folders(val_root) if name not in class_to_idx]
    if unknown:
        raise fail(source, f"val classes {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} have no "
                            f"images under {train_root}; expected the val class folders to be train's")
    try:
        val = ImageDataset(str(val_root), class_map=dict(class_to_idx),
                           transform=create_transform(img_size, is_training=False, crop_pct=IMAGENET_VAL_CROP_PCT))
    except RuntimeError as exc:
        raise fail(source, f"no images under the class folders of {val_root}; expected "
                            f"{val_root}/<class>/*.jpg (or .png, ...)") from exc
    return Datasets(train, val, len(class_to_idx), None,  # create_transform's defaults: ImageNet's mean and std
                    dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation="bilinear",
                         crop_pct=IMAGENET_VAL_CROP_PCT))
