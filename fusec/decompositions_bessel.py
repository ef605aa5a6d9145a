"""Bessel functions J0, J1, Y0, Y1, modified I0, I1, K0, K1 (and scaled), and Airy's Ai in fusec's primitives.

Chebyshev expansions as Cephes lays them out (i0e and i1e/x over [0, 8] and sqrt(x)-scaled
in 16/x beyond; K's log-free part in x^2 up to 2 and sqrt(x) e^x K in 4/x beyond), with
coefficients fitted to these functions at 40 digits (mpmath) and cut where float32 stops
seeing them. J, Y and Ai are eager's own Cephes forms (rational functions up to 5, or 2.09 for Ai,
then the phase expansions in 25/x^2), in the same float32 steps, so they round as eager does;
Ai's power series is unrolled to the most terms eager's loop takes, each masked off once eager's stops.
Checked against eager and float64 in tests/test_special_functions.py.
"""

from __future__ import annotations

import math

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


# J0/Y0 and J1/Y1 share their phase expansions' P and Q; the R and Y rationals are each function's
# own below 5. Coefficients as eager's (ATen/native/Math.h, from Cephes), highest power first.
_P0N = (0.0007969367292973471, 0.08283523921074408, 1.239533716464143, 5.447250030587687, 8.74716500199817,
    5.303240382353949, 1.0)
_P0D = (0.0009244088105588637, 0.08562884743544745, 1.2535274390105895, 5.470977403304171,
    8.761908832370695, 5.306052882353947, 1.0)
_Q0N = (-0.011366383889846916, -1.2825271867050931, -19.553954425773597, -93.20601521237683,
    -177.68116798048806, -147.07750515495118, -51.41053267665993, -6.050143506007285)
_Q0D = (64.3178256118178, 856.4300259769806, 3882.4018360540163, 7240.467741956525, 5930.727011873169,
    2062.0933166032783, 242.0057402402914)
_J0_RN = (-4794432209.782018, 1956174919465.5657, -249248344360967.72, 9708622510473064.0)
_J0_RD = (499.563147152651, 173785.4016763747, 48440965.83399621, 11185553704.535683, 2112775201154.892,
    310518229857422.56, 3.1812195594320496e+16, 1.7108629408104315e+18)
_Y0_N = (15592.436785523574, -14663929.59039716, 5435264770.518765, -982136065717.9115, 87590639439536.7,
    -3466283033847297.0, 4.4273326857256984e+16, -1.8495080043698668e+16)
_Y0_D = (1041.2835366425984, 626107.330137135, 268919633.39381415, 86400248710.3935, 20297961275010.555,
    3171577528429750.5, 2.5059625617265306e+17)
_P1N = (0.0007621256162081731, 0.07313970569409176, 1.1271960812968493, 5.112079511468076,
    8.424045901417724, 5.214515986823615, 1.0)
_P1D = (0.0005713231280725487, 0.06884559087544954, 1.105142326340617, 5.073863861286015, 8.399855543276042,
    5.209828486823619, 1.0)
_Q1N = (0.05108625947501766, 4.982138729512334, 75.82382841325453, 366.7796093601508, 710.8563049989261,
    597.4896124006136, 211.68875710057213, 25.207020585802372)
_Q1D = (74.23732770356752, 1056.4488603826283, 4986.410583376536, 9562.318924047562, 7997.041604473507,
    2826.1927851763908, 336.0936078106983)
_J1_RN = (-899971225.7055594, 452228297998.19403, -72749424522181.83, 3682957328638529.0)
_J1_RD = (620.8364781180543, 256987.25675774884, 83514679.14319493, 22151159547.97925, 4749141220799.914,
    784369607876235.9, 8.952223361846274e+16, 5.322786203326801e+18)
_Y1_N = (1263204747.9017804, -647355876379.1603, 114509511541823.73, -8127702555013251.0,
    2.024394757135949e+17, -7.788771962659501e+17)
_Y1_D = (594.3015923461282, 235564.09294306856, 73481194.44597217, 18760131610.870617, 3882312774962.3857,
    620557727146953.8, 6.871410873553005e+16, 3.9727060811656064e+18)
_SQRT_2_PI = 0.797884560802865355879892119868763737  # sqrt(2 / pi)
_TWO_PI = 0.636619772367581343075535053490057448  # 2 / pi


def _poly(z, coefficients):
    """coefficients[0] z^(n-1) + ... + coefficients[-1], in eager's order of steps."""
    value = coefficients[0]
    for c in coefficients[1:]:
        value = value * z + c
    return value


def _phase(x, w, order: int, cosine: bool):
    """J (cosine) or Y (sine) past 5 from the phase expansions in w = 25/x^2, as eager forms them."""
    pn, pd, qn, qd = (_P0N, _P0D, _Q0N, _Q0D) if order == 0 else (_P1N, _P1D, _Q1N, _Q1D)
    p, q = _poly(w, pn) / _poly(w, pd), _poly(w, qn) / _poly(w, qd)
    angle = x - (0.785398163397448309615660845819875721 if order == 0 else 2.356194490192344928846982537459627163)
    if cosine:
        value = p * aten.cos(angle) - 5.0 / x * q * aten.sin(angle)
    else:
        value = p * aten.sin(angle) + 5.0 / x * q * aten.cos(angle)
    return value * _SQRT_2_PI / aten.sqrt(x)


def _j0_abs(a):
    z = a * a
    near = (z - 5.78318596294678452118) * (z - 30.4712623436620863991) * _poly(z, _J0_RN) / _poly(z, _J0_RD)
    near = torch.where(a < 1e-5, 1.0 - z / 4.0, near)
    return torch.where(a <= 5.0, near, _phase(a, 25.0 / z, 0, cosine=True))


def _j1(x):
    a = aten.abs(x)
    z = a * a
    near = _poly(z, _J1_RN) / _poly(z, _J1_RD) * a * (z - 14.6819706421238932572) * (z - 49.2184563216946036703)
    w = 5.0 / a * (5.0 / a)
    return _odd(x, torch.where(a <= 5.0, near, _phase(a, w, 1, cosine=True)))


def _y_domain(x, value):
    """Y is -inf at 0 and NaN below (eager's)."""
    return torch.where(x == 0, -INF, torch.where(x < 0, NAN, value))


def _y0(x):
    z = x * x
    near = _poly(z, _Y0_N) / _poly(z, _Y0_D) + _TWO_PI * aten.log(x) * _j0_abs(x)
    return _y_domain(x, torch.where(x <= 5.0, near, _phase(x, 25.0 / z, 0, cosine=False)))


def _y1(x):
    z = x * x
    near = x * (_poly(z, _Y1_N) / _poly(z, _Y1_D)) + _TWO_PI * (_j1(x) * aten.log(x) - 1.0 / x)
    w = 5.0 / x * (5.0 / x)
    return _y_domain(x, torch.where(x <= 5.0, near, _phase(x, w, 1, cosine=False)))


_AI_AN = (0.346538101525629, 12.007595273964581, 76.27960536152345, 168.08922493463058, 159.75639135016442,
    70.53609068404442, 14.026469116338967, 1.0)
_AI_AD = (0.5675945326387702, 14.75625625848472, 84.51389701414746, 177.31808814540045, 164.2346928715297,
    71.47784008255756, 14.095913560783403, 1.0)
_AI_AFN = (-0.1316963234183318, -0.6264565444319123, -0.6931580360369335, -0.2797799815451191,
    -0.04919001326095003, -0.004062659235948854, -0.0001592764962392621, -2.776491081552329e-06,
    -1.6778769848911465e-08)
_AI_AFD = (13.356042070655324, 32.682503279522464, 26.736704094149957, 9.187074029072596, 1.4752914677166642,
    0.11568717379518804, 0.004402916416152112, 7.547203482874142e-05, 4.5185009297058035e-07)
_AI_AGN = (0.01973399320916857, 0.39110302961568827, 1.0657989759959559, 0.9391692298166502,
    0.35146565610554764, 0.06338889196289255, 0.005858041130483885, 0.000282851600836737,
    6.98793669997261e-06, 8.117892395543892e-08, 3.415517847659236e-10)
_AI_AGD = (9.30892908077442, 19.835292871831214, 15.564662893286462, 5.476860694229755, 0.9542936116189619,
    0.08645808263523921, 0.004126565238242226, 0.00010125908511650914, 1.1716673321441352e-06,
    4.9183457006293e-09)
_AI_SERIES_TERMS = 12  # eager's loop takes at most 10 for |x| < 2.09 in float32
_FLOAT32_EPS = 1.1920928955078125e-07
_INV_SQRT_PI = 5.64189583547756286948e-01


def _airy_oscillating(x):
    """Ai below -2.09: the phase expansions in 1/zeta, zeta = 2/3 (-x)^(3/2)."""
    zeta = -2.0 * x * aten.sqrt(-x) / 3.0
    z = 1.0 / zeta
    z2 = z * z
    f = _poly(z2, _AI_AFN) / _poly(z2, _AI_AFD)
    g = _poly(z2, _AI_AGN) / _poly(z2, _AI_AGD)
    t = zeta + 0.25 * math.pi
    return _INV_SQRT_PI / aten.sqrt(aten.sqrt(-x)) * (aten.sin(t) * (1.0 + z2 * f) - aten.cos(t) * (z * g))


def _airy_decaying(x):
    """Ai from 2.09 up: the asymptotic rational in 1/zeta times e^-zeta."""
    zeta = 2.0 * x * aten.sqrt(x) / 3.0
    w = 1.0 / zeta
    ratio = _poly(w, _AI_AN) / _poly(w, _AI_AD)
    return _INV_SQRT_PI * ratio / (2.0 * aten.sqrt(aten.sqrt(x)) * aten.exp(zeta))


def _airy_series(x):
    """Ai for |x| < 2.09: Maclaurin's two series in x^3, each step applied only while eager's loop runs."""
    z = x * x * x
    f, g, m, n = 1.0, x, 1.0, x
    running = None  # eager's loop always takes its first step
    for step in range(_AI_SERIES_TERMS):
        k = 1.0 + 3.0 * step
        m_next, n_next = m * z / (k + 1.0) / (k + 2.0), n * z / (k + 2.0) / (k + 3.0)
        f_next, g_next = f + m_next, g + n_next
        if running is None:
            m, n, f, g = m_next, n_next, f_next, g_next
        else:
            m, n = torch.where(running, m_next, m), torch.where(running, n_next, n)
            f, g = torch.where(running, f_next, f), torch.where(running, g_next, g)
        running = aten.abs(m / f) > _FLOAT32_EPS  # stays false once false: m and f no longer change
    return 0.355028053887817239260 * f - 0.258819403792806798405 * g


def _airy_ai(x):
    value = torch.where(x < -2.09, _airy_oscillating(x),
                        torch.where(x >= 2.09, _airy_decaying(x), _airy_series(x)))
    return torch.where(aten.isinf(x), NAN, torch.where(x > 103.892, 0.0, value))


TABLE = {
    aten.special_bessel_j0.default: float32_math(no_16bit=True)(lambda x: _j0_abs(aten.abs(x))),
    aten.special_bessel_j1.default: float32_math(no_16bit=True)(_j1),
    aten.special_bessel_y0.default: float32_math(no_16bit=True)(_y0),
    aten.special_bessel_y1.default: float32_math(no_16bit=True)(_y1),
    aten.special_airy_ai.default: float32_math(no_16bit=True)(_airy_ai),
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
