"""Measurements the benchmark runner takes: time per call, launches per call, copy bandwidth, error.

On CUDA, times come from `triton.testing.do_bench` (CUDA events, L2 flushed
between calls) and launches from the kernels torch.profiler sees on the GPU.
On CPU there are no launches to see, so each system is counted the way its
work shows up (see `count_launches_cpu`), and times are wall clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class Timing:
    """Seconds per call over `samples` calls: median and interquartile range."""

    median: float
    iqr: float
    minimum: float
    samples: int
    method: str


def summarize(seconds: list[float], method: str) -> Timing:
    if len(seconds) > 1:
        q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    else:
        q1 = q3 = seconds[0]
    return Timing(statistics.median(seconds), q3 - q1, min(seconds), len(seconds), method)


def time_call(step: Callable[[], Any], device: str, budget_s: float) -> Timing:
    """Time `step` after warming it up; `budget_s` bounds the measuring, not the warm-up."""
    if device == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(step, warmup=max(1, int(budget_s * 250)), rep=max(1, int(budget_s * 1000)),
                                     return_mode="all")
        return summarize([t / 1e3 for t in ms], "triton.testing.do_bench: CUDA events, L2 flushed between calls")
    step()  # the compiling call came before; one more settles caches and allocator
    seconds: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(seconds) < 5 or (time.perf_counter() < deadline and len(seconds) < 200):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return summarize(seconds, "time.perf_counter wall clock per call")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, megabytes: int, budget_s: float) -> float:
    """Bytes per second of a large device-to-device copy (read + write): the practical memory limit."""
    src = torch.ones(megabytes << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, budget_s)
    return 2 * src.numel() / timing.median


CUDA_LAUNCHES = "torch.profiler: GPU kernels per call (memcpy and memset excluded)"
CPU_OPS = "torch.profiler: top-level ATen ops per call that do work (views and allocations excluded)"
CPU_OPS_AND_KERNELS = CPU_OPS + " + Inductor's C++ kernels (named cpp_fused_*)"


def count_launches_cuda(step: Callable[[], Any], calls: int = 3) -> float:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]
    return len(kernels) / calls


# ATen ops that alias or allocate: no kernel would run for them.
_NO_WORK = frozenset(f"aten::{op}" for op in (
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "t", "transpose", "permute", "expand",
    "expand_as", "unsqueeze", "squeeze", "slice", "select", "split", "split_with_sizes", "chunk", "unbind",
    "narrow", "detach", "alias", "lift_fresh", "view_as", "flatten", "unflatten", "contiguous", "empty",
    "empty_like", "empty_strided", "resolve_conj", "resolve_neg", "to", "_to_copy_noop", "result_type",
))


def _does_work(event: Any) -> bool:
    """An ATen op does work if it is not a view or allocation, or if it calls one that is not (reshape → clone)."""
    if event.name not in _NO_WORK:
        return True
    return any(_does_work(child) for child in event.cpu_children if child.name.startswith("aten::"))


def _is_top_level_op(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def count_launches_cpu(step: Callable[[], Any], calls: int = 2) -> float:
    """What would be launches on a GPU: ATen ops called from outside any other ATen op, and Inductor's kernels.

    Inductor records its kernels only when compiled with
    `cpp.enable_kernel_profile` (the runner sets it); their names carry `cpp_fused`.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    ops = [e for e in prof.events() if e.name.startswith("aten::") and _is_top_level_op(e) and _does_work(e)]
    kernels = [e for e in prof.events() if "cpp_fused" in e.name]
    return (len(ops) + len(kernels)) / calls


def max_abs_error(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    if len(expected) != len(got):
        raise ValueError(f"{len(got)} results where eager gave {len(expected)}")
    errors = []
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            raise ValueError(f"a result has shape {tuple(g.shape)} where eager's has {tuple(e.shape)}")
        if e.numel():
            errors.append((e.float() - g.float()).abs().max().item())
    return max(errors, default=0.0)
