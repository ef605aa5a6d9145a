"""Size arithmetic: sizes are ints or SymPy expressions over size symbols (`s0`, `2*s0`).

A graph compiled for dynamic shapes keeps Dynamo's symbols in its sizes. Passes and
costs read size hints (the example's values); kernels and the launcher read the
expressions, rendered as source over the symbols bound at each call. Every place
that needs a size as a number, as source, or compared, goes through here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import sympy

Size = int | sympy.Expr

# Symbols a kernel takes as arguments are named with this prefix (`ks_s0`): no clash
# with the names a renderer binds.
KERNEL_PREFIX = "ks_"


class NotRenderable(ValueError):
    """A size expression fusec cannot write as source (a ceiling, a min of three)."""


def canonical(value: object) -> Size:
    """A size as fusec holds it: an int, or a SymPy expression that is not a plain number."""
    if isinstance(value, sympy.Expr):
        return int(value) if value.is_Integer else value
    return value  # type: ignore[return-value]


def is_static(value: object) -> bool:
    return not isinstance(value, sympy.Expr)


def all_static(values: Iterable[object] | None) -> bool:
    return values is None or all(is_static(v) for v in values)


def symbols(values: Iterable[object]) -> list[str]:
    """The names of the symbols the sizes use, sorted."""
    names = set()
    for value in values:
        if isinstance(value, sympy.Expr):
            names.update(s.name for s in value.free_symbols)
    return sorted(names, key=lambda n: (len(n), n))


def hint(value: Size, hints: Mapping[str, int]) -> int:
    """The size's value for the example the graph was captured with."""
    if is_static(value):
        return int(value)
    return int(value.xreplace({sym: hints[sym.name] for sym in value.free_symbols}))


# Distinct primes no model dim is likely to be: passes deciding by these values cannot
# take two sizes that differ as expressions for equal (as an example's could be: s0 = 64
# beside a static 64).
_GENERIC = (1009, 1013, 1019, 1021, 1031, 1033, 1039, 1049, 1051, 1061, 1063, 1069, 1087, 1091, 1093, 1097)


def generic_hints(names: Iterable[str]) -> dict[str, int]:
    """A value per symbol for fusion decisions: distinct primes (then those plus 1000s)."""
    return {name: _GENERIC[i % len(_GENERIC)] + 1000 * (i // len(_GENERIC)) for i, name in enumerate(sorted(names))}


def linear(value: Size) -> tuple[sympy.Symbol, int, int] | None:
    """`scale*s + offset` (a derived dim such as `2*s0`) as (s, scale, offset), scale > 0;
    None for any other size."""
    if is_static(value) or len(value.free_symbols) != 1:
        return None
    symbol = next(iter(value.free_symbols))
    scale, offset = value.coeff(symbol), value.subs(symbol, 0)
    if not (scale.is_Integer and offset.is_Integer and scale > 0) or (value - scale * symbol - offset).expand() != 0:
        return None
    return symbol, int(scale), int(offset)


def prod(values: Iterable[Size]) -> Size:
    values = list(values)
    return math.prod(values) if all_static(values) else canonical(sympy.Mul(*values))


def at_least_one(value: Size) -> Size:
    """max(value, 1): a symbol is never 0 or 1 (Dynamo specializes those), so it is itself."""
    return value if not is_static(value) else max(int(value), 1)


def equal(a: Size, b: Size) -> bool:
    """Known equal for every value of the symbols (structural on canonical forms)."""
    if is_static(a) and is_static(b):
        return a == b
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


_RENDERABLE = (sympy.Symbol, sympy.Integer, sympy.Add, sympy.Mul)
# torch's size functions (torch.utils._sympy.functions, named here: no torch below the
# compiler): a floor division of sizes, and one known to divide exactly.
_DIVISIONS = frozenset({"FloorDiv", "CleanDiv"})
_MODULO = frozenset({"PythonMod", "Mod"})
# min and max of sizes: Python's builtins in the launcher, Triton's in a kernel.
_EXTREMES = {"Max": ("max", "tl.maximum"), "Min": ("min", "tl.minimum")}


def check_renderable(value: object) -> None:
    """Raise NotRenderable unless the size is sums and products of symbols and integers."""
    if is_static(value):
        return
    for sub in sympy.preorder_traversal(value):
        if isinstance(sub, sympy.Pow) and sub.exp.is_Integer and sub.exp > 0:
            continue
        if type(sub).__name__ in _DIVISIONS | _MODULO or (type(sub).__name__ in _EXTREMES and len(sub.args) == 2):
            continue
        if not isinstance(sub, _RENDERABLE):
            raise NotRenderable(f"size expression {value} ({type(sub).__name__}) is not sums, products, "
                                "floor divisions, modulos, mins and maxes")


def source(value: Size, python: bool = False) -> str:
    """Source text computing the size in a kernel (or, `python`, in the launcher), each symbol
    read from the variable named KERNEL_PREFIX + its name."""
    if is_static(value):
        return str(int(value))
    check_renderable(value)
    return f"({_source(value, python)})"


def tuple_source(values: tuple | None) -> str:
    """Source of a tuple of sizes (expressions read the symbols bound at the call's start)."""
    if values is None:
        return "None"
    inner = ", ".join(source(v, python=True) for v in values)
    return f"({inner},)" if len(values) == 1 else f"({inner})"


def _source(expr: sympy.Expr, python: bool) -> str:
    name = type(expr).__name__
    if expr.is_Symbol:
        return KERNEL_PREFIX + expr.name
    if expr.is_Integer:
        return str(int(expr))
    if expr.is_Pow:  # s0**2: a product, which Triton and Python both read
        return " * ".join([_operand(expr.base, python)] * int(expr.exp))
    # Sizes are not negative: // and % agree in Python and Triton. The whole is bracketed:
    # // and % bind as tightly as *, so `s1 * (s0) // (2)` would read as (s1 * s0) // 2.
    if name in _DIVISIONS | _MODULO:
        op = "//" if name in _DIVISIONS else "%"
        return f"(({_source(expr.args[0], python)}) {op} ({_source(expr.args[1], python)}))"
    if name in _EXTREMES:
        a, b = (_source(arg, python) for arg in expr.args)
        return f"{_EXTREMES[name][0 if python else 1]}({a}, {b})"
    if expr.is_Add:
        return " + ".join(_source(arg, python) for arg in expr.args)
    return " * ".join(_operand(arg, python) for arg in expr.args)


def _operand(expr: sympy.Expr, python: bool) -> str:
    """A factor of a product: a sum in brackets."""
    text = _source(expr, python)
    return f"({text})" if expr.is_Add else text


def text(value: Size) -> str:
    """How a report shows a size: `768`, `s0`, `2*s0`."""
    return str(value) if is_static(value) else sympy.sstr(value)
