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

A view of a buffer whose layout the launcher knows (one it allocated, or a view
of one) is one call of `_reinterpret_tensor(base, size, stride, offset)` with
the view's layout worked out once, as Inductor's output code does (0.4-0.5 µs
against 1-2 for `slice`, `view`, `permute` through their bindings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._C._dynamo.guards import _reinterpret_tensor

from fusec import sizes
from fusec.graph_source import GraphSourceError, torch_callable
from fusec.ir import Graph, Kind, Node, map_refs
from fusec.plan import Extern, Plan

aten = torch.ops.aten
REINTERPRET = _reinterpret_tensor

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


def reinterpretation(graph: Graph, node: Node) -> tuple[tuple, tuple, int] | None:
    """A view op's result on its operand laid out as the plan says, as `REINTERPRET` takes it:
    (size, stride, offset from the operand's). Worked out on a meta tensor by the op itself.
    None where that is not a view of the same memory at static sizes (another dtype, a reshape
    that copies, a symbolic size) or not what the plan recorded."""
    operands = list(dict.fromkeys(node.operands()))
    base = graph[operands[0]] if len(operands) == 1 else None
    if base is None or base.strides is None or not sizes.all_static((*base.shape, *base.strides, *node.shape)):
        return None
    try:
        fn = torch_callable(node.target)
    except GraphSourceError:
        return None
    returns = fn._schema.returns
    if len(returns) != 1 or returns[0].alias_info is None or returns[0].alias_info.is_write:
        return None  # not a view by its schema
    meta = torch.empty_strided(base.shape, base.strides, dtype=getattr(torch, base.dtype), device="meta")
    args, kwargs = node.torch_call if node.torch_call is not None else (node.args, node.kwargs)
    try:
        out = fn(*map_refs(tuple(args), lambda ref: meta), **map_refs(dict(kwargs), lambda ref: meta))
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None
    # A reshape's schema says it aliases its operand, but where the layout forbids it, it copies.
    if not isinstance(out, torch.Tensor) or not torch._C._is_alias_of(out, meta) or out.dtype != meta.dtype:
        return None
    if tuple(out.shape) != tuple(node.shape) or tuple(out.stride()) != tuple(node.strides or out.stride()):
        return None
    return tuple(out.shape), tuple(out.stride()), out.storage_offset()


def exact_layouts(graph: Graph, outputs: list[str]) -> set[str]:
    """Of a launcher's kernel outputs it allocates itself, those laid out exactly as the plan says
    (a scatter's may be its base's buffer)."""
    return {name for name in outputs if graph[name].kind is not Kind.SCATTER}


@dataclass(frozen=True)
class Reinterpreted:
    """A view as `REINTERPRET(root, size, stride, offset)`: `root` a buffer laid out as the plan says."""

    root: str
    size: tuple
    stride: tuple
    offset: int


def reinterpreted_views(graph: Graph, views: list[str], exact: set[str]) -> dict[str, Reinterpreted]:
    """Of the views torch would run, in launch order, those of a buffer laid out exactly as the
    plan says (`exact`) or of such a view: each as a reinterpretation of that buffer, so a chain
    of views (a slice, a view, a permute) is one call."""
    found: dict[str, Reinterpreted] = {}
    for name in views:
        operands = list(dict.fromkeys(graph[name].operands()))
        if graph[name].kind is not Kind.VIEW or len(operands) != 1:
            continue
        above = found.get(operands[0])
        layout = reinterpretation(graph, graph[name]) if above or operands[0] in exact else None
        if layout is not None:
            root, base = (above.root, above.offset) if above else (operands[0], 0)
            found[name] = Reinterpreted(root, layout[0], layout[1], base + layout[2])
    return found


def folded_views(plan: Plan, exact: set[str]) -> tuple[dict[str, Reinterpreted], set[str], dict[str, int]]:
    """The plan's views that are reinterpretations of buffers laid out as planned (`exact`); those
    a step other than such a view (or the caller) reads, the only ones a launcher writes; and for
    each buffer, the step writing its last such view (it is deleted after that step, not before)."""
    views = reinterpreted_views(plan.graph, [s.node for s in plan.externs], exact)
    readers = [r for s in plan.steps if not (isinstance(s, Extern) and s.node in views) for r in plan.reads(s)]
    needed = {v for v in views if v in {*readers, *plan.graph.output.operands()}}
    last = {views[s.node].root: i for i, s in enumerate(plan.steps) if isinstance(s, Extern) and s.node in needed}
    return views, needed, last
