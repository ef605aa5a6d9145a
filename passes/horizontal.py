"""horizontal: independent small pointwise kernels launched together as one combo kernel."""

from __future__ import annotations

import networkx as nx

from fusec.ir import Graph, Kind
from fusec.passes.verify import quotient

# Past this many elements a kernel fills the GPU by itself and gains nothing from company.
SMALL = 1 << 20
MAX_PARTS = 16


def _pointwise_groups(graph: Graph) -> dict[str, int]:
    """Pointwise-only groups small enough to share a launch, with their element counts."""
    sizes = {}
    for group, members in graph.groups().items():
        if all(m.kind in (Kind.POINTWISE, Kind.VIEW) for m in members):
            outputs = graph.escaping(members)
            if outputs and outputs[0].numel <= SMALL:
                sizes[group] = outputs[0].numel
    return sizes


def horizontal(graph: Graph, max_elements: int = SMALL) -> Graph:
    """Combos hold pairwise independent pointwise groups (no path either way), so
    contracting each combo keeps the launch graph a DAG; values are unchanged."""
    candidates = {g: n for g, n in _pointwise_groups(graph).items() if n <= max_elements}
    if len(candidates) < 2:
        return graph
    dag = quotient(graph)
    reach = {g: nx.descendants(dag, g) for g in candidates}
    combos: list[list[str]] = []
    for group in candidates:  # in topological order of first member
        for combo in combos:
            if len(combo) < MAX_PARTS and all(group not in reach[g] and g not in reach[group] for g in combo) \
                    and _acyclic(dag, [*(c for c in combos if c is not combo), [*combo, group]]):
                combo.append(group)
                break
        else:
            combos.append([group])
    out = graph.copy()
    out.horizontal = tuple(tuple(c) for c in combos if len(c) > 1)
    return out


def _acyclic(dag: nx.DiGraph, combos: list[list[str]]) -> bool:
    """Whether contracting every combo keeps the launch graph a DAG (two combos can
    depend on each other even when each holds only independent groups)."""
    rep = {g: i for i, combo in enumerate(combos) for g in combo}
    contracted = nx.DiGraph()
    contracted.add_nodes_from(rep.get(v, v) for v in dag)
    contracted.add_edges_from((rep.get(a, a), rep.get(b, b)) for a, b in dag.edges if rep.get(a, a) != rep.get(b, b))
    return nx.is_directed_acyclic_graph(contracted)
