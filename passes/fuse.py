"""fuse: vertical fusion into kernel groups: pointwise and view ops, with at most
one iteration space of reductions (row-wise kernels), matmuls sharing a left
operand (a matmul template with its prologue views and its epilogue), or one
scan, scatter or sort with the pointwise work its kind's rules admit.

Merges are proposed along data edges in topological order, validated
(`Grouping.refusal`: convexity, one iteration shape, the kernel kinds' rules), and applied;
then groups of one iteration shape that no path joins are merged side by side
(`siblings`). Every edge that still joins two different groups, or a group and an
extern call, keeps the reason on the edge (`graph.nx.edges[u, v]["reason"]`).
"""

from __future__ import annotations

from fusec.ir import Graph, Kind, inlined
from fusec.passes.grouping import FUSIBLE, Grouping
from fusec.passes.refusal import Refusal, boundary_refusal
from fusec.passes.siblings import merge_siblings


def fuse(graph: Graph, fuel: int | None = None) -> Graph:
    """Each group is convex and one kernel of a kind the renderers take (its outputs per
    element, per row, or a total); values are unchanged. `fuel` caps the number of merges, those
    of siblings included (0: every op is its own kernel)."""
    state = Grouping(graph)
    refused: dict[tuple[str, str], Refusal] = {}
    asked: dict[tuple[str, str], int] = {}  # the merge count when each edge was last refused
    for dst in graph:
        if dst.kind not in FUSIBLE:
            continue
        for src in dict.fromkeys(dst.operands()):
            gu, gv = state.vertex(src), state.vertex(dst.name)
            if src not in state.group_of or gu == gv:
                continue
            if fuel is not None and state.merges >= fuel:
                refused[src, dst.name] = Refusal("fuel", f"out of fusion fuel ({fuel} merges)" if fuel else
                                                 "fusion is off")
                continue
            reason = state.refusal(gu, gv)
            if reason:
                refused[src, dst.name] = reason
                asked[src, dst.name] = state.merges
            else:
                state.merge(gu, gv)
    _retry_refused(state, refused, asked, fuel)
    merge_siblings(graph, state, fuel)
    return _apply(graph, state, refused)


def _retry_refused(state: Grouping, refused: dict[tuple[str, str], Refusal], asked: dict[tuple[str, str], int],
                   fuel: int | None) -> None:
    """Edges refused once may merge now: a producer whose readers of another shape (a
    pooling window's slices of one padded tensor) have since joined one group no longer
    escapes it. Retried in graph order until a round merges nothing; an edge is asked
    again only once one of its groups has grown since it was last refused (`asked`: the
    merge count then)."""
    merged = True
    while merged:
        merged = False
        for src, dst in list(refused):
            if fuel is not None and state.merges >= fuel:
                return
            gu, gv = state.vertex(src), state.vertex(dst)
            if gu != gv:
                if not state.grown_since(asked[src, dst], gu, gv):
                    continue
                if state.refusal(gu, gv) is not None:
                    asked[src, dst] = state.merges
                    continue
                state.merge(gu, gv)
                merged = True
            del refused[src, dst]


def _apply(graph: Graph, state: Grouping, refused: dict[tuple[str, str], Refusal]) -> Graph:
    """Name the groups k0, k1, ... in topological order and label boundary edges."""
    out = graph.copy()
    names: dict[str, str | None] = {}  # vertex -> its kernel, None when it is not one
    kernels = 0
    for node in graph:
        vertex = state.group_of.get(node.name)
        if vertex is None:
            continue
        if vertex not in names:
            names[vertex] = f"k{kernels}" if _is_kernel(graph, state.members[vertex]) else None
            kernels += names[vertex] is not None
        if names[vertex] is not None:
            out.update(node.replace(group=names[vertex]))
    group = {name: node.group for name, node in out.nx.nodes(data="node")}
    for src, dst, data in out.nx.edges(data=True):
        if (group[src] is not None and group[src] == group[dst]) or (group[dst] is not None and inlined(out, src)):
            data.pop("reason", None)
            continue
        data["reason"] = refused.get((src, dst)) or boundary_refusal(out[src], out[dst])
    return out


def _is_kernel(graph: Graph, members: list[str]) -> bool:
    """Whether a group has something to fuse: views alone run as torch aliases, a bare
    matmul as torch's own."""
    kinds = [graph[m].kind for m in members]
    return not all(k in (Kind.VIEW, Kind.MATMUL) for k in kinds) or kinds.count(Kind.MATMUL) > 1
