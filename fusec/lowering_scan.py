"""Lowering of cumulative ops (cumsum, cumprod, logcumsumexp) to the IR's `scan`, and of a scan read backwards (cumsum's
gradient, `x.flip(d).cumsum(d).flip(d)`) to one scan from the end of the dim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fusec.ir import Graph, Ref

Lowered = tuple[str, tuple[Any, ...]] | None


def scan(combine: str) -> Callable:
    """cumsum/cumprod/logcumsumexp along one dim; the result's dtype (int64 for integers and
    bool, or `dtype=`) is the node's, and the kernel converts the input to it as eager does."""
    def handler(args: tuple, kwargs: dict, val: Any, src_shape: tuple) -> Lowered:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(dim, int):
            return None
        if not src_shape:
            return ("cast", (args[0],))  # a 0-d scan is its one element, in the result's dtype
        if combine == "logsumexp" and not val.dtype.is_floating_point:
            return None  # eager's error, from torch
        return ("scan", (args[0], dim % len(src_shape), combine, False))
    return handler


def _flip_dim(graph: Graph, name: str, dims: Any) -> int | None:
    """The one dim a flip reverses (None: it reverses several, or its dims are not given as integers)."""
    if not isinstance(dims, list | tuple) or len(dims) != 1 or not isinstance(dims[0], int):
        return None
    return dims[0] % len(graph[name].shape)


def reverse_scan(args: tuple, graph: Graph) -> Lowered:
    """flip(scan(flip(x, d), d), d) as scan(x, d) from the other end; any other flip runs
    through torch. The inner flip and scan are left to dead-code elimination when nothing
    else reads them."""
    if len(args) != 2 or not isinstance(args[0], Ref):
        return None
    scanned = graph[args[0].name]
    if scanned.op != "scan" or not scanned.shape:
        return None
    src, dim, combine, reverse = scanned.args
    inner = graph[src.name]
    if inner.target != "aten.flip.default" or not isinstance(inner.args[0], Ref):
        return None
    flipped = _flip_dim(graph, args[0].name, args[1])
    if flipped != dim or _flip_dim(graph, inner.args[0].name, inner.args[1]) != dim:
        return None
    return ("scan", (inner.args[0], dim, combine, not reverse))
