"""Sibling merges: groups of one iteration shape that no path joins share a kernel.

Independent reductions over rows of the same shape read their input once (mean
and variance; a weight grad and a bias grad), matmuls of one shape reading the
same left operand share a template (Q/K/V, SwiGLU's gate and up), and pointwise
branches of one shape read the tensor they share once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fusec.ir import Graph, Kind, is_constant
from fusec.passes.grouping import Grouping
from fusec.passes.reach import SetReach

# Buckets this large (hundreds of reductions over rows of one shape) keep their members'
# reachability as bits, updated across merges, instead of searching the graph per member.
_BITS_BUCKET = 8


def merge_siblings(graph: Graph, state: Grouping, fuel: int | None = None) -> None:
    """Merge the groups of each bucket of siblings into as few groups as the refusals
    allow: reductions by row domain, matmuls by left operand and shape, then pointwise
    groups by a tensor they read and their shape; none once the grouping has made
    `fuel` merges."""
    by_domain: dict[tuple, list[str]] = {}
    for node in graph:
        group = state.group_of.get(node.name)
        if group not in state.members:
            continue
        product = state.matmul(group)
        key = state.domain(group) or (product and ("matmul", state.left_operand(product), product.shape))
        if key and group not in by_domain.setdefault(key, []):
            by_domain[key].append(group)
    for bucket in by_domain.values():
        _merge_bucket(state, bucket, fuel)
    for bucket in _pointwise_readers(graph, state).values():
        _merge_bucket(state, bucket, fuel)


def _pointwise_readers(graph: Graph, state: Grouping) -> dict[tuple, list[str]]:
    """Pointwise groups by (a tensor they read from outside, their shape): branches of
    one activation that can share a kernel and read it once."""
    readers: dict[tuple, list[str]] = {}
    for group, names in state.members.items():
        nodes = [graph[n] for n in names]
        if state.domain(group) or state.matmul(group) or all(n.kind is Kind.VIEW for n in nodes):
            continue
        shape = state.outputs(set(names))[0].shape
        for operand in dict.fromkeys(op for n in nodes for op in n.operands()):
            if operand not in names and not is_constant(graph[operand]):
                readers.setdefault((operand, shape), []).append(group)
    return readers


def _merge_bucket(state: Grouping, bucket: Iterable[str], fuel: int | None = None) -> None:
    """Merge each group of the bucket, in order, with every later one that joins it
    without a cycle and that the refusals allow."""
    groups = [g for g in dict.fromkeys(bucket) if g in state.members]
    if len(groups) < 2:
        return
    cycles = _Bits(state, groups) if len(groups) >= _BITS_BUCKET else _Searches(state)
    while len(groups) > 1:
        first = groups.pop(0)
        for other in cycles.partners(first, groups):
            if fuel is not None and state.merges >= fuel:
                return
            if state.refusal(other, first, acyclic=True) is None:
                state.merge(other, first)
                cycles.merged(other, first)
                groups.remove(other)


class _Searches:
    """The cycle test of a small bucket: one search down the graph from the group that
    grows finds every sibling a longer path leads to; a path the other way is searched
    per pair."""

    def __init__(self, state: Grouping) -> None:
        self.state = state

    def partners(self, first: str, groups: list[str]) -> Iterator[str]:
        """The groups (in order) that merging with `first` leaves acyclic, as it grows."""
        dags, far, merges = self.state.groups, set(), -1
        for other in list(groups):
            if merges != self.state.merges:  # first grew: what it reaches did too
                merges = self.state.merges
                far = dags.beyond_successors(first, max(dags.order[g] for g in groups))
            if other not in far and dags.cycle_witness(other, first) is None:
                yield other

    def merged(self, gone: str, kept: str) -> None:
        pass


class _Bits:
    """The cycle test of a large bucket: which members reach which, as bits kept across
    merges. Only the members no path joins to the growing group, and those one edge joins
    it to, are candidates: the first merge freely, the others ask the exact search."""

    def __init__(self, state: Grouping, groups: list[str]) -> None:
        self.dags = state.groups
        self.reach = SetReach(self.dags, groups)

    def partners(self, first: str, groups: list[str]) -> Iterator[str]:
        """The groups (in order) that merging with `first` leaves acyclic, as it grows."""
        reach, dags, at = self.reach, self.dags, self.reach.index[first]
        while True:
            adjacent = 0
            for v in (*dags.successors(first), *dags.predecessors(first)):
                adjacent |= reach.bit(v)
            later = reach.live & ~((2 << at) - 1)
            candidates = reach.unjoined_after(first, at) | (adjacent & later)
            if not candidates:
                return
            other = reach.first_of(candidates)
            at = reach.index[other]
            if not reach.joined(other, first) or dags.cycle_witness(other, first) is None:
                yield other

    def merged(self, gone: str, kept: str) -> None:
        self.reach.merge(gone, kept)
