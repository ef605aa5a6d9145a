"""Running sums of integers and booleans (position ids from an attention mask, packed-sequence
boundaries): one scan kernel with their producer and readers, exactly eager's values
(tests/test_scan.py covers the scan kind itself)."""

import pytest
import torch

from tests.eager import check


def test_position_ids_from_a_padding_mask_are_one_kernel():
    def f(mask):
        return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    check(f, mask, kernels=1, externs=0)


def test_packed_sequence_boundaries_are_one_kernel():
    def f(position_ids):
        diff = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
        return (diff != 1).cumsum(-1)

    # The prepended column is a concatenation over 10 positions the 9-long scan cannot share.
    check(f, torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]), kernels=2, externs=0)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_integer_cumsum_equals_eager(dtype, dim):
    torch.manual_seed(0)
    x = torch.randint(-100, 100, (3, 5, 4))
    x = x > 0 if dtype == torch.bool else x.to(dtype)
    check(lambda x: x.cumsum(dim), x, kernels=1, externs=0, rtol=0, atol=0)


def test_cumsum_into_a_given_dtype_and_of_a_scalar():
    check(lambda x: (x.cumsum(1, dtype=torch.int32), x.cumsum(0, dtype=torch.int16)),
          torch.randint(-9, 9, (4, 7)), externs=0, rtol=0, atol=0)
    check(lambda x: x.cumsum(0), torch.tensor(5, dtype=torch.int32), kernels=1, externs=0)


def test_integer_cumsum_wraps_around_as_eager():
    x = torch.full((2, 6), 2**62, dtype=torch.int64)
    check(lambda x: x.cumsum(-1), x, kernels=1, externs=0, rtol=0, atol=0)


def test_float_cumsum_is_one_kernel_with_its_producer():
    check(lambda x: torch.tanh(x).cumsum(-1), torch.randn(3, 8), kernels=1, externs=0)


def test_cumsum_over_a_long_dim_is_one_kernel():
    check(lambda m: (m > 0).cumsum(-1), torch.randn(1, 5000), kernels=1, externs=0, rtol=0, atol=0)


def test_cumsum_of_zero_size_tensors():
    check(lambda x: x.cumsum(0), torch.zeros(0, 3, dtype=torch.int64), externs=0)
    check(lambda x: x.cumsum(1), torch.zeros(3, 0, dtype=torch.int32), externs=0)
