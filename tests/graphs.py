"""Small IR graphs built by hand, for pass tests that need no torch."""

from __future__ import annotations

from fusec.ir import Graph, Kind, Node, Ref, kind_of


def build(spec: list[tuple], outputs: list[str], shape=(4, 8), dtype="float32") -> Graph:
    """spec rows: (name, op, operand names[, shape]); op 'input' makes an input."""
    g = Graph(name="test")
    for row in spec:
        name, op, operands = row[:3]
        node_shape = row[3] if len(row) > 3 else shape
        if op == "input":
            g.add(Node(name, "input", Kind.INPUT, node_shape, dtype, strides=_contig(node_shape)))
            continue
        g.add(Node(name, op, kind_of(op), node_shape, dtype, strides=_contig(node_shape),
                   args=tuple(Ref(o) for o in operands), target=f"aten.{op}.default"))
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=tuple(Ref(o) for o in outputs)))
    return g


def _contig(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))
