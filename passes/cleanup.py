"""cleanup: dead code elimination, identities (x * 1, x.t().t()) and common subexpression elimination."""

from __future__ import annotations

import networkx as nx

from fusec.ir import Graph, Kind, Node, Ref

# Only ops whose value depends on nothing but their arguments may be merged;
# extern calls can be random (dropout, randn) or stateful.
_CSE_KINDS = (Kind.POINTWISE, Kind.VIEW)


def _remove_dead(graph: Graph) -> Graph:
    """`graph` itself, without the nodes that neither are inputs nor reach the output."""
    live = nx.ancestors(graph.nx, graph.output.name) | {graph.output.name}
    for node in list(graph):
        if node.name not in live and node.kind is not Kind.INPUT:
            graph.remove(node.name)
    return graph


def _renamed(node: Node, alias: dict[str, str]) -> Node:
    """The node reading each aliased operand's replacement (itself when it reads none)."""
    if not any(op in alias for op in node.operands()):
        return node
    return node.rename_operands(lambda r: Ref(alias.get(r.name, r.name)))


def _exact(args: tuple) -> tuple:
    """Arguments as a key that tells -0.0 from 0.0 (equal, and equal in hash, as floats)."""
    return tuple((type(a), repr(a)) if isinstance(a, float) else a for a in args)


def _is_identity(node) -> bool:
    """x * 1 and x / 1 are exactly x (NaN, inf and -0.0 included); x + 0 is not (-0.0 + 0 = 0)."""
    return node.op in ("mul", "div") and len(node.args) == 2 and isinstance(node.args[0], Ref) and \
        not isinstance(node.args[1], Ref | bool) and node.args[1] == 1


def _undone_permute(node: Node, out: Graph) -> str | None:
    """The value a permute reads back in its own order (x.t().t(): the second permute undoes
    the first), when it has that value's layout, so a reader (the caller too) sees no difference."""
    if node.op != "permute" or out[node.args[0].name].op != "permute":
        return None
    first = out[node.args[0].name]
    root = out[first.args[0].name]
    order, undo = first.args[1], node.args[1]
    if any(order[d] != i for i, d in enumerate(undo)):
        return None
    return root.name if _layout(root) == _layout(node) else None


def _layout(node: Node) -> tuple:
    """What a reader sees of a value besides its elements (sizes: their symbolic expressions)."""
    return node.shape, node.dtype, node.strides, node.sizes


def _simplified(graph: Graph) -> Graph:
    """The graph without a multiply or divide by one that only computing ops read (with its
    operand's shape and dtype), without a permute undoing the one it reads, and without a
    pure node computing what an earlier one did."""
    out = Graph(name=graph.name)
    out.hints = graph.hints
    alias: dict[str, str] = {}  # a dropped node -> the node its readers read instead
    seen: dict[tuple, str] = {}
    for node in graph:
        node = _renamed(node, alias)
        # x * 1 is a fresh tensor: where a view, torch or the caller gets it (rather than
        # only computing ops), dropping it would hand over the operand's memory and strides.
        if _is_identity(node) and {graph[u].kind for u in graph.users(node.name)} <= \
                {Kind.POINTWISE, Kind.REDUCTION, Kind.MATMUL}:
            src = out[node.args[0].name]
            if (src.symbolic_shape, src.dtype) == (node.symbolic_shape, node.dtype):
                alias[node.name] = src.name
                continue
        root = _undone_permute(node, out)
        if root is not None:
            alias[node.name] = root
            continue
        if node.kind in _CSE_KINDS and node.op != "rand":
            key = (node.op, _exact(node.args), node.kwargs, node.shape, node.dtype, node.strides, node.sizes)
            if key in seen:
                alias[node.name] = seen[key]
                continue
            seen[key] = node.name
        out.add(node)
    return out


def cleanup(graph: Graph) -> Graph:
    """No dead node, no multiply by one, no permute undoing a permute and no duplicated pure computation
    remains; values and the outputs' layouts are unchanged."""
    # The simplified graph is new and no one else's: its dead nodes go without a copy.
    return _remove_dead(_simplified(graph))
