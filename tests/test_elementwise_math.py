"""log10, tan, sinh, cosh, fmax, fmin and tensor-bounded clamps in generated kernels, special values as eager's."""

from __future__ import annotations

import pytest
import torch

import fusec
from tests.eager import assert_ran, check

INF, NAN = float("inf"), float("nan")
# Eager's vectorized sinh/cosh overflow early (sinh(88.9) is inf in a long tensor, 2.03e38 in a
# short one): values between 88.7 and 89.4 are checked against float64 instead, below.
SPECIAL = [0.0, -0.0, 1e-30, -1e-7, 0.5, -1.0, 1.0, 3.0, 10.0, 100.0, 1000.0, 80.0, -80.5, 88.5,
           89.5, 95.0, 1e30, -1e30, INF, -INF, NAN]


def _values(dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(SPECIAL, dtype=dtype)


@pytest.mark.parametrize("op", [torch.log10, torch.tan, torch.sinh, torch.cosh])
def test_unary_math_matches_eager_on_special_values(op):
    x = torch.cat([_values(), torch.randn(300) * 5])
    # sin/cos, exp and log of float32 agree with eager to a few ulp; the loose atol covers tan near its poles.
    check(lambda x: op(x) * 1.0, x, kernels=1, externs=0, rtol=1e-5, atol=1e-5)


def test_sinh_cosh_stay_finite_while_the_true_value_is():
    x = torch.tensor([88.5, 88.9, 89.0, -89.2, 89.4, -89.4, 89.5, -90.0] * 4)
    compiled = fusec.compile(lambda x: torch.stack([torch.sinh(x), torch.cosh(x)]))
    got = compiled(x)
    truth = torch.stack([torch.sinh(x.double()), torch.cosh(x.double())]).float()
    torch.testing.assert_close(got, truth, rtol=1e-5, atol=0)
    assert torch.isfinite(got[:, :6]).all()  # where e^x / 2 overflows, e^(x - ln 2) does not
    assert_ran(compiled)


def test_tiny_sinh_keeps_its_digits():
    x = torch.tensor([1e-8, -3e-6, 1e-20, 2e-3])
    check(lambda x: torch.sinh(x), x, kernels=1, rtol=1e-6, atol=0)


@pytest.mark.parametrize("op", [torch.fmax, torch.fmin, torch.clamp_min, torch.clamp_max])
def test_binary_nan_rules_match_eager(op):
    a = _values()
    b = torch.roll(_values(), 3)
    b[0], a[1] = NAN, NAN  # NaN on each side, and on both (last element of each)
    report = check(lambda a, b: op(a, b) + 0.0, a, b, kernels=1, externs=0, rtol=0, atol=0)
    assert report.stats["kernels"] == 1
    # Which zero wins a tie (-0.0 vs 0.0) is not asserted: eager's own answer differs between its
    # vectorized and scalar loops (maximum(-0.0, 0.0) is 0.0 in a 16-element tensor, -0.0 in a 2-element one).


def test_clamp_with_tensor_bound_fuses_with_its_neighbours():
    x, lo = torch.randn(64, 32), torch.randn(32)
    check(lambda x, lo: torch.clamp(x * 2, min=lo).exp(), x, lo, kernels=1, externs=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_other_dtypes(dtype):
    x = (torch.randn(257) * 3).to(dtype)
    y = (torch.randn(257) * 3).to(dtype)
    check(lambda x, y: torch.fmax(x, y) - torch.fmin(y, x), x, y, kernels=1)
    if dtype.is_floating_point:
        check(lambda x: torch.log10(x.abs() + 1) + torch.cosh(x * 0.1), x, kernels=1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.bool])
def test_sinh_cosh_of_integers_compute_in_float_first(dtype):
    # Negating a uint8 wraps and the most negative int8 has no positive: the float comes first.
    x = {torch.uint8: torch.tensor([0, 1, 3, 200]), torch.int8: torch.tensor([-128, -3, 0, 5]),
         torch.bool: torch.tensor([True, False])}[dtype].to(dtype)
    check(lambda x: torch.stack([torch.sinh(x), torch.cosh(x)]), x)


@pytest.mark.parametrize("base", [2.0, 10.0, 0.5, 1.5])
def test_scalar_to_a_tensor_power_keeps_float32_precision(base):
    # Adam's beta ** step; large exponents are where a float32 b * log(base) loses digits.
    t = torch.tensor([0.0, 1.0, 3.0, 17.0, 30.0, 50.0, -20.0, 0.5, float("nan")])
    check(lambda t: torch.pow(base, t) * 1.0, t, kernels=1, externs=0, rtol=1.3e-6, atol=0)
