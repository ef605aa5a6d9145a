"""What a scatter kernel may hold: one scatter and the pointwise work that computes its positions
and values at the element it stores (or broadcast to it), which nothing outside the kernel reads."""

from __future__ import annotations

from fusec.ir import Graph, Kind, Node
from fusec.passes.refusal import Refusal
from fusec.passes.scan_fusion import scan_refusal
from fusec.passes.sort_fusion import sort_refusal


def walker_refusal(graph: Graph, members: list[Node], position: dict[str, int]) -> Refusal | None:
    """Why `members` cannot be one kernel of a kind that walks elements of its own (a scan's
    rows, a scatter's stored elements, a sort's rows); `position` is a topological order of the
    graph's nodes."""
    return scan_refusal(graph, members, position) or scatter_refusal(graph, members) or sort_refusal(members)


def scatter_refusal(graph: Graph, members: list[Node]) -> Refusal | None:
    """Why `members` cannot be one scatter kernel (None: they can, or hold no scatter)."""
    scatters = [m for m in members if m.kind is Kind.SCATTER]
    if not scatters:
        return None
    if len(scatters) > 1:
        return Refusal("scatter", f"scatters {scatters[0].name} and {scatters[1].name} would share a kernel")
    scatter = scatters[0]
    base = scatter.args[0].name
    names = {m.name for m in members}
    if base in names:
        # The kernel stores into its base's buffer: the base is written whole before it starts.
        return Refusal("scatter", f"{base} is the base {scatter.name} stores into, written before it")
    for node in members:
        if node is scatter:
            continue
        if node.kind not in (Kind.POINTWISE, Kind.VIEW):
            return Refusal("scatter", f"a scatter ({scatter.name}) and a {node.kind.value} ({node.name}) "
                                      "do not share a kernel")
        if scatter.name in node.operands():
            return Refusal("scatter", f"{node.name} reads {scatter.name}, complete only once its kernel ends")
        # The kernel walks the stored elements: what it computes is read at one of them (broadcast).
        if any(user not in names for user in graph.users(node.name)):
            return Refusal("scatter", f"{node.name} is read outside {scatter.name}'s kernel, which stores "
                                      "only the scattered elements")
    return None
