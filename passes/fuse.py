"""fuse: vertical fusion into kernel groups: pointwise and view ops, with at most
one iteration space of reductions (row-wise kernels) or matmuls sharing a left
operand (a matmul template with its prologue views and its epilogue).

Merges are proposed along data edges in topological order, validated
(convexity, one iteration shape, the kernel kinds' rules), and applied; every edge that still joins two
different groups, or a group and an extern call, keeps the reason on the edge
(`graph.nx.edges[u, v]["reason"]`).
"""

from __future__ import annotations

import math

import networkx as nx

from fusec.ir import Graph, Kind, Node, finals, inlined, is_constant, reduction_domain, row_domain
from fusec.passes import scan_fusion, sort_fusion
from fusec.passes.reach import ContractedDag, SetReach, bounded_descendants, reaches
from fusec.passes.refusal import Refusal, boundary_refusal
from fusec.passes.rows import Domain, keepdim_shape, keeps_rows, outer_shape, reads_own_row, row_shapes, unit_dims_only
from fusec.passes.symbolic import coincidence

FUSIBLE = (Kind.POINTWISE, Kind.VIEW, Kind.REDUCTION, Kind.MATMUL, Kind.SCAN, Kind.SORT)
# Views that keep a reduction kernel's rows intact (they only add or drop
# size-1 dims or broadcast a per-row value back over the row).
_ROW_VIEWS = frozenset({"reshape", "expand", "broadcast_in_dim", "alias"})


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _domain_text(domain: Domain) -> str:
    shape, dims = domain
    return f"{_shape(shape)} over dims {_shape(dims)[1:-1] or 'all'}"


class _Grouping:
    """Mutable state of one fuse run: group membership and the group DAG."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.position = {name: i for i, name in enumerate(graph.nx.nodes)}
        self.node = {n.name: n for n in graph}  # the graph does not change while fusing
        self.group_of = {n.name: n.name for n in graph if n.kind in FUSIBLE and not is_constant(n)}
        self.members = {name: [name] for name in self.group_of}
        # Each group's reductions and matmuls in member order: what its domain and its
        # template depend on, without a walk over every member at every refusal.
        self.special = {name: [self.node[name]] if self.node[name].kind in (Kind.REDUCTION, Kind.MATMUL) else []
                        for name in self.group_of}
        self.domains: dict[str, Domain | None] = {}
        self.reduced: dict[str, Domain] = {}  # each reduction's own domain
        # Merges so far, and the merge count at which each group last grew: a refusal
        # depends on its two groups only (a cycle through others never goes away), so an
        # edge refused at count c need not be asked again until one of them grows after c.
        self.merges = 0
        self.grown: dict[str, int] = {}
        self.scanning = {n.name for n in graph if n.kind in (Kind.SCAN, Kind.SORT)}  # groups holding a scan or sort
        dag = nx.DiGraph()
        dag.add_nodes_from(self.vertex(n.name) for n in graph)
        for src, dst in graph.nx.edges:
            dag.add_edge(self.vertex(src), self.vertex(dst))
        # Every vertex starts as one node, numbered by the graph's (topological) node order.
        self.groups = ContractedDag(dag, dict(self.position))

    def vertex(self, name: str) -> str:
        return self.group_of.get(name, name)

    def outputs(self, members: set[str]) -> list[Node]:
        return self.graph.escaping([self.node[m] for m in sorted(members, key=self.position.__getitem__)])

    def domain(self, group: str) -> Domain | None:
        # Refusals ask for a growing group's domain at every merge it is offered: keep it.
        if group not in self.domains:
            self.domains[group] = row_domain(self.graph, self.reductions(group))
        return self.domains[group]

    def reductions(self, *groups: str) -> list[Node]:
        return [n for g in groups for n in self.special[g] if n.kind is Kind.REDUCTION]

    def totals(self, reductions: list[Node], domain: Domain | None) -> list[Node]:
        """`finals` of a group with these reductions and this row domain."""
        for node in reductions:
            if node.name not in self.reduced:
                self.reduced[node.name] = reduction_domain(node, self.graph)
        return [n for n in reductions if self.reduced[n.name] != domain] if domain else []

    def refusal(self, gu: str, gv: str, acyclic: bool = False) -> Refusal | None:
        """Why the groups gu -> gv cannot merge, or None when they can (`acyclic`: no path
        of two edges or more joins them, known already)."""
        reason = self._refusal(gu, gv, acyclic)
        if reason is None and self.graph.hints:
            reason = coincidence(self.graph, [self.node[m] for m in self.members[gu] + self.members[gv]])
        return reason

    def _refusal(self, gu: str, gv: str, acyclic: bool) -> Refusal | None:
        through = None if acyclic else self.groups.cycle_witness(gu, gv)
        if through is not None:
            return Refusal("cycle", f"would create a cycle through {self._first_member(through)}")
        if {gu, gv} & self.scanning:
            members = [self.node[m] for m in self.members[gu] + self.members[gv]]
            reason = sort_fusion.sort_refusal(members) or scan_fusion.scan_refusal(self.graph, members, self.position)
            if reason:
                return reason
        mu, mv = self.matmul(gu), self.matmul(gv)
        if mu or mv:
            return self._matmul_refusal(gu, gv, mu, mv)
        du, dv = self.domain(gu), self.domain(gv)
        members = set(self.members[gu]) | set(self.members[gv])
        reductions = self.reductions(gu, gv)
        # The widest of the two groups' domains is the union's (row_domain is a max).
        domain = du if du == dv or dv is None else dv if du is None else row_domain(self.graph, reductions)
        totals = self.totals(reductions, domain)
        if domain and totals:
            reason = final_refusal(self.graph, [self.node[m] for m in members], self.position)
            if reason and du and dv and du != dv:
                return Refusal("reduction-shapes", f"reduction feeds a reduction of another shape: "
                                f"{_domain_text(du)} vs {_domain_text(dv)}")
            if reason:
                return reason
        if domain is None:
            shapes = {o.shape for o in self.outputs(members)}
            if len(shapes) > 1:
                a, b = sorted(shapes, key=lambda s: (len(s), s))[:2]
                return Refusal("shapes", f"shapes differ: {_shape(b)} vs {_shape(a)}")
            return None
        return self._row_refusal(members, domain, bool(totals))

    def matmul(self, group: str) -> Node | None:
        return next((n for n in self.special[group] if n.kind is Kind.MATMUL), None)

    def left_operand(self, node: Node) -> str:
        """The tensor a matmul's left operand reads, through any views."""
        name = node.operands()[0]
        while self.node[name].kind is Kind.VIEW and name in self.group_of:
            name = self.node[name].operands()[0]
        return name

    def _matmul_refusal(self, gu: str, gv: str, mu: Node | None, mv: Node | None) -> Refusal | None:
        """A matmul kernel holds its matmuls (several only if they share the left operand
        and shape), views their operands are read through (index math per tile), and an
        epilogue over the output tile."""
        if mu and mv and (self.left_operand(mu) != self.left_operand(mv) or mu.shape != mv.shape or
                          self.node[mu.operands()[1]].shape != self.node[mv.operands()[1]].shape):
            return Refusal("matmul-operands", f"matmuls {mu.name} and {mv.name} do not share a left operand and shape")
        if self.domain(gu) or self.domain(gv):
            return Refusal("matmul-reduction", "a matmul and a reduction do not share a kernel")
        members = set(self.members[gu]) | set(self.members[gv])
        products = [self.node[m] for m in members if self.node[m].kind is Kind.MATMUL]
        for name in sorted(members, key=self.position.__getitem__):
            node = self.node[name]
            if node.kind is Kind.MATMUL:
                continue
            for mm in products:
                if self.reaches(name, mm.name):
                    # Views are index math and casts convert each loaded tile; anything
                    # else would be recomputed for every tile that reads it.
                    if node.kind is not Kind.VIEW and node.op != "cast":
                        return Refusal("tile-recompute", f"{name} would be recomputed for every tile of {mm.name}")
                elif node.kind is Kind.VIEW and node.op not in ("reshape", "alias") and \
                        self.reaches(mm.name, name):
                    return Refusal("tile-read", f"{name} ({node.op}) would read {mm.name} at another tile")
        for out in self.outputs(members):
            if out.numel != products[0].numel:
                return Refusal("shapes",
                               f"shapes differ: {_shape(out.shape)} vs the product {_shape(products[0].shape)}")
        return None

    def _row_refusal(self, members: set[str], domain: Domain, totals: bool) -> Refusal | None:
        """A reduction kernel works row by row: its outputs are per element or per row
        (or one value, for a group with `totals`), and no view may move values between rows."""
        per_element, per_row = row_shapes(domain)
        ordered = [self.node[m] for m in sorted(members, key=self.position.__getitem__)]
        for out in self.graph.escaping(ordered):
            if out.numel not in (per_element, per_row) and not (totals and out.numel == 1):
                return Refusal("shapes", f"shapes differ: {_shape(out.shape)} is neither an element nor "
                                         f"a row of the reduction over {_domain_text(domain)}")
        allowed = {domain[0], keepdim_shape(domain), outer_shape(domain)}
        row_valued = self._reduced_in(ordered)
        for node in ordered:
            if node.kind is not Kind.VIEW:
                continue
            src = self.node[node.operands()[0]]
            if self._of_constant(node) or src.name not in row_valued:
                # Index math over a constant (arange[None]) or over loaded values (a BN
                # weight's [C] -> [C,1,1]): computed at any index, no row's values to move.
                continue
            if unit_dims_only(node, src):
                continue
            if node.op == "reshape" and node.numel == src.numel == per_element:
                continue  # the kernel indexes elements by their row-major position, which a reshape keeps
            if node.op not in _ROW_VIEWS or node.shape not in allowed or src.shape not in allowed:
                return Refusal("row-move",
                               f"{node.name} ({node.op}) would move values between the rows of a reduction")
        return self._misaligned_read(row_valued, domain)

    @staticmethod
    def _reduced_in(ordered: list[Node]) -> set[str]:
        """The members (in topological order) computed from one of the group's reductions
        (their values exist only for the row the kernel is on)."""
        found: set[str] = set()
        for node in ordered:
            if node.kind is Kind.REDUCTION or any(op in found for op in node.operands()):
                found.add(node.name)
        return found

    def _of_constant(self, node: Node) -> bool:
        while node.kind is Kind.VIEW:
            node = self.node[node.operands()[0]]
        return is_constant(node)

    def _misaligned_read(self, row_valued: set[str], domain: Domain) -> Refusal | None:
        """Why some member would read a value computed from this kernel's reductions
        (`row_valued`) at another row than its own (x + x.sum(1) on a square x broadcasts
        across rows)."""
        for name in row_valued:
            node = self.node[name]
            if node.op == "broadcast_in_dim" and not keeps_rows(node, self.node[node.operands()[0]], domain):
                return Refusal("row-read", f"{name} would put {node.operands()[0]} on another row than its own")
            if node.kind in (Kind.REDUCTION, Kind.VIEW):
                continue
            for op in node.operands():
                if op not in row_valued:
                    continue
                if node.op == "take":
                    own_row = False  # a row lookup reads rows its index picks, not its own
                elif node.op == "gather" and op == node.args[0].name:
                    # It reads its source at the positions of a reduced dim, in its own row.
                    own_row = node.args[1] in domain[1] and all(
                        node.shape[d] == size for d, size in enumerate(domain[0]) if d not in domain[1])
                else:
                    own_row = reads_own_row(self.node[op].shape, node.shape, domain)
                if not own_row:
                    return Refusal("row-read", f"{name} would read {op} at another row than its own")
        return None

    def _first_member(self, vertex: str) -> str:
        return self.members.get(vertex, [vertex])[0]

    def merge(self, gu: str, gv: str) -> None:
        for name in self.members.pop(gu):
            self.group_of[name] = gv
            self.members[gv].append(name)
        self.special[gv] += self.special.pop(gu)
        self.groups.merge(gu, gv)
        if gu in self.scanning:
            self.scanning.add(gv)
        self.domains.pop(gu, None)
        self.domains.pop(gv, None)
        self.merges += 1
        self.grown[gv] = self.merges

    def grown_since(self, count: int, *groups: str) -> bool:
        """Whether one of `groups` has grown since the merge count was `count`."""
        return any(self.grown.get(g, 0) > count for g in groups)

    def reaches(self, src: str, dst: str) -> bool:
        return reaches(self.graph.nx, self.position, src, dst)


_FINAL_OPS = frozenset({"sum", "amax", "amin"})


def final_refusal(graph: Graph, members: list[Node], position: dict[str, int]) -> Refusal | None:
    """Why reductions of another shape than the rows cannot be the group's final reductions
    (`position`: each node's index in the graph's topological order)."""
    domain = row_domain(graph, members)
    _, per_row = row_shapes(domain)
    names = {m.name for m in members}
    for node in finals(graph, members):
        shape, dims = reduction_domain(node, graph)
        if node.op not in _FINAL_OPS or math.prod(shape) != per_row or len(dims) != len(shape) or per_row < 2:
            return Refusal("final-reduction", f"{node.name} is not a sum, max or min over every row")
        # Everything computed from a total needs every row done: only the last program has it.
        later = bounded_descendants(graph.nx, position, node.name, max(position[n] for n in names)) & names
        if any(graph[n].numel != 1 for n in later):
            return Refusal("total-read", f"{node.name} is a total over all rows that per-row work would read")
    return None


def fuse(graph: Graph, fuel: int | None = None) -> Graph:
    """Each group is convex, holds only pointwise/view nodes, and all its outputs
    share one shape; values are unchanged. `fuel` caps the number of merges
    (0: every op is its own kernel)."""
    state = _Grouping(graph)
    refused: dict[tuple[str, str], Refusal] = {}
    asked: dict[tuple[str, str], int] = {}  # the merge count when each edge was last refused
    merges = 0
    for dst in graph:
        if dst.kind not in FUSIBLE:
            continue
        for src in dict.fromkeys(dst.operands()):
            gu, gv = state.vertex(src), state.vertex(dst.name)
            if src not in state.group_of or gu == gv:
                continue
            if fuel is not None and merges >= fuel:
                refused[src, dst.name] = Refusal("fuel", f"out of fusion fuel ({fuel} merges)" if fuel else
                                                 "fusion is off")
                continue
            reason = state.refusal(gu, gv)
            if reason:
                refused[src, dst.name] = reason
                asked[src, dst.name] = state.merges
            else:
                state.merge(gu, gv)
                merges += 1
    _retry_refused(state, refused, asked, None if fuel is None else fuel - merges)
    _merge_siblings(graph, state)
    return _apply(graph, state, refused)


def _retry_refused(state: _Grouping, refused: dict[tuple[str, str], Refusal], asked: dict[tuple[str, str], int],
                   fuel: int | None) -> None:
    """Edges refused once may merge now: a producer whose readers of another shape (a
    pooling window's slices of one padded tensor) have since joined one group no longer
    escapes it. Retried in graph order until a round merges nothing; an edge is asked
    again only once one of its groups has grown since it was last refused (`asked`: the
    merge count then)."""
    merged = True
    while merged:
        merged = False
        for src, dst in list(refused):
            if fuel is not None and fuel <= 0:
                return
            gu, gv = state.vertex(src), state.vertex(dst)
            if gu != gv:
                if not state.grown_since(asked[src, dst], gu, gv):
                    continue
                if state.refusal(gu, gv) is not None:
                    asked[src, dst] = state.merges
                    continue
                state.merge(gu, gv)
                merged = True
                fuel = None if fuel is None else fuel - 1
            del refused[src, dst]


def _merge_siblings(graph: Graph, state: _Grouping) -> None:
    """Independent reductions over rows of the same shape share one kernel (mean and
    variance read the input once; a weight grad and a bias grad launch once), and so do
    matmuls of one shape reading the same left operand (Q/K/V, SwiGLU's gate and up) and
    pointwise branches of one shape reading the same tensor."""
    by_domain: dict[tuple, list[str]] = {}
    for node in graph:
        group = state.group_of.get(node.name)
        if group not in state.members:
            continue
        product = state.matmul(group)
        key = state.domain(group) or (product and ("matmul", state.left_operand(product), product.shape))
        if key and group not in by_domain.setdefault(key, []):
            by_domain[key].append(group)
    _merge_each(state, by_domain.values())
    _merge_each(state, _pointwise_readers(graph, state).values())


def _pointwise_readers(graph: Graph, state: _Grouping) -> dict[tuple, list[str]]:
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


def _merge_each(state: _Grouping, buckets) -> None:
    """Merge the groups of each bucket into as few groups as the refusals allow."""
    for bucket in buckets:
        groups = list(dict.fromkeys(bucket))
        if sum(g in state.members for g in groups) >= _SWEPT_BUCKET:
            _merge_swept(state, groups)
            continue
        while len(groups) > 1:
            first = groups.pop(0)
            if first not in state.members:
                continue
            # Siblings far down a chain from `first` are refused for a cycle: one search
            # finds them all, instead of one search per pair.
            far: set | None = None
            for other in list(groups):
                if other not in state.members:
                    continue
                if far is None:
                    limit = max(state.groups.order[g] for g in groups if g in state.members)
                    far = state.groups.beyond_successors(first, limit)
                if other not in far and state.refusal(other, first) is None:
                    state.merge(other, first)
                    groups.remove(other)
                    far = None


# Buckets this large (hundreds of reductions over rows of one shape) keep their members'
# reachability up to date across merges instead of searching the graph again per merge.
_SWEPT_BUCKET = 8


def _merge_swept(state: _Grouping, groups: list[str]) -> None:
    """_merge_each's merges for one bucket, the cycle test read from bits: a path between
    two members that is not a single edge makes a cycle; where one edge joins them, the
    exact search decides whether another path does too."""
    reach = SetReach(state.groups, [g for g in groups if g in state.members])
    dag = state.groups.dag
    while len(groups) > 1:
        first = groups.pop(0)
        if first not in state.members:
            continue
        for other in list(groups):
            if other not in state.members:
                continue
            if reach.joined(other, first):
                if not (dag.has_edge(other, first) or dag.has_edge(first, other)):
                    continue
                if state.groups.cycle_witness(other, first) is not None:
                    continue
            if state.refusal(other, first, acyclic=True) is None:
                state.merge(other, first)
                reach.merge(other, first)
                groups.remove(other)


def _apply(graph: Graph, state: _Grouping, refused: dict[tuple[str, str], Refusal]) -> Graph:
    """Name the groups k0, k1, ... in topological order and label boundary edges."""
    out = graph.copy()
    names: dict[str, str] = {}
    for node in graph:
        vertex = state.group_of.get(node.name)
        if vertex is None:
            continue
        members = state.members[vertex]
        if all(graph[m].kind in (Kind.VIEW, Kind.MATMUL) for m in members) and \
                sum(graph[m].kind is Kind.MATMUL for m in members) <= 1:
            # Nothing to fuse: views run as torch aliases, a bare matmul as torch's own.
            continue
        if vertex not in names:
            names[vertex] = f"k{len(names)}"
        out.update(node.replace(group=names[vertex]))
    for src, dst in graph.nx.edges:
        a, b = out[src], out[dst]
        data = out.nx.edges[src, dst]
        if (a.group is not None and a.group == b.group) or (inlined(out, src) and b.group is not None):
            data.pop("reason", None)
            continue
        data["reason"] = refused.get((src, dst)) or boundary_refusal(a, b)
    return out
