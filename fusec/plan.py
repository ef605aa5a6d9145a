"""Plan: the ordered kernels and extern calls of one graph, with their buffers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

import networkx as nx

from fusec.ir import Graph, Kind, Node, finals, inlined, is_constant, row_domain
from fusec.passes.cost import group_bytes, group_flops, op_bytes


class KernelKind(str, Enum):
    """What shape of kernel a group renders to; `fusec.kernels.kinds` maps each to its renderer,
    launch rule and size arguments. Prints and serializes as its value (`"pointwise"`)."""

    POINTWISE = "pointwise"
    REDUCTION = "reduction"
    MATMUL = "matmul"
    COMBO = "combo"
    SCAN = "scan"
    SCATTER = "scatter"
    SORT = "sort"

    __str__ = str.__str__
    __format__ = str.__format__


class LaunchExtra(str, Enum):
    """An argument the launcher passes after a kernel's buffers, in this order, when the kernel
    takes it: a bounds flag it sets on an out-of-range index, the call's random seed, and one
    partial buffer per final reduction plus the ticket counter the last program takes."""

    BAD_INDEX = "bad_index"
    SEED = "seed"
    PARTIALS = "partials"

    __str__ = str.__str__
    __format__ = str.__format__


@dataclass(frozen=True)
class Kernel:
    """One generated kernel: a fusion group, its buffers and its source."""

    id: str
    kind: KernelKind
    members: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    numel: int  # elements (pointwise) or rows (reduction, scan) the grid covers
    bytes: int
    flops: int = 0
    rnumel: int = 1  # elements per row of a reduction or scan kernel
    persistent: bool = True  # a reduction's row fits one block (no loop over it)
    reduce_inner: bool = True  # the reduced dims hold the contiguous one
    parts: tuple[Kernel, ...] = ()  # a combo's pointwise kernels, launched as one
    finals: tuple[str, ...] = ()  # reductions over all rows, finished by the last program
    # A matmul kernel's equivalent through torch's matmul (cuBLAS): its views, its
    # matmuls as extern calls, and its epilogue as a pointwise kernel.
    library: tuple[Kernel | Extern, ...] = ()
    source: str = ""
    fn_name: str = ""
    params: tuple[str, ...] = ()  # the entry function's parameters, as rendered
    extras: tuple[LaunchExtra, ...] = ()  # what the launcher passes after the buffers
    symbols: tuple[str, ...] = ()  # the size-symbol parameters, passed after the extras
    rows_fn: str = ""  # the entry that keeps rows in registers, picked per call ("" when none)
    asserts: bool = False  # checks its indices on the device: launched with device-side asserts on
    split: tuple[int, ...] = ()  # its rows cut as rendered (kernels/launch.py's Split, as a tuple); () when whole
    stream: int = 0
    waits: tuple[str, ...] = ()
    # (output, input): an output stored into the buffer of an input the kernel also reads, whose new
    # value it is (fusec/stores.py): stored through the input's pointer, so the launch passes it once
    into: tuple[tuple[str, str], ...] = ()

    @property
    def buffers(self) -> tuple[str, ...]:
        """The buffers a launch passes pointers to, in order: the inputs, then the outputs not
        stored through an input's pointer."""
        stored = {out for out, _ in self.into}
        return self.inputs + tuple(o for o in self.outputs if o not in stored)


@dataclass(frozen=True)
class Extern:
    """One op run by torch (an extern call); a view runs as a torch alias."""

    id: str
    node: str
    target: str
    bytes: int
    is_view: bool = False
    flops: int = 0  # known for matmuls run by torch; 0 where not modeled
    stream: int = 0
    waits: tuple[str, ...] = ()


Step = Kernel | Extern


@dataclass(frozen=True)
class Plan:
    graph: Graph
    steps: tuple[Step, ...]
    frees: tuple[tuple[str, ...], ...] = field(default=())  # buffers dead after each step

    @property
    def kernels(self) -> list[Kernel]:
        return [s for s in self.steps if isinstance(s, Kernel)]

    def all_kernels(self) -> list[Kernel]:
        """Every kernel the runtime may launch: the plan's, and their library alternatives'."""
        return [k for step in self.kernels for k in (step, *step.library) if isinstance(k, Kernel)]

    @property
    def externs(self) -> list[Extern]:
        return [s for s in self.steps if isinstance(s, Extern)]

    def reads(self, step: Step) -> list[str]:
        if isinstance(step, Kernel):
            return list(step.inputs)
        return self.graph[step.node].operands()


# Rows up to this long stay in registers (one read of the input); longer rows loop.
# 8192 float32 values over 16 warps are 16 a thread: softmax and LayerNorm compile for sm_90
# to 44-54 registers, no spills (16384 took 104-112, near the 128 a 16-warp program may use).
# Reductions over a non-contiguous dim keep fewer: their block is wide across rows.
PERSISTENT_ROW = 8192
PERSISTENT_COLUMN = 64


def _kernel(graph: Graph, group: str, members: list[Node]) -> Kernel:
    names = {m.name for m in members}
    inputs = [op for m in members for op in m.operands() if op not in names and not is_constant(graph[op])]
    outputs = [m.name for m in graph.escaping(members)]
    kernel = Kernel(id=group, kind=KernelKind.POINTWISE, members=tuple(m.name for m in members),
                    inputs=tuple(dict.fromkeys(inputs)), outputs=tuple(outputs),
                    numel=graph[outputs[0]].numel, bytes=group_bytes(graph, members),
                    flops=group_flops(graph, members))
    if any(m.kind is Kind.MATMUL for m in members):
        product = next(m for m in members if m.kind is Kind.MATMUL)
        kernel = replace(kernel, kind=KernelKind.MATMUL, numel=product.numel)
        return replace(kernel, library=_library(graph, kernel, members))
    scan = next((m for m in members if m.kind is Kind.SCAN), None)
    if scan is not None:
        # Rows are the scan's lines along its dim; the kernel walks each in order, carrying its running value.
        length = scan.shape[scan.args[1]]
        return replace(kernel, kind=KernelKind.SCAN, numel=scan.numel // max(length, 1), rnumel=length)
    scatter = next((m for m in members if m.kind is Kind.SCATTER), None)
    if scatter is not None:  # the grid covers the stored elements, not the base
        return replace(kernel, kind=KernelKind.SCATTER, numel=graph[scatter.args[1].name].numel)
    sort = next((m for m in members if m.op == "sort"), None)
    if sort is not None:
        # Rows are the sorted lines of the input, each held whole in registers.
        src, dim = graph[sort.args[0].name], sort.args[1]
        return replace(kernel, kind=KernelKind.SORT, numel=src.numel // max(src.shape[dim], 1),
                       rnumel=src.shape[dim])
    domain = row_domain(graph, members)
    if domain is None:
        return kernel
    shape, dims = domain
    rnumel = math.prod(shape[d] for d in dims)
    # Coalesced reads want the block's fast axis on the contiguous (last non-1) dim.
    last = max((d for d, s in enumerate(shape) if s != 1), default=-1)
    inner = last < 0 or last in dims
    rows = math.prod(s for d, s in enumerate(shape) if d not in dims)
    persistent = rnumel <= (PERSISTENT_ROW if inner else PERSISTENT_COLUMN)
    return replace(kernel, kind=KernelKind.REDUCTION, numel=rows, rnumel=rnumel, persistent=persistent,
                   reduce_inner=inner, finals=tuple(m.name for m in finals(graph, members)))


def _extern(graph: Graph, node: Node) -> Extern:
    return Extern(id=node.name, node=node.name, target=node.target or node.op,
                  bytes=op_bytes(graph, node), is_view=node.kind is Kind.VIEW, flops=group_flops(graph, [node]))


def _library(graph: Graph, kernel: Kernel, members: list[Node]) -> tuple[Kernel | Extern, ...]:
    """The matmul group as torch's matmuls plus one epilogue kernel; () when the epilogue's
    outputs differ in shape (a pointwise kernel iterates over one shape)."""
    products = [m for m in members if m.kind is Kind.MATMUL]
    before = [m for m in members if m.kind is Kind.VIEW and any(nx.has_path(graph.nx, m.name, p.name)
                                                                  for p in products)]
    done = {m.name for m in before + products}
    epilogue = [m for m in members if m.name not in done]
    outputs = [o for o in kernel.outputs if o not in done]
    if len({graph[o].shape for o in outputs}) > 1:
        return ()
    steps: list[Kernel | Extern] = [_extern(graph, m) for m in before + products]
    if epilogue:
        steps.append(_kernel(graph, f"{kernel.id}_epilogue", epilogue))
    return tuple(steps)


def _combo(parts: list[Kernel]) -> Kernel:
    """Independent pointwise kernels as one launch: each program runs one block of one part."""
    return Kernel(id="+".join(p.id for p in parts), kind=KernelKind.COMBO,
                  members=tuple(m for p in parts for m in p.members),
                  inputs=tuple(dict.fromkeys(i for p in parts for i in p.inputs)),
                  outputs=tuple(o for p in parts for o in p.outputs), numel=sum(p.numel for p in parts),
                  bytes=sum(p.bytes for p in parts), flops=sum(p.flops for p in parts), parts=tuple(parts))


def build_plan(graph: Graph) -> Plan:
    """Steps in a topological order of the launch graph; each group or combo is one kernel."""
    groups = graph.groups()
    launch = graph.launch_of()
    vertex = {n.name: (launch[n.group] if n.group else n.name) for n in graph}
    combos = {"+".join(c): c for c in graph.horizontal}
    position = {name: i for i, name in enumerate(graph.nx.nodes)}
    dag = nx.DiGraph()
    for node in graph:
        if vertex[node.name] not in dag:
            dag.add_node(vertex[node.name], first=position[node.name])
    for src, dst in graph.nx.edges:
        if vertex[src] != vertex[dst]:
            dag.add_edge(vertex[src], vertex[dst])
    order = nx.lexicographical_topological_sort(dag, key=lambda v: dag.nodes[v]["first"])
    steps: list[Step] = []
    for v in order:
        if v in combos:
            steps.append(_combo([_kernel(graph, g, groups[g]) for g in combos[v]]))
        elif v in groups:
            steps.append(_kernel(graph, v, groups[v]))
        elif graph[v].kind not in (Kind.INPUT, Kind.OUTPUT) and not inlined(graph, v):
            steps.append(_extern(graph, graph[v]))
    plan = Plan(graph=graph, steps=tuple(steps))
    return replace(plan, frees=_frees(plan))


def _frees(plan: Plan) -> tuple[tuple[str, ...], ...]:
    """After each step, the buffers no later step reads (graph outputs stay alive)."""
    keep = set(plan.graph.output.operands())
    last: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        for name in plan.reads(step):
            last[name] = i
    frees: list[list[str]] = [[] for _ in plan.steps]
    for name, i in last.items():
        if name not in keep:
            frees[i].append(name)
    return tuple(tuple(f) for f in frees)


# Allocations of uninitialised memory: no kernel runs (Inductor's wrapper allocates the same way).
_ALLOCATIONS = frozenset({"aten.empty.memory_format", "aten.empty_strided.default", "aten.empty_permuted.default",
                          "aten.empty_like.default"})


def does_work(plan: Plan, step: Step) -> bool:
    """Kernels and torch calls do work; a view (an alias), a getitem (unpacking a result),
    a graph constant (handed over), an allocation (`empty`) and a host scalar's op (torch on
    the CPU, no launch) do none."""
    if isinstance(step, Kernel):
        return True
    node = plan.graph[step.node]
    return not step.is_view and node.op not in ("getitem", "constant", *_ALLOCATIONS) and not node.host


def step_dag(plan: Plan) -> nx.DiGraph:
    """Steps as a DAG of data dependencies (views, constants and host scalars' ops excluded: they
    launch nothing, and no kernel computes what a host scalar's op reads)."""
    producer: dict[str, str] = {}
    dag = nx.DiGraph()
    for step in plan.steps:
        node = plan.graph[step.node] if isinstance(step, Extern) else None
        if node is not None and (step.is_view or node.op == "constant" or node.host):
            operands = plan.graph[step.node].operands()
            producer[step.node] = producer.get(operands[0], "") if operands else ""
            continue
        dag.add_node(step.id, cost=float(max(step.bytes, 1)))
        for name in plan.reads(step):
            src = producer.get(name)
            if src and src != step.id:
                dag.add_edge(src, step.id)
        for name in (step.outputs if isinstance(step, Kernel) else (step.node,)):
            producer[name] = step.id
    return dag
