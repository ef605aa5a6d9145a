"""Pointwise kernels over 2-D tiles: an input read along another dim than the output is
written (a transpose), against eager through Triton's interpreter."""

import itertools

import pytest
import torch

import fusec
from fusec.kernels.launch import tile_launch
from tests.eager import check


def kernel_sources(fn, *args) -> list[str]:
    compiled = fusec.compile(fn)
    compiled(*args)
    return [k.source for g in fusec.report_of(compiled).graphs for k in g.plan.kernels]


def tiled(source: str) -> bool:
    return "YBLOCK: tl.constexpr" in source


def test_transposed_read_is_one_tiled_kernel_with_odd_sizes():
    torch.manual_seed(0)
    x, y = torch.randn(37, 53), torch.randn(53, 37)

    def f(x, y):
        return y + torch.sigmoid(x.t())
    report = check(f, x, y, kernels=1, externs=0)
    [kernel] = report.graphs[0].plan.kernels
    assert tiled(kernel.source)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(2))) + list(itertools.permutations(range(3))))
def test_every_transposition_matches_eager(perm):
    torch.manual_seed(0)
    shape = (5, 7, 9)[:len(perm)]
    x = torch.randn(*shape)
    y = torch.randn(*[shape[p] for p in perm])

    def f(x, y):
        return y * 2 + torch.tanh(x.permute(*perm))
    report = check(f, x, y, kernels=1, externs=0)
    [kernel] = report.graphs[0].plan.kernels
    # Only a permutation that moves the contiguous dim needs a tile.
    assert tiled(kernel.source) == (perm[-1] != len(perm) - 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_and_a_broadcast_over_the_tile(dtype):
    torch.manual_seed(0)
    x, y = torch.randn(3, 33, 17, dtype=dtype), torch.randn(3, 17, 33, dtype=dtype)
    bias = torch.randn(33, dtype=dtype)
    row = torch.randn(17, 1, dtype=dtype)

    def f(x, y, bias, row):
        return (y + x.transpose(1, 2) * bias) - row
    report = check(f, x, y, bias, row, kernels=1, externs=0)
    assert tiled(report.graphs[0].plan.kernels[0].source)


def test_transposed_read_of_a_sliced_and_expanded_input():
    torch.manual_seed(0)
    x, y = torch.randn(40, 9), torch.randn(6, 9, 31)

    def f(x, y):
        return y - x[3:34].t().unsqueeze(0).expand(6, 9, 31).exp()
    report = check(f, x, y, kernels=1, externs=0)
    assert tiled(report.graphs[0].plan.kernels[0].source)


def test_two_outputs_and_a_contiguous_read_share_the_tile():
    torch.manual_seed(0)
    x, y = torch.randn(19, 23), torch.randn(23, 19)

    def f(x, y):
        s = y + x.t()
        return s * s, s.relu()
    report = check(f, x, y, kernels=1, externs=0)
    assert tiled(report.graphs[0].plan.kernels[0].source)


def test_channels_last_output_from_a_contiguous_input():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7)
    y = torch.randn(2, 5, 6, 7).to(memory_format=torch.channels_last)

    def f(x, y):
        return y + x * 3
    check(f, x, y, kernels=1, externs=0)


def test_contiguous_layouts_keep_the_1d_block():
    torch.manual_seed(0)
    x, y, b = torch.randn(8, 16), torch.randn(8, 16), torch.randn(16)
    [source] = kernel_sources(lambda x, y, b: x * y + b, x, y, b)
    assert not tiled(source) and "BLOCK: tl.constexpr" in source


def test_tile_launch_covers_every_element_with_a_square_tile_on_a_gpu():
    launch = tile_launch(4096, 4096, interpret=False)
    assert launch.constants == {"YBLOCK": 32, "XBLOCK": 32} and launch.num_warps == 4
    assert launch.grid == (128 * 128,)
    narrow = tile_launch(1000, 3, interpret=False)  # a short dim lends its share to the other
    assert narrow.constants == {"YBLOCK": 256, "XBLOCK": 4}
    assert narrow.grid == (4,)
    assert tile_launch(37, 53, interpret=True).grid == (1,)
