"""L2 eviction hints for a kernel's loads, as Inductor gives them for the same reads.

Hopper's L2 keeps lines marked evict_last over others: an input every program
reads again (a bias, a norm's weight) or a row a later loop reads again stays
in L2, and a row's last read (evict_first) makes room for them.
"""

from __future__ import annotations

import networkx as nx

from fusec import sizes
from fusec.ir import Graph, Node
from fusec.plan import Kernel


def eviction(graph: Graph, kernel: Kernel, node: Node, loop: int | None, last_loop: dict[str, int]) -> str | None:
    """The hint for a load of input `node`: an input smaller than the iteration space is
    read again by other programs (evict_last); in loop number `loop` over a row, an input a
    later loop reads is kept (evict_last) and the last loop reading it streams it (evict_first)."""
    elements = sizes.hint(kernel.numel, graph.hints) * sizes.hint(kernel.rnumel, graph.hints)
    if sizes.hint(node.numel, graph.hints) < elements:
        return "evict_last"
    if loop is None:
        return None
    return "evict_last" if last_loop.get(node.name, -1) > loop else "evict_first"


def last_loops(graph: Graph, kernel: Kernel, loops: list[list[str]]) -> dict[str, int]:
    """Input -> the last of `loops` (each the members it computes) whose values read it."""
    inside = graph.nx.subgraph([*kernel.members, *kernel.inputs])
    last = {}
    for number, names in enumerate(loops):
        for name in names:
            for read in (nx.ancestors(inside, name) | {name}) & set(kernel.inputs):
                last[read] = number
    return last
