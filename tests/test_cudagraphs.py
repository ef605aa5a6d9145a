"""CUDA graphs: which graphs are recorded (any machine), and recording and replay (on a GPU)."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

import fusec
from fusec import cudagraphs
from fusec.cudagraphs import GraphedCall, refusal, sizes_of, written_inputs
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
    assert graphed.recordings == 1 and graphed.replays == 4
    (record,) = fusec.report_of(compiled).graphs
    # what ran, replays included: once per call (the warm-up before the recording is its call's run,
    # the recording itself runs nothing)
    assert dict(record.runtime.counts.kernels) == {k.id: 6 for k in record.plan.kernels}
    (recorded,) = graphed.by_size.values()
    assert sum(recorded.in_place) == sum(1 for _ in block.parameters())  # parameters are read where they are


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
    assert _graphed(compiled).replays == 2


@pytest.mark.cuda
def test_a_graph_that_cannot_be_recorded_still_runs(caplog):
    fn = lambda x: F.dropout(x, 0.5, training=True) * 2
    compiled = fusec.compile(fn, cudagraphs=True)
    x = torch.ones(1024, device="cuda")
    with caplog.at_level(logging.WARNING, logger="fusec"):
        a, b = compiled(x), compiled(x)
    assert not torch.equal(a, b)  # a new mask every call
    assert "runs without a CUDA graph" in caplog.text and "random numbers" in caplog.text


@pytest.mark.cuda
def test_a_step_writing_into_parameters_is_recorded_on_a_gpu():
    torch.manual_seed(3)
    params = [nn.Parameter(torch.randn(1024, device="cuda"), requires_grad=False) for _ in range(4)]
    grads = [torch.randn(1024, device="cuda") for _ in range(4)]
    expected = [p.detach().clone() for p in params]
    compiled = fusec.compile(_sgd, cudagraphs=True)
    with torch.no_grad():
        for _ in range(5):  # a run, the recording call (its warm-up is its step), three replays
            compiled(params, grads)
            _sgd(expected, grads)
    torch.cuda.synchronize()
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)
    graphed = _graphed(compiled)
    assert graphed.recordings == 1 and graphed.replays == 3


@pytest.mark.cuda
def test_a_dynamic_graph_replays_the_recording_of_each_size_on_a_gpu():
    fn = lambda x: torch.tanh(x) * 3 + 1
    compiled = fusec.compile(fn, cudagraphs=True, dynamic=True)
    for rows in [4, 8, 4, 8, 4, 8]:
        x = torch.randn(rows, 64, device="cuda")
        torch.testing.assert_close(compiled(x).clone(), fn(x))
    graphed = _graphed(compiled)
    assert graphed.recordings == 2 and graphed.replays == 2


class RecordingCuda:
    """torch.cuda's graphs and streams for `GraphedCall` on a CPU. A recording runs the launch and
    then undoes its writes into the inputs it recorded (a GPU records kernels without running
    them); a replay runs the launch again on those inputs and writes its results into the
    recorded outputs (a GPU runs the recorded kernels, which write into the same buffers)."""

    def __init__(self) -> None:
        self.call: GraphedCall | None = None
        self.recorded = 0

    def CUDAGraph(self) -> _Recording:
        return _Recording(self)

    def Stream(self) -> _NoStream:
        return _NoStream()

    def current_stream(self) -> _NoStream:
        return _NoStream()

    @contextlib.contextmanager
    def stream(self, stream):
        yield

    @contextlib.contextmanager
    def graph(self, graph):
        # the size being recorded: the one whose recording is let go and whose inputs are ready
        recorded = next(r for r in self.call.by_size.values() if r.graph is None and r.static)
        # a recording reads addresses: a parameter given a new tensor later is not read by a replay
        graph.recorded = recorded
        graph.read = [x.detach() if isinstance(x, torch.Tensor) else x for x in recorded.static]
        # (an input addressing an element twice, an expanded one, is written by no launch)
        kept = [x.clone() if isinstance(x, torch.Tensor) and torch._debug_has_internal_overlap(x) == 0 else None
                for x in recorded.static]
        yield
        for x, was in zip(recorded.static, kept, strict=True):
            if was is not None:
                x.copy_(was)
        self.recorded += 1


class _NoStream:
    def wait_stream(self, other) -> None:
        pass


class _Recording:
    def __init__(self, cuda: RecordingCuda) -> None:
        self.cuda = cuda
        self.recorded = None  # the size it records (a `Recorded`)
        self.read: list = []  # what the recording read: the storages its inputs had then

    def replay(self) -> None:
        call = self.cuda.call
        ran = list(call.ran)
        new = call.launch(list(self.read))
        call.ran[:] = ran  # the graphed call counts a replay itself
        for mine, value in zip(tree_leaves(self.recorded.outputs), tree_leaves(new), strict=True):
            mine.copy_(value)


def graphed_on_cpu(compiled, *args) -> tuple[GraphedCall, RecordingCuda]:
    """`compiled` called once, then its launcher wrapped in a GraphedCall recording on a CPU."""
    compiled(*args)
    (record,) = fusec.report_of(compiled).graphs
    runtime, cuda = record.runtime, RecordingCuda()
    cuda.call = runtime._call = GraphedCall(runtime._built(), record.name, runtime.counts.ran,
                                            written_inputs(record.plan), sizes_of(record.plan.graph), cuda=cuda,
                                            device_type="cpu")
    return runtime._call, cuda


def test_replays_read_each_calls_inputs_into_the_same_outputs():
    torch.manual_seed(0)
    block = Block(16).eval()
    compiled = fusec.compile(block)
    with torch.no_grad():
        graphed, cuda = graphed_on_cpu(compiled, torch.randn(4, 16))
        outputs = []
        for step in range(4):
            x = torch.randn(4, 16)
            out = compiled(x)
            torch.testing.assert_close(out, block(x), rtol=2e-4, atol=2e-4, msg=f"call {step}")
            outputs.append(out)
    assert cuda.recorded == graphed.recordings == 1 and graphed.replays == 2
    # replays return the graph's own buffers: valid until the next call
    assert len({o.data_ptr() for o in outputs[2:]}) == 1 and outputs[1].data_ptr() != outputs[2].data_ptr()
    (record,) = fusec.report_of(compiled).graphs
    assert dict(record.runtime.counts.kernels) == {k.id: 5 for k in record.plan.kernels}  # once a call
    (recorded,) = graphed.by_size.values()
    assert sum(recorded.in_place) == sum(1 for _ in block.parameters())  # parameters read where they are


def test_a_moved_parameter_is_recorded_again_on_a_cpu():
    torch.manual_seed(1)
    block = Block(16).eval()
    compiled = fusec.compile(block)
    x = torch.randn(4, 16)
    with torch.no_grad():
        graphed, _ = graphed_on_cpu(compiled, x)
        for _ in range(3):  # run, recorded, replayed
            compiled(x)
        block.up.weight.data = block.up.weight.data * 0.5  # a new tensor at another address
        torch.testing.assert_close(compiled(x), block(x), rtol=2e-4, atol=2e-4)
        torch.testing.assert_close(compiled(x), block(x), rtol=2e-4, atol=2e-4)
    assert graphed.recordings == 2


def _sgd(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.add_(g, alpha=-0.1)


@pytest.mark.parametrize("parameters", [True, False])
def test_a_step_writing_into_its_inputs_is_recorded_and_writes_once_a_call(parameters):
    # Parameters are read and written in place; plain tensors are copied in, and their new values
    # copied back into the caller's tensors after each replay.
    torch.manual_seed(2)
    make = (lambda t: nn.Parameter(t, requires_grad=False)) if parameters else (lambda t: t)
    params = [make(torch.randn(64)) for _ in range(3)]
    grads = [torch.randn(64) for _ in range(3)]
    record = _plan(_sgd, [make(p.detach().clone()) for p in params], grads)  # inspect runs the step
    assert refusal(record.plan, record.name) is None
    expected = [p.detach().clone() for p in params]
    compiled = fusec.compile(_sgd)
    with torch.no_grad():
        graphed, _ = graphed_on_cpu(compiled, params, grads)
        _sgd(expected, grads)
        for _ in range(4):  # the recording call, then replays
            compiled(params, grads)
            _sgd(expected, grads)
    assert graphed.recordings == 1 and graphed.replays == 2 and graphed.given_up is None
    (recorded,) = graphed.by_size.values()
    assert sum(recorded.in_place) == (3 if parameters else 0)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


def test_views_of_one_tensor_written_apart_are_copied_back_element_by_element():
    # Column blocks of one matrix, each a copied input with the other's elements between its rows:
    # a copy back of a block's whole span would undo the other block's update.
    def step(blocks):
        blocks[0].add_(1)
        blocks[1].add_(10)

    matrix, expected = torch.zeros(3, 4), torch.zeros(3, 4)
    compiled = fusec.compile(step)
    with torch.no_grad():
        graphed, _ = graphed_on_cpu(compiled, [matrix[:, :2], matrix[:, 2:]])
        step([expected[:, :2], expected[:, 2:]])
        for _ in range(3):
            compiled([matrix[:, :2], matrix[:, 2:]])
            step([expected[:, :2], expected[:, 2:]])
    assert graphed.recordings == 1 and graphed.replays == 1 and graphed.given_up is None
    torch.testing.assert_close(matrix, expected)


def test_a_dynamic_graph_records_each_size_it_is_called_with_up_to_a_bound(monkeypatch, caplog):
    monkeypatch.setattr(cudagraphs, "MAX_SIZES", 2)
    fn = lambda x: torch.tanh(x) * 3 + 1
    compiled = fusec.compile(fn, dynamic=True)
    first = torch.randn(4, 16)
    graphed, cuda = graphed_on_cpu(compiled, first)  # a call of 4 rows before the recordings
    (record,) = fusec.report_of(compiled).graphs
    assert record.plan.graph.hints and refusal(record.plan, record.name) is None
    with caplog.at_level(logging.WARNING, logger="fusec"):
        for rows in [4, 8, 4, 8, 4, 8, 12, 12]:
            x = torch.randn(rows, 16)
            torch.testing.assert_close(compiled(x), fn(x))
    # 4 and 8 rows: a run, a recording, a replay each; 12 rows: past the bound, runs as usual
    assert len(graphed.by_size) == 2 and graphed.recordings == cuda.recorded == 2 and graphed.replays == 2
    assert graphed.unrecorded == 2 and "sizes other than the 2 recorded" in caplog.text
    assert sorted(sorted(k) for k in graphed.by_size) == [[4, 16], [8, 16]]  # the symbols' values


def _graphed_step(launch, sizes=None):
    cuda = RecordingCuda()
    cuda.call = GraphedCall(launch, "step", [], frozenset({0}), sizes, cuda=cuda, device_type="cpu")
    return cuda.call


def test_a_failed_warm_up_raises_as_the_launcher_would_and_writes_once():
    # The warm-up before a recording is the call's own run: where it fails after writing into an
    # input, nothing runs it again (the runtime decides what runs instead, as for any launcher error).
    parameter, failing = nn.Parameter(torch.zeros(4), requires_grad=False), [False]

    def launch(inputs):
        inputs[0].add_(1)
        if failing[0]:
            raise RuntimeError("CUDA out of memory")
        return (inputs[0] * 2,)

    graphed = _graphed_step(launch)
    graphed([parameter])  # a run: 1
    failing[0] = True
    with pytest.raises(RuntimeError, match="out of memory"):
        graphed([parameter])  # the recording's warm-up wrote, then failed: 2
    assert torch.equal(parameter, torch.full((4,), 2.0)) and graphed.given_up is None
    failing[0] = False
    graphed([parameter])  # recorded: its warm-up writes 3
    out = graphed([parameter])  # a replay: 4
    assert torch.equal(parameter, torch.full((4,), 4.0)) and torch.equal(out[0], torch.full((4,), 8.0))
    assert graphed.recordings == 2 and graphed.replays == 1


def test_sizes_seen_once_make_room_for_one_that_repeats(monkeypatch):
    monkeypatch.setattr(cudagraphs, "MAX_SIZES", 2)
    graphed = _graphed_step(lambda inputs: (inputs[0] * 2,), sizes=lambda inputs: (inputs[0].shape[0],))
    for rows in [4, 8, 16, 16, 16]:
        out = graphed([torch.ones(rows)])
        assert torch.equal(out[0], torch.full((rows,), 2.0))
    assert list(graphed.by_size) == [(8,), (16,)] and graphed.recordings == 1 and graphed.replays == 1
    for rows in [32, 32, 32]:  # both places taken by a size recorded or seen: 8 is forgotten
        graphed([torch.ones(rows)])
    assert sorted(graphed.by_size) == [(16,), (32,)] and graphed.recordings == 2 and graphed.unrecorded == 0
    graphed([torch.ones(64)])  # no room left: runs without a graph
    assert graphed.unrecorded == 1


def test_giving_up_keeps_the_counts_and_lets_the_recordings_go():
    graphed = _graphed_step(lambda inputs: (inputs[0] * 2,))
    x = torch.ones(4)
    for _ in range(3):
        graphed([x])
    (recorded,) = graphed.by_size.values()
    assert recorded.graph is not None and graphed.replays == 1
    graphed.stop("a test")
    assert recorded.graph is None and recorded.static == [] and graphed.replays == 1
    assert torch.equal(graphed([x])[0], torch.full((4,), 2.0)) and graphed.replays == 1


def test_a_replay_reads_each_copied_input_element_by_element_whatever_its_layout():
    # The recording reads a copy laid out as the first input was; a later call's input laid out
    # otherwise (a transpose of the same shape) is copied element by element, and an expanded one whole.
    graphed = _graphed_step(lambda inputs: (inputs[0] + inputs[1],))
    a, row = torch.randn(4, 4), torch.randn(1, 4)
    for _ in range(3):
        graphed([a, row.expand(4, 4)])
    b = torch.randn(4, 4).t()
    out = graphed([b, row.expand(4, 4)])
    assert graphed.replays == 2
    torch.testing.assert_close(out[0], b + row)
    (recorded,) = graphed.by_size.values()
    assert [span is None for _, _, span in recorded.copies] == [True, False]  # the expanded one copied whole
    column = torch.randn(4, 1).expand(4, 4)  # expanded the other way: its span cannot be copied as the row's
    torch.testing.assert_close(graphed([b, column])[0], b + column)
    torch.testing.assert_close(graphed([b, torch.ones(4, 4)])[0], b + 1)
    assert graphed.replays == 2  # both ran the launcher


def test_a_capturable_adam_step_has_nothing_that_keeps_it_from_a_recording():
    # With capturable=True the step counts live beside the parameters (on a GPU: no host scalars);
    # its writes into parameters and states are recorded, and no torch call of it writes in place.
    from torch.optim.adam import adam

    def step(params, grads, exp_avgs, exp_avg_sqs, steps):
        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=True, capturable=True, lr=1e-3, beta1=0.9,
             beta2=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False, differentiable=False,
             fused=None, grad_scale=None, found_inf=None, has_complex=False, decoupled_weight_decay=False)

    tensors = lambda make: [make() for _ in range(3)]
    with torch.no_grad():
        record = _plan(step, tensors(lambda: torch.randn(16)), tensors(lambda: torch.randn(16)),
                       tensors(lambda: torch.zeros(16)), tensors(lambda: torch.zeros(16)),
                       tensors(lambda: torch.tensor(1.0)))
    assert len(written_inputs(record.plan)) == 12  # parameters, both states, step counts
    assert refusal(record.plan, record.name) is None
