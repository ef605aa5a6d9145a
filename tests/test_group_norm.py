"""Group norm and vector norms as fusec's row reductions: values and gradients equal
eager's, in one kernel per forward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.eager import check
from tests.test_training import check_training


def _group_norm(groups: int, channels: int, affine: bool = True) -> nn.GroupNorm:
    torch.manual_seed(0)
    gn = nn.GroupNorm(groups, channels, affine=affine)
    if affine:
        with torch.no_grad():
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.5, 0.5)
    return gn


@pytest.mark.parametrize("groups, channels, spatial", [(4, 16, (5, 5)), (1, 6, (3, 7)), (6, 6, (4,)), (2, 4, ())])
def test_group_norm_is_one_kernel(groups, channels, spatial):
    x = torch.randn(3, channels, *spatial) * 3 + 1
    check(_group_norm(groups, channels), x, kernels=1, externs=0)


def test_group_norm_without_affine_fuses_its_neighbours():
    gn = _group_norm(2, 8, affine=False)
    check(lambda x: F.silu(gn(x * 2)) + 1, torch.randn(2, 8, 4, 4), kernels=1, externs=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_group_norm_dtypes_and_channels_last(dtype):
    gn = _group_norm(4, 8).to(dtype)
    x = torch.randn(2, 8, 5, 5, dtype=dtype)
    check(gn, x, kernels=1)
    check(gn, x.to(memory_format=torch.channels_last))


def test_group_norm_statistics_equal_eager():
    x = torch.randn(2, 12, 3, 3)
    w, b = torch.rand(12) + 0.5, torch.randn(12)
    check(lambda x: torch.ops.aten.native_group_norm(x, w, b, 2, 12, 9, 3, 1e-5), x, kernels=1)


def test_group_norm_backward_equals_eager():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _group_norm(4, 8), nn.SiLU())
    # Backward: torch's decomposition (per-channel sums, per-group sums, then the input,
    # weight and bias grads), 5 kernels.
    check_training(model, torch.randn(2, 3, 6, 6), kernels=[1, 5], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ord", [2, 1, 3.5, float("inf"), -float("inf"), 0])
def test_vector_norm_is_one_reduction(ord):
    x = torch.randn(5, 33)
    x[0, :4] = 0.0
    check(lambda x: torch.linalg.vector_norm(x * 2, ord, dim=-1), x, kernels=1, externs=0)


def test_normalize_and_a_norm_over_all_elements():
    check(lambda x: F.normalize(x, dim=1), torch.randn(4, 16, 3), kernels=1, externs=0)
    check(lambda x: x.norm(), torch.randn(7, 9), kernels=1, externs=0)
    check(lambda x: torch.linalg.vector_norm(x, dim=(0, 2), keepdim=True), torch.randn(3, 4, 5), kernels=1)
