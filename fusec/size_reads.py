"""Where a generated launcher reads each size symbol of a dynamic graph at a call."""

from __future__ import annotations

from typing import Any

from fusec import sizes
from fusec.ir import SIZE_DTYPE, Graph
from fusec.lowering_sizes import Unsupported


def symbolic(graph: Graph) -> Graph:
    """The graph kernels and launchers are generated from: sizes as expressions over the size
    symbols (a copy), or the graph itself when it has none."""
    return graph.symbolic() if graph.hints else graph


def var(name: str) -> str:
    """The launcher's local variable holding node `name`'s value (node names are identifiers)."""
    return f"v_{name}"


def symbol_sources(graph: Graph, inputs: list[str] | None = None) -> dict[str, str]:
    """Where each size symbol is read at a call: a size input, or a dim (stride) of a tensor input
    that is the symbol itself. A symbol no input gives refuses the graph (torch runs it)."""
    inputs = [n.name for n in graph.inputs] if inputs is None else inputs
    found: dict[str, str] = {}
    derived: list[tuple] = []
    for name in inputs:
        node = graph[name]
        exprs = [(node.args[0], var(name))] if node.dtype == SIZE_DTYPE else []
        if node.sizes is not None:
            exprs += [(e, f"{var(name)}.shape[{d}]") for d, e in enumerate(node.sizes[0])]
            exprs += [(e, f"{var(name)}.stride({d})") for d, e in enumerate(node.sizes[1] or ())]
        for expr, read in exprs:
            if not sizes.is_static(expr) and expr.is_Symbol:
                found.setdefault(expr.name, read)
            elif not sizes.is_static(expr):
                derived.append((expr, read))
    for expr, read in derived:  # a derived dim (`2*s0`, no dim is `s0`): the symbol solved from it
        found.update({s: r for s, r in [_solved(expr, read)] if s is not None and s not in found})
    missing = sorted(set(graph.hints) - set(found))
    if missing:
        raise Unsupported(f"size symbol(s) {', '.join(missing)} are no dimension of any input")
    return {s: found[s] for s in sorted(found, key=lambda n: (len(n), n)) if s in graph.hints}


def _solved(expr: Any, read: str) -> tuple[str | None, str]:
    """`scale*s + offset` read from `read`: `s` and how to read it; (None, "") for other expressions.
    Callers check first that the size is of that form (a package's runner does)."""
    form = sizes.linear(expr)
    if form is None:
        return None, ""
    symbol, scale, offset = form
    return symbol.name, f"(({read}) - {offset}) // {scale}"
