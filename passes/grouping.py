"""The state of one fusion run: which op is in which group, the group DAG kept
acyclic as groups merge, and the rules that refuse a merge (convexity, one
iteration shape, the kernel kinds' rules), each with its reason."""

from __future__ import annotations

import math

from fusec import sizes
from fusec.ir import Graph, Kind, Node, domain_width, is_constant, reduction_domain, row_domain
from fusec.passes.reach import ContractedDag, bounded_descendants, reaches
from fusec.passes.refusal import Refusal
from fusec.passes.rows import (
    Domain,
    computed_from_rows,
    element_frames,
    keepdim_shape,
    keeps_rows,
    outer_shape,
    reads_own_row,
    row_shapes,
    unit_dims_only,
)
from fusec.passes.scatter_fusion import walker_refusal
from fusec.passes.symbolic import Sizes, coincidence, sizes_seen

FUSIBLE = (Kind.POINTWISE, Kind.VIEW, Kind.REDUCTION, Kind.MATMUL, Kind.SCAN, Kind.SCATTER, Kind.SORT)
# Views that keep a reduction kernel's rows intact (they only add or drop
# size-1 dims or broadcast a per-row value back over the row).
_ROW_VIEWS = frozenset({"reshape", "expand", "broadcast_in_dim", "alias"})
# The members a group's rules look at by kind, kept per group.
_SPECIAL = (Kind.REDUCTION, Kind.MATMUL, Kind.SCAN, Kind.SCATTER, Kind.SORT)
# Kinds whose kernels walk their members in a rule of their own (scan order, scatter positions, sorted rows).
_WALKERS = (Kind.SCAN, Kind.SCATTER, Kind.SORT)
# The widest row a matmul's epilogue reduces in registers: the whole row is one output tile
# (BLOCK_N = 1024 at most, 16 rows of it: 16K float32 accumulators a program; launch.py).
MATMUL_ROW = 1024
# Arithmetic ops such an epilogue may hold over rows wider than half that: a 16 x 1024 tile leaves
# about 4 registers an element (a forward LayerNorm after a residual, 9 ops, compiles for sm_90
# unspilled; its backward, 15-17, spills 200-500 bytes; over 512-wide rows it does not) and
# per-element outputs (each a live tile: LayerNorm's forward stores 2 and compiles unspilled; its
# backward with 9-10 ops but 3-5 such outputs spilled 64-890 bytes at 1024 wide).
MATMUL_ROW_WORK = 12
MATMUL_ROW_TILES = 2
# The reductions such an epilogue combines across its tile's columns.
MATMUL_ROW_OPS = frozenset({"sum", "amax", "amin", "var"})


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _domain_text(domain: Domain) -> str:
    shape, dims = domain
    return f"{_shape(shape)} over dims {_shape(dims)[1:-1] or 'all'}"


class Grouping:
    """Mutable state of one fuse run: group membership and the group DAG."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.position = {name: i for i, name in enumerate(graph.nx.nodes)}
        self.node = {n.name: n for n in graph}  # the graph does not change while fusing
        self.users = {name: frozenset(graph.nx.successors(name)) for name in self.node}
        self.reads = {name: tuple(dict.fromkeys(node.operands())) for name, node in self.node.items()}
        self.own_row: dict[tuple, bool] = {}  # reads_own_row's answers: a few shapes, asked thousands of times
        self.group_of = {n.name: n.name for n in graph if n.kind in FUSIBLE and not is_constant(n)}
        self.members = {name: [name] for name in self.group_of}
        # Each group's reductions, matmuls and scans in member order: what its domain, its
        # template and its scan rules depend on, without a walk over every member at every refusal.
        self.special = {name: [self.node[name]] if self.node[name].kind in _SPECIAL else [] for name in self.group_of}
        self.domains: dict[str, Domain | None] = {}
        self.reduced: dict[str, Domain] = {}  # each reduction's own domain
        self.seen: dict[str, tuple[Sizes, Refusal | None]] = {}  # a group's sizes, of a dynamic graph
        # Merges so far, and the merge count at which each group last grew: a refusal
        # depends on its two groups only (a cycle through others never goes away), so an
        # edge refused at count c need not be asked again until one of them grows after c.
        self.merges = 0
        self.grown: dict[str, int] = {}
        # Every vertex starts as one node, numbered by the graph's (topological) node order.
        self.groups = ContractedDag(graph.nx.edges, dict(self.position))

    def vertex(self, name: str) -> str:
        return self.group_of.get(name, name)

    def ordered(self, members: set[str]) -> list[Node]:
        return [self.node[m] for m in sorted(members, key=self.position.__getitem__)]

    def outputs(self, members: set[str], ordered: list[Node] | None = None) -> list[Node]:
        """The members something outside them reads, in topological order."""
        return [m for m in ordered or self.ordered(members) if not self.users[m.name] <= members]

    def domain(self, group: str) -> Domain | None:
        # Refusals ask for a growing group's domain at every merge it is offered: keep it.
        if group not in self.domains:
            self.domains[group] = row_domain(self.graph, self.reductions(group))
        return self.domains[group]

    def wider(self, du: Domain | None, dv: Domain | None) -> Domain | None:
        """The domain of two groups' union: the wider of theirs (row_domain is a max)."""
        if du == dv or dv is None:
            return du
        if du is None:
            return dv
        return max(du, dv, key=lambda domain: domain_width(self.graph, domain))

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
            (su, clash_u), (sv, clash_v) = self.sizes(gu), self.sizes(gv)
            reason = clash_u or clash_v or coincidence(su, sv)
        return reason

    def sizes(self, group: str) -> tuple[Sizes, Refusal | None]:
        """A group's sizes (symbolic.sizes_seen), kept: a union's are the two groups' together."""
        if group not in self.seen:
            self.seen[group] = sizes_seen(self.graph, [self.node[m] for m in self.members[group]])
        return self.seen[group]

    def _refusal(self, gu: str, gv: str, acyclic: bool) -> Refusal | None:
        through = None if acyclic else self.groups.cycle_witness(gu, gv)
        if through is not None:
            return Refusal("cycle", f"would create a cycle through {self._first_member(through)}")
        if any(n.kind in _WALKERS for n in self.special[gu] + self.special[gv]):
            members = [self.node[m] for m in self.members[gu] + self.members[gv]]
            reason = walker_refusal(self.graph, members, self.position)
            if reason:
                return reason
        mu, mv = self.matmul(gu), self.matmul(gv)
        if mu or mv:
            return self._matmul_refusal(gu, gv, mu, mv)
        du, dv = self.domain(gu), self.domain(gv)
        members = set(self.members[gu]) | set(self.members[gv])
        reductions = self.reductions(gu, gv)
        domain = self.wider(du, dv)
        totals = self.totals(reductions, domain)
        if domain and totals:
            reason = final_refusal(self.graph, members, domain, totals, self.position)
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
        epilogue over the output tile: per element, or, when each row of the product fits
        one tile, reductions along the rows and what is computed from them."""
        if mu and mv and (self.left_operand(mu) != self.left_operand(mv) or mu.shape != mv.shape or
                          self.node[mu.operands()[1]].shape != self.node[mv.operands()[1]].shape):
            return Refusal("matmul-operands", f"matmuls {mu.name} and {mv.name} do not share a left operand and shape")
        members = set(self.members[gu]) | set(self.members[gv])
        ordered = self.ordered(members)
        outputs = self.outputs(members, ordered)
        products = [node for node in ordered if node.kind is Kind.MATMUL]
        domain = self.wider(self.domain(gu), self.domain(gv))
        row_valued = computed_from_rows(ordered) if domain else set()
        for node in ordered:
            name = node.name
            if node.kind is Kind.MATMUL:
                continue
            for mm in products:
                if self.reaches(name, mm.name):
                    # Views are index math and casts convert each loaded tile; anything
                    # else would be recomputed for every tile that reads it.
                    if node.kind is not Kind.VIEW and node.op != "cast":
                        return Refusal("tile-recompute", f"{name} would be recomputed for every tile of {mm.name}")
                elif node.op == "permute" and name in row_valued:
                    # A reduction kernel reads a permuted row value at the element's own index (its
                    # frame); a tile holds each row's reductions at its own row only.
                    return Refusal("tile-read", f"{name} ({node.op}) would read a row's reduction at another "
                                                f"row of {mm.name}'s tile")
                elif node.kind is Kind.VIEW and node.op not in ("reshape", "alias") and \
                        name not in row_valued and self.reaches(mm.name, name):
                    # (A view of a per-row value is the row rules' to judge: _row_views_refusal.)
                    return Refusal("tile-read", f"{name} ({node.op}) would read {mm.name} at another tile")
                elif node.op in ("gather", "take", "cat") and self.reaches(mm.name, name):
                    # The epilogue holds the product as the tile's accumulator, not at computed positions.
                    return Refusal("tile-read", f"{name} ({node.op}) would read {mm.name} at computed positions")
        if domain is not None:
            reason = self._rows_refusal(gu, gv, products, domain, outputs)
            if reason:
                return reason
        allowed = {products[0].numel} | ({row_shapes(domain)[1]} if domain else set())
        for out in outputs:
            if out.numel not in allowed:
                return Refusal("shapes",
                               f"shapes differ: {_shape(out.shape)} vs the product {_shape(products[0].shape)}")
        # Outputs per element of the product's rows or per row: as a reduction kernel's, checked above.
        return None if domain is None else self._row_views_refusal(ordered, row_valued, domain)

    def _rows_refusal(self, gu: str, gv: str, products: list[Node], domain: Domain,
                      outputs: list[Node]) -> Refusal | None:
        """Why the reductions of `domain` cannot run in the epilogue of the matmul `products`
        (`outputs`: the members read outside the two groups): each must reduce whole rows of the
        one product along its last dim (N), static and at most MATMUL_ROW long, with an op the
        tile's epilogue combines."""
        shape, dims = domain
        if self.totals(self.reductions(gu, gv), domain):
            return Refusal("matmul-reduction", "a matmul and reductions of different shapes do not share a kernel")
        if len(products) != 1:
            return Refusal("matmul-reduction", "a row reduction after several matmuls does not share their kernel")
        product = products[0]
        n, rows = product.shape[-1], sizes.prod(product.shape[:-1])
        if dims != (len(shape) - 1,) or not sizes.equal(shape[-1], n) or not sizes.equal(sizes.prod(shape[:-1]), rows):
            return Refusal("matmul-reduction", f"a reduction over {_domain_text(domain)} is not along the rows "
                                               f"of the product {_shape(product.shape)}")
        if not sizes.is_static(product.symbolic_shape[-1]):
            return Refusal("matmul-rows", f"rows of symbolic length {sizes.text(product.symbolic_shape[-1])} "
                                          f"may not fit one tile of {product.name}")
        if n > MATMUL_ROW:
            return Refusal("matmul-rows", f"rows of {n} are too wide for one tile of {product.name} "
                                          f"(at most {MATMUL_ROW})")
        work = sum(self.node[m].kind is Kind.POINTWISE and self.node[m].op != "cast"
                   for g in (gu, gv) for m in self.members[g])
        if n > MATMUL_ROW // 2 and work > MATMUL_ROW_WORK:
            return Refusal("matmul-rows", f"an epilogue of {work} ops over rows of {n} would not fit in registers "
                                          f"(at most {MATMUL_ROW_WORK} over rows wider than {MATMUL_ROW // 2})")
        tiles = sum(out.numel == product.numel for out in outputs)
        if n > MATMUL_ROW // 2 and tiles > MATMUL_ROW_TILES:
            return Refusal("matmul-rows", f"an epilogue storing {tiles} tiles over rows of {n} would not fit in "
                                          f"registers (at most {MATMUL_ROW_TILES} over rows wider than "
                                          f"{MATMUL_ROW // 2})")
        for node in self.reductions(gu, gv):
            if node.op not in MATMUL_ROW_OPS:
                return Refusal("matmul-reduction", f"{node.name} ({node.op}) is not a sum, max, min or variance")
        return None

    def _row_refusal(self, members: set[str], domain: Domain, totals: bool) -> Refusal | None:
        """A reduction kernel works row by row: its outputs are per element or per row
        (or one value, for a group with `totals`), and no view may move values between rows."""
        per_element, per_row = row_shapes(domain)
        ordered = self.ordered(members)
        for out in self.outputs(members, ordered):
            if out.numel not in (per_element, per_row) and not (totals and out.numel == 1):
                return Refusal("shapes", f"shapes differ: {_shape(out.shape)} is neither an element nor "
                                         f"a row of the reduction over {_domain_text(domain)}")
        return self._row_views_refusal(ordered, computed_from_rows(ordered), domain)

    def _row_views_refusal(self, ordered: list[Node], row_valued: set[str], domain: Domain) -> Refusal | None:
        """Why a view or a read among `ordered` (topological) would move the values computed from
        the rows of `domain` (`row_valued`) to another row."""
        allowed = {domain[0], keepdim_shape(domain), outer_shape(domain)}
        per_element, per_row = row_shapes(domain)
        frames = element_frames(ordered, row_valued, domain, self.node)
        if isinstance(frames, Refusal):
            return frames
        for node in ordered:
            if node.kind is not Kind.VIEW:
                continue
            src = self.node[node.operands()[0]]
            if self._of_constant(node) or src.name not in row_valued:
                # Index math over a constant (arange[None]) or over loaded values (a BN
                # weight's [C] -> [C,1,1]): computed at any index, no row's values to move.
                continue
            if unit_dims_only(node, src) or (node.op == "permute" and node.name in frames):
                continue  # a permuted per-element value is read at each element's own index
            if node.op == "reshape" and node.numel == src.numel in (per_element, per_row):
                continue  # the kernel indexes elements and rows by their row-major position, which a reshape keeps
            if node.op not in _ROW_VIEWS or node.shape not in allowed or src.shape not in allowed:
                # A permute of a per-element value has a frame (passes/rows.py); a per-row one stays in row order.
                held = f": {src.name} holds one value per row" if node.op == "permute" else ""
                return Refusal("row-move",
                               f"{node.name} ({node.op}) would move values between the rows of a reduction{held}")
        return self._misaligned_read(ordered, row_valued, domain)

    def _of_constant(self, node: Node) -> bool:
        while node.kind is Kind.VIEW:
            node = self.node[node.operands()[0]]
        return is_constant(node)

    def _misaligned_read(self, ordered: list[Node], row_valued: set[str], domain: Domain) -> Refusal | None:
        """Why some member (of `ordered`, in topological order) would read a value computed
        from this kernel's reductions (`row_valued`) at another row than its own (x + x.sum(1)
        on a square x broadcasts across rows)."""
        for node in ordered:
            name = node.name
            if name not in row_valued:
                continue
            if node.op == "broadcast_in_dim" and not keeps_rows(node, self.node[node.operands()[0]], domain):
                return Refusal("row-read", f"{name} would put {node.operands()[0]} on another row than its own")
            if node.kind in (Kind.REDUCTION, Kind.VIEW):
                continue
            for op in self.reads[name]:
                if op not in row_valued:
                    continue
                if node.op == "take":
                    own_row = False  # a row lookup reads rows its index picks, not its own
                elif node.op == "gather" and op == node.args[0].name:
                    # It reads its source at the positions of a reduced dim, in its own row.
                    own_row = node.args[1] in domain[1] and all(
                        node.shape[d] == size for d, size in enumerate(domain[0]) if d not in domain[1])
                else:
                    key = (self.node[op].shape, node.shape, domain)
                    if key not in self.own_row:
                        self.own_row[key] = reads_own_row(*key)
                    own_row = self.own_row[key]
                if not own_row:
                    return Refusal("row-read", f"{name} would read {op} at another row than its own")
        return None

    def _first_member(self, vertex: str) -> str:
        return self.members.get(vertex, [vertex])[0]

    def merge(self, gu: str, gv: str) -> None:
        self.domains[gv] = self.wider(self.domain(gu), self.domain(gv))
        del self.domains[gu]
        if self.graph.hints:  # a refusal compared both groups' sizes: the union has no clash
            (su, _), (sv, _) = self.sizes(gu), self.sizes(gv)
            small, large = (su, sv) if len(su) <= len(sv) else (sv, su)
            for hint, exact in small.items():
                large.setdefault(hint, exact)
            self.seen[gv] = (large, None)
            del self.seen[gu]
        for name in self.members.pop(gu):
            self.group_of[name] = gv
            self.members[gv].append(name)
        self.special[gv] += self.special.pop(gu)
        self.groups.merge(gu, gv)
        self.merges += 1
        self.grown[gv] = self.merges

    def grown_since(self, count: int, *groups: str) -> bool:
        """Whether one of `groups` has grown since the merge count was `count`."""
        return any(self.grown.get(g, 0) > count for g in groups)

    def reaches(self, src: str, dst: str) -> bool:
        return reaches(self.graph.nx, self.position, src, dst)


_FINAL_OPS = frozenset({"sum", "amax", "amin"})


def final_refusal(graph: Graph, members: set[str], domain: Domain, totals: list[Node],
                  position: dict[str, int]) -> Refusal | None:
    """Why `totals`, the reductions of another shape than the rows `domain` (`finals` of the
    group `members`), cannot end the group (`position`: each node's index in the graph's
    topological order)."""
    _, per_row = row_shapes(domain)
    last = max(position[n] for n in members)
    for node in totals:
        shape, dims = reduction_domain(node, graph)
        if node.op not in _FINAL_OPS or math.prod(shape) != per_row or len(dims) != len(shape) or per_row < 2:
            return Refusal("final-reduction", f"{node.name} is not a sum, max or min over every row")
        # Everything computed from a total needs every row done: only the last program has it.
        later = bounded_descendants(graph.nx, position, node.name, last) & members
        if any(graph[n].numel != 1 for n in later):
            return Refusal("total-read", f"{node.name} is a total over all rows that per-row work would read")
    return None
