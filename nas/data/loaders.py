"""Loaders whose order depends only on (seed, epoch), sharded across ranks, able to skip the batches that a
resumed run has already seen."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nas.interrupts import restore_default_signals


class ShardedBatchSampler(Sampler[list[int]]):
    """The index batches of one rank.

    train: a permutation of the dataset that depends only on (seed, epoch) (torch.randperm with a generator seeded
    with seed * 1000003 + epoch), cut into global batches of world_size * batch_size items (the last, partial one
    dropped); rank r takes items [r * batch_size, (r + 1) * batch_size) of each global batch.
    val: the dataset in order, cut into world_size contiguous near-equal shares (no padding, no duplicates), rank r
    takes share r in batches of batch_size (the last one may be short; ranks may differ by one item and one batch).
    The first `skip_batches` batches are skipped without being loaded.
    """

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, epoch: int, rank: int, world_size: int,
                 skip_batches: int):
        self.n, self.batch_size, self.train = n, batch_size, train
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.skip_batches = skip_batches

    def batches(self) -> list[list[int]]:
        """Every batch of this rank, before skipping."""
        b = self.batch_size
        if self.train:
            n_global = self.n // (self.world_size * b)
            generator = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)[:n_global * self.world_size * b]
            return order.view(n_global, self.world_size, b)[:, self.rank].tolist()  # (n_global, b)
        lo, hi = self.rank * self.n // self.world_size, (self.rank + 1) * self.n // self.world_size
        return [list(range(start, min(start + b, hi))) for start in range(lo, hi, b)]

    def __iter__(self):
        return iter(self.batches()[self.skip_batches:])

    def __len__(self) -> int:
        if self.train:
            total = self.n // (self.world_size * self.batch_size)
        else:
            share = (self.rank + 1) * self.n // self.world_size - self.rank * self.n // self.world_size
            total = -(-share // self.batch_size)
        return max(0, total - self.skip_batches)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, workers: int = 0, skip_batches: int = 0) -> DataLoader:
    """A loader of this rank's batches of `dataset` (see ShardedBatchSampler): train: shuffled by (seed, epoch),
    drop_last, disjoint shares of each global batch of world_size * batch_size items; val: in order, sharded without
    duplicates. `skip_batches` skips that many batches at the start (to resume mid-epoch). With workers > 0 the
    workers' seeds (hence the random transforms of an imagefolder dataset) derive from (seed, epoch) too."""
    for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("seed", seed, 0),
                             ("epoch", epoch, 0), ("workers", workers, 0), ("skip_batches", skip_batches, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} {value!r}: expected an int >= {low}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r}: expected an int in [0, {world_size - 1}] for world_size {world_size}")
    n = len(dataset)
    sampler = ShardedBatchSampler(n, batch_size, train=train, seed=seed, epoch=epoch, rank=rank,
                                  world_size=world_size, skip_batches=0)
    total = len(sampler)
    if train and total == 0:
        raise ValueError(f"batch_size {batch_size}: a train set of {n} items has no full global batch of "
                         f"world_size * batch_size = {world_size * batch_size} items")
    if skip_batches > total:
        raise ValueError(f"skip_batches {skip_batches}: expected at most the {total} batches of this epoch")
    sampler.skip_batches = skip_batches
    # The loader's generator seeds the workers (and is drawn from even without workers): never the global RNG.
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, generator=generator,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=restore_default_signals)
