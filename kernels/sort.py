"""Render a sort kernel: a row's values in order with the positions they came from (sort, topk).

A row is the input's line along the sorted dim (strided when the dim is not the
last), held whole in one block: XBLOCK rows share a program. Each element's place
is found from a key sort (kernels/sort_keys.py: the value's order and its position packed
in one integer; 64-bit values sort twice, by each half), in rows of up to 8192 (longer
ones run through torch). Short rows of 64-bit values are ranked instead, in one pass:
each element's place is the number of elements of its row that come before it (smaller,
or larger when descending; NaN larger than any number; an equal one when it sits
earlier, so equal values keep their order, as eager's stable sort), over every pair of
the row ([XBLOCK, RBLOCK, RBLOCK] in registers). Lane p then takes the element whose place is p,
and its value is read again from the input at that position, so -0.0 and NaN's bits
come out as they went in.
Pointwise work behind the sort is computed at the output lanes, and a sum, max or min
along the sorted dim over the first k lanes (topk's weights normalised by their total,
or a softmax over them).
"""

from __future__ import annotations

import triton

from fusec import sizes
from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node
from fusec.kernels.dtypes import compute_dtype
from fusec.kernels.indexed import Index, Value
from fusec.kernels.launch import Launch
from fusec.kernels.reduction import highest, lowest
from fusec.kernels.render import Renderer, live_lines, needs_int64
from fusec.kernels.signature import Rendered, kernel_name, rendered_module, size_params
from fusec.kernels.sort_keys import keyed, sorted_positions, sorted_wide_positions
from fusec.plan import Kernel
from fusec.sizes import Size

# The longest row a sort kernel ranks (its pairs are RBLOCK * RBLOCK values per row).
MAX_RANKED_ROW = 128
_SUM = "tl.standard._sum_combine"


def sort_node(graph: Graph, kernel: Kernel) -> Node:
    return next(graph[m] for m in kernel.members if graph[m].op == "sort")


def by_key(dtype: str, length: Size) -> bool:
    """Whether a row sorts by keys (else its elements are ranked over all pairs)."""
    return keyed(dtype) or length > MAX_RANKED_ROW


def sorts_by_key(graph: Graph, kernel: Kernel) -> bool:
    src = graph[sort_node(graph, kernel).args[0].name]
    return by_key(src.dtype, sort_extents(graph, kernel)[1])


def sort_extents(graph: Graph, kernel: Kernel) -> tuple[Size, Size]:
    """(rows, row length) of the sorted input."""
    node = sort_node(graph, kernel)
    src, dim = graph[node.args[0].name], node.args[1]
    return sizes.prod(s for d, s in enumerate(src.shape) if d != dim), src.shape[dim]


def sort_launch(rows: int, length: int, interpret: bool, by_key: bool = False) -> Launch:
    """The whole row in one block; XBLOCK rows share a program while their keys (or pairs) fit the budget."""
    rblock = triton.next_power_of_2(max(length, 1))
    if by_key:
        # 512 keys a warp: 8192 int64 keys in 16 warps hold 128 registers a thread on sm_90.
        xblock = min(triton.next_power_of_2(max(rows, 1)), max(1, (1 << (14 if interpret else 11)) // rblock))
        warps = 1 if interpret else max(1, min(16, xblock * rblock // 512))
        return Launch((triton.cdiv(rows, xblock),), {"XBLOCK": xblock, "RBLOCK": rblock}, warps)
    budget = 1 << 16 if interpret else 1 << 14
    xblock = min(triton.next_power_of_2(max(rows, 1)), max(1, budget // (rblock * rblock)))
    warps = 1 if interpret else max(1, min(8, xblock * rblock * rblock // 2048))
    return Launch((triton.cdiv(rows, xblock),), {"XBLOCK": xblock, "RBLOCK": rblock}, warps)


class SortRenderer(Renderer):
    def __init__(self, graph: Graph, kernel: Kernel, interpret: bool = True) -> None:
        super().__init__(graph, kernel, roots={"xoffs": "xmask", "roffs": "rmask"}, interpret=interpret)
        self.sort = sort_node(graph, kernel)
        self.scalar_shape = "[1, 1]"
        self.sorted: dict[str, Value] = {}  # the sort's values and positions at the output lanes

    def index(self, position: str) -> Index:
        """The input's (and each output's) element at `position` along the sorted dim of the
        current rows: the other dims from the row number (row-major)."""
        dim, shape = self.sort.args[1], self.sort.shape
        outer = [d for d in range(len(shape)) if d != dim]
        split = self.unravel("xoffs", tuple(shape[d] for d in outer))
        dims = ["0"] * len(shape)
        for d, expr in zip(outer, split.dims, strict=True):
            dims[d] = expr
        dims[dim] = position
        return Index(tuple(dims))

    def _before(self, x: Value) -> str:
        """[XBLOCK, RBLOCK (i), RBLOCK (j)]: whether element j of the row comes before element i."""
        descending = self.sort.args[2]
        xi, xj = self.out.let(f"{x.expr}[:, :, None]", "s"), self.out.let(f"{x.expr}[:, None, :]", "s")
        ahead = f"({xj} > {xi})" if descending else f"({xj} < {xi})"
        equal = f"({xj} == {xi})"
        if x.dtype in FLOAT_DTYPES:  # NaN is larger than any number and equal to NaN
            ni, nj = self.out.let(f"{xi} != {xi}", "s"), self.out.let(f"{xj} != {xj}", "s")
            ahead = f"({ahead} | ({nj} & ~{ni}))" if descending else f"({ahead} | ({ni} & ~{nj}))"
            equal = f"({equal} | ({ni} & {nj}))"
        earlier = "(tl.arange(0, RBLOCK)[None, None, :] < tl.arange(0, RBLOCK)[None, :, None])"
        counted = "(tl.arange(0, RBLOCK)[None, None, :] < rnumel)"
        return self.out.let(f"({ahead} | ({equal} & {earlier})) & {counted}", "s")

    def _positions(self, x: Value) -> str:
        """[XBLOCK, RBLOCK]: at lane p, the position along the dim of the row's p-th element in order."""
        src = self.graph[self.sort.args[0].name]
        length = src.shape[self.sort.args[1]]
        if by_key(src.dtype, length):
            if self.interpret:
                self.helpers.add("_lane_sort")
            args = (x.expr, src.dtype, length, self.sort.args[2], self.interpret, lambda e: self.out.let(e, "s"))
            if keyed(src.dtype):
                return sorted_positions(*args)
            return sorted_wide_positions(*args, lambda at: self.value(src.name, self.index(at)).expr)
        # tl.reduce with the library's combine, not tl.sum: the interpreter runs that one numpy call.
        place = self.out.let(f"tl.reduce({self._before(x)}.to(tl.int32), 2, {_SUM})", "s")
        lanes = "tl.arange(0, RBLOCK)"
        chosen = self.out.let(f"({place}[:, None, :] == {lanes}[None, :, None]) & ({lanes} < rnumel)[None, None, :]",
                              "s")
        return self.out.let(f"tl.reduce(tl.where({chosen}, {lanes}[None, None, :], 0), 2, {_SUM})", "s")

    def compute(self, node: Node, idx: Index) -> Value:
        if node.name in self.sorted:
            return self.sorted[node.name]
        if node.kind is Kind.REDUCTION and node.name in self.members:
            return self._total(node)
        return super().compute(node, idx)

    def _total(self, node: Node) -> Value:
        """A sum, max or min along the sorted dim over the row's first k lanes, [XBLOCK, 1]."""
        dtype = compute_dtype(node.dtype)
        value = self.to(self.value(node.args[0].name, self.index("roffs")).expr, dtype)
        if node.op == "sum":
            lanes = self.out.let(f"tl.where({self._taken()}, {value}, 0)", "s")
            return Value(self.out.let(f"tl.reduce({lanes}, 1, {_SUM})[:, None]", "s"), dtype)
        # the library's combines run as one numpy call in the interpreter
        extreme, fill = ("max", lowest(dtype)) if node.op == "amax" else ("min", highest(dtype))
        lanes = self.out.let(f"tl.where({self._taken()}, {value}, {fill})", "s")
        found = self.out.let(f"tl.reduce({lanes}, 1, tl.standard._elementwise_{extreme})[:, None]", "s")
        if dtype not in FLOAT_DTYPES:
            return Value(found, dtype)
        # tl.maximum may drop NaN (the interpreter's nanmax does); torch.amax keeps it.
        nans = self.out.let(f"tl.reduce(({lanes} != {lanes}).to(tl.int32), 1, {_SUM})[:, None]", "s")
        return Value(self.out.let(f'tl.where({nans} > 0, float("nan"), {found})', "s"), dtype)

    def _taken(self) -> str:
        return f"xmask & (roffs < {self.sort.args[3]})"

    def _output_index(self, node: Node) -> tuple[Index, str]:
        """Where an output is stored from, and under which mask: a sum once per row, at lane 0."""
        if node.kind is not Kind.REDUCTION:
            return self.index("roffs"), self._taken()
        idx = self.index("0")
        if len(node.shape) < len(self.sort.shape):
            idx = Index(tuple(d for i, d in enumerate(idx.dims) if i != self.sort.args[1]))
        return idx, "xmask & (roffs == 0)"

    def render(self) -> Rendered:
        k, src = self.kernel, self.sort.args[0].name
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        self.out.emit(f"xoffs = {pid} * XBLOCK + tl.arange(0, XBLOCK)[:, None]")
        self.out.emit("xmask = xoffs < numel")
        self.out.bind_root("roffs", "tl.arange(0, RBLOCK)[None, :]", {"roffs"})
        self.out.emit("rmask = roffs < rnumel")
        positions = self._positions(self.value(src, self.index("roffs")))
        # The p-th value, read where it sits: exact for every dtype (-0.0 and NaN included).
        values = self.value(src, self.index(positions))
        for name in k.members:
            if self.graph[name].kind is Kind.SORT:
                self.sorted[name] = values if self.graph[name].op == "sort" else Value(positions, "int32")
        for name in k.outputs:
            node = self.graph[name]
            idx, mask = self._output_index(node)
            self.out.emit(self.store(node, idx, self.value(name, idx), mask, "[XBLOCK, RBLOCK]"))
        symbols = size_params(self.graph, k)
        params = [*self.params(), *symbols, "numel", "rnumel", "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr"]
        body = live_lines(self.out.scope.lines, [])
        return rendered_module(kernel_name(self.graph, k), params, body, [self], self.extras(), symbols)


def render_sort(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """The group's sort kernel, for the interpreter or a GPU."""
    return SortRenderer(graph, kernel, interpret).render()
