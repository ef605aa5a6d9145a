"""Long rows (a loop over each row) in one pass: softmax's max and sum together (online,
rescaled as the max grows), variance by Welford; the write pass is the only second pass.
Against eager, with the values that break naive versions: -inf, +inf, NaN, equal rows."""

import pytest
import torch
import torch.nn.functional as F

from tests.eager import check

ROW = 9000  # past the longest row kept in registers: the row loops

ROWS = {
    "softmax": lambda x, dim=-1: torch.softmax(x, dim),
    "log_softmax": lambda x, dim=-1: torch.log_softmax(x, dim),
    "logsumexp": lambda x, dim=-1: torch.logsumexp(x, dim),
}


def extreme_rows(dtype: torch.dtype, length: int = ROW) -> torch.Tensor:
    """Rows: normal, all -inf, -inf but one late finite value, a NaN mid-row, all equal,
    +inf, a late huge max (the running sum rescales), and -inf with one +inf."""
    torch.manual_seed(0)
    x = torch.randn(8, length) * 3
    x[1] = -float("inf")
    x[2] = -float("inf")
    x[2, length - 5] = -2.0
    x[3, length // 2] = float("nan")
    x[4] = 7.25
    x[5, 17] = float("inf")
    x[6, length - 1] = 60.0
    x[7] = -float("inf")
    x[7, 9] = float("inf")
    return x.to(dtype)


def passes(report) -> list[int]:
    """Loops over the row in each kernel's source."""
    return [k.source.count("for r0 in range(0, rnumel, RBLOCK)") for k in report.kernels]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_online_softmax_family_matches_eager_on_extreme_rows(name, dtype):
    report = check(ROWS[name], extreme_rows(dtype), kernels=1)
    assert not report.kernels[0].persistent
    # max and sum in one pass; softmax and log_softmax write in a second one.
    assert passes(report) == [1 if name == "logsumexp" else 2]


def test_online_sum_keeps_the_precision_of_two_passes():
    torch.manual_seed(1)
    x = torch.randn(3, ROW, dtype=torch.float64).float() * 20 + 500  # large shared offset
    check(lambda x: torch.log_softmax(x, -1), x, kernels=1, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cross_entropy_over_50k_classes_reads_logits_once(dtype):
    torch.manual_seed(2)
    logits = (torch.randn(5, 50257) * 4).to(dtype)
    logits[1, :100] = -float("inf")  # masked-out classes
    logits[3, 31337] = 30.0  # a confident, correct row
    target = torch.tensor([5, 50256, 0, 31337, -100])  # the last one ignored
    report = check(lambda x, t: F.cross_entropy(x, t), logits, target, kernels=1)
    assert passes(report) == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_welford_variance_in_one_pass(dtype):
    torch.manual_seed(3)
    x = torch.randn(5, ROW)
    x[1] = 3.0  # all equal: variance exactly 0
    x[2] = x[2] * 1e-3 + 1e4  # tiny spread on a large mean: naive sum of squares cancels
    x[3, 100] = float("nan")
    x[4, ROW - 1] = float("inf")
    x = x.to(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    report = check(lambda x: torch.var_mean(x, -1, correction=1), x, kernels=1, **tol)
    assert passes(report) == [1]
    assert torch.var(x[1:2].float(), -1).item() == 0.0


def test_layer_norm_reads_each_long_row_twice():
    """Mean and variance in one pass, the normalized row in the second."""
    torch.manual_seed(4)
    x = torch.randn(3, ROW) + 100.0
    w, b = torch.randn(ROW), torch.randn(ROW)
    report = check(lambda x: F.layer_norm(x, (ROW,), w, b), x, kernels=1, rtol=1e-4, atol=1e-4)
    assert passes(report) == [2]


def test_reductions_that_read_each_other_still_take_separate_passes():
    """x - mean(x) needs the mean first: sum((x - mean)^2) is a second pass, not fused wrongly."""
    torch.manual_seed(5)
    x = torch.randn(2, ROW)
    fn = lambda x: ((x - x.mean(-1, keepdim=True)).abs().sum(-1), x.amax(-1), torch.exp(x).sum(-1))
    report = check(fn, x, kernels=1, rtol=1e-4, atol=1e-4)
    assert passes(report) == [2]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_online_over_columns(name):
    """Reducing dim 0 (rows along the contiguous dim) loops over columns the same way."""
    torch.manual_seed(6)
    x = torch.randn(300, 7) * 3
    x[:, 2] = -float("inf")
    x[5, 3] = float("nan")
    x[:, 4] = 2.0
    x[299, 6] = 50.0
    report = check(lambda x: ROWS[name](x, 0), x, kernels=1)
    assert not report.kernels[0].persistent
    assert passes(report) == [1 if name == "logsumexp" else 2]


def test_online_in_float64():
    torch.manual_seed(7)
    z = torch.randn(4, 9000, dtype=torch.float64) * 10
    z[1] = -float("inf")
    report = check(lambda z: (torch.softmax(z, -1), torch.var(z, -1)), z, kernels=1)
    assert passes(report) == [2]
