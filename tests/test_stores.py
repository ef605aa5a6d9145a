"""Functions that write into their inputs: the new values stored in place where that is safe,
copied in at the end where a later read needs the old value; always equal to eager."""

from __future__ import annotations

import pytest
import torch

import fusec
from fusec.launcher import StepCode, generate, planned_peak
from fusec.plan import Plan
from fusec.stores import in_place, stores
from tests.eager import assert_ran


def _run(fn, *inputs):
    """Eager and fusec on copies of `inputs`: both results and the mutated inputs must agree."""
    eager_inputs = [t.clone() for t in inputs]
    fused_inputs = [t.clone() for t in inputs]
    expected = fn(*eager_inputs)
    compiled = fusec.compile(fn)
    got = compiled(*fused_inputs)
    torch.testing.assert_close(got, expected)
    for g, e in zip(fused_inputs, eager_inputs, strict=True):
        torch.testing.assert_close(g, e)
    graph = assert_ran(compiled).graphs[0]
    return graph, in_place(graph.plan), dict(stores(graph.graph))


def test_an_updated_input_is_written_by_its_kernel():
    def update(p, g):
        p.mul_(0.9).add_(g, alpha=-0.1)
        return g.sum()
    graph, direct, all_stores = _run(update, torch.randn(8, 5), torch.randn(8, 5))
    assert direct == all_stores and len(all_stores) == 1
    assert ".copy_(" not in graph.runtime.source
    # nothing allocated for p's new value: the planned peak is g.sum()'s output alone
    assert planned_peak(graph.plan) == 4


# Triton's interpreter runs a pointwise program over up to 65,536 elements: only a tensor larger
# than that spreads over several programs, where a store racing another program's read shows.
@pytest.mark.parametrize("n", [6, 300])
def test_a_later_read_of_the_old_value_makes_it_a_copy_at_the_end(n):
    # The transposed read of x's old value happens element for element elsewhere: a store into
    # x's buffer in the same kernel would let one program overwrite what another still reads.
    def f(x):
        y = x.t() * 2
        x.add_(1)
        return y
    graph, direct, all_stores = _run(f, torch.randn(n, n))
    assert len(all_stores) == 1 and not direct
    assert ".copy_(" in graph.runtime.source


def test_a_value_stored_into_two_inputs_updates_both():
    def f(x, y):
        t = x + y
        x.copy_(t)
        y.copy_(t)
    graph, direct, _ = _run(f, torch.randn(4, 3), torch.randn(4, 3))
    assert len(stores(graph.graph)) == 2 and len(direct) == 1  # one written in place, the other copied
    assert graph.runtime.source.count(".copy_(") == 1


def test_a_dynamic_graph_writes_in_place_too():
    def step(x, m, y):
        m.mul_(0.9).add_(y)
        x.add_(m, alpha=-0.1)
    compiled = fusec.compile(step, dynamic=True)
    for n in (8, 12, 20):  # sizes the one symbolic graph serves
        inputs = [torch.randn(n, 3) for _ in range(3)]
        eager = [t.clone() for t in inputs]
        step(*eager)
        compiled(*inputs)
        for got, expected in zip(inputs, eager, strict=True):
            torch.testing.assert_close(got, expected)
    graph = assert_ran(compiled).graphs[-1]
    (kernel,) = graph.plan.kernels
    assert len(kernel.into) == 2 and ".copy_(" not in graph.runtime.source  # both stores in place


def test_a_dynamic_graph_copies_where_another_program_reads_the_old_value():
    def f(x):
        y = x.t() * 2  # read at another element: storing into x in the same kernel would race
        x.add_(1)
        return y
    compiled = fusec.compile(f, dynamic=True)
    for n in (300, 310):  # several programs in the interpreter, one symbolic graph
        x = torch.randn(n, n)
        expected_x = x.clone()
        expected = f(expected_x)
        torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(x, expected_x)
    graph = assert_ran(compiled).graphs[-1]
    assert not in_place(graph.plan) and ".copy_(" in graph.runtime.source


def test_reads_of_the_old_value_in_another_kernel_come_first():
    def f(x, w):
        total = (x * w).sum(-1)  # a reduction: a kernel of its own, reading x's old value
        x.mul_(2)
        return total
    graph, direct, all_stores = _run(f, torch.randn(4, 8), torch.randn(4, 8))
    assert direct == all_stores and len(graph.plan.kernels) == 2


def test_reading_the_new_value_reads_the_updated_input():
    def f(x):
        x.add_(1)
        return x.sum(), x * 3
    _run(f, torch.randn(5, 7))


@pytest.mark.parametrize("casted", [False, True])
def test_a_store_that_changes_dtype_or_broadcasts(casted):
    def f(x, y):
        x.copy_(y.to(x.dtype) if casted else y)
        return y + 1
    x = torch.zeros(3, 4, dtype=torch.float16 if casted else torch.float32)
    _, direct, all_stores = _run(f, x, torch.randn(1, 4))
    assert direct == all_stores  # the broadcast and the cast are the kernel's, into x's buffer


def test_mutated_inputs_that_alias():
    base = torch.randn(6, 4)

    def f(a, b):
        a.add_(1)
        return b * 2

    eager_base = base.clone()
    expected = f(eager_base, eager_base[::2])
    fused_base = base.clone()
    compiled = fusec.compile(f)
    got = compiled(fused_base, fused_base[::2])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(fused_base, eager_base)
    assert_ran(compiled)


def test_a_launcher_for_part_of_a_graph_stores_nothing_into_the_graphs_inputs():
    # (a matmul's library alternative is timed through such a launcher, on inputs of its own)
    def update(p, g):
        p.add_(g * 2)
        return g.sum()
    graph, direct, _ = _run(update, torch.randn(4, 4), torch.randn(4, 4))
    assert direct
    steps = graph.plan.kernels
    source, _ = generate(Plan(graph=graph.plan.graph, steps=tuple(steps)),
                         StepCode(calls={k.id: object() for k in steps}, callables={}), streams=False,
                         inputs=list(dict.fromkeys(i for k in steps for i in k.inputs)),
                         result=tuple(o for k in steps for o in k.outputs))
    assert "written into input" not in source and ".copy_(" not in source
