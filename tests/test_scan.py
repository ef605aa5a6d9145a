"""cumsum and cumprod as scan kernels: differential tests against eager over dtypes, dims,
odd and long rows, zero-size tensors and NaN/inf, with their pointwise neighbours fused."""

from dataclasses import replace

import pytest
import torch

import fusec
from fusec.kernels import kinds
from fusec.kernels.scan import scan_launch
from tests.eager import assert_ran, check
from tests.test_gpu_codegen import run, sm90  # noqa: F401 (a fixture)

# Eager's CPU cumsum adds in float64; the kernel adds float32 in a tree within each chunk.
LONG_TOL = {"rtol": 1e-4, "atol": 1e-3}


def _reset():
    torch._dynamo.reset()


@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 4, 6)])
@pytest.mark.parametrize("op", [torch.cumsum, torch.cumprod])
def test_every_dim_of_1d_2d_3d_inputs(shape, op):
    torch.manual_seed(0)
    x = torch.rand(shape) + 0.5
    for dim in range(-len(shape), len(shape)):
        _reset()
        check(lambda x, dim=dim: op(x, dim), x, kernels=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.int8, torch.uint8, torch.bool])
def test_dtypes_promote_as_eager(dtype):
    torch.manual_seed(1)
    x = (torch.rand(4, 13) * 4).to(dtype) if dtype is not torch.bool else torch.rand(4, 13) > 0.5
    check(lambda x: (x.cumsum(1), x.cumprod(0)), x, kernels=2)  # integers and bool give int64


def test_dtype_argument_converts_before_the_scan():
    torch.manual_seed(2)
    x = torch.randn(6, 11)
    check(lambda x: (torch.cumsum(x, 1, dtype=torch.float64), torch.cumsum(x, 0, dtype=torch.float16)), x,
          kernels=2)
    n = torch.randint(0, 3, (6, 11), dtype=torch.int32)
    check(lambda n: torch.cumprod(n, 1, dtype=torch.int32), n, kernels=1)


@pytest.mark.parametrize("length", [1, 3, 1000, 5001])
def test_odd_and_long_rows(length, monkeypatch):
    torch.manual_seed(3)
    x = torch.randn(3, length)
    check(lambda x: torch.cumsum(x * 2, -1), x, kernels=1, **LONG_TOL)
    _reset()
    check(lambda x: torch.cumprod(1 + x / length, 0), x.t().contiguous(), kernels=1)


def test_rows_longer_than_a_block_carry_the_running_value():
    assert scan_launch(3, 5000, interpret=True).constants["RBLOCK"] == 4096  # two chunks a row
    assert scan_launch(3, 5000, interpret=False).constants["RBLOCK"] == 1024
    x = torch.ones(2, 9000, dtype=torch.int64)
    report = check(lambda x: x.cumsum(1), x, kernels=1)
    assert "for r0 in range(0, rnumel, RBLOCK)" in report.kernels[0].source


def test_zero_size():
    check(lambda x: x.cumsum(1) + 1, torch.randn(0, 5))
    _reset()
    check(lambda x: x.cumprod(1) + 1, torch.randn(4, 0))


def test_nan_and_inf_in_cumprod_and_cumsum():
    x = torch.tensor([[1.0, 2.0, float("inf"), 0.0, 3.0], [float("nan"), 1.0, 2.0, 3.0, 4.0],
                      [-float("inf"), -1.0, 0.5, float("inf"), -2.0]])
    check(lambda x: (x.cumprod(1), x.cumsum(1), x.cumprod(0)), x)


def test_hf_position_ids_are_one_kernel():
    def position_ids(mask):
        ids = mask.long().cumsum(-1) - 1
        ids.masked_fill_(mask == 0, 1)
        return ids
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    report = check(position_ids, mask, kernels=1, externs=0)
    assert report.stats["bytes_fused"] == mask.numel() * (8 + 8)  # reads the mask, writes the ids


def test_pointwise_producers_and_consumers_fuse_and_a_reduction_does_not():
    torch.manual_seed(4)
    x, w = torch.randn(4, 33), torch.randn(33)
    check(lambda x, w: torch.tanh(torch.cumsum(torch.sigmoid(x) * w, 1)) + x, x, w, kernels=1)
    _reset()
    report = check(lambda x: torch.cumsum(x, 1).sum(1), x, kernels=2)
    assert any(e["code"] == "scan" for e in report.edges()), report.summary()


def test_a_scan_over_a_permuted_input_reads_it_in_place():
    torch.manual_seed(5)
    x = torch.randn(5, 6, 7)
    check(lambda x: x.permute(2, 0, 1).cumsum(0) * 3, x, kernels=1)
    _reset()
    check(lambda x: x.cumsum(1), torch.randn(7, 5).t(), kernels=1)  # a strided input


def test_cumsum_gradient_is_a_reverse_scan():
    torch.manual_seed(6)
    x = torch.randn(4, 37, requires_grad=True)
    xe = x.detach().clone().requires_grad_()
    fn = lambda x: (torch.cumsum(x, 1) * x).sum()
    compiled = fusec.compile(fn)
    compiled(x).backward()
    fn(xe).backward()
    torch.testing.assert_close(x.grad, xe.grad)
    report = assert_ran(compiled)
    backward = next(g for g in report.graphs if "backward" in g.name)
    assert backward.plan.externs == [] and len(backward.plan.kernels) == 1
    assert any(n.op == "scan" and n.args[3] for n in backward.plan.graph)  # from the end of the dim


def test_symbolic_row_length():
    torch.manual_seed(7)
    compiled = fusec.compile(lambda x: torch.cumsum(x, -1) * 2, dynamic=True)
    for length in (5, 9, 300):
        x = torch.randn(3, length)
        torch.testing.assert_close(compiled(x), torch.cumsum(x, -1) * 2)
    report = assert_ran(compiled)
    assert report.stats["kernels"] == 1 and len(report.graphs) == 1  # one graph serves every length


def test_scan_kernels_compile_for_sm90(sm90):  # noqa: F811 (the fixture imported above)
    torch.manual_seed(8)
    x = torch.randn(5, 37)
    run(lambda x: (torch.cumsum(torch.sigmoid(x), 1) - 1, torch.cumprod(x, 0)), x)
    run(lambda m: m.long().cumsum(-1).masked_fill(m == 0, 1), torch.randint(0, 2, (2, 9)))
    run(lambda x: torch.cumsum(x, -1, dtype=torch.float16), torch.randn(3, 3000))  # looped rows
    run(lambda x: torch.cumsum(x, 0).to(torch.bfloat16), torch.randn(6, 4, dtype=torch.bfloat16))
    run(lambda x: torch.logcumsumexp(x, 1), x)
    xg = torch.randn(4, 37, requires_grad=True)
    fusec.compile(lambda x: (torch.cumsum(x, 1) * x).sum())(xg).backward()  # the reverse scan
    assert len(sm90) >= 7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logcumsumexp(dtype):
    torch.manual_seed(9)
    x = (torch.randn(3, 21) * 30).to(dtype)
    x[0, 4], x[1, 0], x[1, 7], x[2, 3:5] = float("nan"), -float("inf"), float("inf"), -float("inf")
    check(lambda x: torch.logcumsumexp(x * 0.5, 1) - 1, x, kernels=1)
    _reset()
    check(lambda x: torch.logcumsumexp(x, 0), torch.full((3, 2), -float("inf"), dtype=dtype), kernels=1)
    _reset()
    check(lambda x: torch.logcumsumexp(x, 1), torch.randn(2, 70), kernels=1)


def test_every_combine_carries_across_chunks_forward_and_reverse(monkeypatch):
    small = lambda rows, length, interpret: replace(scan_launch(rows, length, interpret), constants={
        "XBLOCK": 4, "RBLOCK": 16}, grid=((rows + 3) // 4,))
    monkeypatch.setattr(kinds, "scan_launch", small)  # 70 positions: five chunks a row
    torch.manual_seed(10)
    x = torch.randn(6, 70)
    x[1, 20], x[2, 33], x[3, 50] = float("inf"), float("nan"), 0.0
    check(lambda x: (x.cumsum(1), (1 + x / 70).cumprod(1), torch.logcumsumexp(x, 1), x.cumprod(1)), x, kernels=4)
    _reset()
    check(lambda x: x.flip(1).cumsum(1).flip(1) * 2, x, kernels=1)
