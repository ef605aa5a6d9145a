"""Inverse trigonometric and hyperbolic functions, and hypot, in fusec's primitives.

Range reduction and minimax polynomials after Cephes' single-precision `atanf`/`asinf`,
logarithms after fdlibm's `asinh`/`acosh`/`atanh`: float32 to a few ulp, with eager's
special values (±0 keep their sign, ±1 and ±inf at the domain edges, NaN outside it).
Checked against eager in tests/test_special_functions.py.
"""

from __future__ import annotations

import math

import torch

from fusec.decompositions_elementwise import float32_math

aten = torch.ops.aten

INF = float("inf")
_LN2 = math.log(2.0)
# Past 2**28, sqrt(x*x + 1) is |x| in float32, and x*x may overflow: log(2|x|) is the answer.
_HUGE = 2.0 ** 28


def _odd(x, magnitude):
    """magnitude with x's sign, ±0 and NaN passed through as x (an odd function of |x|)."""
    return torch.where(x < 0, -magnitude, torch.where(x == 0, x, magnitude))


def _atan_reduced(t):
    """atan(t) for |t| <= tan(pi/8) (Cephes atanf's polynomial)."""
    z = t * t
    poly = ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1
    return poly * z * t + t


def _atan_abs(a):
    """atan(a) for a >= 0: reduced by atan(a) = pi/2 - atan(1/a) or pi/4 + atan((a-1)/(a+1))."""
    big = a > 2.414213562373095  # tan(3pi/8)
    mid = a > 0.4142135623730950  # tan(pi/8)
    t = torch.where(big, -1.0 / a, torch.where(mid, (a - 1.0) / (a + 1.0), a))
    offset = torch.where(big, math.pi / 2, torch.where(mid, math.pi / 4, 0.0))
    return offset + _atan_reduced(t)


@float32_math
def _atan(x):
    return _odd(x, _atan_abs(aten.abs(x)))


def _asin_reduced(z):
    """asin(z) for |z| <= 0.5 (Cephes asinf's polynomial)."""
    zz = z * z
    poly = (((4.2163199048e-2 * zz + 2.4181311049e-2) * zz + 4.5470025998e-2) * zz
            + 7.4953002686e-2) * zz + 1.6666752422e-1
    return poly * zz * z + z


@float32_math
def _asin(x):
    # Above 0.5: asin(a) = pi/2 - 2 asin(sqrt((1 - a) / 2)); past 1 the root is NaN, as eager's.
    a = aten.abs(x)
    big = a > 0.5
    reduced = _asin_reduced(torch.where(big, aten.sqrt(0.5 * (1.0 - a)), a))
    return _odd(x, torch.where(big, math.pi / 2 - 2.0 * reduced, reduced))


@float32_math
def _acos(x):
    low = x < -0.5
    high = x > 0.5
    root = _asin_reduced(aten.sqrt(0.5 * (1.0 - aten.abs(x))))
    middle = math.pi / 2 - _asin_reduced(x)
    return torch.where(low, math.pi - 2.0 * root, torch.where(high, 2.0 * root, middle))


def _negative(x):
    """x < 0, with -0.0 counted negative (its reciprocal is -inf)."""
    return (x < 0) | ((x == 0) & (1.0 / x < 0))


@float32_math
def _atan2(y, x):
    ay, ax = aten.abs(y), aten.abs(x)
    angle = _atan_abs(ay / ax)
    # C99's rules where |y|/|x| is 0/0 or inf/inf: both zero is 0 (then pi for x = -0.0), both infinite pi/4.
    angle = torch.where((ay == 0) & (ax == 0), 0.0, angle)
    angle = torch.where((ay == INF) & (ax == INF), math.pi / 4, angle)
    angle = torch.where(_negative(x), math.pi - angle, angle)
    return torch.where(_negative(y), -angle, angle)


@float32_math
def _asinh(x):
    a = aten.abs(x)
    a2 = a * a
    moderate = aten.log1p(a + a2 / (1.0 + aten.sqrt(1.0 + a2)))
    return _odd(x, torch.where(a > _HUGE, aten.log(a) + _LN2, moderate))


@float32_math
def _acosh(x):
    t = x - 1.0
    near_one = aten.log1p(t + aten.sqrt(2.0 * t + t * t))
    moderate = aten.log(2.0 * x - 1.0 / (x + aten.sqrt(x * x - 1.0)))
    value = torch.where(x > _HUGE, aten.log(x) + _LN2, torch.where(x > 2.0, moderate, near_one))
    return torch.where(x < 1.0, float("nan"), value)


@float32_math
def _atanh(x):
    # 0.5 log((1 + a) / (1 - a)) as log1p of a small argument; a = 1 gives inf, a > 1 NaN.
    a = aten.abs(x)
    return _odd(x, 0.5 * aten.log1p(2.0 * a / (1.0 - a)))


@float32_math(floats_only=True)
def _hypot(a, b):
    # big * sqrt(1 + (small/big)^2) never overflows while the result is finite; inf wins over NaN.
    a, b = aten.abs(a), aten.abs(b)
    big, small = aten.maximum(a, b), aten.minimum(a, b)
    ratio = small / big
    value = torch.where(big == 0, 0.0, big * aten.sqrt(1.0 + ratio * ratio))
    return torch.where((a == INF) | (b == INF), INF, value)


TABLE = {
    aten.atan.default: _atan,
    aten.asin.default: _asin,
    aten.acos.default: _acos,
    aten.atan2.default: _atan2,
    aten.asinh.default: _asinh,
    aten.acosh.default: _acosh,
    aten.atanh.default: _atanh,
    aten.hypot.default: _hypot,
}
