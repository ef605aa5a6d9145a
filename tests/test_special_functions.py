"""Inverse trig/hyperbolic and special functions in generated kernels: eager's values, special
values and dtypes, accuracy against float64, and fused with their neighbours."""

from __future__ import annotations

import pytest
import torch

import fusec
from tests.eager import assert_ran, check

INF, NAN = float("inf"), float("nan")
EDGES = [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.3, -0.5, 0.5, 0.7, -1.0, 1.0, 1.5, 2.0, -2.0, -2.5, 3.0,
         9.99, 10.0, 10.5, 1e4, 1e10, -1e10, 1e30, -1e30, INF, -INF, NAN, -3.0, -0.999, 0.9999, -100.5, 88.0]


def _inputs(scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.tensor(EDGES), torch.randn(300, generator=g) * scale,
                      torch.rand(200, generator=g) * 2 - 1])


# op -> (function, its tolerance against eager, its largest error against float64 where |value| > 1e-3)
UNARY = {
    "atan": (torch.atan, 1e-6, 4e-7), "asin": (torch.asin, 1e-6, 4e-7), "acos": (torch.acos, 1e-6, 4e-7),
    "asinh": (torch.asinh, 1e-6, 4e-7), "acosh": (torch.acosh, 1e-6, 4e-7),
    "atanh": (torch.atanh, 1e-6, 4e-7), "erfc": (torch.erfc, 1e-6, 1e-6),
    "erfcx": (torch.special.erfcx, 1e-5, 2e-6), "log_ndtr": (torch.special.log_ndtr, 1e-5, 2e-6),
    "erfinv": (torch.erfinv, 1e-6, 5e-7), "ndtri": (torch.special.ndtri, 1e-6, 5e-7),
    "digamma": (torch.digamma, 1e-5, None),
    "trigamma": (lambda x: torch.polygamma(1, x), 1e-5, None),
    "lgamma": (torch.lgamma, 1e-5, None), "spherical_bessel_j0": (torch.special.spherical_bessel_j0, 1e-6, 4e-7),
    "i0": (torch.i0, 1e-6, 6e-7), "i0e": (torch.special.i0e, 1e-6, 6e-7), "i1": (torch.special.i1, 2e-6, 2e-6),
    "i1e": (torch.special.i1e, 2e-6, 2e-6), "k0": (torch.special.modified_bessel_k0, 2e-6, 1.5e-6),
    "k1": (torch.special.modified_bessel_k1, 2e-6, 1e-6),
    "k0e": (torch.special.scaled_modified_bessel_k0, 2e-6, 1.5e-6),
    "k1e": (torch.special.scaled_modified_bessel_k1, 2e-6, 1e-6),
    # eager's own Cephes forms in the same float32 steps: as close to eager as rounding allows (their
    # float32 error near the zeros of J and Y is eager's too: test_bessel_j_y_and_airy_err_as_eager_does).
    "bessel_j0": (torch.special.bessel_j0, 1e-6, None), "bessel_j1": (torch.special.bessel_j1, 1e-6, None),
    "bessel_y0": (torch.special.bessel_y0, 1e-6, None), "bessel_y1": (torch.special.bessel_y1, 1e-6, None),
    "airy_ai": (torch.special.airy_ai, 1e-6, None),
}
JY_AIRY = [torch.special.bessel_j0, torch.special.bessel_j1, torch.special.bessel_y0, torch.special.bessel_y1,
           torch.special.airy_ai]


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_equals_eager_on_edges_and_random_values(name):
    op, tol, _ = UNARY[name]
    x = _inputs()
    check(lambda x: op(x), x, kernels=1, externs=0, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(n for n, (_, _, bound) in UNARY.items() if bound))
def test_unary_is_accurate_against_float64(name):
    op, _, bound = UNARY[name]
    x = _inputs(scale=20.0)
    got = fusec.compile(op)(x)
    truth = op(x.double())
    close = torch.isfinite(truth) & (truth.abs() > 1e-3) & (truth.abs() < 3e38)
    relative = ((got.double() - truth).abs() / truth.abs())[close]
    assert relative.max() < bound, relative.max()
    # Infinities and NaN where the true value has them.
    assert torch.equal(got[~close].isnan(), truth[~close].float().isnan())


def test_bessel_j_y_and_airy_at_their_branch_points_and_limits():
    # J and Y switch forms at 5 and Ai at +-2.09; Y is -inf at 0 and NaN below; Ai is 0 past 103.892, NaN at
    # +-inf; Ai's series stops at a number of terms that depends on x (eager's loop), up to 10.
    edges = torch.tensor([4.9999995, 5.0, 5.0000005, 1e-5, 9.9e-6, 2.0899997, 2.09, 2.0900002, -2.0899997, -2.09,
                          -2.0900002, 8.3203353, 103.89, 103.9, 1e-38, -1e-38, 1e-45, 0.0, -0.0, INF, -INF, NAN])
    x = torch.cat([edges, torch.linspace(-2.09, 2.09, 1001), torch.logspace(-10, 3, 300), -torch.logspace(-10, 3, 300)])
    check(lambda x: [f(x) for f in JY_AIRY], x, kernels=1, externs=0, rtol=1e-6, atol=1e-6)


def test_bessel_j_y_and_airy_err_as_eager_does():
    x = torch.cat([torch.rand(2000) * 60, -torch.rand(500) * 60])
    for f in JY_AIRY:
        got, eager, truth = fusec.compile(f)(x).double(), f(x).double(), f(x.double())
        finite = torch.isfinite(truth)
        ours, theirs = (got - truth).abs()[finite].max(), (eager - truth).abs()[finite].max()
        assert ours <= theirs * 1.5 + 1e-7, (f, ours, theirs)


def test_ndtri_of_tiny_probabilities_keeps_digits():
    p = torch.tensor([1e-38, 1e-30, 1e-10, 3e-8, 0.02, 0.5, 0.98, 1 - 3e-8, 0.0, 1.0, -0.1, 1.1, NAN, 1e-45])
    check(torch.special.ndtri, p, kernels=1, externs=0, rtol=1e-6, atol=0)


def test_lgamma_near_its_zeros_keeps_digits():
    # lgamma(1) = lgamma(2) = +0: around them a shifted Stirling series would keep only absolute error.
    x = torch.tensor([1.0, 2.0, 1.0001, 0.9999, 2.0003, 1.9996, 1.5, 0.5, 2.4999, 0.75])
    got = fusec.compile(torch.lgamma)(x)
    torch.testing.assert_close(got, torch.lgamma(x.double()).float(), rtol=1e-5, atol=0)
    assert not torch.signbit(got[:2]).any()


def test_poles_and_domain_edges():
    x = torch.tensor([-0.0, 0.0, -1.0, -2.0, -7.0, -1e9, 1.0, -1.0, INF, -INF, 88.5, 89.0, -95.0])
    for op in (torch.lgamma, torch.digamma, torch.asin, torch.acos, torch.atanh, torch.erfinv, torch.acosh,
               torch.i0, torch.special.i1, torch.special.modified_bessel_k1, torch.special.scaled_modified_bessel_k0):
        got = fusec.compile(op)(x)
        expected = op(x)
        torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-6, atol=1e-6)
        assert torch.equal(torch.signbit(got[got == 0]), torch.signbit(expected[expected == 0])), op


@pytest.mark.parametrize("op", [torch.atan, torch.asin, torch.asinh, torch.atanh, torch.erfinv, torch.atan2])
def test_signed_zeros_are_kept(op):
    zeros = torch.tensor([0.0, -0.0])
    args = (zeros,) if op is not torch.atan2 else (zeros, torch.tensor([1.0, 1.0]))
    assert torch.equal(torch.signbit(fusec.compile(op)(*args)), torch.signbit(op(*args)))


def test_atan2_quadrants_and_special_values():
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-30, 3.5, -2.0, INF, -INF, NAN])
    y, x = torch.meshgrid(values, values, indexing="ij")
    y, x = y.flatten(), x.flatten()
    check(lambda y, x: torch.atan2(y, x), y, x, kernels=1, externs=0, rtol=1e-6, atol=1e-6)
    out, expected = fusec.compile(torch.atan2)(y, x), torch.atan2(y, x)
    numbers = ~expected.isnan()  # ±0 and ±pi by the zeros' signs (a NaN's sign means nothing)
    assert torch.equal(torch.signbit(out[numbers]), torch.signbit(expected[numbers]))


def test_hypot_never_overflows_early_and_inf_wins_over_nan():
    a = torch.tensor([3e38, 1e-40, 0.0, -0.0, INF, NAN, 3.0, -INF, 1e20])
    b = torch.tensor([3e38, 1e-40, 0.0, 2.0, NAN, INF, -4.0, 1.0, 1e-20])
    check(lambda a, b: torch.hypot(a, b), a, b, kernels=1, externs=0, rtol=1e-6, atol=0)


def test_round_with_decimals_and_ldexp_are_eagers_bits():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.tensor([0.0, -0.0, 0.0005, -0.0015, 1234.5678, INF, NAN, 1e30]),
                   torch.randn(400, generator=g) * 100])
    e = torch.randint(-130, 130, x.shape, generator=g)
    for decimals in (3, -2, 0):
        check(lambda x, d=decimals: torch.round(x, decimals=d), x, kernels=1, externs=0, rtol=0, atol=0)
    check(torch.ldexp, x, e, kernels=1, externs=0, rtol=0, atol=0)
    check(torch.ldexp, x, e.float(), kernels=1, externs=0, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_compute_in_float32(dtype):
    x = (torch.rand(257) * 1.8 - 0.9).to(dtype)
    fns = [torch.atan, torch.asin, torch.acos, torch.asinh, torch.atanh, torch.erfc, torch.erfinv,
           torch.lgamma, torch.digamma, lambda x: torch.round(x, decimals=1), torch.i0, torch.special.i1e]
    check(lambda x: [f(x) for f in fns], x, kernels=1, externs=0)
    # Separate outputs: a sum would be rounded to 16 bits after each add by eager, not by a fused kernel.
    check(lambda x, y: [torch.hypot(x, x * 2), torch.atan2(x, -x), torch.acosh(y)], x, x.abs() + 1, kernels=1)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_inputs_compute_in_the_default_float(dtype):
    x = {torch.int64: torch.tensor([-3, -1, 0, 1, 2, 5, 100]), torch.uint8: torch.tensor([0, 1, 2, 200]),
         torch.bool: torch.tensor([True, False])}[dtype].to(dtype)
    fns = [torch.atan, torch.asin, torch.acos, torch.asinh, torch.acosh, torch.atanh, torch.erfc,
           torch.erfinv, torch.lgamma, torch.digamma, torch.special.erfcx, torch.special.log_ndtr,
           lambda x: torch.polygamma(1, x), lambda x: torch.atan2(x, x + 1), torch.i0, torch.special.i1,
           torch.special.modified_bessel_k0, torch.special.scaled_modified_bessel_k1, *JY_AIRY]
    check(lambda x: [f(x) for f in fns], x, kernels=1, externs=0)


def test_fused_with_neighbours():
    x, y = torch.randn(64, 33), torch.randn(33)
    check(lambda x, y: (torch.atan2(x, y) * torch.erfc(x) + torch.lgamma(x.abs() + 0.5)).sum(-1), x, y, kernels=1,
          externs=0, rtol=1e-5, atol=1e-4)
    check(lambda x, y: torch.asinh(x * y).relu() + torch.digamma(y.exp()) - torch.hypot(x, y), x, y,
          kernels=1, externs=0)
    check(lambda x, y: (torch.special.bessel_j0(x * 4) + torch.special.bessel_y1(y.abs() * 9)
                        - torch.special.airy_ai(x - y)).sum(-1), x, y, kernels=1, externs=0, rtol=1e-5, atol=1e-5)


@pytest.mark.fallback_expected  # these stay in torch, as fusec says
def test_what_stays_in_torch_still_equals_eager():
    x = torch.rand(50, dtype=torch.float64) + 0.5
    # float64: the approximations are float32's; polygamma of order >= 2 needs the Hurwitz zeta function.
    for fn, arg in [(torch.lgamma, x), (lambda x: torch.polygamma(3, x), x.float())]:
        compiled = fusec.compile(fn)
        torch.testing.assert_close(compiled(arg), fn(arg))
        assert fusec.report_of(compiled).stats["extern_calls"] == 1
    # eager refuses half-precision erfcx on a CPU: so does the compiled call, with eager's error.
    with pytest.raises(RuntimeError, match="erfcx"):
        fusec.compile(torch.special.erfcx)(x.half())
    for fn, name in [(torch.special.bessel_y1, "bessel_y1"), (torch.special.airy_ai, "airy_ai")]:
        with pytest.raises(RuntimeError, match=f"{name}_cpu.*Half"):
            fusec.compile(fn)(x.half())


def test_integers_where_eager_refuses_them():
    a = torch.tensor([3, 4])
    with pytest.raises(RuntimeError, match="hypot"):
        torch.hypot(a, a)
    with pytest.raises(RuntimeError, match="hypot"):
        fusec.compile(torch.hypot)(a, a)


def test_compiled_twice_runs_the_planned_kernels():
    f = fusec.compile(lambda x: torch.erfinv(torch.tanh(x)) + torch.atan(x))
    x = torch.randn(100)
    f(x)
    torch.testing.assert_close(f(x), torch.erfinv(torch.tanh(x)) + torch.atan(x), rtol=1e-5, atol=1e-5)
    assert assert_ran(f).stats["kernels"] == 1


_BITS = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, INF, -INF, NAN, 2.5, 1e-38])


def _same_floats(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal values, NaN where NaN, and the same sign on every number (-0.0 included)."""
    numbers = ~expected.isnan()
    return (got.dtype == expected.dtype and torch.equal(got.isnan(), expected.isnan())
            and torch.equal(got[numbers], expected[numbers])
            and torch.equal(got[numbers].signbit(), expected[numbers].signbit()))


def test_view_as_another_dtype_reads_the_same_bits():
    x = _BITS[:-3]  # NaN payloads are not promised
    check(lambda x: (x.view(torch.int32) + 1).view(torch.float32), x, kernels=1, externs=0, rtol=0, atol=0)
    check(lambda x: x.view(torch.int64) - 1, x.double(), kernels=1, externs=0)
    check(lambda x: x.view(torch.int32) < 0, x, kernels=1, externs=0)


@pytest.mark.fallback_expected  # a view that changes the item size, or reads 16-bit floats' bits, runs in torch
def test_view_that_changes_the_item_size_stays_in_torch():
    for x, dtype in [(_BITS, torch.int16), (_BITS.half(), torch.int16), (_BITS.double(), torch.int32)]:
        compiled = fusec.compile(lambda x, dtype=dtype: x.view(dtype) * 1)
        torch.testing.assert_close(compiled(x), x.view(dtype) * 1)


def test_signbit_copysign_and_nextafter_are_exact():
    a, b = (t.flatten() for t in torch.meshgrid(_BITS, _BITS, indexing="ij"))
    negative_nan = torch.zeros(1) / 0  # x86's default NaN has the sign bit set
    for fn, args in [(torch.signbit, (torch.cat([_BITS, -_BITS, negative_nan]),)), (torch.copysign, (a, b)),
                     (torch.copysign, (_BITS, negative_nan.expand(_BITS.shape).contiguous())),
                     (torch.nextafter, (a, b))]:
        compiled = fusec.compile(fn)
        got, expected = compiled(*args), fn(*args)
        assert torch.equal(got, expected) if got.dtype == torch.bool else _same_floats(got, expected), fn
        assert assert_ran(compiled).stats["kernels"] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.bool])
def test_sign_ops_of_other_dtypes(dtype):
    x = (_BITS[:-3] * 2).to(dtype)
    y = -_BITS[:-3].to(dtype if dtype.is_floating_point else torch.float32)
    check(lambda x, y: [torch.signbit(x), torch.copysign(x, y), torch.copysign(y, x)], x, y, kernels=1, externs=0)


def test_sign_ops_fuse_with_their_neighbours():
    x, y = torch.randn(50, 20), torch.randn(20)
    check(lambda x, y: torch.where(torch.signbit(x * y), torch.copysign(x.exp(), y), torch.nextafter(x, y)).sum(0),
          x, y, kernels=1, externs=0)
