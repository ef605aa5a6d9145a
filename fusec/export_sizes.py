"""A dynamic package's sizes at a call: each symbol bound from the inputs' dims, checked
against its range and against every other dim it stands for."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import sympy
import torch

from fusec import sizes


@cache
def _expression(text: str) -> sympy.Expr:
    # Manifest text is checked against the package's hashes before a runner reads it.
    expr = sympy.sympify(text)
    return expr.xreplace({s: sympy.Symbol(s.name, integer=True, positive=True) for s in expr.free_symbols})


def size_at(dim: int | str, values: dict[str, int]) -> int:
    """A manifest size (an int, or an expression's text) at the call's symbol values."""
    return dim if isinstance(dim, int) else sizes.hint(_expression(dim), values)


def bind_symbols(inputs: Sequence[torch.Tensor], specs: Sequence[dict[str, Any]], names: Sequence[str],
                 symbols: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each symbol's value at this call, read from the first dim that is the symbol itself; a
    dim that gives a symbol another value, or a value outside the symbol's range, is an error."""
    values: dict[str, int] = {}
    first: dict[str, str] = {}
    for x, spec, name in zip(inputs, specs, names, strict=True):
        if x.dim() != len(spec["shape"]):
            raise ValueError(f"{name} has {x.dim()} dims, shape {tuple(x.shape)}; the package serves "
                             f"{len(spec['shape'])} dims ({', '.join(map(str, spec['shape']))})")
        for d, dim in enumerate(spec["shape"]):
            if not isinstance(dim, str) or dim not in symbols:
                continue
            size, where = int(x.shape[d]), f"{name} dim {d}"
            if dim in values and values[dim] != size:
                raise ValueError(f"{where} is {size} but {first[dim]} is {values[dim]}: both are "
                                 f"{_named(dim, symbols)} in the exported program, so they must be equal")
            values.setdefault(dim, size)
            first.setdefault(dim, where)
            _check_range(dim, size, where, symbols)
    return values


def _check_range(symbol: str, size: int, where: str, symbols: dict[str, dict[str, Any]]) -> None:
    low, high = symbols[symbol]["min"], symbols[symbol]["max"]
    if size < low or (high is not None and size > high):
        span = f"[{low}, {'inf' if high is None else high}]"
        raise ValueError(f"{where} is {size}, outside {_named(symbol, symbols)}'s range {span}: export again "
                         "with a Dim whose min/max cover it")


def _named(symbol: str, symbols: dict[str, dict[str, Any]]) -> str:
    dim = symbols[symbol]["dim"]
    return symbol if dim == symbol else f"{dim} ({symbol})"
