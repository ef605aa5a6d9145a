"""Stores through a boolean mask (`x[mask] = value`, `index_put` with `accumulate`) are a
`where` fused with x's producer and its readers; a value per selected element (and
masked_scatter) is a running count of the mask (a scan) and a row lookup at it; a mask of
the wrong shape, or a count eager rejects, raises eager's own error."""

import pytest
import torch

import fusec
from tests.eager import assert_raises_as_eager, assert_ran, check


def _store(value):
    def f(x, mask):
        y = x * 2
        y[mask] = value
        return y + 1
    return f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.int32])
def test_masked_store_of_a_scalar_is_one_kernel(dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 7) * 10).to(dtype)
    check(_store(-3), x, torch.rand(3, 5, 7) > 0.5, kernels=1, externs=0)


def test_masked_store_into_a_bool_tensor():
    def f(x, mask):
        y = x.logical_not()
        y[mask] = True
        return y

    check(f, torch.rand(4, 6) > 0.3, torch.rand(4, 6) > 0.6, kernels=1, externs=0)


@pytest.mark.parametrize("value_shape", [(), (7,), (1, 7), (5, 1), (1,)])
def test_mask_over_leading_dims_with_a_value_broadcast_over_the_rest(value_shape):
    # the value is the same for every selected row, however many the mask selects
    def f(x, mask, v):
        y = torch.tanh(x)
        y[mask] = v
        return y

    torch.manual_seed(0)
    check(f, torch.randn(3, 5, 7), torch.rand(3) > 0.5, torch.randn(value_shape), kernels=1, externs=0)


def test_masked_store_of_a_value_of_another_dtype_casts_it_as_eager():
    def f(x, mask, v):
        y = x.clone()
        y[mask] = v
        return y

    check(f, torch.randn(4, 6), torch.rand(4, 6) > 0.5, torch.tensor(1 / 3, dtype=torch.float64),
          kernels=1, externs=0, rtol=0, atol=0)


def test_masked_accumulate_adds_once_per_selected_element():
    def f(x, mask, v):
        return torch.sigmoid(x).index_put((mask,), v, accumulate=True)

    torch.manual_seed(0)
    check(f, torch.randn(6, 4), torch.rand(6) > 0.5, torch.randn(4), kernels=1, externs=0)


def test_causal_mask_set_with_a_mask_store_fuses_into_softmax():
    def f(scores):
        n = scores.shape[-1]
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        masked = scores.clone()
        masked[..., future] = float("-inf")
        return masked.softmax(-1)

    check(f, torch.randn(2, 8, 8), kernels=1, externs=0)


def test_a_value_per_selected_element_is_a_scan_and_a_lookup():
    # the k-th selected row takes v's k-th row, k a running count of the mask
    def f(x, mask, v):
        y = x + 1
        y[mask] = v * 2
        return y.tanh()

    mask = torch.tensor([True, False, True, True])
    report = check(f, torch.randn(4, 3), mask, torch.randn(3, 3), kernels=2, externs=0)
    assert [str(k.kind) for k in report.graphs[0].plan.kernels] == ["scan", "pointwise"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_values_per_selected_element_over_a_2d_mask(dtype, accumulate):
    def f(x, mask, v):
        return (x * 2).index_put((mask,), v, accumulate=accumulate)

    torch.manual_seed(1)
    mask = torch.rand(5, 6) > 0.4
    x, v = (torch.randn(5, 6, 2) * 4).to(dtype), (torch.randn(int(mask.sum()), 1) * 4).to(dtype)
    check(f, x, mask, v, kernels=2, externs=0)


@pytest.mark.parametrize("count", [2, 4])
def test_a_count_other_than_the_values_raises_eagers_error(count):
    def f(x, mask, v):
        y = x.clone()
        y[mask] = v
        return y

    assert_raises_as_eager(f, torch.randn(6, 2), torch.tensor([True, False, True, False, False, True]),
                           torch.randn(count, 2), error=RuntimeError)


def test_more_values_than_a_mask_selecting_everything_raises_eagers_error():
    def f(x, mask, v):
        y = x.clone()
        y[mask] = v
        return y

    assert_raises_as_eager(f, torch.zeros(3), torch.ones(3, dtype=torch.bool), torch.arange(4.0), error=RuntimeError)


@pytest.mark.parametrize(("mask_shape", "kernels"), [((3, 4, 5), 2), ((3, 4, 1), 2), ((3, 1, 5), 3)])
def test_masked_scatter_takes_the_source_in_order(mask_shape, kernels):
    # a mask over whole rows counts rows; one broadcast over a middle dim is materialised first
    torch.manual_seed(2)
    mask = torch.rand(mask_shape) > 0.5
    check(lambda x, m, s: (x - 1).masked_scatter(m, s.exp()).sum(-1), torch.randn(3, 4, 5), mask,
          torch.randn(71), kernels=kernels, externs=0)


def test_masked_scatter_with_too_small_a_source_raises_eagers_error():
    assert_raises_as_eager(lambda x, m, s: x.masked_scatter(m, s), torch.randn(2, 3),
                           torch.ones(2, 3, dtype=torch.bool), torch.randn(5), error=RuntimeError)


def test_a_mask_of_the_wrong_shape_raises_eagers_error():
    def f(x, mask):
        y = x * 2
        y[mask] = 0.0
        return y

    assert_raises_as_eager(f, torch.randn(3, 4), torch.ones(2, dtype=torch.bool))


def test_zero_size_masked_store():
    check(_store(1.5), torch.randn(0, 4), torch.zeros(0, 4, dtype=torch.bool))


def test_masked_store_over_changing_sizes_is_one_graph_and_kernel():
    fn = _store(0.25)
    compiled = fusec.compile(fn, dynamic=True)
    for n in (3, 8, 21):
        x, mask = torch.randn(n, 5), torch.rand(n, 5) > 0.5
        torch.testing.assert_close(compiled(x, mask), fn(x, mask))
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and report.stats["kernels"] == 1 and report.stats["extern_calls"] == 0


def test_mask_after_whole_dims_with_a_value_per_selected_element_runs_through_torch():
    def f(x, mask, v):
        y = x * 3
        y[:, mask] = v
        return y

    check(f, torch.randn(2, 4, 3), torch.tensor([True, False, True, False]), torch.randn(2, 1, 3),
          kernels=1, externs=1)
