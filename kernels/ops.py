"""The op table: primitive op -> Triton expression, one small function each.

Every function takes its operands as Triton expressions already converted to
the dtype the op computes in, and returns an expression. Only Triton builtins
are used: Triton's interpreter cannot call the library's own @jit helpers
(tl.sigmoid, libdevice.*) unless it was switched on before triton was imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fusec.ir import POINTWISE_OPS


def _nan_or(a: str, b: str, picked: str) -> str:
    # torch.maximum/minimum propagate NaN; tl.maximum does not promise to.
    return f"tl.where({a} != {a}, {a}, tl.where({b} != {b}, {b}, {picked}))"


def add(a, b, alpha=None): return f"({a} + {b})" if alpha is None else f"({a} + {b} * {alpha})"
def sub(a, b, alpha=None): return f"({a} - {b})" if alpha is None else f"({a} - {b} * {alpha})"
def fma(a, b, c): return f"({a} * {b} + {c})"
def mul(a, b): return f"({a} * {b})"
def div(a, b): return f"({a} / {b})"
def neg(a): return f"(-{a})"
def abs_(a): return f"tl.abs({a})"
def exp(a): return f"tl.exp({a})"
def exp2(a): return f"tl.exp2({a})"
def log(a): return f"tl.log({a})"
def log2(a): return f"tl.log2({a})"
def sqrt(a): return f"tl.sqrt({a})"
def rsqrt(a): return f"tl.math.rsqrt({a})"
def erf(a): return f"tl.math.erf({a})"
def sin(a): return f"tl.sin({a})"
def cos(a): return f"tl.cos({a})"
# torch.floor/ceil/trunc of an integer is the integer (and Triton's only take floats).
def floor(a, floating=True): return f"tl.floor({a})" if floating else a
def ceil(a, floating=True): return f"tl.ceil({a})" if floating else a
def trunc(a, floating=True): return f"tl.where({a} < 0, tl.ceil({a}), tl.floor({a}))" if floating else a
def reciprocal(a): return f"(1.0 / {a})"
def sigmoid(a): return f"(1.0 / (1.0 + tl.exp(-{a})))"
def copy(a): return a
def cast(a): return a  # the renderer converts operands and results
def bitcast(a, to): return f"{a}.to({to}, bitcast=True)"  # the same bits read as type `to`
def full(value): return value
def isnan(a): return f"({a} != {a})"
def isinf(a): return f"(tl.abs({a}) == float(\"inf\"))"
def eq(a, b): return f"({a} == {b})"
def ne(a, b): return f"({a} != {b})"
def lt(a, b): return f"({a} < {b})"
def le(a, b): return f"({a} <= {b})"
def gt(a, b): return f"({a} > {b})"
def ge(a, b): return f"({a} >= {b})"
def logical_and(a, b): return f"(({a} != 0) & ({b} != 0))"
def logical_or(a, b): return f"(({a} != 0) | ({b} != 0))"
def logical_xor(a, b): return f"(({a} != 0) ^ ({b} != 0))"
def logical_not(a): return f"({a} == 0)"
def bit_and(a, b): return f"({a} & {b})"
def bit_or(a, b): return f"({a} | {b})"
def bit_xor(a, b): return f"({a} ^ {b})"
def bit_not(a): return f"(~{a})"


def _past_width(b, bits) -> str:
    # eager's test: a negative count or one of at least the type's width (C++ leaves those undefined).
    return f"(({b} < 0) | ({b} >= {bits}))"


def shift_left(a, b, bits):
    """a << b; 0 past the width, as eager."""
    past = _past_width(b, bits)
    return f"tl.where({past}, 0, {a} << tl.where({past}, 0, {b}))"


def shift_right(a, b, bits):
    """a >> b, arithmetic for signed types; past the width the sign fills it (-1 or 0), as eager."""
    past = _past_width(b, bits)
    return f"tl.where({past}, tl.where({a} < 0, -1, 0), {a} >> tl.where({past}, 0, {b}))"
def where(c, a, b): return f"tl.where({c}, {a}, {b})"
def sign(a): return f"tl.where({a} > 0, 1, 0) - tl.where({a} < 0, 1, 0)"


def maximum(a, b, floating=True):
    return _nan_or(a, b, f"tl.maximum({a}, {b})") if floating else f"tl.maximum({a}, {b})"


def minimum(a, b, floating=True):
    return _nan_or(a, b, f"tl.minimum({a}, {b})") if floating else f"tl.minimum({a}, {b})"


def relu(a, floating=True):
    return f"tl.where({a} > 0, {a}, 0)" + (f" + tl.where({a} != {a}, {a}, 0)" if floating else "")


def clamp(a, lo, hi, floating=True):
    out = a
    if lo is not None:
        out = f"tl.maximum({out}, {lo})"
    if hi is not None:
        out = f"tl.minimum({out}, {hi})"
    return f"tl.where({a} != {a}, {a}, {out})" if floating else out


def tanh(a):
    # 1 - 2/(e^2x + 1) loses every digit near 0; switch to the series there.
    big = f"(1.0 - 2.0 / (tl.exp(2.0 * {a}) + 1.0))"
    series = f"({a} * (1.0 - {a} * {a} * (0.3333333333333333 - 0.13333333333333333 * {a} * {a})))"
    return f"tl.where(tl.abs({a}) < 0.0625, {series}, {big})"


def log1p(a):
    # log(1+a) * a / ((1+a) - 1) cancels the rounding error of 1+a (Goldberg); inf stays inf.
    exact = f"tl.log(1.0 + {a}) * {a} / ((1.0 + {a}) - 1.0)"
    return f'tl.where((1.0 + {a}) == 1.0, {a}, tl.where({a} == float("inf"), {a}, {exact}))'


def expm1(a):
    # (e^a - 1) * a / log(e^a), Kahan's trick, with its ends guarded.
    u = f"tl.exp({a})"
    body = f"tl.where({u} == 1.0, {a}, ({u} - 1.0) * {a} / tl.log({u}))"
    return f"tl.where({a} > 80.0, {u}, tl.where({a} < -80.0, -1.0, {body}))"


# Integer operands: Triton's % and // truncate (C), torch's remainder and floor_divide
# floor (Python); float %: fmod. Integer divisors reach here only as nonzero scalars.
def fmod(a, b): return f"({a} % {b})"


def remainder(a, b):
    r = f"({a} % {b})"
    return f"tl.where(({r} != 0) & (({r} < 0) != ({b} < 0)), {r} + {b}, {r})"


def floor_divide(a, b, floating=True):
    if not floating:
        q = f"({a} // {b})"
        return f"tl.where((({a} % {b}) != 0) & (({a} < 0) != ({b} < 0)), {q} - 1, {q})"
    # torch's div_floor_floating: from fmod, so 1 // 0.1 is 9 as in Python, not floor(10.0).
    mod = f"({a} % {b})"
    div = f"(({a} - {mod}) / {b})"
    div = f"tl.where(({mod} != 0) & (({b} < 0) != ({mod} < 0)), {div} - 1.0, {div})"
    floored = f"tl.floor({div})"
    floored = f"tl.where({div} - {floored} > 0.5, {floored} + 1.0, {floored})"
    signed_zero = f"(({a} / {b}) * 0.0)"
    return f"tl.where({b} == 0, {a} / {b}, tl.where({div} != 0, {floored}, {signed_zero}))"


def trunc_divide(a, b, floating=True):
    return trunc(f"({a} / {b})") if floating else f"({a} // {b})"


def round_(a, floating=True):
    # Half to even, from floor: a - floor(a) is exact, where a + 0.5 may round up.
    if not floating:
        return a
    f = f"tl.floor({a})"
    frac = f"({a} - {f})"
    odd = f"(({f} - 2.0 * tl.floor({f} * 0.5)) != 0)"
    r = f"tl.where({frac} > 0.5, {f} + 1.0, tl.where({frac} < 0.5, {f}, tl.where({odd}, {f} + 1.0, {f})))"
    return f"tl.where({r} == 0, {a} * 0.0, {r})"  # round(-0.3) is -0.0


def pow_(a, b):
    # a ** b via exp(b*log|a|), with the sign of a negative base restored for
    # odd integer exponents and NaN for non-integer ones (as torch.pow).
    mag = f"tl.exp({b} * tl.log(tl.abs({a})))"
    b_int = f"(tl.floor({b}) == {b})"
    odd = f"({b_int} & (tl.abs({b} - 2.0 * tl.floor({b} * 0.5)) == 1.0))"
    signed = f"tl.where(({a} < 0) & {odd}, -{mag}, {mag})"
    res = f"tl.where(({a} < 0) & ~{b_int}, float(\"nan\"), {signed})"
    # torch.pow gives 1 for x ** 0 and 1 ** y, NaN included.
    return f"tl.where(({b} == 0) | ({a} == 1.0), 1.0, {res})"


def pow_scalar(a, exponent: float, floating: bool = True) -> str:
    """a ** exponent for a scalar exponent: products (and their reciprocal) for integer
    exponents up to 16, roots for +-0.5, else exp(e * log|a|) with the sign worked out here."""
    if exponent == 0:
        return "tl.full([], 1, tl.int32)"  # torch: x ** 0 == 1, NaN included
    if exponent == int(exponent) and abs(exponent) <= 16 and (floating or exponent > 0):
        product = "(" + " * ".join([a] * abs(int(exponent))) + ")"
        return product if exponent > 0 else f"(1.0 / {product})"  # (-0.0) ** -3 is -inf
    if exponent in (0.5, -0.5):
        return f"tl.sqrt({a})" if exponent > 0 else f"tl.math.rsqrt({a})"
    mag = f"tl.exp({float(exponent)!r} * tl.log(tl.abs({a})))"
    if exponent != int(exponent):  # a negative base has no real power
        return f'tl.where({a} < 0, float("nan"), {mag})'
    if int(exponent) % 2 == 0:
        return mag
    negative = f"(({a} < 0) | (({a} == 0) & (1.0 / {a} < 0)))"  # -0.0 counts as negative
    return f"tl.where({negative}, -{mag}, {mag})"


def pow_of_scalar(base: float, b) -> str:
    """base ** b for a positive scalar base other than 1 (lowering takes no other): the
    logarithm is taken here, once; b == 0 gives 1, NaN included, as torch.pow."""
    exponent = math.log2(base)
    if exponent == int(exponent):  # a power of two: exp2 of an exact product
        return f"tl.where({b} == 0, 1.0, tl.exp2({b} * {exponent!r}))"
    # Otherwise b * log2(base) in float64: in float32 its rounding error, multiplied by the
    # exponent's size, reaches the result (10.0 ** 30 would be off by 4e-6, eager by < 1 ulp).
    return f"tl.where({b} == 0, 1.0, tl.exp2({b}.to(tl.float64) * {exponent!r}))"


OPS: dict[str, Callable[..., str]] = {
    "add": add, "sub": sub, "fma": fma, "mul": mul, "div": div, "neg": neg, "abs": abs_, "exp": exp,
    "exp2": exp2, "log": log, "log2": log2, "log1p": log1p, "expm1": expm1, "sqrt": sqrt,
    "rsqrt": rsqrt, "erf": erf, "tanh": tanh, "sigmoid": sigmoid, "sin": sin, "cos": cos,
    "pow": pow_, "reciprocal": reciprocal, "maximum": maximum, "minimum": minimum,
    "floor": floor, "ceil": ceil, "trunc": trunc, "sign": sign, "relu": relu, "clamp": clamp,
    "where": where, "eq": eq, "ne": ne, "lt": lt, "le": le, "gt": gt, "ge": ge,
    "logical_and": logical_and, "logical_or": logical_or, "logical_not": logical_not,
    "logical_xor": logical_xor, "isnan": isnan, "isinf": isinf, "cast": cast, "copy": copy,
    "full": full, "fmod": fmod, "remainder": remainder, "floor_divide": floor_divide,
    "trunc_divide": trunc_divide, "round": round_, "bitcast": bitcast, "bit_and": bit_and, "bit_or": bit_or,
    "bit_xor": bit_xor, "bit_not": bit_not, "shift_left": shift_left, "shift_right": shift_right,
}

# Ops whose result is bool while their operands compute in their own promoted type.
PREDICATES = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "isnan", "isinf"})
# Integer bit ops: a Python integer operand may widen Triton's result past the node's type.
BIT_OPS = frozenset({"bit_and", "bit_or", "bit_xor", "bit_not", "shift_left", "shift_right"})
# Ops that take a `floating` flag: NaN handling and float-only Triton calls skipped for integers.
NAN_AWARE = frozenset({"maximum", "minimum", "relu", "clamp", "floor", "ceil", "trunc", "floor_divide",
                       "trunc_divide", "round"})

assert set(OPS) == POINTWISE_OPS, set(POINTWISE_OPS) ^ set(OPS)
