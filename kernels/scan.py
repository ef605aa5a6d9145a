"""Render a scan fusion group: cumsum/cumprod/logcumsumexp along one dim with its pointwise neighbours.

A row is the scan's line along its dim (strided when the dim is not the last).
Each program takes XBLOCK rows and walks them RBLOCK positions at a time: the
chunk is scanned in registers (`tl.cumsum`/`tl.cumprod`) and started from the
running value carried from the chunk before, so a row that fits one block is one
pass and a longer row loops. Members in front of the scan are computed at the
position being scanned (never stored); members behind it read the running value
at that same position and are stored with it.
"""

from __future__ import annotations

import triton

from fusec import sizes
from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node
from fusec.kernels.dtypes import TL_TYPE, compute_dtype
from fusec.kernels.indexed import Index, Value
from fusec.kernels.launch import Launch
from fusec.kernels.render import Renderer, live_lines, needs_int64
from fusec.kernels.signature import Rendered, kernel_name, rendered_module, size_params
from fusec.plan import Kernel
from fusec.sizes import Size

_IDENTITY = {"sum": "0", "prod": "1", "logsumexp": '-float("inf")'}
_COMBINE = {"sum": "{a} + {b}", "prod": "{a} * {b}", "logsumexp": "_logaddexp({a}, {b})"}
# The library's combines, which Triton's interpreter runs as one numpy call (others per element).
_LIBRARY = {"sum": "tl.standard._sum_combine", "prod": "tl.standard._prod_combine"}


def scan_node(graph: Graph, kernel: Kernel) -> Node:
    return next(graph[m] for m in kernel.members if graph[m].kind is Kind.SCAN)


def scan_extents(graph: Graph, kernel: Kernel) -> tuple[Size, Size]:
    """(rows, row length) of the kernel's scan, as expressions over the size symbols."""
    node = scan_node(graph, kernel)
    dim = node.args[1]
    return sizes.prod(s for d, s in enumerate(node.shape) if d != dim), node.shape[dim]


def scan_launch(rows: int, length: int, interpret: bool) -> Launch:
    """The whole row in one block up to 1024 (4096 interpreted); XBLOCK rows share a program."""
    rblock = min(triton.next_power_of_2(max(length, 1)), 1 << 12 if interpret else 1024)
    budget = 1 << 16 if interpret else 4096
    xblock = min(triton.next_power_of_2(max(rows, 1)), max(1, budget // rblock))
    warps = 1 if interpret else max(1, min(8, xblock * rblock // 256))
    return Launch((triton.cdiv(rows, xblock),), {"XBLOCK": xblock, "RBLOCK": rblock}, warps)


class ScanRenderer(Renderer):
    def __init__(self, graph: Graph, kernel: Kernel, interpret: bool = True) -> None:
        super().__init__(graph, kernel, roots={"xoffs": "xmask", "roffs": "rmask"}, interpret=interpret)
        self.scan = scan_node(graph, kernel)
        self.scalar_shape = "[1, 1]"

    def index(self) -> Index:
        """The scan's position for the current rows and chunk: the other dims from the row
        number (row-major), the scanned dim from the chunk's lanes (counted from the end
        for a reverse scan)."""
        _, dim, _, reverse = self.scan.args
        shape = self.scan.shape
        outer = [d for d in range(len(shape)) if d != dim]
        split = self.unravel("xoffs", tuple(shape[d] for d in outer))
        dims = ["0"] * len(shape)
        for d, expr in zip(outer, split.dims, strict=True):
            dims[d] = expr
        dims[dim] = self.out.let("rnumel - 1 - roffs", "x") if reverse else "roffs"
        return Index(tuple(dims))

    def compute(self, node: Node, idx: Index) -> Value:
        if node.name == self.scan.name:
            return self._scanned(node, idx)
        return super().compute(node, idx)

    def _scanned(self, node: Node, idx: Index) -> Value:
        """The running value at `idx`: the carry combined with this chunk's scan; the carry
        then becomes the value at the chunk's last valid lane."""
        src, _, combine, _ = node.args
        dtype = compute_dtype(node.dtype)
        value = self.value(src.name, idx)
        x = value.expr
        if node.dtype in ("float16", "bfloat16") and self.graph[src.name].dtype != node.dtype:
            x = self.to(x, node.dtype)  # `dtype=` converts each element before the scan, as eager
        lanes = self.out.let(f"tl.where(xmask & rmask, tl.broadcast_to({self.to(x, dtype)}, [XBLOCK, RBLOCK]), "
                             f"{_IDENTITY[combine]})")
        if combine not in _LIBRARY:
            self.helpers.add("_logaddexp")
        chunk = self.out.let(f"tl.associative_scan({lanes}, 1, {_LIBRARY.get(combine, '_logaddexp')})", "s")
        scanned = self.out.let(_COMBINE[combine].format(a="carry", b=chunk), "s")
        last = self.out.let(f"tl.where(roffs == tl.minimum(rnumel, r0 + RBLOCK) - 1, {scanned}, "
                            f"{'0.0' if dtype in FLOAT_DTYPES else '0'})")
        self.out.emit(f"carry = tl.reduce({last}, 1, tl.standard._sum_combine)[:, None]")
        return Value(scanned, dtype)

    def render(self) -> Rendered:
        k = self.kernel
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        self.out.emit(f"xoffs = {pid} * XBLOCK + tl.arange(0, XBLOCK)[:, None]")
        self.out.emit("xmask = xoffs < numel")
        dtype = compute_dtype(self.scan.dtype)
        self.out.emit(f"carry = tl.full([XBLOCK, 1], {_IDENTITY[self.scan.args[2]]}, {TL_TYPE[dtype]})")
        with self.out.block("for r0 in range(0, rnumel, RBLOCK):"):
            self.out.bind_root("roffs", "r0 + tl.arange(0, RBLOCK)[None, :]", {"roffs"})
            self.out.emit("rmask = roffs < rnumel")
            idx = self.index()
            # The scan first: its carry moves on once per chunk, whatever reads it.
            self.value(self.scan.name, idx)
            for name in k.outputs:
                node = self.graph[name]
                self.out.emit(self.store(node, idx, self.value(name, idx), "xmask & rmask", "[XBLOCK, RBLOCK]"))
        symbols = size_params(self.graph, k)
        params = [*self.params(), *symbols, "numel", "rnumel", "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr"]
        body = live_lines(self.out.scope.lines, [])
        return rendered_module(kernel_name(self.graph, k), params, body, [self], self.extras(), symbols)


def render_scan(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """The group's scan kernel, for the interpreter or a GPU."""
    return ScanRenderer(graph, kernel, interpret).render()
