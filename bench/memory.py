"""`fusec bench --memory`: training memory under eager, torch.compile and fusec: the bytes one forward saves
for backward, and the peak of one forward + backward step.

What autograd saves is measured, not modeled: every tensor packed for the
backward during one forward goes through `torch.autograd.graph.saved_tensors_hooks`,
and the distinct storages are summed. "activations" leaves out the storages of
the inputs and parameters, which the caller holds anyway. The peak is measured
on a GPU and modeled on a CPU (`fusec.bench.peak` says how).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import fusec
from fusec.bench.memory_workloads import MEMORY_ONLY
from fusec.bench.peak import MEASURED, MODELED, measured_peak, modeled_peak, step
from fusec.bench.workloads import WORKLOADS, tier_for
from fusec.frontend import Backend
from fusec.options import Options
from fusec.report.format import nbytes

# The bench's workloads that train, the forward-only ones also run with gradients here, and the two measured
# only here (a CNN with BatchNorm; GPT-2, when the `models` extra is installed).
TRAINING = ("transformer_block_train", "conv_bn_train", "gpt2_train", "attention", "linear_gelu", "swiglu_mlp",
            "layer_norm", "bias_gelu", "bias_dropout_residual")


@dataclass(frozen=True)
class Saved:
    """What one system saved for backward in one forward of one workload."""

    workload: str
    system: str
    total_bytes: int  # every distinct storage autograd saved
    activation_bytes: int  # less the inputs' and parameters' storages
    peak_bytes: int  # one training step's peak, beyond the inputs and parameters (fusec.bench.peak)
    peak_method: str  # how peak_bytes was found: measured (CUDA) or modeled (CPU)


def saved_storages(fn: Callable[..., Any], args: tuple[Any, ...], held: list[torch.Tensor]) -> tuple[int, int]:
    """(all, activations): bytes of the distinct storages autograd saves while `fn(*args)` runs forward;
    `held` are tensors whose storages are not activations (inputs, parameters)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    inputs = {t.untyped_storage().data_ptr() for t in held}
    return sum(storages.values()), sum(n for ptr, n in storages.items() if ptr not in inputs)


def fusec_partitioned(fn: Callable[..., Any], remat: str) -> Callable[..., Any]:
    """fusec's capture and partition, its forward and backward graphs run by torch (what `fusec.inspect`
    runs): what is saved is the partition's, whichever way the kernels then run."""
    return torch.compile(fn, backend=Backend(Options.from_user(remat=remat), launch=False), dynamic=False)


def _compile(system: str, fn: Callable[..., Any], device: str) -> tuple[Callable[..., Any], Backend | None]:
    """`fn` compiled by `system`, and fusec's backend (its records: the plans) for fusec's systems.
    On a GPU fusec runs its kernels (as `fusec.compile`); on a CPU its partitioned graphs run through torch."""
    if system == "eager":
        return fn, None
    if system == "torch.compile":
        return torch.compile(fn, dynamic=False), None
    remat = system.removeprefix("fusec remat=")
    if device == "cuda":
        compiled = fusec.compile(fn, remat=remat)
        return compiled, compiled._fusec_backend
    backend = Backend(Options.from_user(remat=remat), launch=False)
    return torch.compile(fn, backend=backend, dynamic=False), backend


SYSTEMS = ("eager", "torch.compile", "fusec remat=none", "fusec remat=auto", "fusec remat=aggressive")


def measure(name: str, device: str, quick: bool, systems: Sequence[str] = SYSTEMS) -> list[Saved]:
    """Each system's saved bytes and peak for workload `name`, each on fresh inputs; the first step compiles.
    A workload that needs a missing optional package measures nothing, and says so. (On a CPU, eager's and
    torch.compile's peaks are modeled on fusec's remat=none graphs: `systems` must then include it.)"""
    workload = MEMORY_ONLY.get(name) or WORKLOADS[name]
    found: dict[str, tuple[int, int, int | None, Backend | None]] = {}
    for system in systems:
        torch._dynamo.reset()
        torch.manual_seed(0)
        try:
            case = workload.case(tier_for(device, quick), torch.device(device), torch.float32)
        except ImportError as exc:
            print(f"fusec bench --memory: {name} skipped: {exc.name} is not installed "
                  "(pip install 'fusec[models]')", file=sys.stderr)
            return []
        args = tuple(a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                     for a in case.args)
        fn = case.fn.train() if isinstance(case.fn, torch.nn.Module) else case.fn
        params = [*fn.parameters()] if isinstance(fn, torch.nn.Module) else []
        held = [a for a in args if isinstance(a, torch.Tensor)]
        held += [*params, *fn.buffers()] if isinstance(fn, torch.nn.Module) else []
        compiled, backend = _compile(system, fn, device)
        step(compiled, args)  # compiles forward and backward: what a compiler saves while tracing is not a step's
        total, activations = saved_storages(compiled, args, held)
        peak = measured_peak(compiled, args, params) if device == "cuda" else None
        found[system] = (total, activations, peak, backend)
    return [Saved(name, system, total, activations, *_peak(system, found))
            for system, (total, activations, _, _) in found.items()]


def _peak(system: str, found: dict[str, tuple[int, int, int | None, Backend | None]]) -> tuple[int, str]:
    _, saved, peak, backend = found[system]
    if peak is not None:
        return peak, MEASURED
    if backend is not None:
        return modeled_peak(backend.records, saved), MODELED
    # eager and torch.compile: the default partition's graphs, op by op (eager) or as fusec plans them.
    reference = found["fusec remat=none"][3]
    return modeled_peak(reference.records, saved, fused=system != "eager"), MODELED


def markdown(rows: list[Saved], device: str) -> str:
    """Two tables, one row per workload: activations saved per system, then one step's peak; each with fusec
    (auto) against eager."""
    methods = sorted({r.peak_method for r in rows})
    return (_table(rows, "activation_bytes", f"Activations saved for backward by one training forward ({device}, "
                   "fp32; inputs and parameters excluded)")
            + "\n" + _table(rows, "peak_bytes", f"Peak memory of one training step ({device}, fp32; inputs and "
                            f"parameters excluded; {'; '.join(methods)})"))


def _table(rows: list[Saved], field: str, title: str) -> str:
    names = list(dict.fromkeys(r.workload for r in rows))
    systems_ = list(dict.fromkeys(r.system for r in rows))
    lines = [title, "", "| workload | " + " | ".join(systems_) + " | fusec auto / eager |",
             "|---|" + "---:|" * (len(systems_) + 1)]
    for name in names:
        by = {r.system: getattr(r, field) for r in rows if r.workload == name}
        ratio = by["fusec remat=auto"] / by["eager"] if by.get("eager") else float("nan")
        cells = " | ".join(nbytes(by[s]) for s in systems_)
        lines.append(f"| {name} | {cells} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"
