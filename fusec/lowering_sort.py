"""Lowering of `sort`, `argsort` and `topk` to the IR's `sort` (the values) and `sort_index` (their
positions): one sort kernel writes both.

ATen returns the pair as a tuple that `getitem` nodes unpack. The tuple's node becomes the
values' node, named as the `getitem` that reads them (or as itself when nothing reads the
values: `argsort`); that `getitem` then adds nothing, and the one reading the positions
becomes a `sort_index` of the values' node. `topk(sorted=False)` promises no order (eager's
CPU kernel returns its own): the kernel's sorted one keeps that contract. Rows longer than a
sort kernel holds run through torch with a warning that says why; so do, silently, sizes that
are symbols and complex values.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
import torch.fx

from fusec.ir import Graph, Kind, Node, Ref
from fusec.kernels.sort_keys import MAX_KEYED_ROW
from fusec.lowering_sizes import describe

aten = torch.ops.aten
log = logging.getLogger("fusec")

_SORTED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8,
                            torch.int8, torch.int16, torch.int32, torch.int64, torch.bool})


def _option(node: torch.fx.Node, position: int, name: str, default: Any) -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def _arguments(node: torch.fx.Node) -> tuple[int, bool, int | None] | None:
    """(dim, descending, k) of a sort or topk call (k None: the whole row), or None when it is neither."""
    if node.op != "call_function":
        return None
    if node.target is aten.sort.default:
        return _option(node, 1, "dim", -1), _option(node, 2, "descending", False), None
    if node.target is aten.sort.stable:
        return node.kwargs.get("dim", -1), node.kwargs.get("descending", False), None
    if node.target is aten.topk.default:
        return _option(node, 2, "dim", -1), _option(node, 3, "largest", True), _option(node, 1, "k", None)
    return None


def _values_name(node: torch.fx.Node) -> str:
    """The name the values' node takes: the `getitem` that reads them, else the call's."""
    reads = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    return reads[0].name if reads else node.name


def _values(node: torch.fx.Node, graph: Graph) -> Node | None:
    """The IR node of a sort or topk call's values, or None when torch must run it."""
    found = _arguments(node)
    src = node.args[0]
    if found is None or not isinstance(src, torch.fx.Node) or src.name not in graph:
        return None
    dim, descending, k = found
    x, values = src.meta.get("val"), node.meta.get("val")
    if not isinstance(x, torch.Tensor) or x.dtype not in _SORTED_DTYPES or x.dim() == 0:
        return None
    if not all(isinstance(s, int) for s in (*x.shape, *values[0].shape)) or not isinstance(dim, int):
        return None
    dim %= x.dim()
    length = x.shape[dim]
    k = length if k is None else k
    if not isinstance(k, int) or length == 0 or not 0 < k <= length:
        return None  # an empty row or eager's error (k past the end): torch
    if length > MAX_KEYED_ROW:
        log.warning("fusec: %s (%s) runs through torch: its rows of %d are longer than the %d a sort kernel holds",
                     node.name, node.target, length, MAX_KEYED_ROW)
        return None
    name = _values_name(node)
    return Node(name, "sort", Kind.SORT, args=(Ref(src.name), dim, bool(descending), k), target=str(node.target),
                **describe(values[0], f"{name} (values of {node.target})", graph.hints))


def sort_nodes(node: torch.fx.Node, graph: Graph) -> tuple[Node, ...] | None:
    """The IR nodes a sort or topk call, or a `getitem` of one, adds (None: neither, or torch runs it)."""
    values = _values(node, graph)
    if values is not None:
        return (values,)
    if node.target is not operator.getitem or _arguments(node.args[0]) is None:
        return None
    call, item = node.args
    name = _values_name(call)
    if name not in graph or graph[name].op != "sort":
        return None  # the call runs through torch
    if item == 0:
        return ()  # the values' node is this getitem's already
    return (Node(node.name, "sort_index", Kind.SORT, args=(Ref(name),), target=str(call.target),
                 **describe(node.meta["val"], f"{node.name} (positions of {call.target})", graph.hints)),)
