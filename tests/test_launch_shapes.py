"""Launch shapes chosen for a GPU without one: blocks and warps from the problem's sizes."""

import pytest

from fusec.kernels.launch import SMS, pointwise_launch, reduction_launch


@pytest.mark.parametrize("rows, length, persistent, blocks, warps", [
    (4096, 4096, True, (1, 4096), 16),     # a row in registers: 8 values a thread
    (4096, 1024, True, (4, 1024), 16),     # short rows share a program
    (64, 256, True, (1, 256), 1),          # few rows: one a program so more SMs work
    (512, 32768, False, (1, 4096), 16),    # a long row loops 4096 at a time
    (4, 50257, False, (1, 4096), 16),
])
def test_inner_rows_take_up_to_16_warps(rows, length, persistent, blocks, warps):
    launch = reduction_launch(rows, length, persistent, inner=True, interpret=False)
    assert (launch.constants["XBLOCK"], launch.constants["RBLOCK"]) == blocks
    assert launch.num_warps == warps
    assert launch.grid == (-(-rows // blocks[0]),)


def test_rows_per_program_shrink_until_every_sm_has_one():
    launch = reduction_launch(256, 512, True, inner=True, interpret=False)
    assert launch.grid[0] >= SMS and launch.constants["XBLOCK"] == 1
    # Enough rows: 8 of 512 per program (4096 elements).
    assert reduction_launch(1 << 16, 512, True, inner=True, interpret=False).constants["XBLOCK"] == 8


def test_pointwise_blocks_from_numel():
    big = pointwise_launch(1 << 24, interpret=False)
    assert big.constants == {"BLOCK": 1024} and big.num_warps == 4
    mid = pointwise_launch(1 << 16, interpret=False)  # 64 programs of 1024 would idle half the SMs
    assert mid.constants == {"BLOCK": 256} and mid.grid == (256,)
    # A tiny kernel still gives a thread 8 elements (one 128-bit vector), most of them masked.
    small = pointwise_launch(100, interpret=False)
    assert small.constants == {"BLOCK": 256} and small.num_warps == 1
    assert pointwise_launch(1 << 24, interpret=True).constants == {"BLOCK": 1 << 16}
