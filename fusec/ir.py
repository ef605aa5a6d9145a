"""The IR: a networkx DiGraph whose nodes each carry one frozen `Node`.

Edges are data dependencies, producer -> consumer. A node names its tensor
operands inside `args` with `Ref`s, so the edge set is derived from the nodes
and can always be rebuilt. This module imports no torch: passes work on it
with networkx alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import networkx as nx

from fusec import sizes
from fusec.sizes import Size


class Kind(str, Enum):
    INPUT = "input"
    OUTPUT = "output"
    POINTWISE = "pointwise"
    VIEW = "view"
    REDUCTION = "reduction"
    MATMUL = "matmul"
    SCAN = "scan"
    SCATTER = "scatter"
    SORT = "sort"
    OPAQUE = "opaque"  # run by torch: an extern call


@dataclass(frozen=True)
class Ref:
    """A tensor operand: the value produced by node `name`."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


ITEMSIZE = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
    "complex64": 8, "complex128": 16,
}
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
INT_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "int64"})
# A node whose value is a tuple of tensors (an extern op with several
# results, read through `getitem` nodes) has this dtype and shape ().
TUPLE_DTYPE = "tuple"
# An input that is a size (a SymInt of dynamic shapes), not a tensor: its `args` hold
# its expression over the size symbols.
SIZE_DTYPE = "size"

# The primitive op set that generated kernels implement. Frontend lowering
# targets it; kind_of reads it; kernels/ops.py implements every name in it.
POINTWISE_OPS = frozenset({
    "add", "sub", "fma", "mul", "div", "neg", "abs", "exp", "exp2", "log", "log2", "log1p",
    "expm1", "sqrt", "rsqrt", "erf", "tanh", "sigmoid", "sin", "cos", "pow",
    "reciprocal", "maximum", "minimum", "floor", "ceil", "trunc", "sign",
    "relu", "clamp", "where", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isinf",
    "cast", "copy", "full", "fmod", "remainder", "floor_divide", "trunc_divide", "round",
    "bitcast", "bit_and", "bit_or", "bit_xor", "bit_not", "shift_left", "shift_right",
})
# An indirect load: gather(src, dim, index) reads src at positions held in index;
# cat(*tensors, dim) reads the tensor whose range along dim holds the position;
# rand(salt) draws uniform [0, 1) numbers from the call's seed (Philox);
# iota(start, step) is start + step * position of a 1-D tensor (arange), read by nothing;
# take(src, index, wrap) is src[index[*i], *j] (embedding, x[idx]), negative indices
# counted from the end when `wrap`.
INDEXING_OPS = frozenset({"gather", "cat", "rand", "iota", "take"})
# View ops become index math inside a kernel (or a torch view when alone).
VIEW_OPS = frozenset({"reshape", "permute", "expand", "broadcast_in_dim", "slice", "select", "alias"})
# Reductions take (x, dims, keepdim) and var also its correction; dims are
# sorted and non-negative, and () means every dim.
REDUCTION_OPS = frozenset({"sum", "prod", "amax", "amin", "argmax", "argmin", "any", "all", "var"})
# matmul(a, b): [*batch, M, K] @ [*batch, K, N], at most one batch dim.
MATMUL_OPS = frozenset({"matmul"})
# scan(x, dim, combine, reverse): the running sum, product or log-sum-exp ("sum", "prod",
# "logsumexp") of x along dim, from the end of the dim when `reverse` (cumsum, cumprod,
# logcumsumexp and cumsum's gradient).
SCAN_OPS = frozenset({"scan"})
# scatter(base, positions, values, accumulate): base with values[i] stored at (added to, when
# `accumulate`) its element positions[i] (row-major, negative counted from the end): written into
# base's own buffer, which nothing else reads (torch's `put`, the form index_put, index_add,
# index_copy, scatter and scatter_add decompose to).
SCATTER_OPS = frozenset({"scatter"})
# sort(x, dim, descending, k): the first k values of x's rows along dim in order (ascending, or
# descending), equal values in the order they come, NaN larger than any number (sort, topk);
# sort_index(s): the positions in x of sort s's values.
SORT_OPS = frozenset({"sort", "sort_index"})


def kind_of(op: str) -> Kind:
    """A node's kind follows from its op (inputs and the output aside): an invariant `verify` checks."""
    if op in POINTWISE_OPS or op in INDEXING_OPS:
        return Kind.POINTWISE
    if op in REDUCTION_OPS:
        return Kind.REDUCTION
    if op in MATMUL_OPS:
        return Kind.MATMUL
    if op in VIEW_OPS:
        return Kind.VIEW
    if op in SCAN_OPS:
        return Kind.SCAN
    if op in SCATTER_OPS:
        return Kind.SCATTER
    if op in SORT_OPS:
        return Kind.SORT
    return Kind.OPAQUE


@dataclass(frozen=True)
class Node:
    """One op of the dataflow graph.

    `args` is the op's argument list with tensor operands as `Ref`s and
    everything else (scalars, dims, dtypes as strings) inline. `target` names
    the torch callable for nodes run by torch (opaque) and is informative
    elsewhere. `group` is the fusion group the fuse pass put the node in.
    """

    name: str
    op: str
    kind: Kind
    shape: tuple[int, ...]
    dtype: str
    strides: tuple[int, ...] | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    target: str = ""
    group: str | None = None
    # A lowered node's original torch call (args, kwargs), for when it must run
    # through torch after all (a view alone); opaque nodes run `args` as is.
    torch_call: tuple[Any, ...] | None = None
    # (shape, strides) as SymPy expressions over the graph's size symbols when a
    # dim depends on one; `shape` and `strides` then hold the example's values (the
    # hints passes and costs read). `Graph.symbolic()` swaps the expressions in.
    sizes: tuple[tuple[Any, ...], tuple[Any, ...] | None] | None = None
    # A 0-dim CPU tensor of a GPU graph (an optimizer's step count, a CPU lr): torch computes it
    # on the host and kernels take its value as a scalar argument, as eager's GPU kernels do.
    host: bool = False

    @property
    def symbolic_shape(self) -> tuple[Size, ...]:
        """The shape as expressions over the size symbols (the shape itself when static)."""
        return self.sizes[0] if self.sizes is not None else self.shape

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 0)

    def operands(self) -> list[str]:
        """Names of the tensor operands, in argument order, repeats kept."""
        return list(self._operands)

    @functools.cached_property
    def _operands(self) -> tuple[str, ...]:
        # Passes ask for a node's operands many times; a frozen node's never change.
        return tuple(ref.name for ref in iter_refs((self.args, self.kwargs)))

    def rename_operands(self, fn) -> Node:
        """The node with every Ref r in its arguments replaced by fn(r)."""
        call = map_refs(self.torch_call, fn) if self.torch_call is not None else None
        return self.replace(args=map_refs(self.args, fn), kwargs=map_refs(self.kwargs, fn), torch_call=call)

    def replace(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every Ref inside a nested tuple/list/dict argument structure."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from iter_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_refs(item)


def map_refs(value: Any, fn) -> Any:
    """The argument structure with every Ref replaced by fn(ref)."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_refs(item, fn) for item in value)
    if isinstance(value, list):
        return [map_refs(item, fn) for item in value]
    if isinstance(value, dict):
        return {key: map_refs(item, fn) for key, item in value.items()}
    return value


def reduction_domain(node: Node, graph: Graph) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input shape, reduced dims) of a reduction node."""
    shape = graph[node.operands()[0]].shape
    dims = node.args[1] or tuple(range(len(shape)))
    return shape, tuple(dims)


def row_domain(graph: Graph, members: list[Node]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The rows a reduction kernel walks: those of its widest reduction (None: no reduction)."""
    # Ties (equal input size) go to the domain with more rows, then to a fixed order, so
    # every caller picks the same one whatever order it lists the members in.
    # A symbolic graph compares its domains by the example's sizes, as the passes did.
    domains = [reduction_domain(m, graph) for m in members if m.kind is Kind.REDUCTION]
    return max(domains, default=None, key=lambda domain: domain_width(graph, domain))


def domain_width(graph: Graph, domain: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple:
    """What row_domain orders domains by: input size, rows, then shape and dims (a total order)."""
    shape = tuple(sizes.hint(s, graph.hints) for s in domain[0])
    return math.prod(shape), math.prod(s for i, s in enumerate(shape) if i not in domain[1]), shape, domain[1]


def finals(graph: Graph, members: list[Node]) -> list[Node]:
    """Reductions of a group over all of its per-row values (a loss's mean over the batch):
    each program reduces its rows, and the last program to finish reduces those partials."""
    domain = row_domain(graph, members)
    if domain is None:
        return []
    return [m for m in members if m.kind is Kind.REDUCTION and reduction_domain(m, graph) != domain]


def is_constant(node: Node) -> bool:
    """A filled tensor or an arange reads nothing: every kernel that needs it computes it inline."""
    return node.op == "iota" or (node.op == "full" and not node.operands())


def inlined(graph: Graph, name: str) -> bool:
    """A constant every user of which is a kernel: it costs no launch and no memory."""
    return is_constant(graph[name]) and all(graph[u].group is not None for u in graph.users(name))


def contiguous_strides(shape: tuple[Size, ...]) -> tuple[Size, ...]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running = sizes.canonical(running * sizes.at_least_one(size))
    return tuple(reversed(strides))


class Graph:
    """A dataflow graph: `nx.DiGraph` of `Node`s plus the ordered inputs/outputs.

    Passes never mutate a Graph they are given: they call `copy()` and change
    the copy. Node order (insertion order) is a topological order.
    """

    def __init__(self, nodes: Iterable[Node] = (), name: str = "graph") -> None:
        self.name = name
        self.nx = nx.DiGraph()
        # Groups launched together as one combo kernel (horizontal fusion), by group id.
        self.horizontal: tuple[tuple[str, ...], ...] = ()
        # Size symbol -> its value in the example the graph was captured with (dynamic shapes).
        self.hints: dict[str, int] = {}
        for node in nodes:
            self.add(node)

    # construction -----------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self.nx:
            raise ValueError(f"duplicate node name {node.name!r}")
        positions: dict[str, tuple[int, ...]] = {}  # operand -> the argument positions it is read at
        for position, operand in enumerate(node.operands()):
            if operand not in self.nx:
                raise ValueError(f"{node.name} reads {operand!r}, which is not defined before it")
            positions[operand] = (*positions.get(operand, ()), position)
        self.nx.add_node(node.name, node=node)
        self.nx.add_edges_from((operand, node.name, {"positions": at}) for operand, at in positions.items())
        return node

    def copy(self) -> Graph:
        new = Graph(name=self.name)
        new.nx = self.nx.copy()
        new.horizontal = self.horizontal
        new.hints = self.hints
        return new

    def with_hints(self, hints: dict[str, int]) -> Graph:
        """The graph with its symbolic sizes' hints taken from `hints` (symbol -> value)."""
        new = self.copy()
        new.hints = dict(hints)
        for node in self:
            if node.sizes is not None:
                shape, strides = node.sizes
                new.update(node.replace(shape=tuple(sizes.hint(s, hints) for s in shape),
                                        strides=None if strides is None else
                                        tuple(sizes.hint(s, hints) for s in strides)))
        return new

    def symbolic(self) -> Graph:
        """The graph with every node's shape and strides as expressions over the size
        symbols (what kernels and the launcher are generated from)."""
        new = self.copy()
        for node in self:
            if node.sizes is not None:
                new.update(node.replace(shape=node.sizes[0], strides=node.sizes[1]))
        return new

    def update(self, node: Node) -> None:
        """Replace the node of the same name (its operands must not change)."""
        self.nx.nodes[node.name]["node"] = node

    def remove(self, name: str) -> None:
        self.nx.remove_node(name)

    # queries ----------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        # networkx's own node dict: passes index a graph hundreds of thousands of times,
        # and `nx.nodes[name]` adds a call to each.
        return self.nx._node[name]["node"]

    def __contains__(self, name: str) -> bool:
        return name in self.nx

    def __iter__(self) -> Iterator[Node]:
        for _, node in self.nx.nodes(data="node"):
            yield node

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def users(self, name: str) -> list[str]:
        return list(self.nx.successors(name))

    def producers(self, name: str) -> list[str]:
        return list(self.nx.predecessors(name))

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self if n.kind is Kind.INPUT]

    @property
    def output(self) -> Node:
        outs = [n for n in self if n.kind is Kind.OUTPUT]
        if len(outs) != 1:
            raise ValueError(f"graph {self.name} has {len(outs)} output nodes, expected 1")
        return outs[0]

    def op_nodes(self) -> list[Node]:
        """Nodes that do work: everything but inputs, graph constants and the output."""
        return [n for n in self if n.kind not in (Kind.INPUT, Kind.OUTPUT) and n.op != "constant"]

    def launch_of(self) -> dict[str, str]:
        """Group id -> the id of the launch it is part of (its combo's, or its own)."""
        launch = {g: g for g in self.groups()}
        for combo in self.horizontal:
            for g in combo:
                launch[g] = "+".join(combo)
        return launch

    def escaping(self, members: Iterable[Node]) -> list[Node]:
        """The members something outside them reads: a group's outputs, in member order."""
        names = {m.name for m in members}
        return [m for m in members if any(u not in names for u in self.users(m.name))]

    def groups(self) -> dict[str, list[Node]]:
        """Fusion groups in topological order of their first member."""
        result: dict[str, list[Node]] = {}
        for node in self:
            if node.group is not None:
                result.setdefault(node.group, []).append(node)
        return result

    def format(self) -> str:
        """A readable listing, one node a line (used by FUSEC_DUMP and reports)."""
        lines = [f"graph {self.name}"]
        for n in self:
            group = f"  [{n.group}]" if n.group else ""
            args = ", ".join(repr(a) for a in n.args)
            shape = "x".join(map(sizes.text, n.sizes[0] if n.sizes else n.shape)) or "scalar"
            lines.append(f"  {n.name}: {n.kind.value} {n.op}({args}) -> {n.dtype}[{shape}]{group}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        lines = [f'digraph "{self.name}" {{', "  node [shape=box, fontname=monospace];"]
        for n in self:
            label = f"{n.name}\\n{n.op} {n.dtype}{list(n.shape)}"
            group = f"\\n{n.group}" if n.group else ""
            lines.append(f'  "{n.name}" [label="{label}{group}"];')
        for src, dst in self.nx.edges:
            lines.append(f'  "{src}" -> "{dst}";')
        lines.append("}")
        return "\n".join(lines)
