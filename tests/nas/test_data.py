"""The data sources of `nas train-supernet`: parsing, the fixed digits split, CIFAR pickles, image folders, errors,
the sharded deterministic loaders and the held-out split (DESIGN section 7)."""
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import (DATA_HELP, DataSource, holdout_split, load_datasets, make_loader, parse_data)

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
    for form in ("digits", "synthetic", "imagefolder:PATH", "cifar10:PATH", "cifar100:PATH"):
        assert form.split(":")[0] in DATA_HELP


@pytest.mark.parametrize("text", ["foo", "", "digits:/x", "synthetic:3", "cifar:/x", "imagenet:/x", "Digits"])
def test_parse_unknown_form(text):
    with pytest.raises(ValueError, match=rf"^--data '{text}': expected one of digits, synthetic, imagefolder:PATH, "
                                         r"cifar10:PATH, cifar100:PATH$"):
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
