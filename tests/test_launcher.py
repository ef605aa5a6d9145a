"""The generated launcher and the kernel calls it makes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusec
from fusec.bench.overhead import _stream_stub, measure
from fusec.kernels.call import KernelCall
from fusec.kernels.launch import Launch
from fusec.launcher import StrideMismatch


def test_launcher_source_is_straight_line_code_of_the_plan():
    fn = lambda x, b: (F.gelu(x + b), (x * b).sum(-1))
    compiled = fusec.compile(fn)
    x, b = torch.randn(8, 16), torch.randn(16)
    torch.testing.assert_close(compiled(x, b), fn(x, b))
    source = fusec.report_of(compiled).graphs[0].runtime.source
    assert source.startswith("def call(inputs):")
    assert source.count("empty_strided(") == 2  # one buffer per kernel output, nothing else allocated
    assert "k0(" in source and "k1(" in source
    assert "is_contiguous()" in source  # inputs laid out as traced are checked by one flag


@pytest.mark.fallback_expected
def test_an_input_laid_out_otherwise_is_refused_by_the_launcher(caplog):
    fn = lambda x: x * 2 + 1
    compiled = fusec.compile(fn, strict=False)
    x = torch.randn(4, 6)
    compiled(x)
    runtime = fusec.report_of(compiled).graphs[0].runtime
    column_major = torch.randn(6, 4).t()
    with pytest.raises(StrideMismatch, match=r"arg0_1 has strides \(1, 4\), the kernel expects \(6, 1\)"):
        runtime.run([column_major])
    torch.testing.assert_close(runtime([column_major])[0], fn(column_major))  # through torch, with a warning
    assert "running this call through torch" in caplog.text


class FakeBinary:
    function = packed_metadata = "handle"

    def __init__(self, log):
        self.log = log

    def run(self, *args):
        self.log.append(("binary", args))


class FakeJit:
    """Stands in for a @triton.jit function: `fn[grid](...)` dispatches and returns a binary."""

    arg_names = ["x", "out", "n", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def dispatch(*args, **kwargs):
            self.log.append(("dispatch", args, kwargs))
            return FakeBinary(self.log)
        return dispatch


def test_kernel_call_dispatches_once_per_alignment_then_calls_the_binary():
    fn = FakeJit()
    call = KernelCall(fn, Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k0", loaded=1)
    storage = torch.zeros(130)
    x, out = storage[:100], torch.empty(100)
    with _stream_stub():
        call(x, out)
        call(x, out)
        call(storage[1:101], out)  # 4 bytes in: another specialization, so Triton dispatches again
        call(storage[1:101], out)
    kinds = [entry[0] for entry in fn.log]
    assert kinds == ["dispatch", "binary", "dispatch", "binary"]
    _, args = fn.log[1]
    # grid padded to 3-D, stream, handles, no hooks, then the tensors, sizes and constants in parameter order
    assert args[:3] == (3, 1, 1) and args[-2:] == (100, 64) and args[-4] is x
    assert call.count == 4


def test_kernel_call_names_a_missing_parameter():
    fn = FakeJit()
    fn.arg_names = ["x", "out", "n", "BLOCK", "EXTRA"]
    call = KernelCall(fn, Launch((1,), {"BLOCK": 64}, 4), sizes=(4,), interpret=False, name="k7", loaded=1)
    with _stream_stub(), pytest.raises(fusec.runtime.KernelFailed, match=r"k7.*EXTRA"):
        call(torch.zeros(4), torch.zeros(4))


def test_overhead_bench_measures_a_stubbed_launch():
    row = measure("bias_gelu", "cpu")
    assert row.kernels == 1 and row.externs == 0
    assert 0 < row.launcher_us < row.fusec_call_us  # the launcher is part of the call
    assert row.per_kernel_us == row.launcher_us
