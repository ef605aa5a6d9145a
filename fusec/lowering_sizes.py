"""Sizes of the captured graph's values: ints, or SymPy expressions over Dynamo's size
symbols (dynamic shapes) with the example's values as hints."""

from __future__ import annotations

from typing import Any

import torch

from fusec import sizes
from fusec.ir import TUPLE_DTYPE


class Unsupported(Exception):
    """The graph as a whole cannot be compiled (e.g. a data-dependent size); run it through torch."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def size_of(value: Any, hints: dict[str, int], what: str) -> tuple[int, Any]:
    """(hint, size) of one dim or stride: an int is both; a SymInt gives its example value and
    its expression over the size symbols (each symbol's example value noted in `hints`)."""
    if isinstance(value, int):
        return value, value
    if not isinstance(value, torch.SymInt):
        raise Unsupported(f"{what} has a size of type {type(value).__name__}")
    node = value.node
    expr = sizes.canonical(node.expr)
    if sizes.is_static(expr):
        return int(expr), int(expr)
    try:
        sizes.check_renderable(expr)
    except sizes.NotRenderable as exc:
        raise Unsupported(f"{what}: {exc}") from None
    for symbol in expr.free_symbols:
        example = node.shape_env.backed_var_to_val.get(symbol)
        if example is None:
            raise Unsupported(f"{what} has a size ({symbol}) with no example value (data-dependent)")
        hints[symbol.name] = int(example)
    return sizes.hint(expr, hints), expr


def describe(val: Any, what: str, hints: dict[str, int]) -> dict:
    """shape, dtype, strides of a node's value from its fake tensor (with their expressions
    over the size symbols when they hold any)."""
    if not isinstance(val, torch.Tensor):
        return {"shape": (), "dtype": TUPLE_DTYPE, "strides": None}
    shape = [size_of(s, hints, what) for s in val.shape]
    strides = [size_of(s, hints, what) for s in val.stride()]
    described = {"shape": tuple(h for h, _ in shape), "dtype": dtype_name(val.dtype),
                 "strides": tuple(h for h, _ in strides)}
    exprs = (tuple(e for _, e in shape), tuple(e for _, e in strides))
    if not (sizes.all_static(exprs[0]) and sizes.all_static(exprs[1])):
        described["sizes"] = exprs
    return described
