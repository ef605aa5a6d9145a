"""Modeled memory traffic: what each kernel or extern call reads and writes."""

from __future__ import annotations

from dataclasses import dataclass

from fusec.ir import ITEMSIZE, TUPLE_DTYPE, Graph, Kind, Node, inlined, is_constant

_FREE = (Kind.INPUT, Kind.OUTPUT, Kind.VIEW)


def written_bytes(graph: Graph, node: Node) -> int:
    """Bytes a node's op writes; a tuple-valued extern writes what its getitems read out; a
    scatter stores its elements only (an accumulating one reads each first)."""
    if node.kind is Kind.SCATTER:
        return graph[node.args[1].name].numel * ITEMSIZE[node.dtype] * (2 if node.args[3] else 1)
    if node.dtype == TUPLE_DTYPE:
        return sum(graph[user].nbytes for user in graph.users(node.name))
    return node.nbytes


def _reads(graph: Graph, names: list[str]) -> int:
    return sum(graph[name].nbytes for name in dict.fromkeys(names) if graph[name].dtype != TUPLE_DTYPE)


def op_bytes(graph: Graph, node: Node) -> int:
    """Traffic of one op run as its own kernel: unique operands read once, result written once."""
    if node.kind in _FREE or node.op in ("getitem", "constant"):
        return 0
    return _reads(graph, _read(node, node.operands())) + written_bytes(graph, node)


def group_bytes(graph: Graph, members: list[Node]) -> int:
    """Traffic of one fused kernel: every outside operand read once (constants are
    computed inline), every escaping value written once."""
    names = {m.name for m in members}
    external = [op for m in members for op in _read(m, m.operands()) if op not in names and not is_constant(graph[op])]
    return _reads(graph, external) + sum(written_bytes(graph, m) for m in graph.escaping(members))


def _read(node: Node, operands: list[str]) -> list[str]:
    """The operands whose memory a node reads: a scatter stores into its base without reading it."""
    return operands[1:] if node.kind is Kind.SCATTER else operands


def bytes_unfused(graph: Graph) -> int:
    """Traffic if every op ran as its own kernel (views move nothing)."""
    return sum(op_bytes(graph, node) for node in graph)


def bytes_fused(graph: Graph) -> int:
    """Traffic of the grouped graph: one term per kernel and per extern call."""
    groups = graph.groups()
    total = sum(group_bytes(graph, members) for members in groups.values())
    return total + sum(op_bytes(graph, n) for n in graph if n.group is None and not inlined(graph, n.name))


def group_flops(graph: Graph, members: list[Node]) -> int:
    """Arithmetic of a group: one op per element per pointwise member, 2MNK per matmul."""
    pointwise = sum(m.numel for m in members if m.kind is Kind.POINTWISE)
    products = sum(2 * m.numel * graph[m.operands()[0]].shape[-1] for m in members if m.kind is Kind.MATMUL)
    return pointwise + products


@dataclass(frozen=True)
class DeviceModel:
    """The numbers the roofline uses; defaults are an H100 SXM's datasheet values.

    bandwidth in bytes/s, flops in FLOP/s (non-tensor-core fp32), launch in seconds.
    """

    name: str = "H100 (datasheet)"
    bandwidth: float = 3.35e12
    flops: float = 6.7e13
    launch: float = 4e-6


H100 = DeviceModel()


def estimate_seconds(nbytes: int, flops: int, device: DeviceModel = H100) -> float:
    """Roofline time of one kernel: the slower of moving its bytes and doing its math, plus a launch."""
    return max(nbytes / device.bandwidth, flops / device.flops) + device.launch
