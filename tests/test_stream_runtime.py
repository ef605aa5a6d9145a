"""The runtime's multi-stream path on a CPU: torch.cuda's stream and event calls replaced by a
recorder, so the order of launches, waits and records can be checked against the plan."""

from __future__ import annotations

import contextlib
import dataclasses

import networkx as nx
import pytest
import torch

import fusec
from fusec.examples import build
from fusec.plan import step_dag
from tests.test_streams import Heads


class FakeCuda:
    """The part of torch.cuda the runtime's stream path calls, writing each call to `trace`
    as (what, stream, argument) instead of queuing work on a GPU."""

    def __init__(self) -> None:
        self.trace: list[tuple[str, int, object]] = []
        self.streams = [FakeStream(self, 0)]
        self.current = self.streams[0]

    def current_stream(self) -> FakeStream:
        return self.current

    def Stream(self) -> FakeStream:
        self.streams.append(FakeStream(self, len(self.streams)))
        return self.streams[-1]

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before


@dataclasses.dataclass(eq=False)
class FakeStream:
    cuda: FakeCuda
    index: int

    def wait_stream(self, other: FakeStream) -> None:
        self.cuda.trace.append(("wait_stream", self.index, other.index))

    def wait_event(self, event: object) -> None:
        self.cuda.trace.append(("wait_event", self.index, event))

    def record_event(self) -> object:
        event = object()
        self.cuda.trace.append(("record", self.index, event))
        return event


def happens_before(trace: list[tuple[str, int, object]]) -> nx.DiGraph:
    """Trace positions ordered as a GPU orders them: in order on one stream, a recorded event
    before each wait on it, all of a stream's work so far before a wait_stream on it."""
    graph = nx.DiGraph()
    last_on: dict[int, int] = {}
    recorded_at: dict[int, int] = {}
    for i, (what, stream, arg) in enumerate(trace):
        graph.add_node(i)
        if stream in last_on:
            graph.add_edge(last_on[stream], i)
        last_on[stream] = i
        if what == "record":
            recorded_at[id(arg)] = i
        elif what == "wait_event":
            graph.add_edge(recorded_at[id(arg)], i)
        elif what == "wait_stream" and arg in last_on and last_on[arg] != i:
            graph.add_edge(last_on[arg], i)
    return graph


def misordered(plan, trace) -> list[str]:
    """Every data dependency of the plan that the recorded order does not guarantee, and every
    step left unfinished when the caller's stream joins at the end of the call."""
    ran = {arg: i for i, (what, _, arg) in enumerate(trace) if what == "run"}
    order = happens_before(trace)
    wrong = [f"{a} -> {b}" for a, b in step_dag(plan).edges if not nx.has_path(order, ran[a], ran[b])]
    end = len(trace) - 1  # the caller's last wait_stream: the call returns after it
    wrong += [f"{step} unfinished at the end" for step, i in ran.items() if not nx.has_path(order, i, end)]
    return wrong


def on_fake_streams(runtime, cuda: FakeCuda, multi_stream: bool) -> None:
    """The runtime's launcher generated anew for `cuda`'s streams, each step noting its start."""
    runtime.stream_api, runtime.multi_stream = cuda, multi_stream
    runtime.step_hook = lambda step_id: cuda.trace.append(("run", cuda.current.index, step_id))
    runtime._call = None


def run_on_fake_streams(model, args, streams=None):
    """Compile `model`, then call it again with its runtimes on recorded fake streams;
    return (output, [(plan, trace) per graph])."""
    compiled = fusec.compile(model, streams=streams)
    with torch.no_grad():
        compiled(*args)
    recorded = []
    for record in fusec.report_of(compiled).graphs:
        runtime, cuda = record.runtime, FakeCuda()
        on_fake_streams(runtime, cuda, runtime.n_streams > 1)
        recorded.append((record.plan, cuda.trace))
    with torch.no_grad():
        out = compiled(*args)
    return out, recorded


@pytest.mark.parametrize("name", ["inception", "heads"])
def test_every_consumer_runs_after_its_producers_event(name):
    torch.manual_seed(0)
    model, args = build("inception") if name == "inception" else (Heads().eval(), (torch.randn(1, 32),))
    out, recorded = run_on_fake_streams(model, args)
    with torch.no_grad():
        torch.testing.assert_close(out, model(*args), rtol=1e-4, atol=1e-5)
    ((plan, trace),) = recorded
    assert 1 + max(s.stream for s in plan.steps) > 1, "the plan uses one stream: nothing to check"
    runs = [(stream, arg) for what, stream, arg in trace if what == "run"]
    assert runs == [(s.stream, s.id) for s in plan.steps]  # each step once, in plan order, on its stream
    assert sum(what == "wait_event" for what, _, _ in trace) == sum(len(s.waits) for s in plan.steps) > 0
    assert misordered(plan, trace) == []


def test_a_missing_wait_is_caught():
    model, args = build("inception")
    compiled = fusec.compile(model, streams=None)
    with torch.no_grad():
        compiled(*args)
    runtime = fusec.report_of(compiled).graphs[0].runtime
    # The same plan with every cross-stream wait dropped: the concat may read unfinished branches.
    runtime.plan = dataclasses.replace(runtime.plan, steps=tuple(dataclasses.replace(s, waits=())
                                                                 for s in runtime.plan.steps))
    cuda = FakeCuda()
    on_fake_streams(runtime, cuda, True)
    with torch.no_grad():
        compiled(*args)
    assert misordered(runtime.plan, cuda.trace)
