"""Modified Bessel functions I0, I1, K0, K1 and their exponentially scaled forms in fusec's primitives.

Chebyshev expansions as Cephes lays them out (i0e and i1e/x over [0, 8] and sqrt(x)-scaled
in 16/x beyond; K's log-free part in x^2 up to 2 and sqrt(x) e^x K in 4/x beyond), with
coefficients fitted to these functions at 40 digits (mpmath) and cut where float32 stops
seeing them. Checked against eager and float64 in tests/test_special_functions.py.
"""

from __future__ import annotations

import torch

from fusec.decompositions_elementwise import float32_math

aten = torch.ops.aten

INF, NAN = float("inf"), float("nan")

_I0E_SMALL = (3.3839763720e-01, -3.0468267234e-01, 1.7162090152e-01, -9.4901097048e-02, 4.9305284240e-02,
    -2.3737414806e-02, 1.0546460395e-02, -4.3243099951e-03, 1.6394756169e-03, -5.7637557454e-04,
    1.8850288510e-04, -5.7541950101e-05, 1.6448448071e-05, -4.4167383584e-06, 1.1173875392e-06,
    -2.6707938533e-07, 6.0469950244e-08, -1.3000250051e-08, 2.6598236389e-09)
_I0E_LARGE = (4.0224520551e-01, 3.3691164783e-03, 6.8897583469e-05, 2.8913705209e-06, 2.0489185898e-07,
    2.2666689934e-08, 3.3962320544e-09)
_I1E_SMALL = (1.2629359322e-01, -1.7641651836e-01, 1.0264365869e-01, -5.2945981208e-02, 2.4726449031e-02,
    -1.0564084895e-02, 4.1564229443e-03, -1.5135724506e-03, 5.1228595617e-04, -1.6176081583e-04,
    4.7815651076e-05, -1.3273163656e-05, 3.4702513081e-06, -8.5687202647e-07, 2.0032947537e-07,
    -4.4450591262e-08, 9.3815373935e-09, -1.8872497321e-09, 3.6255900216e-10)
_I1E_LARGE = (3.8928811751e-01, -9.7610974914e-03, -1.1058893876e-04, -3.8825648089e-06, -2.5122362379e-07,
    -2.6314688468e-08, -3.8353803852e-09)
_K0_SMALL = (-2.6766369662e-01, 3.4428989992e-01, 3.5979936515e-02, 1.2646154114e-03, 2.2862121031e-05,
    2.5347910798e-07, 1.9045162147e-09)
_K0E_LARGE = (1.2201515410e+00, -3.1448101312e-02, 1.5698838857e-03, -1.2849549582e-04, 1.3949813719e-05,
    -1.8317555227e-06, 2.7668136397e-07, -4.6604898950e-08, 8.5740340559e-09)
_K1_SMALL = (7.6265011367e-01, -3.5315596078e-01, -1.2261118082e-01, -6.9757238596e-03, -1.7302889575e-04,
    -2.4334061415e-06, -2.2133876116e-08)
_K1E_LARGE = (1.3603130952e+00, 1.0392373658e-01, -2.8578168596e-03, 1.9521551847e-04, -1.9361979742e-05,
    2.4064849480e-06, -3.5019606017e-07, 5.7410841414e-08, -1.0345762373e-08)


def _chebyshev(t, coefficients):
    """sum c_k T_k(t) for t in [-1, 1], by Clenshaw's recurrence."""
    b1, b2 = 0.0, 0.0
    for c in reversed(coefficients[1:]):
        b1, b2 = t * (2.0 * b1) - b2 + c, b1
    return t * b1 - b2 + coefficients[0]


def _scaled_i(a, small, large):
    """e^-a I(a) (divided by a for I1's `small`) for a >= 0: the expansion over [0, 8] or beyond."""
    near = _chebyshev(a * 0.25 - 1.0, small)
    far = _chebyshev(16.0 / a - 1.0, large) / aten.sqrt(a)
    return near, far, a <= 8.0


def _i0e_abs(a):
    near, far, is_near = _scaled_i(a, _I0E_SMALL, _I0E_LARGE)
    return torch.where(is_near, near, far)


def _i1e_abs(a):
    near, far, is_near = _scaled_i(a, _I1E_SMALL, _I1E_LARGE)
    return torch.where(is_near, near * a, far)


@float32_math
def _i0e(x):
    return _i0e_abs(aten.abs(x))


def _i0_float(x):
    a = aten.abs(x)
    return aten.exp(a) * _i0e_abs(a)  # inf past 88.7, as eager's e^x * series


def _odd(x, value):
    return torch.where(x < 0, -value, value)


@float32_math
def _i1e(x):
    return _odd(x, _i1e_abs(aten.abs(x)))


def _i1_float(x):
    a = aten.abs(x)
    return _odd(x, aten.exp(a) * _i1e_abs(a))


def _scaled_k(x, small, large, log_part):
    """(e^x K(x) for x > 2, K(x) up to 2): K's log-free series in x^2, then the 4/x expansion."""
    near = _chebyshev(x * x * 0.5 - 1.0, small) + log_part
    far = _chebyshev(4.0 / x - 1.0, large) / aten.sqrt(x)
    return near, far, x <= 2.0


def _k_domain(x, value):
    """K is +inf at 0, NaN below (eager's), 0 at +inf."""
    return torch.where(x < 0, NAN, torch.where(x == 0, INF, value))


def _k0(x, scaled: bool):
    log_part = -aten.log(x * 0.5) * aten.exp(x) * _i0e_abs(x)
    near, far, is_near = _scaled_k(x, _K0_SMALL, _K0E_LARGE, log_part)
    value = torch.where(is_near, near * aten.exp(x) if scaled else near, far if scaled else far * aten.exp(-x))
    return _k_domain(x, value)


def _k1(x, scaled: bool):
    i1 = aten.exp(x) * _i1e_abs(x)
    near = _chebyshev(x * x * 0.5 - 1.0, _K1_SMALL) / x + aten.log(x * 0.5) * i1
    far = _chebyshev(4.0 / x - 1.0, _K1E_LARGE) / aten.sqrt(x)
    is_near = x <= 2.0
    value = torch.where(is_near, near * aten.exp(x) if scaled else near, far if scaled else far * aten.exp(-x))
    return _k_domain(x, value)


TABLE = {
    aten.i0.default: float32_math(_i0_float),
    aten.special_i0e.default: _i0e,
    aten.special_i1.default: float32_math(_i1_float),
    aten.special_i1e.default: _i1e,
    # The `modified_bessel` spellings: eager refuses 16-bit floats for these on a CPU.
    aten.special_modified_bessel_i0.default: float32_math(no_16bit=True)(_i0_float),
    aten.special_modified_bessel_i1.default: float32_math(no_16bit=True)(_i1_float),
    aten.special_modified_bessel_k0.default: float32_math(no_16bit=True)(lambda x: _k0(x, scaled=False)),
    aten.special_modified_bessel_k1.default: float32_math(no_16bit=True)(lambda x: _k1(x, scaled=False)),
    aten.special_scaled_modified_bessel_k0.default: float32_math(no_16bit=True)(lambda x: _k0(x, scaled=True)),
    aten.special_scaled_modified_bessel_k1.default: float32_math(no_16bit=True)(lambda x: _k1(x, scaled=True)),
}
