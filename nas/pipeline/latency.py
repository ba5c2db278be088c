"""CPU latency of an exported model: one image (batch 1), the median of timed forward passes after a warm-up."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from nas.export.exported_model import read_exported

WARMUP_RUNS = 10  # the first passes allocate and pick kernels
TIMED_RUNS = 50


def cpu_latency_ms(folder: str | Path, threads: int) -> dict:
    """{"median_ms", "runs", "warmup", "threads"} of the model in export folder `folder`, run with `threads` torch
    threads (the count before is restored)."""
    exported = read_exported(folder)
    model = exported.model.cpu().eval()
    space = exported.space
    image = torch.randn(1, space.in_chans, space.img_size, space.img_size,
                        generator=torch.Generator().manual_seed(0))  # (1, C, H, W)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(WARMUP_RUNS):
                model(image)
            times = []
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                model(image)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return {"median_ms": 1000 * statistics.median(times), "runs": TIMED_RUNS, "warmup": WARMUP_RUNS,
            "threads": threads}
