"""Padding and 2-D pooling as windows of slices fused with their neighbours: values,
indices and gradients equal eager's; a ResNet stem's pool adds no launch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.decompositions_pool import MAX_WINDOW
from tests.eager import check
from tests.test_training import check_training

POOLS = [  # kernel, stride, padding, dilation, ceil_mode
    (3, 2, 1, 1, False),   # ResNet's stem
    (2, 2, 0, 1, False),
    (3, 1, 1, 1, False),
    (3, 2, 0, 1, True),    # a last window that hangs over the edge
    ((2, 3), (1, 2), (1, 1), (2, 1), True),
    (3, 3, 1, 1, True),
]


def _special(shape, dtype=torch.float32):
    """Random values with ties, NaN, -inf and -0.0 where pooling decides between them."""
    torch.manual_seed(0)
    x = torch.randint(-3, 4, shape).to(dtype)
    flat = x.view(-1)
    flat[::7] = float("-inf")
    flat[3::11] = float("nan")
    flat[5::13] = -0.0
    return x


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", POOLS)
def test_max_pool_values_and_indices_equal_eager(kernel, stride, padding, dilation, ceil_mode):
    def f(x):
        return F.max_pool2d(torch.relu(x) - 1, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    for x in (_special((2, 3, 9, 11)), torch.randn(3, 10, 7)):
        torch._dynamo.reset()  # each shape compiled for itself (the same f twice would turn dynamic)
        check(f, x, kernels=1, externs=0)


def test_max_pool_over_changing_shapes_equals_eager():
    # The second shape recompiles with symbolic sizes (dynamic=None): there the pool stays whole
    # and torch runs it (decomposed, its window positions would be many small torch ops), the
    # ReLU and subtraction in a kernel; every result is eager's.
    def f(x):
        return F.max_pool2d(torch.relu(x) - 1, 3, 2, 1, return_indices=True)
    compiled = fusec.compile(f)
    for shape in ((2, 3, 9, 11), (2, 3, 12, 7), (1, 3, 5, 5)):
        x = _special(shape)
        for got, want in zip(compiled(x), f(x), strict=True):
            torch.testing.assert_close(got, want, equal_nan=True)
    assert fusec.report_of(compiled).stats["ran"]["kernels"] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_max_pool_dtypes_and_channels_last(dtype):
    x = torch.randn(2, 4, 9, 9, dtype=dtype).to(memory_format=torch.channels_last)
    check(lambda x: F.max_pool2d(x, 3, 2, 1), x, kernels=1)
    check(lambda x: F.max_pool2d(x[:, :, 1:, ::2], 2), x, kernels=1)


@pytest.mark.parametrize("kernel, stride, padding, _, ceil_mode", POOLS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_equals_eager(kernel, stride, padding, _, ceil_mode, count_include_pad):
    x = torch.randn(2, 3, 9, 11)
    check(lambda x: F.avg_pool2d(x * 2, kernel, stride, padding, ceil_mode, count_include_pad), x, kernels=1)


def test_avg_pool_divisor_override_and_three_dims():
    check(lambda x: F.avg_pool2d(x, 3, 2, 1, divisor_override=5), torch.randn(2, 3, 8, 8), kernels=1)
    check(lambda x: F.avg_pool2d(x, 2), torch.randn(3, 8, 8), kernels=1)


@pytest.mark.parametrize("size, out", [((7, 7), 1), ((8, 12), (2, 3)), ((4, 6), (4, 6))])
def test_adaptive_avg_pool_even_tiles_are_a_mean(size, out):
    x = torch.randn(2, 5, *size)
    check(lambda x: F.adaptive_avg_pool2d(torch.relu(x), out), x, kernels=1, externs=0)


@pytest.mark.fallback_expected
def test_uneven_adaptive_pool_and_huge_windows_run_through_torch():
    x = torch.randn(1, 2, 10, 10)
    check(lambda x: F.adaptive_avg_pool2d(x, 3), x)
    side = int(MAX_WINDOW ** 0.5) + 1
    check(lambda x: F.max_pool2d(x, side), x)


@pytest.mark.parametrize("pad", [(1, 2), (2, 0, 1, 3), (-1, 2, 0, -2), (0, 0, 0, 0, 1, 1)])
@pytest.mark.parametrize("value", [0.0, -1.5])
def test_constant_pad_is_a_masked_read_in_its_neighbours_kernel(pad, value):
    x = torch.randn(2, 3, 5, 6)
    check(lambda x: F.pad(torch.sigmoid(x), pad, value=value) * 2, x, kernels=1, externs=0)


def test_constant_pad_integers_and_strided_input():
    x = torch.arange(60).reshape(3, 4, 5)
    check(lambda x: F.pad(x.transpose(1, 2), (1, 1), value=7) + 1, x, kernels=1)


def test_resnet_stem_pool_adds_no_launch():
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    with torch.no_grad():
        stem[1].running_mean.uniform_(-1, 1)
        stem[1].running_var.uniform_(0.5, 2)
        check(stem.eval(), torch.randn(2, 3, 32, 32), kernels=1, externs=1)


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", POOLS[:4])
def test_max_pool_backward_equals_eager(kernel, stride, padding, dilation, ceil_mode):
    # Integer-valued inputs tie inside windows: the gradient must go where eager's does.
    model = nn.Sequential(nn.Tanh(), nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode))
    x = torch.randint(-2, 3, (2, 3, 9, 10)).float()
    check_training(model, x, kernels=[1, 1])


@pytest.mark.parametrize("kernel, stride, padding, _, ceil_mode", POOLS[:4])
def test_avg_pool_backward_equals_eager(kernel, stride, padding, _, ceil_mode):
    model = nn.Sequential(nn.Tanh(), nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad=False))
    check_training(model, torch.randn(2, 3, 9, 10), kernels=[1, 1])


def test_global_pool_backward_equals_eager():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    check_training(model, torch.randn(2, 3, 6, 6))


def test_pooling_report_names_no_extern():
    stats = fusec.inspect(lambda x: F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 2), torch.randn(1, 2, 6, 6)).stats
    assert (stats["kernels"], stats["extern_calls"]) == (1, 0)


def test_squeeze_excite_pool_shares_the_kernel_of_its_batch_norm():
    # MobileNet's squeeze-excite: BN's per-channel [C] -> [C,1,1] weights, hardswish and the
    # global pool in one reduction kernel (the weights are loaded, so reading them through a
    # view moves no row's values).
    w, b = torch.rand(6) + 0.5, torch.randn(6)

    def f(x):
        y = F.hardswish(x * w.reshape(6, 1, 1) + b.reshape(6, 1, 1))
        return y, F.adaptive_avg_pool2d(y, 1)
    check(f, torch.randn(2, 6, 5, 5), kernels=1, externs=0)
