"""Special functions in fusec's primitives: erfc, erfcx, log_ndtr, erfinv, ndtri, lgamma, digamma,
trigamma, spherical j0.

float32 approximations with eager's special values (poles, ±inf, domain edges); the
shift-and-series loops are unrolled to the most steps eager's loop can take. Checked
against eager and float64 in tests/test_special_functions.py.
"""

from __future__ import annotations

import math

import torch

from fusec.decompositions_elementwise import float32_math

aten = torch.ops.aten

INF, NAN = float("inf"), float("nan")


def _horner(x, coefficients):
    """coefficients[0] * x^(n-1) + ... + coefficients[-1]."""
    value = coefficients[0]
    for c in coefficients[1:]:
        value = value * x + c
    return value


# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0: Numerical Recipes' `erfcc`
# (relative error below 1.2e-7 for every z >= 0).
_ERFC_P = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
           0.37409196, 1.00002368, -1.26551223)


def _erfcx_nonnegative(z):
    """e^(z^2) erfc(z) for z >= 0 (no overflow: the e^(-z^2) is never formed)."""
    t = 1.0 / (1.0 + 0.5 * z)
    return t * aten.exp(_horner(t, _ERFC_P))


def _exp_square(z, sign):
    """e^(sign * z^2) with z^2 split into an exact head and a small tail (z^2 alone loses digits)."""
    head = aten.floor(z * 64.0) / 64.0  # <= 10 significant bits: head^2 is exact in float32
    tail = (z - head) * (z + head)
    return aten.exp(sign * head * head) * aten.exp(sign * tail)


def _erfc_float(x):
    z = aten.clamp(aten.abs(x), max=11.0)  # erfc(11) is 0 in float32; keeps inf out of the split
    upper = _exp_square(z, -1.0) * _erfcx_nonnegative(z)
    return torch.where(x < 0, 2.0 - upper, upper)


@float32_math
def _erfc(x):
    return _erfc_float(x)


def _erfcx_float(x):
    z = aten.abs(x)
    # x < 0: 2 e^(x^2) - erfcx(-x); past -9.4 e^(x^2) overflows, as eager's answer does.
    grown = 2.0 * _exp_square(aten.clamp(z, max=10.0), 1.0) - _erfcx_nonnegative(z)
    return torch.where(x < 0, grown, _erfcx_nonnegative(z))


@float32_math(no_16bit=True)
def _erfcx(x):
    return _erfcx_float(x)


@float32_math(no_16bit=True)
def _log_ndtr(x):
    # torch's formula: the tail through erfcx (no underflow), the rest through log1p.
    t = x * math.sqrt(0.5)
    tail = aten.log(_erfcx_float(-t) * 0.5) - t * t
    return torch.where(x < -1.0, tail, aten.log1p(-_erfc_float(t) * 0.5))


# erfinv: M. Giles, "Approximating the erfinv function" (GPU Computing Gems), single precision.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


@float32_math
def _erfinv(x):
    w = -aten.log((1.0 - x) * (1.0 + x))  # 1 - x is exact near 1: no cancellation
    central = _horner(w - 2.5, _ERFINV_CENTRAL)
    tail = _horner(aten.sqrt(w) - 3.0, _ERFINV_TAIL)
    value = torch.where(w < 5.0, central, tail) * x
    return torch.where(aten.abs(x) == 1.0, x * INF, value)


# ndtri: P. J. Acklam's rational approximations (relative error 1.2e-9), central and tails.
_NDTRI_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
            -3.066479806614716e+01, 2.506628277459239e+00)
_NDTRI_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
            -1.328068155288572e+01)
_NDTRI_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
            4.374664141464968e+00, 2.938163982698783e+00)
_NDTRI_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_NDTRI_TAIL = 0.02425


@float32_math(no_16bit=True)
def _ndtri(p):
    # In float64: the central fraction's terms cancel to 1e-4 in float32 (p near 0.08 or 0.92).
    # The tails from the smaller of p and 1 - p (exact near 1), so tiny p keeps its digits.
    p = p.to(torch.float64)
    q = aten.sqrt(-2.0 * aten.log(aten.minimum(p, 1.0 - p)))
    tail = _horner(q, _NDTRI_C) / (_horner(q, _NDTRI_D) * q + 1.0)
    tail = torch.where(p > 0.5, -tail, tail)
    centred = p - 0.5
    r = centred * centred
    central = _horner(r, _NDTRI_A) * centred / (_horner(r, _NDTRI_B) * r + 1.0)
    value = torch.where((p < _NDTRI_TAIL) | (p > 1.0 - _NDTRI_TAIL), tail, central)
    value = torch.where(p == 0, -INF, torch.where(p == 1, INF, value))
    return torch.where((p < 0) | (p > 1), NAN, value).to(torch.float32)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# log Gamma(1 + z) = -gamma z + sum_k (-1)^k zeta(k)/k z^k: coefficients of z^25 down to z^1. Near
# lgamma's zeros at 1 and 2 Stirling's shifted series keeps its absolute error but not its digits.
_LGAMMA_NEAR_ONE = tuple(reversed((
    -0.57721566490153287, 0.8224670334241132, -0.40068563438653143, 0.27058080842778454,
    -0.20738555102867398, 0.16955717699740819, -0.14404989676884611, 0.12550966952474304,
    -0.11133426586956469, 0.10009945751278181, -0.090954017145829041, 0.083353840546109004,
    -0.076932516411352195, 0.07143294629536133, -0.066668705882420465, 0.062500955141213038,
    -0.058823978658684585, 0.055555767627403614, -0.052631679379616658, 0.050000047698101693,
    -0.047619070330142226, 0.045454556293204669, -0.043478266053040261, 0.041666669150341208,
    -0.040000001192140137)))


def _lgamma_near_one_and_two(a):
    """log Gamma(a) for a in [0.5, 2.5): the series around 1, and around 2 with log(a - 1) added."""
    near_two = a >= 1.5
    z = torch.where(near_two, a - 2.0, a - 1.0)
    series = z * _horner(z, _LGAMMA_NEAR_ONE)
    series = torch.where(near_two, series + aten.log1p(z), series)
    return torch.where(z == 0, 0.0, series)  # lgamma(1) and lgamma(2) are +0.0


def _lgamma_positive(a):
    """log Gamma(a) for a >= 0: Stirling's series at a + 8, shifted back by log(a (a+1) ... (a+7))."""
    small = a < 8.0
    y = torch.where(small, a + 8.0, a)
    product = a
    for k in range(1, 8):
        product = product * (a + float(k))
    r = 1.0 / y
    r2 = r * r
    series = r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260)))
    stirling = y * (aten.log(y) - 1.0) - 0.5 * aten.log(y) + _HALF_LOG_2PI + series
    shifted = stirling - torch.where(small, aten.log(product), 0.0)
    return torch.where((a >= 0.5) & (a < 2.5), _lgamma_near_one_and_two(a), shifted)


@float32_math
def _lgamma(x):
    # Reflection for x < 0: log(pi / |sin(pi x)|) - lgamma(1 - x); sin(pi x) from x's offset to
    # the nearest integer (exact), which is 0 at the poles: lgamma is inf there, as eager's.
    offset = x - aten.floor(x + 0.5)
    reflected = math.log(math.pi) - aten.log(aten.abs(aten.sin(math.pi * offset)))
    negative = x < 0
    positive = _lgamma_positive(torch.where(negative, 1.0 - x, x))
    value = torch.where(negative, reflected - positive, positive)
    return torch.where(aten.isinf(x), INF, value)


# torch's calc_digamma asymptotic coefficients (Cephes psi), highest power first.
_DIGAMMA_A = (8.33333333333333333333e-2, -2.10927960927960927961e-2, 7.57575757575757575758e-3,
              -4.16666666666666666667e-3, 3.96825396825396825397e-3, -8.33333333333333333333e-3,
              8.33333333333333333333e-2)


def _digamma_nonnegative(x):
    """torch's calc_digamma for x >= 0: shifted to x >= 10 (at most ten steps), then the series."""
    result = torch.zeros_like(x)
    for _ in range(10):
        below = x < 10.0
        result = result - torch.where(below, 1.0 / x, 0.0)
        x = torch.where(below, x + 1.0, x)
    z = 1.0 / (x * x)
    return result + aten.log(x) - 0.5 / x - z * _horner(z, _DIGAMMA_A)


@float32_math
def _digamma(x):
    # x < 0: digamma(1 - x) - pi / tan(pi r), r the fractional part moved into [-0.5, 0.5].
    fraction = x - aten.trunc(x)
    r = torch.where(fraction < -0.5, fraction + 1.0, fraction)
    pi_over_tan = math.pi * aten.cos(math.pi * r) / aten.sin(math.pi * r)
    negative = x < 0
    value = _digamma_nonnegative(torch.where(negative, 1.0 - x, x))
    value = torch.where(negative, value - pi_over_tan, value)
    value = torch.where(negative & (x == aten.trunc(x)), NAN, value)  # the poles, -inf included
    # digamma(+-0) is -+inf: 1 / x has the sign.
    return torch.where(x == 0, -1.0 / x, value)


@float32_math
def _trigamma(x):
    """torch's calc_trigamma: reflection below 0.5, six shifts, the asymptotic series."""
    reflect = x < 0.5
    sin_pi_x = aten.sin(math.pi * x)
    result = torch.where(reflect, -(math.pi * math.pi) / (sin_pi_x * sin_pi_x), 0.0)
    x = torch.where(reflect, 1.0 - x, x)
    for _ in range(6):
        result = result + 1.0 / (x * x)
        x = x + 1.0
    ixx = 1.0 / (x * x)
    result = result + (1.0 + 1.0 / (2.0 * x) + ixx * (1.0 / 6 - ixx * (1.0 / 30 - ixx * (1.0 / 42)))) / x
    return torch.where(reflect, -result, result)


def _polygamma(n, x):
    # Orders 0 and 1; higher orders need the Hurwitz zeta function, which torch runs.
    if n == 0:
        return _digamma(x)
    if n == 1:
        return _trigamma(x)
    return NotImplemented


@float32_math(no_16bit=True)
def _spherical_bessel_j0(x):
    # sin(x)/x, its Taylor series below 0.5 (torch's), 0 at +-inf.
    x2 = x * x
    series = 1.0 + x2 * (-1.0 / 6 + x2 * (1.0 / 120 + x2 * (-1.0 / 5040 + x2 * (
        1.0 / 362880 + x2 * (-1.0 / 39916800 + x2 * (1.0 / 6227020800))))))
    value = torch.where(aten.abs(x) < 0.5, series, aten.sin(x) / x)
    return torch.where(aten.isinf(x), 0.0, value)


TABLE = {
    aten.erfc.default: _erfc,
    aten.special_erfcx.default: _erfcx,
    aten.special_log_ndtr.default: _log_ndtr,
    aten.erfinv.default: _erfinv,
    aten.special_ndtri.default: _ndtri,
    aten.lgamma.default: _lgamma,
    aten.digamma.default: _digamma,
    aten.polygamma.default: _polygamma,
    aten.special_spherical_bessel_j0.default: _spherical_bessel_j0,
}
