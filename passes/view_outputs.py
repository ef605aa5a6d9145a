"""view_outputs: a kernel stores no view of what is in memory anyway; torch makes the view.

A group's members include the views its ops read through (index math). When
such a view is also read outside the group, the kernel would store it: a
second copy of its root. Where the root is in memory anyway (a graph input,
another step's output, a value the same kernel stores for another reader) or
two or more of the group's views of it cover it (three reshapes of a fused QKV
product), the view is taken out of the group instead: the kernel stores the root
once, and the launcher makes the view of its buffer (one reinterpretation) or
torch runs the view op on an input, as eager does, so outputs alias as eager's.
Readers inside the group keep their own copy of the view.
"""

from __future__ import annotations

from fusec.ir import Graph, Kind, Node, Ref, inlined, is_constant
from fusec.passes.refusal import boundary_refusal


def view_outputs(graph: Graph) -> Graph:
    """Every group member read outside its group is a non-view or a view whose root is not in
    memory (nor covered by the group's views of it); values are unchanged."""
    moved: dict[str, str] = {}  # grouped view read outside its group -> that group
    for group, members in graph.groups().items():
        names = {m.name for m in members}
        escaping = {m.name for m in graph.escaping(members)}
        views, roots = _free_views(graph, members, names, escaping)
        kept = escaping - views | (roots & names)
        if views and kept:  # the kernel still stores something
            moved.update(dict.fromkeys(views, group))
    if not moved:
        return graph
    return _rewritten(graph, moved)


def _chain(graph: Graph, view: Node, names: set[str]) -> tuple[list[str], str]:
    """The grouped views from `view` up to the value they view (its root), and that root."""
    chain = [view.name]
    while True:
        operands = list(dict.fromkeys(graph[chain[-1]].operands()))
        if len(operands) != 1:
            return chain, ""
        above = graph[operands[0]]
        if above.name not in names or above.kind is not Kind.VIEW:
            return chain, above.name
        chain.append(above.name)


def _free_views(graph: Graph, members: list[Node], names: set[str],
                escaping: set[str]) -> tuple[set[str], set[str]]:
    """The group's views (escaping ones and the grouped views they view) whose root is in memory
    or covered by them, and those roots; `names` are the members' names, `escaping` those read
    outside the group."""
    by_root: dict[str, dict[str, list[str]]] = {}
    for member in members:
        if member.name in escaping and member.kind is Kind.VIEW:
            chain, root = _chain(graph, member, names)
            if root and not is_constant(graph[root]):  # an inlined constant has no buffer
                by_root.setdefault(root, {})[member.name] = chain
    views: set[str] = set()
    roots: set[str] = set()
    for root, chains in by_root.items():
        stored = root not in names or root in escaping
        # Storing the root instead of two or more of its views costs no more bytes (bytes, not
        # elements: a view that reads the root as another dtype holds another count of them).
        covered = len(chains) > 1 and sum(graph[v].nbytes for v in chains) >= graph[root].nbytes
        if stored or covered:
            views.update(name for chain in chains.values() for name in chain)
            roots.add(root)
    return views, roots


def _rewritten(graph: Graph, moved: dict[str, str]) -> Graph:
    """The graph with the moved views ungrouped; one still read inside its group stays there,
    and what reads it from outside reads an ungrouped copy emitted right after it."""
    ungrouped: set[str] = set()
    copies: dict[str, str] = {}  # grouped view -> the ungrouped copy read outside its group
    names = set(graph.nx.nodes)
    for name in reversed([n for n in graph.nx.nodes if n in moved]):  # readers before what they read
        group = moved[name]
        users = [graph[u] for u in graph.users(name)]
        outside = any(u.group != group or u.name in ungrouped or u.name in copies for u in users)
        inside = any(u.group == group and u.name not in ungrouped for u in users)
        if outside and inside:
            copies[name] = _fresh(names, name)
        elif outside:
            ungrouped.add(name)
    nodes: list[Node] = []
    for node in graph:
        group = None if node.name in ungrouped else node.group
        nodes.append(_reading_copies(node.replace(group=group), graph, copies))
        if node.name in copies:
            nodes.append(_reading_copies(node.replace(name=copies[node.name], group=None), graph, copies))
    out = Graph(nodes, name=graph.name)
    out.horizontal, out.hints = graph.horizontal, graph.hints
    _keep_reasons(graph, out, {copy: name for name, copy in copies.items()})
    return out


def _keep_reasons(graph: Graph, out: Graph, original: dict[str, str]) -> None:
    """Every edge between launches keeps why it is not fused (a copy's edges their original's);
    a new one is a view torch runs."""
    for src, dst, data in out.nx.edges(data=True):
        group, other = out[src].group, out[dst].group
        if (group is not None and group == other) or (other is not None and inlined(out, src)):
            continue
        old = graph.nx.edges.get((original.get(src, src), original.get(dst, dst)), {})
        data["reason"] = old.get("reason") or boundary_refusal(out[src], out[dst])


def _reading_copies(node: Node, graph: Graph, copies: dict[str, str]) -> Node:
    """`node` reading the ungrouped copy of each operand of another group that has one."""
    def pick(ref: Ref) -> Ref:
        copied = ref.name in copies and graph[ref.name].group != node.group
        return Ref(copies[ref.name]) if copied else ref

    return node.rename_operands(pick)


def _fresh(names: set[str], name: str) -> str:
    k = 1
    while f"{name}_view{k}" in names:
        k += 1
    names.add(f"{name}_view{k}")
    return f"{name}_view{k}"
