"""The memory plan: buffers taken over by later ones, never while they are live."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import fusec
from fusec.launcher import planned_peak, step_buffers, unfused_peak
from fusec.passes.memory import StepBuffers, live_bytes_peak, plan_reuse
from tests.test_stream_runtime import FakeCuda, happens_before, misordered, on_fake_streams


@st.composite
def programs(draw):
    """Random steps: each writes 0-2 buffers of one of three layouts and reads earlier ones."""
    steps, made = [], []
    for i in range(draw(st.integers(1, 25))):
        reads = tuple(draw(st.lists(st.sampled_from(made), max_size=3, unique=True))) if made else ()
        writes = tuple((f"b{i}_{j}", draw(st.sampled_from("xyz"))) for j in range(draw(st.integers(0, 2))))
        steps.append(StepBuffers(writes, reads, pooled=draw(st.booleans())))
        made += [name for name, _ in writes]
    keep = frozenset(draw(st.lists(st.sampled_from(made), max_size=2))) if made else frozenset()
    return steps, keep


def _root(name, reuse):
    while name in reuse:
        name = reuse[name]
    return name


@settings(max_examples=300, deadline=None)
@given(programs())
def test_no_two_live_buffers_share_storage(program):
    steps, keep = program
    reuse = plan_reuse(steps, keep)
    layout = {name: lay for s in steps for name, lay in s.writes}
    writer = {name: i for i, s in enumerate(steps) for name, _ in s.writes}
    last = {name: i for i, s in enumerate(steps) for name in s.reads}
    death = {n: len(steps) if n in keep else max(last.get(n, w), w) for n, w in writer.items()}
    for new, old in reuse.items():
        assert layout[new] == layout[old]
        assert steps[writer[new]].pooled and steps[writer[old]].pooled
        assert old not in keep
        # pooled buffers are read by pooled steps only (a torch call might keep a view)
        assert all(s.pooled for s in steps if old in s.reads)
    for t in range(len(steps)):
        live = [n for n in writer if writer[n] <= t <= death[n]]
        roots = [_root(n, reuse) for n in live]
        assert len(roots) == len(set(roots)), (t, live, reuse)


@settings(max_examples=100, deadline=None)
@given(programs())
def test_taking_over_buffers_never_raises_the_peak(program):
    steps, keep = program
    sizes = {name: 100 for s in steps for name, _ in s.writes}
    assert live_bytes_peak(steps, sizes, plan_reuse(steps, keep), keep) <= live_bytes_peak(steps, sizes, {}, keep)


@st.composite
def stream_programs(draw):
    """Random steps on three streams, each waiting for the event of every earlier step on
    another stream whose buffer it reads (as the planner orders them), and for a few others."""
    steps, made, writer = [], [], {}
    for i in range(draw(st.integers(1, 25))):
        stream = draw(st.integers(0, 2))
        reads = tuple(draw(st.lists(st.sampled_from(made), max_size=3, unique=True))) if made else ()
        extra = draw(st.lists(st.integers(0, i - 1), max_size=2)) if i else []
        waits = {writer[n] for n in reads if steps[writer[n]].stream != stream} | set(extra)
        writes = tuple((f"b{i}_{j}", draw(st.sampled_from("xy"))) for j in range(draw(st.integers(0, 2))))
        steps.append(StepBuffers(writes, reads, pooled=draw(st.booleans()), stream=stream,
                                 waits=tuple(sorted(w for w in waits if steps[w].stream != stream))))
        writer.update((name, i) for name, _ in writes)
        made += [name for name, _ in writes]
    keep = frozenset(draw(st.lists(st.sampled_from(made), max_size=2))) if made else frozenset()
    return steps, keep


def _ordered(steps):
    """Step a -> step b where a GPU finishes a before b starts: in order on a stream, through events."""
    graph = nx.DiGraph()
    last_on = {}
    for i, step in enumerate(steps):
        graph.add_node(i)
        if step.stream in last_on:
            graph.add_edge(last_on[step.stream], i)
        last_on[step.stream] = i
        graph.add_edges_from((w, i) for w in step.waits)
    return nx.transitive_closure_dag(graph)


@settings(max_examples=300, deadline=None)
@given(stream_programs())
def test_on_several_streams_a_buffer_is_taken_over_only_after_its_last_use(program):
    steps, keep = program
    assume(any(step.stream for step in steps))
    reuse = plan_reuse(steps, keep)
    order = _ordered(steps)
    layout = {name: lay for s in steps for name, lay in s.writes}
    writer = {name: i for i, s in enumerate(steps) for name, _ in s.writes}
    for new, old in reuse.items():
        users = {writer[old], *(i for i, s in enumerate(steps) if old in s.reads)}
        assert all(order.has_edge(u, writer[new]) for u in users), (new, old, users)
        assert layout[new] == layout[old] and steps[writer[new]].pooled and steps[writer[old]].pooled
        assert old not in keep and all(s.pooled for s in steps if old in s.reads)
    # every buffer is held to the end of the call: each is taken over once at most
    assert sorted(reuse.values()) == sorted(set(reuse.values()))


def test_one_stream_takes_over_what_several_streams_take_over_and_more():
    # a -> b on stream 0, c on stream 1 waits for a: c may take over a's buffer once b has read it
    # only if it also waits for b; on one stream, always.
    steps = [StepBuffers((("a", "x"),), (), True), StepBuffers((("b", "x"),), ("a",), True),
             StepBuffers((("c", "x"),), (), True)]
    assert plan_reuse(steps, frozenset({"b", "c"})) == {"c": "a"}
    on_streams = [steps[0], steps[1], StepBuffers((("c", "x"),), (), True, stream=1, waits=(0,))]
    assert plan_reuse(on_streams, frozenset({"b", "c"})) == {}
    ordered = [*on_streams[:2], StepBuffers((("c", "x"),), (), True, stream=1, waits=(1,))]
    assert plan_reuse(ordered, frozenset({"b", "c"})) == {"c": "a"}


def test_a_launcher_on_several_streams_takes_over_only_buffers_its_events_order():
    # k0: a = sin(x); k1: b = cos(a); k2: c = exp(x); k3: b + c. On one stream c takes over a (dead
    # once k1 read it). With k1 moved to a side stream, k2 does not wait for it: c must not take
    # a over; the output, whose kernel waits for k1, may.
    fn = lambda x: torch.cos(torch.sin(x)) + torch.exp(x)
    x = torch.randn(4, 8)
    compiled = fusec.compile(fn, fuse=False)
    compiled(x)
    record = fusec.report_of(compiled).graphs[0]
    runtime = record.runtime
    k0, k1, _, k3 = [s.id for s in record.plan.steps]
    assert "v_exp = v_sin; del v_sin  # takes over its buffer" in runtime.source
    moved = {k1: dict(stream=1, waits=(k0,)), k3: dict(waits=(k1,))}
    runtime.plan = replace(record.plan, steps=tuple(replace(s, **moved.get(s.id, {})) for s in record.plan.steps))
    runtime.n_streams, cuda = 2, FakeCuda()
    on_fake_streams(runtime, cuda, True)
    torch.testing.assert_close(compiled(x), fn(x))
    assert misordered(runtime.plan, cuda.trace) == []
    assert "v_exp = v_sin" not in runtime.source
    assert "v_add = v_sin; del v_sin  # takes over its buffer" in runtime.source
    steps = step_buffers(runtime.plan, frozenset(), True)
    keep = frozenset(runtime.plan.graph.output.operands())
    assert plan_reuse(steps, keep) == {"add": "sin"}
    sizes = {name: runtime.plan.graph[name].nbytes for s in steps for name, _ in s.writes}
    assert planned_peak(runtime.plan, streams=True) == live_bytes_peak(steps, sizes, {"add": "sin"}, keep)
    assert planned_peak(runtime.plan, streams=True) < live_bytes_peak(steps, sizes, {}, keep)
    # every step using the buffer ran, in the GPU's order, before the step taking it over
    ran = {arg: i for i, (what, _, arg) in enumerate(cuda.trace) if what == "run"}
    order = happens_before(cuda.trace)
    assert all(nx.has_path(order, ran[u], ran[k3]) for u in (k0, k1))


def test_a_buffer_lives_as_long_as_its_views_in_the_modeled_peak():
    # exp's buffer is read only through its transpose, after sin's buffer is made: op by op, exp,
    # sin and the sum are held at once; fused, one kernel writes the sum alone.
    fn = lambda x: torch.exp(x).t() + torch.sin(x)
    record = fusec.inspect(fn, torch.randn(8, 8)).graphs[0]
    assert [n.op for n in record.graph.op_nodes()] == ["exp", "permute", "sin", "add"]
    assert unfused_peak(record.graph) == 3 * 256
    assert planned_peak(record.plan) == 256
    # a view the graph returns keeps its buffer to the end
    record = fusec.inspect(lambda x: (torch.exp(x).t(), torch.sin(x) * 2), torch.randn(8, 8)).graphs[0]
    assert unfused_peak(record.graph) == 3 * 256


def test_a_chain_of_layers_ping_pongs_between_two_buffers():
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64) for _ in range(4)]
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), *[m for lin in layers for m in (lin, nn.LayerNorm(64))])
    x = torch.randn(8, 16)
    with torch.no_grad():
        compiled = fusec.compile(model)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    source = fusec.report_of(compiled).graphs[0].runtime.source
    # Five kernels (Linear + GELU, then each Linear with its LayerNorm): two buffers, three handovers.
    assert len(fusec.report_of(compiled).graphs[0].plan.kernels) == 5
    assert source.count("empty_strided(") == 2
    assert source.count("takes over its buffer") == 3


def test_an_output_the_caller_holds_is_never_written_by_a_later_call():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(32, 32), nn.LayerNorm(32), nn.GELU())])
    with torch.no_grad():
        compiled = fusec.compile(model)
        x1, x2 = torch.randn(4, 32), torch.randn(4, 32)
        first = compiled(x1)
        kept = first.clone()
        second = compiled(x2)
        compiled(x1)
    source = fusec.report_of(compiled).graphs[0].runtime.source
    assert "takes over its buffer" in source  # the output comes out of buffers handed on within a call
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    torch.testing.assert_close(second, model(x2), rtol=1e-4, atol=1e-4)
