"""Random nodes lowered: each draws a stream of its own, numbered in graph order, and the
numbering is counted as the graph is read (not by scanning the graph at each random node)."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from fusec.ir import Graph
from fusec.lowering import to_ir


def _dropouts(count: int) -> torch.fx.GraphModule:
    def f(x):
        for _ in range(count):
            x = torch.where(torch.rand_like(x) < 0.5, x * 2, 0.0)
        return (x,)
    return make_fx(f)(torch.randn(4))


@pytest.mark.parametrize("count", [1, 40])
def test_each_random_node_gets_the_next_stream(count):
    graph, _ = to_ir(_dropouts(count))
    assert [n.args for n in graph if n.op == "rand"] == [(i,) for i in range(count)]


def test_the_streams_are_counted_without_reading_the_graph_again(monkeypatch):
    reads = []
    walk = Graph.__iter__

    def counted(self):
        reads.append(1)
        return walk(self)
    monkeypatch.setattr(Graph, "__iter__", counted)

    def reads_of(count: int) -> int:
        gm = _dropouts(count)
        reads.clear()
        to_ir(gm)
        return len(reads)
    assert reads_of(40) == reads_of(1)  # not one walk over the graph per random node
