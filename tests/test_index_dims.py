"""x[:, idx] and x[..., idx] (a gather along that dim) and x[i, j] (one lookup into the
merged leading dims) inside the consuming kernel, with eager's negative positions and
its IndexError past either end."""

import pytest
import torch

from tests.eager import assert_raises_as_eager, check


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_index_on_a_later_dim_is_one_kernel(index_dtype):
    x = torch.randn(4, 8, 3)
    idx = torch.tensor([1, -3, 7, 0, 7], dtype=index_dtype)
    check(lambda x, i: x[:, i] * 2, x, idx, kernels=1, externs=0)
    check(lambda x, i: torch.relu(x)[..., i] + 1, x, idx % 3, kernels=1, externs=0)


def test_index_of_a_strided_16_bit_input():
    x = torch.randn(6, 5, dtype=torch.bfloat16)
    check(lambda x, i: x.t()[:, i] - 1, x, torch.tensor([5, 0, -1]), kernels=1, externs=0)


def test_empty_index_and_repeated_positions():
    x = torch.randn(3, 4)
    check(lambda x, i: x[:, i] + 1, x, torch.tensor([2, 2, 2]), kernels=1)
    check(lambda x, i: x[:, i] + 1, x, torch.tensor([], dtype=torch.int64))


@pytest.mark.fallback_expected
@pytest.mark.parametrize("bad", [4, -5])
def test_out_of_range_raises_eagers_error(bad):
    def fn(x, i):
        return x[:, i] + 1
    x, idx = torch.randn(3, 4), torch.tensor([0, bad])
    assert_raises_as_eager(fn, x, idx)


def test_indices_on_the_leading_dims_are_one_lookup():
    x = torch.randn(4, 5, 3)
    i, j = torch.tensor([1, -1, 3]), torch.tensor([[0], [4]])  # broadcast to [2, 3]
    check(lambda x, i, j: x[i, j] * 2, x, i, j, kernels=1, externs=0)
    check(lambda x, i: x[i, i % 5, i % 3] + 1, x, torch.tensor([0, 2, -1]), kernels=1, externs=0)


@pytest.mark.fallback_expected
@pytest.mark.parametrize("i, j", [([4], [0]), ([-5], [0]), ([0], [5]), ([1], [-6])])
def test_leading_indices_out_of_range_raise_eagers_error(i, j):
    def fn(x, i, j):
        return x[i, j] + 1
    x, i, j = torch.randn(4, 5), torch.tensor(i), torch.tensor(j)
    assert_raises_as_eager(fn, x, i, j)


def test_filled_tensors_are_constants_in_their_readers_kernel():
    def fn(x):
        return x + x.new_full((8,), 2.0) * torch.full((4, 1), 3.0) + torch.scalar_tensor(0.5)
    check(fn, torch.randn(4, 8), kernels=1, externs=0)
