"""The benchmark runner: every workload under eager PyTorch, torch.compile and fusec, in one process.

Each (workload, system) pair becomes one flat record (a dict that goes to
JSON as is). A system that fails on a workload gets a record with `error`
set; the run goes on.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import triton

import fusec
from fusec.api import tensors_in
from fusec.bench.measure import (
    CPU_OPS,
    CPU_OPS_AND_KERNELS,
    CUDA_LAUNCHES,
    copy_bandwidth,
    count_launches_cpu,
    count_launches_cuda,
    max_abs_error,
    synchronize,
    time_call,
)
from fusec.bench.workloads import WORKLOADS, Case, Workload, tier_for

SYSTEMS = ("eager", "torch.compile", "fusec")
# On a GPU, each compiler also with its launches recorded into CUDA graphs and replayed.
CUDA_GRAPH_SYSTEMS = ("torch.compile (reduce-overhead)", "fusec (cudagraphs)")
# On a CPU, "fusec" runs its generated kernels in Triton's interpreter (cpu="interpret");
# "fusec (torch)" is what a CPU user gets by default: the same plan, run through torch.
FUSEC_TORCH = "fusec (torch)"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

CPU_NOTE = ("CPU run: fusec's Triton kernels run in Triton's interpreter, fusec (torch) runs the same plan "
            "through torch (fusec's default on CPU), and torch.compile runs Inductor's C++ backend, so times are "
            "not a performance claim; correctness, launch counts, modeled bytes and compile seconds are.")
FUSEC_CPU_LAUNCHES = "fusec report: kernels + extern_calls per call"


@dataclass(frozen=True)
class Settings:
    device: str
    dtype: str
    quick: bool

    @property
    def tier(self) -> str:
        return tier_for(self.device, self.quick)

    @property
    def budget_s(self) -> float:
        """Time spent measuring each system on each workload (warm-up not included)."""
        return 0.1 if self.quick else 1.0


def systems(device: str) -> tuple[str, ...]:
    """The systems timed on `device`: on a CPU, fusec in both of its execution modes; on a GPU, each
    compiler also with CUDA graphs."""
    return (*SYSTEMS, FUSEC_TORCH) if device == "cpu" else (*SYSTEMS, *CUDA_GRAPH_SYSTEMS)


def default_dtype(device: str) -> str:
    # Triton's CPU interpreter computes bf16 wrongly, and CPUs gain nothing from it.
    return "bf16" if device == "cuda" else "fp32"


def environment(settings: Settings) -> dict[str, Any]:
    """What every record carries about the run: device, versions, the device's measured copy bandwidth."""
    cuda = settings.device == "cuda"
    copy_mb = 512 if cuda else 64
    return {
        "device": settings.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "dtype": settings.dtype,
        "size_tier": settings.tier,
        "torch_version": torch.__version__,
        "triton_version": triton.__version__,
        "fusec_version": fusec.__version__,
        "python_version": platform.python_version(),
        "device_copy_gbps": round(copy_bandwidth(settings.device, copy_mb, settings.budget_s) / 1e9, 2),
        "performance_claim": cuda,
        "note": "" if cuda else CPU_NOTE,
    }


def run_suite(names: list[str], settings: Settings, env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per workload and system, in order, as each is measured."""
    for name in names:
        yield from _run_workload(WORKLOADS[name], settings, env)
        if settings.device == "cuda":
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class Eager:
    """What the compiled systems are compared with: eager's results and time (absent if eager failed)."""

    results: list[torch.Tensor] | None = None
    time_median_us: float | None = None


def _run_workload(workload: Workload, settings: Settings, env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    torch.manual_seed(0)
    device, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    try:
        case = workload.case(settings.tier, device, dtype)
    except Exception as exc:
        for system in systems(settings.device):
            yield {**_blank(workload, system, env, None), "error": f"building inputs: {_describe(exc)}"}
        return
    eager = Eager()
    for system in systems(settings.device):
        record = _blank(workload, system, env, case.unique_bytes)
        try:
            measured, results = _measure(system, case, settings, eager)
            record.update(measured)
            if system == "eager":
                eager = Eager(results, measured["time_median_us"])
        except Exception as exc:
            record["error"] = _describe(exc)
        if case.unique_bytes is not None and record["time_median_us"]:
            record["achieved_gbps"], record["bandwidth_fraction"] = bandwidth(
                case.unique_bytes, record["time_median_us"], env["device_copy_gbps"])
        yield record


def bandwidth(unique_bytes: int, median_us: float, copy_gbps: float) -> tuple[float, float]:
    """Achieved GB/s (unique bytes over the median time) and its fraction of the device's copy bandwidth."""
    gbps = unique_bytes / (median_us * 1e-6) / 1e9
    return gbps, gbps / copy_gbps


def _blank(workload: Workload, system: str, env: dict[str, Any], unique_bytes: int | None) -> dict[str, Any]:
    return {
        "workload": workload.name, "description": workload.description, "system": system,
        "sizes": workload.sizes[env["size_tier"]], **env,
        "time_median_us": None, "time_iqr_us": None, "time_min_us": None, "samples": 0, "timing_method": None,
        "speedup_vs_eager": None, "launches_per_call": None, "launches_counted_by": None,
        "compile_seconds": None, "max_abs_error": None, "error_checked_by": None,
        "unique_bytes": unique_bytes, "achieved_gbps": None, "bandwidth_fraction": None,
        "fusec_stats": None, "error": None,
    }


def _measure(system: str, case: Case, settings: Settings, eager: Eager) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """The record fields one system gets on one workload, and its results (for comparing with eager's)."""
    torch._dynamo.reset()  # each system compiles from scratch, and no recompile limit carries over
    fn = _compile(system, case.fn)
    args = _clone(case.args)
    step = _step(fn, args, case)

    start = time.perf_counter()
    profiled = system == "torch.compile" and settings.device == "cpu"
    with inductor_kernel_profile() if profiled else contextlib.nullcontext():
        results = step()
    synchronize(settings.device)
    compile_seconds = time.perf_counter() - start
    # In-place updates are results too; copied, since the timed calls go on updating them.
    results = [*results, *(t.detach().clone() for t in tensors_in(args))]

    if case.check is not None:
        error, checked_by = case.check(case.args, tuple(results)), "the workload's own check (its result is random)"
    elif system == "eager":
        error, checked_by = None, "eager is the reference"
    elif eager.results is not None:
        error, checked_by = max_abs_error(eager.results, results), "max |result - eager result|"
    else:
        error, checked_by = None, "not checked: eager failed"

    timing = time_call(step, settings.device, settings.budget_s)
    stats = fusec.report_of(fn).stats if system.startswith("fusec") else None
    if settings.device == "cuda":
        launches, counted_by = count_launches_cuda(step), CUDA_LAUNCHES
    elif system == "fusec":
        launches, counted_by = float(stats["kernels"] + stats["extern_calls"]), FUSEC_CPU_LAUNCHES
    else:
        launches = count_launches_cpu(step)
        counted_by = CPU_OPS if system in ("eager", FUSEC_TORCH) else CPU_OPS_AND_KERNELS

    median_us = timing.median * 1e6
    measured = {
        "time_median_us": median_us, "time_iqr_us": timing.iqr * 1e6, "time_min_us": timing.minimum * 1e6,
        "samples": timing.samples, "timing_method": timing.method,
        "speedup_vs_eager": 1.0 if system == "eager" else _ratio(eager.time_median_us, median_us),
        "launches_per_call": launches, "launches_counted_by": counted_by,
        "compile_seconds": None if system == "eager" else compile_seconds,
        "max_abs_error": error, "error_checked_by": checked_by, "fusec_stats": stats,
    }
    return measured, results


def _ratio(eager_us: float | None, us: float) -> float | None:
    return eager_us / us if eager_us else None


def _compile(system: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if system == "eager":
        return fn
    if system == "torch.compile":
        return torch.compile(fn)
    if system == "torch.compile (reduce-overhead)":
        return torch.compile(fn, mode="reduce-overhead")
    if system == "fusec (cudagraphs)":
        return fusec.compile(fn, cudagraphs=True)
    # Explicit, so the environment (FUSEC_CPU) cannot make both CPU rows the same mode.
    return fusec.compile(fn, cpu="torch" if system == FUSEC_TORCH else "interpret")


def inductor_kernel_profile() -> contextlib.AbstractContextManager:
    """Inductor names its C++ kernels in torch.profiler only when compiled with this set (see count_launches_cpu)."""
    import torch._inductor.config

    return torch._inductor.config.patch({"cpp.enable_kernel_profile": True})


def _step(fn: Callable[..., Any], args: tuple[Any, ...], case: Case) -> Callable[[], list[torch.Tensor]]:
    """One call of the workload; for training workloads, forward and backward."""
    if case.grad_outputs is None:
        def infer() -> list[torch.Tensor]:
            with torch.no_grad():
                return tensors_in(fn(*args))
        return infer

    wrt = [t for t in tensors_in(args) if t.requires_grad]
    if isinstance(case.fn, torch.nn.Module):
        wrt += [p for p in case.fn.parameters() if p.requires_grad]

    def train() -> list[torch.Tensor]:
        outputs = tensors_in(fn(*args))
        return [*outputs, *torch.autograd.grad(outputs, wrt, case.grad_outputs)]
    return train


def _clone(value: Any) -> Any:
    """Fresh inputs per system, so one system's in-place updates never reach another's."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def _describe(exc: BaseException) -> str:
    """One line: the wrappers' names, then the root cause (Dynamo wraps a backend's error in its own)."""
    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    first_line = next(iter(str(root).strip().splitlines()), "")[:300]
    return "".join(f"{type(e).__name__} ← " for e in chain[:-1]) + f"{type(root).__name__}: {first_line}"
