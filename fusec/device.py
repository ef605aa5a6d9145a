"""The device numbers the cost model uses: measured on a CUDA GPU, an H100's datasheet otherwise."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from fusec.passes.cost import H100, DeviceModel


def time_cuda(run: Callable[[], Any], reps: int = 5) -> float:
    """Seconds per call on the current stream, after a warm-up call (which compiles)."""
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


@functools.cache
def device_model(device: str) -> DeviceModel:
    """Bandwidth from a timed device-to-device copy when `device` is a CUDA GPU present here."""
    if device != "cuda" or not torch.cuda.is_available():
        return H100
    src = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = time_cuda(lambda: dst.copy_(src), reps=10)
    return replace(H100, name=f"{torch.cuda.get_device_name()} (measured copy)",
                   bandwidth=2 * src.numel() / seconds)
