"""`fusec bench --memory`: bytes saved for backward by one training forward, under eager, torch.compile and fusec.

What autograd saves is measured, not modeled: every tensor packed for the
backward during one forward goes through `torch.autograd.graph.saved_tensors_hooks`,
and the distinct storages are summed. "activations" leaves out the storages of
the inputs and parameters, which the caller holds anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusec.bench.workloads import WORKLOADS, Case, Workload, tier_for
from fusec.frontend import Backend
from fusec.options import Options
from fusec.report.format import nbytes


def _conv_bn(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    c = p["channels"]
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                          nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
    x = torch.randn(p["batch"], 3, p["height"], p["height"], device=device, dtype=dtype)
    return Case(model.to(device=device, dtype=dtype), (x,))


# Measured here only: a CNN's training memory (convolutions, BatchNorm in training mode, ReLU).
CONV_BN = Workload("conv_bn_train", "two Conv2d + BatchNorm2d + ReLU layers, forward + backward", _conv_bn,
                   {"tiny": {"batch": 2, "channels": 16, "height": 16},
                    "quick": {"batch": 32, "channels": 64, "height": 56},
                    "full": {"batch": 64, "channels": 128, "height": 56}})

# The bench's workloads that train, and the forward-only ones that are also run with gradients here.
TRAINING = ("transformer_block_train", "conv_bn_train", "attention", "linear_gelu", "swiglu_mlp", "layer_norm",
            "bias_gelu", "bias_dropout_residual")


@dataclass(frozen=True)
class Saved:
    """What one system saved for backward in one forward of one workload."""

    workload: str
    system: str
    total_bytes: int  # every distinct storage autograd saved
    activation_bytes: int  # less the inputs' and parameters' storages


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


def systems() -> dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]:
    compilers: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
        "eager": lambda fn: fn,
        "torch.compile": lambda fn: torch.compile(fn, dynamic=False),
    }
    for remat in ("none", "auto", "aggressive"):
        compilers[f"fusec remat={remat}"] = lambda fn, remat=remat: fusec_partitioned(fn, remat)
    return compilers


def measure(name: str, device: str, quick: bool) -> list[Saved]:
    """Every system's saved bytes for workload `name`, each on fresh inputs; the first call compiles."""
    rows = []
    for system, compiler in systems().items():
        torch._dynamo.reset()
        torch.manual_seed(0)
        workload = CONV_BN if name == CONV_BN.name else WORKLOADS[name]
        case = workload.case(tier_for(device, quick), torch.device(device), torch.float32)
        args = tuple(a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                     for a in case.args)
        fn = case.fn.train() if isinstance(case.fn, torch.nn.Module) else case.fn
        held = [a for a in args if isinstance(a, torch.Tensor)]
        held += [*fn.parameters(), *fn.buffers()] if isinstance(fn, torch.nn.Module) else []
        compiled = compiler(fn)
        compiled(*args)  # compiles: what a compiler saves while it traces is not what a step saves
        total, activations = saved_storages(compiled, args, held)
        rows.append(Saved(name, system, total, activations))
    return rows


def markdown(rows: list[Saved], device: str) -> str:
    """One row per workload: activation bytes saved per system, and fusec (auto) against eager."""
    names = list(dict.fromkeys(r.workload for r in rows))
    systems_ = list(dict.fromkeys(r.system for r in rows))
    lines = [f"Activations saved for backward by one training forward ({device}, fp32; inputs and "
             "parameters excluded)", "",
             "| workload | " + " | ".join(systems_) + " | fusec auto / eager |",
             "|---|" + "---:|" * (len(systems_) + 1)]
    for name in names:
        by = {r.system: r.activation_bytes for r in rows if r.workload == name}
        ratio = by["fusec remat=auto"] / by["eager"] if by.get("eager") else float("nan")
        cells = " | ".join(nbytes(by[s]) for s in systems_)
        lines.append(f"| {name} | {cells} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"
