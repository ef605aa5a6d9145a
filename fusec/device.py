"""The device numbers the cost model uses: measured on a CUDA GPU, an H100's datasheet otherwise."""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from fusec.passes.cost import H100, DeviceModel


@functools.cache
def device_model(device: str) -> DeviceModel:
    """Bandwidth from a timed device-to-device copy when `device` is a CUDA GPU present here."""
    if device != "cuda" or not torch.cuda.is_available():
        return H100
    src = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 10
    return replace(H100, name=f"{torch.cuda.get_device_name()} (measured copy)",
                   bandwidth=2 * src.numel() / seconds)
