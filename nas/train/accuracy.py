"""Top-1 accuracy of a subnet on inherited weights (docs/design.md section 6)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from search_spaces import Arch
from supernets.elastic_ops import ElasticBatchNorm2d
from supernets.supernet import Supernet

BN_RECALIBRATION_BATCHES = 20  # SPOS recomputes a subnet's BatchNorm statistics from 20 train batches


def top1(model: nn.Module, loader, device: torch.device, arch: Arch | None = None) -> float:
    """Top-1 accuracy in [0, 1] over `loader` (summed over DDP ranks when a process group is up).

    `arch` switches a supernet to that subnet first; a standalone model is evaluated as it is."""
    return top1_and_loss(model, loader, device, arch)[0]


@torch.no_grad()
def top1_and_loss(model: nn.Module, loader, device: torch.device, arch: Arch | None = None) -> tuple[float, float]:
    """(top-1 accuracy in [0, 1], mean cross-entropy in nats) over `loader`, as `top1` does. The loss is the finer
    signal: it moves with every image's confidence, where top-1 moves in steps of one image."""
    if arch is not None:
        model.set_active(arch)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)  # (B, classes)
        correct += (logits.argmax(dim=-1) == labels).sum()
        nats += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").double()
        seen += labels.numel()
    if dist.is_available() and dist.is_initialized():
        for total in (correct, seen, nats):
            dist.all_reduce(total)
    model.train(was_training)
    count = max(seen.item(), 1)
    return correct.item() / count, nats.item() / count


@torch.no_grad()
def recalibrate_batchnorm(supernet: Supernet, arch: Arch, loader, device: torch.device, batches: int) -> None:
    """Recompute the running statistics of the subnet's BatchNorm channels from `batches` training batches.

    A no-op for the default LayerNorm spaces, which need no recalibration. The statistics are a plain
    average over the batches (momentum None), as SPOS does."""
    norms = [m for m in supernet.modules() if isinstance(m, ElasticBatchNorm2d)]
    if not norms:
        return
    supernet.set_active(arch)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.num_batches_tracked.zero_()
        m.momentum = None
    was_training = supernet.training
    supernet.train()
    for i, (images, _) in enumerate(loader):
        if i == batches:
            break
        supernet(images.to(device, non_blocking=True))
    supernet.train(was_training)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
