"""The fitness of a subnet in a search: the top-1 of its inherited weights on the fixed held-out split."""
from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset

from nas.data.loaders import make_loader
from nas.train.accuracy import BN_RECALIBRATION_BATCHES, recalibrate_batchnorm, top1_and_loss
from search_spaces import Arch
from supernets.elastic_ops import ElasticBatchNorm2d
from supernets.supernet import Supernet

CACHE_BYTES = 2 << 30  # held-out splits up to 2 GiB of float images are kept in memory as ready batches


class Fitness:
    """Callable arch -> inherited top-1 in [0, 1]. BatchNorm spaces first recalibrate the subnet's statistics on
    `rest` (the train images outside the split); LayerNorm spaces need nothing. `seconds` adds up the time
    spent in here (subnet inference), which the search reports apart from its own bookkeeping."""

    def __init__(self, supernet: Supernet, held_out: Dataset, rest: Dataset, batch_size: int, device: torch.device):
        self.supernet, self.device = supernet.eval(), device
        self.seconds, self.calls = 0.0, 0
        loader = make_loader(held_out, batch_size, train=False)
        image_bytes = 4 * supernet.space.in_chans * supernet.space.img_size ** 2
        if len(held_out) * image_bytes <= CACHE_BYTES:  # convert and move the images once, not once per subnet
            loader = [(x.to(device), y.to(device)) for x, y in loader]
        self.held_out = loader
        self.uses_batchnorm = any(isinstance(m, ElasticBatchNorm2d) for m in supernet.modules())
        self.calibration = (make_loader(rest, min(batch_size, len(rest)), train=True, seed=0)
                            if self.uses_batchnorm else None)

    @property
    def recalibration(self) -> dict | None:
        """How BatchNorm statistics are recomputed before each measurement (None: no BatchNorm)."""
        if self.calibration is None:
            return None
        batches = min(BN_RECALIBRATION_BATCHES, len(self.calibration))
        size = self.calibration.batch_sampler.batch_size
        return {"batches": batches, "batch_size": size, "images": batches * size}

    def __call__(self, arch: Arch) -> float:
        return self.top1_and_loss(arch)[0]

    def top1_and_loss(self, arch: Arch) -> tuple[float, float]:
        """(inherited top-1, mean cross-entropy) of `arch` on the held-out split."""
        start = time.perf_counter()
        if self.uses_batchnorm:
            recalibrate_batchnorm(self.supernet, arch, self.calibration, self.device, BN_RECALIBRATION_BATCHES)
        scores = top1_and_loss(self.supernet, self.held_out, self.device, arch)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return scores
