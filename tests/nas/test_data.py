"""The data sources of `nas train-supernet`: parsing, the fixed digits split, IDX files (Fashion-MNIST), CIFAR pickles,
image folders, errors, the sharded deterministic loaders, the held-out split and the train subset (docs/design.md section 7)."""
import gzip
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image


import nas.data.source
from nas.train.checkpoint import load_checkpoint
from nas.cli import main
from nas.options import DATA_HELP
from nas.data.source import DataSource, parse_data
from nas.data.splits import holdout_split, train_subset
from nas.data.datasets import load_datasets
from nas.data.loaders import make_loader
from nas.train.config import RunConfig
from nas.data.splits import fitness_split
from nas.train.loop import load_training_data
from search_spaces import load_space

IMG = 16  # small img_size: every source resizes to it


@pytest.fixture(scope="module")
def digits():
    return load_datasets(parse_data("digits"), IMG)


def write_cifar(folder, kind, n=20, protocol=pickle.DEFAULT_PROTOCOL, rng=None):
    """Fake CIFAR batches of n images each with the real file names and keys; returns {file: (data, labels)}."""
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True)
    if kind == "cifar10":
        names, key, classes = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        names, key, classes = ["train", "test"], b"fine_labels", 100
    written = {}
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        batch = {b"batch_label": b"fake", b"data": data, key: labels, b"filenames": [b"x.png"] * n}
        if kind == "cifar100":
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (data, labels)
    return written


def idx_bytes(array, type_code=0x08):
    """An IDX file of `array` (uint8): two zero bytes, the type code, the number of dimensions, big-endian int32
    sizes, then the values."""
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(folder, n_train=30, n_val=10, classes=4, size=(7, 5), gzipped=(True, False, True, False), rng=None):
    """Fake MNIST-format files with the real names (gzipped ones as NAME.gz, by file); returns the four arrays."""
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in (n_train, n_val):
        labels = rng.integers(0, classes, n).astype(np.uint8)
        labels[0] = classes - 1  # the train labels name every class up to classes - 1
        arrays += [rng.integers(0, 256, (n, *size), dtype=np.uint8), labels]
    for name, array, gz in zip(IDX_NAMES, arrays, gzipped):
        data = idx_bytes(array)
        (folder / f"{name}.gz").write_bytes(gzip.compress(data)) if gz else (folder / name).write_bytes(data)
    return arrays


def idx_file(folder, name):
    return next(folder / n for n in (name, f"{name}.gz") if (folder / n).is_file())


def write_images(root, split, classes, per_class=2, size=(20, 14)):
    for c, name in enumerate(classes):
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size[1], size[0], 3), 40 * c + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"{i}.png")


# ------------------------------------------------------------------------------------------------ parsing

def test_parse_forms(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    assert parse_data("digits") == DataSource("digits", None)
    assert parse_data("synthetic") == DataSource("synthetic", None)
    assert parse_data(f"cifar10:{tmp_path}") == DataSource("cifar10", tmp_path)
    assert str(parse_data(f"cifar10:{tmp_path}")) == f"cifar10:{tmp_path}"
    for form in ("digits", "synthetic", "imagefolder:PATH", "cifar10:PATH", "cifar100:PATH", "idx:DIR",
                 "fashion-mnist[:DIR]"):
        assert form.split(":")[0] in DATA_HELP


@pytest.mark.parametrize("text", ["foo", "", "digits:/x", "synthetic:3", "cifar:/x", "imagenet:/x", "Digits", "idx",
                                  "mnist", "fashion_mnist", "Fashion-MNIST"])
def test_parse_unknown_form(text):
    with pytest.raises(ValueError, match=rf"^--data '{text}': expected one of digits, synthetic, imagefolder:PATH, "
                                         r"cifar10:PATH, cifar100:PATH, idx:DIR, fashion-mnist\[:DIR\]$"):
        parse_data(text)


def test_parse_missing_paths(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"--data 'cifar10:': expected a path after 'cifar10:'"):
        parse_data("cifar10:")
    with pytest.raises(ValueError, match=rf"--data 'cifar10:{missing}': no such folder {missing}; expected the "
                                         r"python batches data_batch_1\.\.5 and test_batch"):
        parse_data(f"cifar10:{missing}")
    with pytest.raises(ValueError, match=rf"no such folder {missing}; expected class folders under "
                                         rf"{missing}/train and {missing}/val"):
        parse_data(f"imagefolder:{missing}")


def test_cifar_folder_lacking_batches(tmp_path):
    with pytest.raises(ValueError, match=rf"--data 'cifar10:{tmp_path}': expected the python batches "
                                         r"data_batch_1\.\.5 and test_batch \(the 'cifar-10-batches-py' folder\) "
                                         rf"at {tmp_path} or {tmp_path}/cifar-10-batches-py"):
        parse_data(f"cifar10:{tmp_path}")
    with pytest.raises(ValueError, match=r"expected the python batches train and test \(the 'cifar-100-python'"):
        parse_data(f"cifar100:{tmp_path}")
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ValueError, match=r"cifar-10-batches-py lacks data_batch_3, test_batch; expected the python"):
        parse_data(f"cifar10:{tmp_path}")
    # the check also runs when a DataSource is built by hand
    with pytest.raises(ValueError, match=r"lacks data_batch_3, test_batch"):
        load_datasets(DataSource("cifar10", tmp_path), IMG)


def test_imagefolder_without_train_val(tmp_path):
    write_images(tmp_path, "train", ["a", "b"])
    with pytest.raises(ValueError, match=rf"--data 'imagefolder:{tmp_path}': {tmp_path}/val has no class folders; "
                                         rf"expected class folders under {tmp_path}/train and {tmp_path}/val"):
        parse_data(f"imagefolder:{tmp_path}")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "loose.png").touch()  # images without class folders
    with pytest.raises(ValueError, match=r"val has no class folders"):
        parse_data(f"imagefolder:{tmp_path}")


# ------------------------------------------------------------------------------------------------ digits

def test_digits_fixed_stratified_split(digits):
    assert (len(digits.train), len(digits.val), digits.num_classes) == (1437, 360, 10)
    x, y = digits.train[0]
    assert x.shape == (3, IMG, IMG) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # grey, replicated
    train, val = Counter(digits.train.labels.tolist()), Counter(digits.val.labels.tolist())
    assert set(train) == set(val) == set(range(10))
    for c in range(10):  # 20 % of every class in val
        assert abs(val[c] - 0.2 * (train[c] + val[c])) <= 1
    # independent of the seed and identical across calls, at any img_size
    again = load_datasets(DataSource("digits"), 32, seed=123)
    assert torch.equal(again.train.images, digits.train.images) and torch.equal(again.val.labels, digits.val.labels)
    assert again.train[0][0].shape == (3, 32, 32)
    # the train split's pixels are normalised (before upsampling: mean 0, std 1)
    pixels = (digits.train.images.float() / 16 - digits.train.mean[0, 0]) / digits.train.std[0, 0]
    assert pixels.mean().item() == pytest.approx(0, abs=1e-5) and pixels.std().item() == pytest.approx(1, abs=1e-4)
    # train and val are disjoint images (up to duplicates within the digits set itself)
    flat = lambda s: {bytes(row) for row in s.images.flatten(1).numpy()}
    assert len(flat(digits.train) & flat(digits.val)) < 5


def test_batched_fetch_equals_items(digits):
    indices = [5, 0, 1436, 7]
    batch = digits.train.__getitems__(indices)
    for i, (x, y) in zip(indices, batch):
        assert torch.equal(x, digits.train[i][0]) and torch.equal(y, digits.train[i][1])


def test_digits_augment(digits):
    x = torch.stack([digits.train[i][0] for i in range(32)])  # (32, 3, IMG, IMG)
    a = digits.augment(x, torch.Generator().manual_seed(1))
    b = digits.augment(x, torch.Generator().manual_seed(1))
    c = digits.augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert digits.augment.pad == IMG // 8 and not digits.augment.flip
    # a translation: each augmented image is its original shifted by at most pad pixels, background padded in
    pad, background = digits.augment.pad, digits.augment.fill[0]
    padded = torch.nn.functional.pad(x, (pad,) * 4, value=background)
    for i in range(len(x)):
        assert any(torch.equal(a[i], padded[i, :, dy:dy + IMG, dx:dx + IMG])
                   for dy in range(2 * pad + 1) for dx in range(2 * pad + 1))


# ------------------------------------------------------------------------------------------------ CIFAR

@pytest.mark.parametrize("kind,folder,classes", [("cifar10", "cifar-10-batches-py", 10),
                                                 ("cifar100", "cifar-100-python", 100)])
def test_cifar(tmp_path, kind, folder, classes):
    written = write_cifar(tmp_path / folder, kind)
    train_files = [name for name in written if name not in ("test_batch", "test")]
    for path in (tmp_path, tmp_path / folder):  # the batches folder or its parent
        data = load_datasets(parse_data(f"{kind}:{path}"), 32)
        assert (len(data.train), len(data.val), data.num_classes) == (20 * len(train_files), 20, classes)
        assert data.train.labels.tolist() == sum((written[name][1] for name in train_files), [])
        # rows are the R, G, B planes of a 32x32 image
        raw, _ = written[train_files[0]]
        assert torch.equal(data.train.images[3], torch.from_numpy(raw[3]).view(3, 32, 32))
        x, y = data.val[0]
        test_data, test_labels = written["test_batch" if kind == "cifar10" else "test"]
        assert x.shape == (3, 32, 32) and y.item() == test_labels[0]
        mean, std = data.train.mean.view(3, 1, 1), data.train.std.view(3, 1, 1)
        assert torch.allclose(x, (torch.from_numpy(test_data[0]).view(3, 32, 32) / 255 - mean) / std, atol=1e-6)
    resized = load_datasets(parse_data(f"{kind}:{tmp_path}"), IMG)
    assert resized.train[0][0].shape == (3, IMG, IMG)
    batch = torch.stack([resized.train[i][0] for i in range(8)])
    out = resized.augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and not torch.equal(out, batch) and resized.augment.flip
    assert torch.equal(out, resized.augment(batch, torch.Generator().manual_seed(0)))


def test_cifar_pickle_protocols(tmp_path):
    """Protocol 5 (out-of-band buffers), and a Python 2 style protocol-2 pickle naming numpy.core like the real
    files."""
    write_cifar(tmp_path / "p5", "cifar10", protocol=5)
    assert len(load_datasets(parse_data(f"cifar10:{tmp_path / 'p5'}"), 32).train) == 100
    written = write_cifar(tmp_path / "p2", "cifar10", protocol=2)
    for name in written:
        file = tmp_path / "p2" / name
        file.write_bytes(file.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data = load_datasets(parse_data(f"cifar10:{tmp_path / 'p2'}"), 32)
    assert torch.equal(data.val.images.flatten(1), torch.from_numpy(written["test_batch"][0]))


def test_cifar_corrupt_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, "cifar10")
    source = parse_data(f"cifar10:{tmp_path}")
    (folder / "data_batch_2").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=rf"--data 'cifar10:{tmp_path}': cannot unpickle {folder}/data_batch_2 "
                                         r"\(.*\); expected a CIFAR batch"):
        load_datasets(source, 32)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match=r"data_batch_2 lacks b'data' or b'labels'"):
        load_datasets(source, 32)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_2: b'data' is uint8 \(2, 100\)"):
        load_datasets(source, 32)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(ValueError, match=r"b'labels' is not 2 labels in \[0, 10\)"):
        load_datasets(source, 32)
    # a pickle that would run code is refused before anything runs
    (folder / "data_batch_2").write_bytes(pickle.dumps(Counter()))
    with pytest.raises(ValueError, match=r"cannot unpickle .*data_batch_2 \(UnpicklingError: refers to "
                                         r"collections.Counter\)"):
        load_datasets(source, 32)


# ------------------------------------------------------------------------------------------------ imagefolder

def test_imagefolder(tmp_path):
    write_images(tmp_path, "train", ["cat", "dog", "emu"], per_class=3)
    write_images(tmp_path, "val", ["cat", "emu"], per_class=1)  # val may lack a class
    data = load_datasets(parse_data(f"imagefolder:{tmp_path}"), IMG)
    assert (len(data.train), len(data.val), data.num_classes, data.augment) == (9, 2, 3, None)
    x, y = data.train[0]
    assert x.shape == (3, IMG, IMG) and y == 0
    assert [data.val[i][1] for i in range(2)] == [0, 2]  # the train classes' indices
    assert data.val[0][0].shape == (3, IMG, IMG)
    xb, yb = next(iter(make_loader(data.train, 4, train=True)))
    assert xb.shape == (4, 3, IMG, IMG) and yb.dtype == torch.int64


def test_imagefolder_class_mismatch_and_empty(tmp_path):
    write_images(tmp_path, "train", ["cat", "dog"])
    write_images(tmp_path, "val", ["cat", "yak"])
    with pytest.raises(ValueError, match=r"val classes yak have no images under .*train; expected the val class"):
        load_datasets(parse_data(f"imagefolder:{tmp_path}"), IMG)
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"--data 'imagefolder:{empty}': no images under the class folders of "
                                         rf"{empty}/train"):
        load_datasets(parse_data(f"imagefolder:{empty}"), IMG)


# ------------------------------------------------------------------------------------------------ synthetic

def test_synthetic():
    data = load_datasets(parse_data("synthetic"), IMG, synthetic_size=(40, 12), num_classes=7, seed=3)
    assert (len(data.train), len(data.val), data.num_classes, data.augment) == (40, 12, 7, None)
    assert data.train[0][0].shape == (3, IMG, IMG) and set(data.train.labels.tolist()) <= set(range(7))
    again = load_datasets(parse_data("synthetic"), IMG, synthetic_size=(40, 12), num_classes=7, seed=3)
    other = load_datasets(parse_data("synthetic"), IMG, synthetic_size=(40, 12), num_classes=7, seed=4)
    assert torch.equal(data.train.images, again.train.images) and torch.equal(data.val.labels, again.val.labels)
    assert not torch.equal(data.train.images, other.train.images)


def test_no_global_rng(digits):
    state = torch.get_rng_state()
    load_datasets(parse_data("synthetic"), IMG, synthetic_size=(8, 8))
    for batch in make_loader(digits.train, 64, train=True, epoch=3):
        digits.augment(batch[0], torch.Generator().manual_seed(0))
    holdout_split(digits.train, 100, seed=1)
    assert torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------------------------------------------------ loaders

class Items(torch.utils.data.Dataset):
    """Item i is i: loaders' batches are their indices."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def batches(loader):
    return [b.tolist() for b in loader]


def test_train_order_depends_on_seed_and_epoch():
    data = Items(103)
    a = batches(make_loader(data, 10, train=True, seed=1, epoch=0))
    assert len(a) == 10 and all(len(b) == 10 for b in a)  # drop_last
    assert len({i for b in a for i in b}) == 100
    assert a == batches(make_loader(data, 10, train=True, seed=1, epoch=0))
    assert a != batches(make_loader(data, 10, train=True, seed=1, epoch=1))
    assert a != batches(make_loader(data, 10, train=True, seed=2, epoch=0))
    assert a != sorted(a)


def test_ranks_split_each_global_batch():
    data, b = Items(101), 4
    single = batches(make_loader(data, 2 * b, train=True, seed=5, epoch=2))
    ranks = [batches(make_loader(data, b, train=True, seed=5, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 101 // (2 * b)
    for t, global_batch in enumerate(single):
        r0, r1 = set(ranks[0][t]), set(ranks[1][t])
        assert len(r0) == len(r1) == b and not r0 & r1 and r0 | r1 == set(global_batch)
    assert not {i for bt in ranks[0] for i in bt} & {i for bt in ranks[1] for i in bt}


def test_skip_batches():
    data = Items(50)
    full = batches(make_loader(data, 4, train=True, seed=0, epoch=1, rank=1, world_size=2))
    for k in (0, 1, 4, len(full)):
        loader = make_loader(data, 4, train=True, seed=0, epoch=1, rank=1, world_size=2, skip_batches=k)
        assert len(loader) == len(full) - k and batches(loader) == full[k:]
    with pytest.raises(ValueError, match=r"skip_batches 7: expected at most the 6 batches of this epoch"):
        make_loader(data, 4, train=True, world_size=2, skip_batches=7)


def test_skipped_batches_are_not_loaded():
    class Counting(Items):
        loaded = []

        def __getitem__(self, i):
            self.loaded.append(i)
            return i

    data = Counting(40)
    rest = batches(make_loader(data, 4, train=True, skip_batches=8))
    assert sorted(data.loaded) == sorted(i for b in rest for i in b) and len(data.loaded) == 8


@pytest.mark.parametrize("n,world_size,batch_size", [(10, 2, 3), (11, 2, 4), (7, 3, 5), (2, 4, 1)])
def test_val_shards_cover_every_item_once(n, world_size, batch_size):
    shards = [batches(make_loader(Items(n), batch_size, train=False, rank=r, world_size=world_size))
              for r in range(world_size)]
    items = [i for shard in shards for b in shard for i in b]
    assert items == list(range(n))  # in order, no duplicates, no padding, nothing dropped
    assert all(len(b) <= batch_size for shard in shards for b in shard)


def test_loader_argument_errors():
    with pytest.raises(ValueError, match=r"rank 2: expected an int in \[0, 1\] for world_size 2"):
        make_loader(Items(10), 2, train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size 0: expected an int >= 1"):
        make_loader(Items(10), 0, train=True)
    with pytest.raises(ValueError, match=r"batch_size 8: a train set of 10 items has no full global batch of "
                                         r"world_size \* batch_size = 16 items"):
        make_loader(Items(10), 8, train=True, world_size=2)


def test_loader_with_workers(digits):
    kwargs = dict(train=True, seed=0, epoch=0, workers=2)
    a = [y.tolist() for _, y in make_loader(digits.val, 50, **kwargs)]
    assert a == [y.tolist() for _, y in make_loader(digits.val, 50, **{**kwargs, "workers": 0})]


# ------------------------------------------------------------------------------------------------ holdout

def test_holdout_split(digits):
    rest, held = holdout_split(digits.train, 200, seed=0)
    assert (len(rest), len(held)) == (1237, 200)
    assert not set(rest.indices) & set(held.indices) and set(rest.indices) | set(held.indices) == set(range(1437))
    assert rest.indices == sorted(rest.indices) and held.indices == sorted(held.indices)
    assert holdout_split(digits.train, 200, seed=0)[1].indices == held.indices
    assert holdout_split(digits.train, 200, seed=1)[1].indices != held.indices
    x, y = held[0]
    assert torch.equal(x, digits.train[held.indices[0]][0])
    xb, _ = next(iter(make_loader(held, 16, train=False)))  # Subset forwards the batched fetch
    assert xb.shape == (16, 3, IMG, IMG)


@pytest.mark.parametrize("size", [0, -1, 10, 11, 2.5])
def test_holdout_split_errors(size):
    with pytest.raises(ValueError, match=rf"held-out size {size}: expected an int in \[1, 9\] for a train set of "
                                         r"10 items"):
        holdout_split(Items(10), size)


# ------------------------------------------------------------------------------------------------ IDX / Fashion-MNIST

@pytest.mark.parametrize("gzipped", [(True,) * 4, (False,) * 4, (True, False, False, True)],
                         ids=["gzipped", "plain", "mixed"])
def test_idx(tmp_path, gzipped):
    train_images, train_labels, val_images, val_labels = write_idx(tmp_path, gzipped=gzipped)
    source = parse_data(f"idx:{tmp_path}")
    assert source == DataSource("idx", tmp_path) and str(source) == f"idx:{tmp_path}"
    data = load_datasets(source, IMG)
    assert (len(data.train), len(data.val), data.num_classes) == (30, 10, 4)  # max train label + 1
    assert torch.equal(data.train.images, torch.from_numpy(train_images).unsqueeze(1))  # (30, 1, 7, 5) uint8
    assert data.train.labels.tolist() == train_labels.tolist() and data.val.labels.tolist() == val_labels.tolist()
    x, y = data.val[3]
    assert x.shape == (3, IMG, IMG) and x.dtype == torch.float32 and y.item() == val_labels[3]
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # grey, replicated
    # normalised with the train split's pixel statistics at native size, on a [0, 1] scale
    pixels = torch.from_numpy(train_images).double() / 255
    assert data.train.mean[0, 0].item() == pytest.approx(pixels.mean().item(), abs=1e-6)
    assert data.train.std[0, 0].item() == pytest.approx(pixels.std().item(), abs=1e-6)
    native = load_datasets(source, 7)  # resizing only: at 7 x 5 -> 7 x 7 the values stay the train set's
    expected = torch.nn.functional.interpolate(torch.from_numpy(val_images[3:4, None]).float() / 255, size=(7, 7),
                                               mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(native.val[3][0][0], (expected - native.train.mean[0, 0]) / native.train.std[0, 0],
                          atol=1e-5)
    # the digits' augmentation: a random translation by up to img_size / 8 pixels, no flips
    assert data.augment.pad == IMG // 8 and not data.augment.flip
    batch = torch.stack([data.train[i][0] for i in range(8)])
    out = data.augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and torch.equal(out, data.augment(batch, torch.Generator().manual_seed(0)))
    xb, yb = next(iter(make_loader(data.train, 8, train=True)))
    assert xb.shape == (8, 3, IMG, IMG) and yb.dtype == torch.int64


def test_idx_prefers_the_plain_file(tmp_path):
    write_idx(tmp_path, gzipped=(False,) * 4)
    name = "train-labels-idx1-ubyte"
    (tmp_path / f"{name}.gz").write_bytes(b"not gzip")  # not read while the plain file exists
    assert load_datasets(parse_data(f"idx:{tmp_path}"), IMG).num_classes == 4
    (tmp_path / name).unlink()
    with pytest.raises(ValueError, match=rf"cannot read {tmp_path}/{name}\.gz: Not a gzipped file"):
        load_datasets(parse_data(f"idx:{tmp_path}"), IMG)


def test_idx_missing_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=rf"^--data 'idx:{missing}': no such folder {missing}; expected the "
                                         r"MNIST-format IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                                         r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte \(each plain or \.gz\)$"):
        parse_data(f"idx:{missing}")
    write_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match=rf"^--data 'idx:{tmp_path}': {tmp_path} lacks "
                                         r"train-images-idx3-ubyte\[\.gz\], t10k-labels-idx1-ubyte\[\.gz\]; "
                                         r"expected the MNIST-format IDX files"):
        parse_data(f"idx:{tmp_path}")
    with pytest.raises(ValueError, match=r"lacks train-images-idx3-ubyte"):  # also for a DataSource built by hand
        load_datasets(DataSource("idx", tmp_path), IMG)
    with pytest.raises(ValueError, match=r"^--data 'idx:': expected a path after 'idx:'$"):
        parse_data("idx:")


def test_fashion_mnist_forms_and_missing_files(tmp_path, monkeypatch):
    """`fashion-mnist` reads the Debian package's folder (patched here: CI lacks the package), `fashion-mnist:DIR`
    another one; missing files name the package that installs them."""
    default = tmp_path / "default"
    monkeypatch.setattr(nas.data.source, "FASHION_MNIST_DIR", default)
    install = rf"; 'apt-get install dataset-fashion-mnist' puts them in {default}$"
    with pytest.raises(ValueError, match=rf"^--data 'fashion-mnist': no such folder {default}; expected the "
                                         rf"MNIST-format IDX files .*{install}"):
        parse_data("fashion-mnist")
    default.mkdir()
    with pytest.raises(ValueError, match=rf"^--data 'fashion-mnist': {default} lacks train-images-idx3-ubyte\[\.gz\], "
                                         rf"train-labels-idx1-ubyte\[\.gz\], t10k-images-idx3-ubyte\[\.gz\], "
                                         rf"t10k-labels-idx1-ubyte\[\.gz\]; expected .*{install}"):
        parse_data("fashion-mnist")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match=rf"^--data 'fashion-mnist:{other}': {other} lacks .*{install}"):
        parse_data(f"fashion-mnist:{other}")
    with pytest.raises(ValueError, match=r"^--data 'fashion-mnist:': expected a path after 'fashion-mnist:'$"):
        parse_data("fashion-mnist:")
    write_idx(default, classes=10)
    write_idx(other, classes=3)
    assert parse_data("fashion-mnist") == DataSource("fashion-mnist", None)
    assert str(parse_data("fashion-mnist")) == "fashion-mnist"
    assert parse_data(f"fashion-mnist:{other}") == DataSource("fashion-mnist", other)
    assert load_datasets(parse_data("fashion-mnist"), IMG).num_classes == 10
    assert load_datasets(parse_data(f"fashion-mnist:{other}"), IMG).num_classes == 3


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_idx_truncated(tmp_path, gz):
    write_idx(tmp_path, gzipped=(gz,) * 4)
    file = idx_file(tmp_path, "train-images-idx3-ubyte")
    data = idx_bytes(np.zeros((30, 7, 5), np.uint8))[:-10]  # a download cut short
    file.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match=rf"^--data 'idx:{tmp_path}': {file} is truncated: its header gives "
                                         r"30 x 7 x 5 = 1050 bytes of values after the 16-byte header, it holds "
                                         r"1040; expected images: a 3-D IDX file of uint8 "
                                         r"\(magic number 0x00000803\)$"):
        load_datasets(parse_data(f"idx:{tmp_path}"), IMG)
    file.write_bytes(gzip.compress(data)[:-20] if gz else data[:10])  # a cut gzip stream, a cut header
    problem = (r"is truncated \(Compressed file ended" if gz else
               r"is truncated: 10 bytes, shorter than its 16-byte header")
    with pytest.raises(ValueError, match=rf"{file} {problem}.*; expected images"):
        load_datasets(parse_data(f"idx:{tmp_path}"), IMG)


def test_idx_bad_headers(tmp_path):
    write_idx(tmp_path, gzipped=(False,) * 4)
    source = parse_data(f"idx:{tmp_path}")
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    good = images.read_bytes()
    images.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match=rf"^--data 'idx:{tmp_path}': {images} has magic number 0x12340803, not an "
                                         r"IDX file; expected images: a 3-D IDX file of uint8 "
                                         r"\(magic number 0x00000803\)$"):
        load_datasets(source, IMG)
    images.write_bytes(gzip.compress(good))  # gzipped under the plain name
    with pytest.raises(ValueError, match=r"has magic number 0x1f8b.*\(a gzip stream: name it "
                                         r"train-images-idx3-ubyte\.gz\)"):
        load_datasets(source, IMG)
    images.write_bytes(idx_bytes(np.zeros((30, 7, 5), np.uint8), type_code=0x0D))
    with pytest.raises(ValueError, match=rf"{images} holds float32 values \(type code 0x0d\); only uint8 \(0x08\) "
                                         r"is read; expected images"):
        load_datasets(source, IMG)
    images.write_bytes(good)
    labels.write_bytes(idx_bytes(np.zeros((30, 2), np.uint8)))  # a labels file that is not 1-D
    with pytest.raises(ValueError, match=rf"{labels} is 2-D; expected labels: a 1-D IDX file of uint8 "
                                         r"\(magic number 0x00000801\)$"):
        load_datasets(source, IMG)
    labels.write_bytes(idx_bytes(np.zeros(31, np.uint8)))
    with pytest.raises(ValueError, match=rf"^--data 'idx:{tmp_path}': {labels} has 31 labels for the 30 images of "
                                         rf"{images}; expected one label per image$"):
        load_datasets(source, IMG)
    labels.write_bytes(idx_bytes(np.zeros(30, np.uint8)) + b"\0")
    with pytest.raises(ValueError, match=rf"{labels} is too long: its header gives 30 = 30 bytes"):
        load_datasets(source, IMG)
    labels.write_bytes(idx_bytes(np.ones(30, np.uint8)))  # train has classes 0..1, val labels reach 3
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte has label 3, but the train labels are 0\.\.1; "
                                         r"expected val labels among the train's classes"):
        load_datasets(source, IMG)


REAL_FASHION_MNIST = nas.data.source.FASHION_MNIST_DIR


@pytest.mark.skipif(not all((REAL_FASHION_MNIST / f"{name}.gz").is_file() for name in IDX_NAMES),
                    reason=f"Fashion-MNIST is not installed in {REAL_FASHION_MNIST} "
                           f"(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    data = load_datasets(parse_data("fashion-mnist"), IMG)
    assert (len(data.train), len(data.val), data.num_classes) == (60000, 10000, 10)
    assert data.train.images.shape == (60000, 1, 28, 28) and data.val.images.shape == (10000, 1, 28, 28)
    assert data.train.labels.bincount().tolist() == [6000] * 10 and data.val.labels.bincount().tolist() == [1000] * 10
    assert data.train.mean[0, 0].item() == pytest.approx(0.2860, abs=1e-4)
    assert data.train.std[0, 0].item() == pytest.approx(0.3530, abs=1e-4)
    assert data.train[0][0].shape == (3, IMG, IMG)


# ------------------------------------------------------------------------------------------------ train subset

def test_train_subset():
    sub = train_subset(Items(100), 30)
    assert len(sub) == 30 and sub.indices == sorted(sub.indices) and len(set(sub.indices)) == 30
    assert train_subset(Items(100), 30).indices == sub.indices  # a fixed draw
    assert train_subset(Items(100), 30, seed=5).indices != sub.indices
    assert set(train_subset(Items(100), 10).indices) < set(sub.indices)  # a smaller N draws some of a larger N's
    # of a Subset: indices into the same underlying dataset
    rest, held = holdout_split(Items(100), 20)
    inner = train_subset(rest, 30)
    assert inner.dataset is rest.dataset and set(inner.indices) <= set(rest.indices)
    assert not set(inner.indices) & set(held.indices) and [inner[i] for i in range(30)] == inner.indices


@pytest.mark.parametrize("size", [0, -1, 10, 11, 2.5, True])
def test_train_subset_errors(size):
    with pytest.raises(ValueError, match=rf"^--train-subset {size!r}: expected an int in \[1, 9\] for the 10 images "
                                         r"of the train set \(0 = train on all of them\)$"):
        train_subset(Items(10), size)


def test_training_subset_after_holdout():
    """`load_training_data` takes the subset from the train set less the held-out images: those stay fitness_split's
    whatever the subset, and the subset is the same for every --seed."""
    space = load_space("tiny-32")
    _, held = fitness_split("digits", 300, space, 10)
    data, steps = load_training_data(RunConfig(holdout=300, train_subset=200), space.img_size, 10, 1)
    assert len(data.train) == 200 and steps == 200 // 32
    assert not set(data.train.indices) & set(held.indices)
    again, _ = load_training_data(RunConfig(holdout=300, train_subset=200, seed=7), space.img_size, 10, 1)
    assert again.train.indices == data.train.indices
    alone, _ = load_training_data(RunConfig(train_subset=200), space.img_size, 10, 1)
    assert len(alone.train) == 200 and alone.train.indices != data.train.indices
    with pytest.raises(ValueError, match=r"^--train-subset 1137: expected an int in \[1, 1136\] for the 1137 images "
                                         r"of the train set of 'digits' less the 300 of --holdout"):
        load_training_data(RunConfig(holdout=300, train_subset=1137), space.img_size, 10, 1)
    with pytest.raises(ValueError, match=r"^--batch-size 32: larger than the train set \(20 images of "
                                         r"--train-subset 20\) split over 1 process"):
        load_training_data(RunConfig(train_subset=20), space.img_size, 10, 1)
    with pytest.raises(ValueError, match=r"^--train-subset must be >= 0, got -1$"):
        RunConfig(train_subset=-1).validate()


def test_cli_trains_on_idx_with_a_subset(tmp_path, capsys):
    """`--data idx:DIR --train-subset N` end to end: the run trains N images and records both in config.yaml; a too
    large N is one line with exit status 2."""
    write_idx(tmp_path / "idx", n_train=40, n_val=8, classes=3)
    argv = ["train-supernet", "--data", f"idx:{tmp_path / 'idx'}", "--batch-size", "8", "--epochs", "1",
            "--eval-random", "0", "--device", "cpu", "--holdout", "0"]
    assert main([*argv, "--out", str(tmp_path / "big"), "--train-subset", "40"]) == 2
    err = capsys.readouterr().err
    assert "--train-subset 40: expected an int in [1, 39] for the 40 images of the train set of 'idx:" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main([*argv, "--out", str(tmp_path / "run"), "--train-subset", "16"]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "train_subset: 16" in config and f"data: idx:{tmp_path / 'idx'}" in config
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 16 // 8  # one epoch of the subset
