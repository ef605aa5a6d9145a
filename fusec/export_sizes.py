"""A package's tensor specs and versions, and a dynamic package's sizes at a call: each
symbol bound from the inputs' dims, checked against its range and against every other dim it
stands for. (Export and load both read these; load imports nothing of torch.export.)

A dim is a symbol (`s0`) or an expression of one (`2*s0`, from a derived `Dim` such as
`2*batch`): a symbol that no dim is alone is solved from such an expression, and the
dim's size must then give it a whole value.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Sequence
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
    if isinstance(dim, int):
        return dim
    if dim in values:  # a symbol alone
        return values[dim]
    names, evaluate = _evaluator(dim)
    return evaluate(*[values[n] for n in names])


@cache
def _evaluator(text: str) -> tuple[tuple[str, ...], Callable[..., int]]:
    """The expression's symbols and a Python function of their values computing it: a runner
    computes sizes at every call, and SymPy takes tens of microseconds per expression."""
    expr = _expression(text)
    names = tuple(sorted(s.name for s in expr.free_symbols))
    try:
        body = sizes.source(expr, python=True)
    except sizes.NotRenderable:  # no Python form (an operation kernels do not render): SymPy evaluates it
        return names, lambda *values: sizes.hint(expr, dict(zip(names, values, strict=True)))
    # The text is fusec's own rendering of a SymPy expression: names, integers, operators.
    return names, eval(f"lambda {', '.join(sizes.KERNEL_PREFIX + n for n in names)}: int({body})")


def solve(text: str, size: int) -> tuple[str, int | None] | None:
    """The one symbol of the expression `text` and its value where the expression equals `size`
    (None: no whole value does); None for an expression not linear in a single symbol."""
    form = _linear(text)
    if form is None:
        return None
    symbol, scale, offset = form
    value, rest = divmod(size - offset, scale)
    return symbol, (value if rest == 0 else None)


@cache
def _linear(text: str) -> tuple[str, int, int] | None:
    """`scale*symbol + offset` of the expression `text`, worked out by SymPy once per expression."""
    form = sizes.linear(_expression(text))
    return None if form is None else (form[0].name, int(form[1]), int(form[2]))


def bind_symbols(inputs: Sequence[torch.Tensor], specs: Sequence[dict[str, Any]], names: Sequence[str],
                 symbols: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each symbol's value at this call, read from the first dim that is the symbol itself, else
    solved from the first dim that is an expression of it; a dim that gives a symbol another
    value, a size no whole value gives, or a value outside the symbol's range is an error."""
    dims = []
    for x, spec, name in zip(inputs, specs, names, strict=True):
        if x.dim() != len(spec["shape"]):
            raise ValueError(f"{name} has {x.dim()} dims, shape {tuple(x.shape)}; the package serves "
                             f"{len(spec['shape'])} dims ({', '.join(map(str, spec['shape']))})")
        dims += [(dim, int(x.shape[d]), f"{name} dim {d}") for d, dim in enumerate(spec["shape"])
                 if isinstance(dim, str)]
    values: dict[str, int] = {}
    first: dict[str, str] = {}
    for dim, size, where in dims:  # the symbols that are a dim themselves
        if not _expression(dim).is_Symbol:
            continue
        if dim in values and values[dim] != size:
            raise ValueError(f"{where} is {size} but {first[dim]} is {values[dim]}: both are "
                             f"{_named(dim, symbols)} in the exported program, so they must be equal")
        values.setdefault(dim, size)
        first.setdefault(dim, where)
        _check_range(dim, size, where, symbols)
    for dim, size, where in dims:  # the others, from a derived dim
        solved = solve(dim, size)
        if solved is None or solved[0] in values:
            continue
        symbol, value = solved
        if value is None:
            raise ValueError(f"{where} is {size}, which is no {_named_expression(dim, symbols)} for a whole "
                             f"{_named(symbol, symbols)}: give a size of that form")
        values[symbol], first[symbol] = value, where
        _check_range(symbol, value, f"{where} ({size} = {_named_expression(dim, symbols)})", symbols)
    for dim, size, where in dims:
        want = size_at(dim, values)
        if want != size:
            raise ValueError(f"{where} is {size} but it is {_named_expression(dim, symbols)} in the exported program, "
                             f"which is {want} at this call ({_bound_by(dim, values, first, symbols)})")
    return values


def _check_range(symbol: str, size: int, where: str, symbols: dict[str, dict[str, Any]]) -> None:
    if symbol not in symbols:
        return
    low, high = symbols[symbol]["min"], symbols[symbol]["max"]
    if size < low or (high is not None and size > high):
        span = f"[{low}, {'inf' if high is None else high}]"
        raise ValueError(f"{where} is {size}, outside {_named(symbol, symbols)}'s range {span}: export again "
                         "with a Dim whose min/max cover it")


def _named(symbol: str, symbols: dict[str, dict[str, Any]]) -> str:
    dim = symbols.get(symbol, {}).get("dim", symbol)
    return symbol if dim == symbol else f"{dim} ({symbol})"


def _named_expression(text: str, symbols: dict[str, dict[str, Any]]) -> str:
    """`2*s26` as the user wrote it: `2*batch (2*s26)` (a symbol alone: `batch (s26)`)."""
    if text in symbols:
        return _named(text, symbols)
    expr = _expression(text)
    named = expr.xreplace({s: sympy.Symbol(symbols[s.name]["dim"]) for s in expr.free_symbols
                           if s.name in symbols})
    return f"{named} ({text})"


def _bound_by(text: str, values: dict[str, int], first: dict[str, str], symbols: dict[str, dict[str, Any]]) -> str:
    names = sizes.symbols([_expression(text)])
    return ", ".join(f"{_named(s, symbols)} = {values[s]} from {first[s]}" for s in names)


def versions() -> dict[str, str]:
    """The versions a package is made for: generated kernels and plans change between them."""
    return {"fusec": sys.modules["fusec"].__version__, "torch": torch.__version__,
            "triton": importlib.metadata.version("triton")}


def tensor_spec(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype and strides as JSON: a symbolic size is its expression's text (`"s0"`, `"96*s0"`)."""
    return {"shape": [_dim(d) for d in t.shape], "dtype": str(t.dtype).removeprefix("torch."),
            "strides": [_dim(d) for d in t.stride()]}


def _dim(size: int | torch.SymInt) -> int | str:
    if isinstance(size, torch.SymInt):
        expr = sizes.canonical(size.node.expr)
        return int(expr) if sizes.is_static(expr) else sizes.text(expr)
    return int(size)
