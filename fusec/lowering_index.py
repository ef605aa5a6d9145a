"""Lowering handlers for position and index plumbing and for division's rounding modes:
arange and full_like as values computed in place, row lookups (embedding, x[idx]) as
checked loads, stores at computed positions (`put`) as a scatter, view(dtype) as a bitcast,
floor and trunc division, remainder and fmod with torch's semantics.

Each handler returns `(op, args)` for fusec's primitive or None for torch (see
fusec/lowering.py, which dispatches to them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from fusec import sizes
from fusec.ir import Graph, Ref
from fusec.kernels.dtypes import ATOMIC_ADD_DTYPES
from fusec.stores import stores_into_input


def _integer_divisor_ok(args: tuple, val: Any) -> bool:
    """An integer division by zero raises in torch; a kernel cannot, so integer divisors
    are generated only as nonzero scalars (a tensor divisor runs through torch). 16-bit
    floats run through torch too: eager rounds the quotient and the scalar to the type."""
    if val.dtype in (torch.float16, torch.bfloat16):
        return False
    if val.dtype.is_floating_point:
        return True
    divisor = args[1]
    return not isinstance(divisor, Ref | bool) and isinstance(divisor, int) and divisor != 0


def div(args: tuple, kwargs: dict, val: Any) -> tuple | None:
    mode = kwargs.get("rounding_mode")
    if mode is None:
        return ("div", tuple(args)) if set(kwargs) <= {"rounding_mode"} else None
    if not _integer_divisor_ok(args, val) or val.dtype == torch.bool:
        return None
    return ({"floor": "floor_divide", "trunc": "trunc_divide"}[mode], tuple(args[:2]))


def modulo(op: str) -> Callable:
    """remainder (Python's sign of the divisor) and fmod (C's sign of the dividend)."""
    def handler(args: tuple, kwargs: dict, val: Any) -> tuple | None:
        if kwargs or not isinstance(args[0], Ref) or not _integer_divisor_ok(args, val):
            return None
        return (op, tuple(args[:2]))
    return handler


def round_(args: tuple, kwargs: dict, val: Any) -> tuple | None:
    return ("round", (args[0],)) if not kwargs.get("decimals") and len(args) == 1 else None


# Integers a float type holds exactly: an arange within them is exact whatever the order of its math.
_EXACT_INTEGERS = {torch.float16: 2**11, torch.bfloat16: 2**8, torch.float32: 2**24, torch.float64: 2**53}


def arange(args: tuple, kwargs: dict, val: Any) -> tuple | None:
    # arange(end), arange(start, end), arange(start, end, step): the length is val's.
    start = args[0] if len(args) > 1 else 0
    step = args[2] if len(args) > 2 else 1
    if not isinstance(val.shape[0], int):
        return None  # its bounds are checked against the length, a symbol
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, step)):
        return None  # a fractional step accumulates rounding as torch's own loop does
    last = start + step * max(val.shape[0] - 1, 0)
    limit = _EXACT_INTEGERS.get(val.dtype)
    if val.dtype == torch.bool or (limit is not None and max(abs(start), abs(last)) > limit):
        return None
    return ("iota", (start, step))


def full_like(args: tuple, kwargs: dict, val: Any) -> tuple | None:
    return None if isinstance(args[1], Ref) else ("full", (args[1],))


def embedding(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> tuple | None:
    # padding_idx and the gradient options change only the backward.
    return ("take", (args[0], args[1], False)) if len(src_shape) == 2 else None


def index(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> tuple | None:
    """x[idx] with one integer index tensor on the first dim; masks and several
    indices run through torch."""
    indices = list(args[1])
    if len(indices) != 1 or not isinstance(indices[0], Ref) or not src_shape:
        return None
    return ("take", (args[0], indices[0], True))


def index_select(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> tuple | None:
    return ("take", (args[0], args[2], False)) if src_shape and args[1] % len(src_shape) == 0 else None


# view(dtype) reads the same bits as another type: generated for 32- and 64-bit types, whose
# loaded value is those bits (16-bit floats load widened to float32), when the shape is kept
# (the source has the same item size: these are the only supported types of 4 and 8 bytes).
_BITCAST_DTYPES = frozenset({torch.float32, torch.int32, torch.float64, torch.int64})


def view(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> tuple | None:
    if not isinstance(args[1], torch.dtype):
        return ("reshape", (args[0],))
    same_shape = tuple(val.shape) == tuple(src_shape)
    return ("bitcast", (args[0],)) if same_shape and val.dtype in _BITCAST_DTYPES else None


def put(args: tuple, kwargs: dict, graph: Graph, node: torch.fx.Node) -> tuple | None:
    """torch's put: one scatter kernel stores (adds, with `accumulate`) each element of source
    at the row-major position index holds; source is read at the index's own position, so the
    two have one shape. Static shapes only. A put into a clone of an input that the graph then
    copies back (`cache[:, pos] = k` on an input) stores into the input itself where the
    launcher finds that safe (fusec/stores.py): its base is the input, the clone left dead."""
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if len(args) < 3 or not all(isinstance(r, Ref) for r in args[:3]) or not isinstance(accumulate, bool):
        return None
    x, index, source = (graph[r.name] for r in args[:3])
    shapes = (x.symbolic_shape, index.symbolic_shape, source.symbolic_shape)
    if not all(sizes.all_static(s) for s in shapes) or index.shape != source.shape or not x.shape:
        return None
    if index.dtype != "int64" or source.dtype != x.dtype or (accumulate and x.dtype not in ATOMIC_ADD_DTYPES):
        return None  # eager's error, or an add the kernel cannot make atomic: torch
    return ("scatter", (_stored_input(node) or args[0], *args[1:3], accumulate))


def _stored_input(node: torch.fx.Node) -> Ref | None:
    """The graph input a put's result is copied into, when the put's base is a clone of that
    input which nothing else reads."""
    base = node.args[0]
    if not isinstance(base, torch.fx.Node) or base.target is not torch.ops.aten.clone.default or len(base.users) != 1:
        return None
    source = base.args[0]
    if not isinstance(source, torch.fx.Node) or source.op != "placeholder":
        return None
    into = any(stores_into_input(user) and user.args[0] is source for user in node.users)
    return Ref(source.name) if into else None
