"""CUDA graphs: which graphs are recorded (any machine), and recording and replay (on a GPU)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.cudagraphs import GraphedCall, refusal
from fusec.options import Options


def _plan(fn, *args, training=False):
    report = fusec.inspect(fn, *args, training=training)
    return report.graphs[0]


def test_reduce_overhead_mode_turns_cudagraphs_on():
    assert Options.from_user(mode="reduce-overhead").cudagraphs
    assert not Options.from_user(mode="default").cudagraphs
    assert not Options.from_user().cudagraphs
    with pytest.raises(ValueError, match="mode must be"):
        Options.from_user(mode="max-speed")


def test_an_inference_graph_of_kernels_and_torch_calls_is_recorded():
    lin = nn.Linear(8, 8)
    record = _plan(lambda x: F.gelu(lin(x)).softmax(-1), torch.randn(4, 8))
    assert refusal(record.plan, record.name) is None


def test_graphs_that_cannot_be_replayed_say_why():
    x = torch.randn(4, 8, requires_grad=True)
    forward = _plan(lambda x: (x.sin() * 2).sum(), x, training=True)
    assert "training" in refusal(forward.plan, forward.name)
    dropout = _plan(lambda x: F.dropout(x, 0.5, training=True) + 1, torch.randn(4, 8))
    assert "random numbers" in refusal(dropout.plan, dropout.name)
    gather = _plan(lambda x, i: x.gather(1, i) * 2, torch.randn(4, 8), torch.randint(0, 8, (4, 2)))
    assert "indices" in refusal(gather.plan, gather.name)


def test_cudagraphs_on_a_cpu_run_the_launcher(caplog):
    fn = lambda x: torch.tanh(x) * 3
    compiled = fusec.compile(fn, cudagraphs=True)
    x = torch.randn(16)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        for _ in range(3):
            torch.testing.assert_close(compiled(x), fn(x))
    runtime = fusec.report_of(compiled).graphs[0].runtime
    assert not isinstance(runtime._call, GraphedCall)
    assert runtime.calls[next(iter(runtime.calls))].count == 3  # every call launched the kernel


class Block(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(x + self.down(F.gelu(self.up(x))))


def _graphed(compiled) -> GraphedCall:
    (record,) = fusec.report_of(compiled).graphs
    assert record.runtime.cudagraph_refusal is None
    assert isinstance(record.runtime._call, GraphedCall)
    return record.runtime._call


@pytest.mark.cuda
def test_replays_equal_eager_as_inputs_change():
    torch.manual_seed(0)
    block = Block().cuda().eval()
    compiled = fusec.compile(block, cudagraphs=True)
    with torch.no_grad():
        for step in range(6):
            x = torch.randn(8, 16, 64, device="cuda")
            torch.testing.assert_close(compiled(x).clone(), block(x), rtol=2e-4, atol=2e-4, msg=f"call {step}")
    graphed = _graphed(compiled)
    assert graphed.recordings == 1 and graphed.replays == 5
    (record,) = fusec.report_of(compiled).graphs
    # what ran, replays included: once per call, and once more for the warm-up before the recording
    # (the recording itself runs nothing)
    assert dict(record.runtime.counts.kernels) == {k.id: 7 for k in record.plan.kernels}
    assert sum(graphed.in_place) == sum(1 for _ in block.parameters())  # parameters are read where they are


@pytest.mark.cuda
def test_a_moved_parameter_is_recorded_again():
    torch.manual_seed(1)
    block = Block().cuda().eval()
    compiled = fusec.compile(block, mode="reduce-overhead")
    x = torch.randn(4, 64, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            compiled(x)
        block.up.weight.data = block.up.weight.data * 0.5  # a new tensor at another address
        torch.testing.assert_close(compiled(x).clone(), block(x), rtol=2e-4, atol=2e-4)
        torch.testing.assert_close(compiled(x).clone(), block(x), rtol=2e-4, atol=2e-4)
    assert _graphed(compiled).recordings == 2


@pytest.mark.cuda
def test_several_streams_are_recorded_in_one_graph():
    torch.manual_seed(2)
    heads = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)) for _ in range(4)).cuda()
    fn = lambda x: torch.cat([h(x).softmax(-1) for h in heads], -1)
    compiled = fusec.compile(fn, cudagraphs=True, streams=None)
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(2, 32, device="cuda")
            torch.testing.assert_close(compiled(x).clone(), fn(x), rtol=2e-4, atol=2e-4)
    (record,) = fusec.report_of(compiled).graphs
    assert record.runtime.multi_stream
    assert _graphed(compiled).replays == 3


@pytest.mark.cuda
def test_a_graph_that_cannot_be_recorded_still_runs(caplog):
    fn = lambda x: F.dropout(x, 0.5, training=True) * 2
    compiled = fusec.compile(fn, cudagraphs=True)
    x = torch.ones(1024, device="cuda")
    with caplog.at_level(logging.WARNING, logger="fusec"):
        a, b = compiled(x), compiled(x)
    assert not torch.equal(a, b)  # a new mask every call
    assert "runs without a CUDA graph" in caplog.text and "random numbers" in caplog.text
