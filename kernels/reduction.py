"""Render a reduction fusion group: rows of XBLOCK, each reduced over RBLOCK at a time.

Members are per-element (the shape being reduced), per-row (the reduced
shape), or broadcast operands. A row that fits one block stays in registers
(persistent: the input is read once, and softmax reads and writes each element
once). A longer row loops: each reduction gets its own pass over the row,
after the reductions it needs, so a max is known before exp(x - max) is summed
and a mean before the squared deviations (two-pass variance).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node, reduction_domain
from fusec.kernels.dtypes import TL_TYPE, compute_dtype
from fusec.kernels.render import (
    PRELUDE,
    Index,
    Renderer,
    Value,
    kernel_name,
    live_lines,
    module_source,
    needs_int64,
    to,
)
from fusec.plan import Kernel

COMBINE = {
    "_sum": "def _sum(a, b):\n    return a + b",
    "_prod": "def _prod(a, b):\n    return a * b",
    # NaN wins, as in torch.amax/amin.
    "_max": "def _max(a, b):\n    return tl.where((a > b) | (a != a), a, b)",
    "_min": "def _min(a, b):\n    return tl.where((a < b) | (a != a), a, b)",
    # NaN counts as the largest (argmax) or smallest (argmin); ties take the first index.
    "_argmax": ("def _argmax(v1, i1, v2, i2):\n"
                "    first = (v1 > v2) | ((v1 == v2) & (i1 < i2)) | ((v1 != v1) & ((v2 == v2) | (i1 < i2)))\n"
                "    return tl.where(first, v1, v2), tl.where(first, i1, i2)"),
    "_argmin": ("def _argmin(v1, i1, v2, i2):\n"
                "    first = (v1 < v2) | ((v1 == v2) & (i1 < i2)) | ((v1 != v1) & ((v2 == v2) | (i1 < i2)))\n"
                "    return tl.where(first, v1, v2), tl.where(first, i1, i2)"),
}

_INT_MIN = {"int8": -(2**7), "int16": -(2**15), "int32": -(2**31), "int64": -(2**63), "uint8": 0}
_INT_MAX = {"int8": 2**7 - 1, "int16": 2**15 - 1, "int32": 2**31 - 1, "int64": 2**63 - 1, "uint8": 255}


def _lowest(dtype: str) -> str:
    return '-float("inf")' if dtype in FLOAT_DTYPES else str(_INT_MIN[dtype])


def _highest(dtype: str) -> str:
    return 'float("inf")' if dtype in FLOAT_DTYPES else str(_INT_MAX[dtype])


class ReductionRenderer(Renderer):
    def __init__(self, graph: Graph, kernel: Kernel) -> None:
        super().__init__(graph, kernel, roots={"xoffs": "xmask", "roffs": "rmask"})
        first = next(graph[m] for m in kernel.members if graph[m].kind is Kind.REDUCTION)
        self.shape, self.dims = reduction_domain(first, graph)
        self.outer = [d for d in range(len(self.shape)) if d not in self.dims]
        self.inner = kernel.reduce_inner
        self.block_shape = "[XBLOCK, RBLOCK]" if self.inner else "[RBLOCK, XBLOCK]"
        self.row_shape = "[XBLOCK, 1]" if self.inner else "[1, XBLOCK]"
        self.axis = 1 if self.inner else 0
        self.reduced: dict[str, Value] = {}
        self.combines: set[str] = set()
        self.accumulators = 0

    # the two iteration spaces ------------------------------------------------
    def x_index(self) -> Index:
        """Index into the reduced input of the current rows, the reduced dims at 0."""
        split = self.unravel("xoffs", tuple(self.shape[d] for d in self.outer))
        dims = ["0"] * len(self.shape)
        for d, expr in zip(self.outer, split.dims):
            dims[d] = expr
        return Index(tuple(dims))

    def row_index(self) -> Index:
        """Index into the reduced input of the current rows at the current row offsets."""
        split = self.unravel("roffs", tuple(self.shape[d] for d in self.dims))
        dims = list(self.x_index().dims)
        for d, expr in zip(self.dims, split.dims):
            dims[d] = expr
        return Index(tuple(dims), None)

    def index_for(self, node: Node, idx: Index) -> Index:
        """`idx` (over the reduced input's shape) re-expressed over `node`'s shape."""
        if node.shape == self.shape:
            return idx
        keep = tuple(1 if d in self.dims else s for d, s in enumerate(self.shape))
        if node.shape == keep:
            return self.broadcast(idx, keep, self.shape)
        if node.shape == tuple(self.shape[d] for d in self.outer):
            return Index(tuple(idx.dims[d] for d in self.outer))
        return self.unravel(self.linearize(idx, self.shape), node.shape)

    @contextlib.contextmanager
    def over_row(self) -> Iterator[None]:
        """Code inside sees `roffs`: the whole row (persistent) or one chunk of it (loop)."""
        if self.kernel.persistent:
            yield
            return
        with self.out.block("for r0 in range(0, rnumel, RBLOCK):"):
            self.out.bind_root("roffs", f"r0 + {self._arange('RBLOCK', reduced=True)}", {"roffs"})
            self.out.emit("rmask = roffs < rnumel")
            yield

    def _arange(self, size: str, reduced: bool) -> str:
        along_rows = reduced == self.inner
        return f"tl.arange(0, {size})" + ("[None, :]" if along_rows else "[:, None]")

    # reductions --------------------------------------------------------------
    def compute(self, node: Node, idx: Index) -> Value:
        if node.kind is Kind.REDUCTION and node.name in self.members:
            return self.reduced[node.name]
        return super().compute(node, idx)

    def reduce(self, node: Node) -> Value:
        src = node.operands()[0]
        dtype = compute_dtype(node.dtype)
        if node.op == "var":
            return self._var(node, src, dtype)
        if node.op in ("argmax", "argmin"):
            return self._arg(node, src)
        combine, identity, acc = {
            "sum": lambda: ("_sum", "0", dtype), "prod": lambda: ("_prod", "1", dtype),
            "amax": lambda: ("_max", _lowest(dtype), dtype), "amin": lambda: ("_min", _highest(dtype), dtype),
            "any": lambda: ("_max", "0", "int32"), "all": lambda: ("_min", "1", "int32"),
        }[node.op]()
        convert = (lambda v: to(f"{v} != 0", "int32")) if node.op in ("any", "all") else (lambda v: to(v, acc))
        result = self._fold(src, combine, identity, acc, convert)
        return Value(self.out.let(to(result, dtype) if node.op in ("any", "all") else result), dtype)

    def _var(self, node: Node, src: str, dtype: str) -> Value:
        n = self.kernel.rnumel
        total = self._fold(src, "_sum", "0", dtype, lambda v: to(v, dtype))
        mean = self.out.let(f"{total} / {float(max(n, 1))}", "m")
        squares = self._fold(src, "_sum", "0", dtype, lambda v: f"(({to(v, dtype)} - {mean}) * ({to(v, dtype)} - {mean}))")
        divisor = float(max(n - node.args[3], 0))
        return Value(self.out.let(f"{squares} / {divisor}"), dtype)

    def _fold(self, src: str, combine: str, identity: str, acc: str, convert: Callable[[str], str]) -> str:
        """The row-wise combine of `convert(src)`: an expression of shape row_shape."""
        self.combines.add(combine)
        if not self.kernel.persistent:
            name = self._accumulator(identity, acc)
        with self.over_row():
            value = self.value(src, self.row_index())
            lanes = self.out.let(f"tl.where(xmask & rmask, tl.broadcast_to({convert(value.expr)}, "
                                 f"{self.block_shape}), {identity})")
            if self.kernel.persistent:
                return self.out.let(f"tl.reduce({lanes}, {self.axis}, {combine}){self._keep()}", "r")
            self.out.emit(f"{name} = {combine}({name}, {lanes})")
        return self.out.let(f"tl.reduce({name}, {self.axis}, {combine}){self._keep()}", "r")

    def _arg(self, node: Node, src: str) -> Value:
        combine = "_" + node.op
        self.combines.add(combine)
        dtype = compute_dtype(self.graph[src].dtype)
        identity = _lowest(dtype) if node.op == "argmax" else _highest(dtype)
        if not self.kernel.persistent:
            vals = self._accumulator(identity, dtype)
            idxs = self._accumulator(str(self.kernel.rnumel), "int64")
        with self.over_row():
            value = self.value(src, self.row_index())
            lanes = self.out.let(f"tl.where(xmask & rmask, tl.broadcast_to({value.expr}, {self.block_shape}), "
                                 f"{identity})")
            where = self.out.let(f"tl.broadcast_to(roffs, {self.block_shape}).to(tl.int64)", "x")
            if self.kernel.persistent:
                pair = (lanes, where)
            else:
                self.out.emit(f"{vals}, {idxs} = {combine}({vals}, {idxs}, {lanes}, {where})")
        if not self.kernel.persistent:
            pair = (vals, idxs)
        name = f"r{self.out.count}"
        self.out.count += 1
        self.out.emit(f"_, {name} = tl.reduce(({pair[0]}, {pair[1]}), {self.axis}, {combine})")
        self.out.deps[name] = frozenset({"xoffs"})
        return Value(self.out.let(f"{name}{self._keep()}", "r"), "int64")

    def _accumulator(self, identity: str, dtype: str) -> str:
        name = f"acc{self.accumulators}"
        self.accumulators += 1
        self.out.emit(f"{name} = tl.full({self.block_shape}, {identity}, {TL_TYPE[dtype]})")
        return name

    def _keep(self) -> str:
        return "[:, None]" if self.inner else "[None, :]"

    # the kernel ----------------------------------------------------------------
    def render(self) -> tuple[str, str]:
        k = self.kernel
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        self.out.emit(f"xoffs = {pid} * XBLOCK + {self._arange('XBLOCK', reduced=False)}")
        self.out.emit("xmask = xoffs < numel")
        if k.persistent:
            self.out.emit(f"roffs = {self._arange('RBLOCK', reduced=True)}")
            self.out.emit("rmask = roffs < rnumel")
        for name in k.members:
            if self.graph[name].kind is Kind.REDUCTION:
                self.reduced[name] = self.reduce(self.graph[name])
        per_element = [n for n in k.outputs if self._per_element(self.graph[n])]
        stores = []
        for name in k.outputs:
            if name not in per_element:
                node = self.graph[name]
                idx = self.index_for(node, self.x_index())
                stores.append(self.store(node, idx, self.value(name, idx), "xmask", self.row_shape))
        for line in stores:
            self.out.emit(line)
        if per_element:
            with self.over_row():
                for name in per_element:
                    node = self.graph[name]
                    idx = self.index_for(node, self.row_index())
                    self.out.emit(self.store(node, idx, self.value(name, idx), "xmask & rmask", self.block_shape))
        fn_name = kernel_name(self.graph, k)
        params = [*self.params(), "numel", "rnumel", "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr"]
        helpers = [COMBINE[c] for c in sorted(self.combines)] + [PRELUDE[h] for h in sorted(self.prelude)]
        body = live_lines(self.out.scope.lines, [])
        return module_source(fn_name, params, body, k.members, helpers), fn_name

    def _per_element(self, node: Node) -> bool:
        return node.numel != self.kernel.numel


def render_reduction(graph: Graph, kernel: Kernel) -> tuple[str, str]:
    """Triton source of a reduction group's kernel and the name of its entry function."""
    return ReductionRenderer(graph, kernel).render()
