"""Process-group setup for `torchrun`: NCCL on GPUs, gloo on CPUs; a single process needs nothing."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nas.options import DEVICES


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' (CUDA if available, else CPU), 'cpu' or 'cuda'; ValueError naming --device otherwise."""
    if name not in DEVICES:
        raise ValueError(f"--device {name!r}: choose from {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def setup(device: str = "auto") -> Runtime:
    """Join the process group that torchrun describes in the environment (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = resolve_device(device).type == "cuda"
    if world_size == 1:
        return Runtime(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(dist.get_rank(), dist.get_world_size(),
                   torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


def all_finite(value: torch.Tensor) -> bool:
    """Whether `value` is finite on every rank (so that all ranks stop together)."""
    flag = torch.isfinite(value.detach()).all().to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
