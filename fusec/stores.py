"""Stores into a graph's inputs: the new values of the inputs a graph mutates.

An optimizer step updates parameters and their states in place. AOTAutograd
keeps these mutations in the graph as `copy_(input, new_value)` at its end;
lowering records each as a store on the output node (`stores` in its kwargs:
pairs of the new value's Ref and the input's name). The launcher then has the
kernel that computes a new value write it straight into the input's buffer
where that is safe (`in_place`), and copies the value in after the last step
where it is not — the order AOTAutograd's `copy_` gives, always correct.
"""

from __future__ import annotations

import networkx as nx
import torch
import torch.fx

from fusec.ir import INDEXING_OPS, Graph, Kind, iter_refs
from fusec.plan import Kernel, KernelKind, Plan

STORES = "stores"  # the output node's kwarg: ((Ref(new value), input name), ...)


def stores_into_input(node: torch.fx.Node) -> bool:
    """AOTAutograd's `copy_(input, new_value)` at the end of a graph that mutates an input
    (what nothing else reads): a store, which the launcher writes in place."""
    if node.op != "call_function" or node.target is not torch.ops.aten.copy_.default or node.users or node.kwargs:
        return False
    dst, src = node.args[:2]
    return (isinstance(dst, torch.fx.Node) and dst.op == "placeholder" and isinstance(src, torch.fx.Node)
            and isinstance(src.meta.get("val"), torch.Tensor))


def stores(graph: Graph) -> tuple[tuple[str, str], ...]:
    """(new value, input it is stored into) for every input the graph mutates."""
    pairs = dict(graph.output.kwargs).get(STORES, ())
    return tuple((ref.name, dst) for ref, dst in pairs)


def in_place(plan: Plan) -> dict[str, str]:
    """{new value: input}: the stores its kernel may write straight into the input's buffer.

    Invariant: an input's buffer is written only after every step that reads its old value has
    run, and a kernel that reads the old value itself reads each element in the program that
    writes it.
    """
    graph = plan.graph
    returned = {ref.name for ref in iter_refs(graph.output.args)}
    producer = {o: k for k in plan.kernels for o in k.outputs}
    one_stream = all(s.stream == 0 for s in plan.steps)
    claimed: set[str] = set()
    direct = {}
    for src, dst in stores(graph):
        kernel = producer.get(src)
        if src in claimed or src in returned or kernel is None or not _same_layout(graph, src, dst):
            continue
        # On one stream a step runs after every step before it; across streams only after
        # the steps it depends on (waits follow the graph's edges).
        before = _members_before(plan, kernel) if one_stream else nx.ancestors(graph.nx, src)
        if _safe(graph, kernel, src, dst, before):
            direct[src] = dst
            claimed.add(src)
    return direct


def _same_layout(graph: Graph, src: str, dst: str) -> bool:
    a, b = graph[src], graph[dst]
    return (a.shape, a.strides, a.dtype) == (b.shape, b.strides, b.dtype)


def _part_of(kernel: Kernel, name: str) -> Kernel:
    return next((p for p in kernel.parts if name in p.members), kernel)


def _members_before(plan: Plan, kernel: Kernel) -> set[str]:
    """The nodes the steps before `kernel` compute (kernel members, extern nodes)."""
    done: set[str] = set()
    for step in plan.steps:
        if step is kernel:
            return done
        done.update(step.members if isinstance(step, Kernel) else (step.node,))
    return done


def _safe(graph: Graph, kernel: Kernel, src: str, dst: str, before: set[str]) -> bool:
    """Nothing reads `dst`'s old value after the kernel, and the kernel reads it element for element."""
    if kernel.kind is KernelKind.SCATTER:
        # A scatter stores into its base (`dst` itself) and reads none of it: nothing else may.
        readers = [r for r in _readers(graph, dst) if r != src]
        return graph[src].args[0].name == dst and all(r in before and r not in kernel.members for r in readers)
    if kernel.kind not in (KernelKind.POINTWISE, KernelKind.COMBO) or graph[dst].numel == 0:
        return False
    part = _part_of(kernel, src)
    # the elements the part iterates over: its first output's (an expression in a dynamic graph,
    # where `part.numel` holds the example's count)
    space = graph[part.outputs[0]].numel
    if space != graph[dst].numel:
        return False
    downstream = nx.descendants(graph.nx, dst)
    for member in part.members:
        node = graph[member]
        # a value computed from dst at another element's index (a view, a gather) would read an
        # element some other program may already have written; an alias reads the same element
        moves = node.kind is Kind.VIEW and node.op != "alias"
        if member in downstream and (moves or node.op in INDEXING_OPS or node.numel != space):
            return False
    others = set(kernel.members) - set(part.members)
    return all(reader in part.members or (reader in before and reader not in others)
               for reader in _readers(graph, dst))


def _readers(graph: Graph, name: str) -> list[str]:
    """The nodes that read `name`'s memory: its users, and through views their users."""
    out = []
    for user in graph.users(name):
        node = graph[user]
        out.append(user)
        if node.kind is Kind.VIEW:
            out += _readers(graph, user)
    return out
