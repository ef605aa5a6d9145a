"""The entry point a generated launcher calls for an op torch runs.

An ATen overload called from Python (`torch.ops.aten.view.default(x, size)`)
goes through `OpOverload.__call__`, a Python frame, then the boxed dispatcher,
which matches the arguments against the schema at run time: about 2.2 µs of
host time for a view on this project's CPU. The overload's C++ object (`._op`)
skips the frame (1.9 µs); torch's generated Python bindings (`Tensor.view`,
`torch.mm`) parse in C++ code written for the op (1.0-1.5 µs). Where a binding
reaches exactly the same overload from the same arguments, the launcher calls
the binding (Inductor's output code calls `torch.mm` and `torch.convolution`
too); any other overload through its C++ object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten

# overload -> the binding that dispatches to it from the same positional arguments and keyword names
BINDINGS: dict[torch._ops.OpOverload, Callable[..., Any]] = {
    aten.mm.default: torch.mm,
    aten.bmm.default: torch.bmm,
    aten.addmm.default: torch.addmm,
    aten.convolution.default: torch.convolution,
    aten.view.default: torch.Tensor.view,
    aten.permute.default: torch.permute,
    aten.expand.default: torch.Tensor.expand,
    aten.transpose.int: torch.transpose,
    aten.unsqueeze.default: torch.unsqueeze,
    aten.t.default: torch.t,
    aten.clone.default: torch.clone,
}


def entry_point(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What the launcher calls for `fn`: its binding, an overload's C++ object, or `fn` itself."""
    if not isinstance(fn, torch._ops.OpOverload):
        return fn
    return BINDINGS.get(fn, fn._op)
