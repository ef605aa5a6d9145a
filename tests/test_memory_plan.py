"""The memory plan: buffers taken over by later ones, never while they are live."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fusec
from fusec.passes.memory import StepBuffers, live_bytes_peak, plan_reuse


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
