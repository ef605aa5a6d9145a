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
from collections.abc import Callable, Iterator

import networkx as nx

from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node, row_domain
from fusec.kernels.dtypes import TL_TYPE, compute_dtype
from fusec.kernels.render import (
    Index,
    Renderer,
    Value,
    kernel_name,
    live_lines,
    module_source,
    needs_int64,
    param,
    to,
)
from fusec.plan import Kernel

# The library's combine functions, by kind of reduction.
_LIBRARY = {"sum": "_sum_combine", "max": "_elementwise_max", "min": "_elementwise_min"}

# Elementwise combines for the accumulators of looped rows; NaN wins, as in torch.amax.
_ELEMENTWISE = {
    "sum": "{a} + {b}",
    "prod": "{a} * {b}",
    "max": "tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})",
    "min": "tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})",
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
        self.shape, self.dims = row_domain(graph, [graph[m] for m in kernel.members])
        self.outer = [d for d in range(len(self.shape)) if d not in self.dims]
        self.inner = kernel.reduce_inner
        self.block_shape = "[XBLOCK, RBLOCK]" if self.inner else "[RBLOCK, XBLOCK]"
        self.row_shape = "[XBLOCK, 1]" if self.inner else "[1, XBLOCK]"
        self.scalar_shape = "[1, 1]"
        self.axis = 1 if self.inner else 0
        self.reduced: dict[str, Value] = {}
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
        if node.numel == self.kernel.numel:  # per row, another shape: rows in row-major order
            return self.unravel("xoffs", node.shape)
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
        kind, identity, acc = {
            "sum": lambda: ("sum", "0", dtype), "prod": lambda: ("prod", "1", dtype),
            "amax": lambda: ("max", _lowest(dtype), dtype), "amin": lambda: ("min", _highest(dtype), dtype),
            "any": lambda: ("max", "0", "int32"), "all": lambda: ("min", "1", "int32"),
        }[node.op]()
        convert = (lambda v: to(f"{v} != 0", "int32")) if node.op in ("any", "all") else (lambda v: to(v, acc))
        result = self._fold(src, kind, identity, acc, convert)
        return Value(self.out.let(to(result, dtype) if node.op in ("any", "all") else result), dtype)

    def _var(self, node: Node, src: str, dtype: str) -> Value:
        n = self.kernel.rnumel
        total = self._fold(src, "sum", "0", dtype, lambda v: to(v, dtype))
        mean = self.out.let(f"{total} / {float(max(n, 1))}", "m")
        squares = self._fold(src, "sum", "0", dtype,
                             lambda v: f"(({to(v, dtype)} - {mean}) * ({to(v, dtype)} - {mean}))")
        divisor = float(max(n - node.args[3], 0))
        return Value(self.out.let(f"{squares} / {divisor}"), dtype)

    def _fold(self, src: str, kind: str, identity: str, acc: str, convert: Callable[[str], str]) -> str:
        """The row-wise combine of `convert(src)`: an expression of shape row_shape."""
        if not self.kernel.persistent:
            name = self._accumulator(identity, acc)
        with self.over_row():
            value = self.value(src, self.row_index())
            lanes = self.out.let(f"tl.where(xmask & rmask, tl.broadcast_to({convert(value.expr)}, "
                                 f"{self.block_shape}), {identity})")
            if self.kernel.persistent:
                return self._across(lanes, kind, acc)
            self.out.emit(f"{name} = {_ELEMENTWISE[kind].format(a=name, b=lanes)}")
        return self._across(name, kind, acc)

    def _across(self, lanes: str, kind: str, dtype: str) -> str:
        """Reduce a block along the row axis, keeping the rows' axis."""
        if kind == "prod":
            self.helpers.add("_prod")
            return self.out.let(f"tl.reduce({lanes}, {self.axis}, _prod){self._keep()}", "r")
        return self._library_reduce(lanes, kind, dtype, [self.axis], self._keep())

    def _library_reduce(self, block: str, kind: str, dtype: str, axes: list[int], keep: str = "") -> str:
        """Reduce `block` over `axes` in turn with the library's combine functions, which
        Triton's interpreter runs as one numpy call (its own would run per element)."""
        def reduce(expr: str, combine: str) -> str:
            for axis in axes:
                expr = f"tl.reduce({expr}, {axis}, tl.standard.{combine})"
            return self.out.let(expr + keep, "r")

        result = reduce(block, _LIBRARY[kind])
        if kind == "sum" or dtype not in FLOAT_DTYPES:
            return result
        # tl.maximum may drop NaN (and the interpreter's nanmax does); torch.amax keeps it.
        nans = reduce(f"({block} != {block}).to(tl.int32)", "_sum_combine")
        return self.out.let(f'tl.where({nans} > 0, float("nan"), {result})', "r")

    def _arg(self, node: Node, src: str) -> Value:
        """Index of the first max (min) of each row, NaN counting as the extreme, as torch."""
        dtype = compute_dtype(self.graph[src].dtype)
        extreme = "max" if node.op == "argmax" else "min"
        identity = _lowest(dtype) if extreme == "max" else _highest(dtype)
        looped = not self.kernel.persistent
        if looped:
            self.helpers.add("_" + node.op)
            best_v = self._accumulator(identity, dtype, self.row_shape)
            best_i = self._accumulator(str(self.kernel.rnumel), "int64", self.row_shape)
        with self.over_row():
            value = self.value(src, self.row_index())
            lanes = self.out.let(f"tl.where(xmask & rmask, tl.broadcast_to({value.expr}, {self.block_shape}), "
                                 f"{identity})")
            # Positions within this chunk: the library combine returns these on a GPU and
            # the interpreter returns positions whatever it is given, so both agree.
            pos = self.out.let(f"tl.broadcast_to({self._arange('RBLOCK', reduced=True)}, {self.block_shape})", "x")
            name = self.out.fresh("r")
            combine = f"tl.standard._{node.op}_combine_tie_break_left"
            self.out.emit(f"_, {name} = tl.reduce(({lanes}, {pos}), {self.axis}, {combine})")
            at = self.out.let(f"{name}{self._keep()}.to(tl.int64)", "r")
            if dtype in FLOAT_DTYPES:
                first_nan = self.out.let(f"tl.reduce(tl.where({lanes} != {lanes}, {pos}, RBLOCK), {self.axis}, "
                                         f"tl.standard._elementwise_min){self._keep()}", "r")
                at = self.out.let(f"tl.where({first_nan} < RBLOCK, {first_nan}.to(tl.int64), {at})", "r")
            if not looped:
                return Value(at, "int64")
            chunk = self._across(lanes, extreme, dtype)
            self.out.emit(f"{best_v}, {best_i} = _{node.op}({best_v}, {best_i}, {chunk}, r0 + {at})")
        return Value(best_i, "int64")

    def _accumulator(self, identity: str, dtype: str, shape: str | None = None) -> str:
        name = f"acc{self.accumulators}"
        self.accumulators += 1
        self.out.emit(f"{name} = tl.full({shape or self.block_shape}, {identity}, {TL_TYPE[dtype]})")
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
            if self.graph[name].kind is Kind.REDUCTION and name not in k.finals:
                self.reduced[name] = self.reduce(self.graph[name])
        totals = self._after_finals()
        per_element = [n for n in k.outputs if self._per_element(self.graph[n]) and n not in totals]
        stores = []
        for name in k.outputs:
            if name not in per_element and name not in totals:
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
        if k.finals:
            self._finish([n for n in k.outputs if n in totals])
        fn_name = kernel_name(self.graph, k)
        params = [*self.params(), *(f"p_partial_{f}" for f in k.finals), *(["p_ticket"] if k.finals else []),
                  "numel", "rnumel", "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr"]
        body = live_lines(self.out.scope.lines, [])
        return module_source(fn_name, params, body, k.members, [self]), fn_name

    def _per_element(self, node: Node) -> bool:
        return node.numel != self.kernel.numel

    # totals over all rows ------------------------------------------------------
    def _after_finals(self) -> set[str]:
        """The members computed from a total over all rows (the finals included)."""
        names = set(self.kernel.members)
        later = set(self.kernel.finals)
        for final in self.kernel.finals:
            later |= nx.descendants(self.graph.nx, final) & names
        return later

    def _finish(self, outputs: list[str]) -> None:
        """Each program stores its rows' partial of every final reduction; the last program
        to take a ticket adds the partials in program order (deterministic) and stores the
        totals and what is computed from them. It resets the ticket for the next launch."""
        x_axis = 1 - self.axis
        for name in self.kernel.finals:
            node = self.graph[name]
            src = self.graph[node.operands()[0]]
            kind, identity, dtype = self._final_kind(node)
            value = self.value(src.name, self.index_for(src, self.x_index()))
            lanes = self.out.let(f"tl.where(xmask, tl.broadcast_to({to(value.expr, dtype)}, {self.row_shape}), "
                                 f"{identity})")
            partial = self._library_reduce(lanes, kind, dtype, [x_axis, 0])
            self.out.emit(f"tl.store(p_partial_{name} + tl.program_id(0), {partial})")
        # Every thread's partial store is done before the ticket is taken (barrier), and
        # the ticket's acquire-release makes them visible to the last program.
        self.out.emit("tl.debug_barrier()")
        self.out.emit('ticket = tl.atomic_add(p_ticket, 1, sem="acq_rel")')
        with self.out.block("if ticket == tl.num_programs(0) - 1:"):
            for name in self.kernel.finals:
                self.reduced[name] = self._total(self.graph[name])
            self.out.emit("tl.store(p_ticket, 0)")
            for name in outputs:
                node = self.graph[name]
                idx = Index(("0",) * len(node.shape))
                value = self.value(name, idx)
                self.out.emit(f"tl.store({param(name)} + tl.full([1, 1], 0, tl.int32), "
                              f"tl.broadcast_to({to(value.expr, node.dtype)}, [1, 1]))")

    def _final_kind(self, node: Node) -> tuple[str, str, str]:
        dtype = compute_dtype(node.dtype)
        kind = {"sum": "sum", "amax": "max", "amin": "min"}[node.op]
        identity = {"sum": "0", "max": _lowest(dtype), "min": _highest(dtype)}[kind]
        return kind, identity, dtype

    def _total(self, node: Node) -> Value:
        """The final reduction over every program's partial, read in program order."""
        kind, identity, dtype = self._final_kind(node)
        acc = self._accumulator(identity, dtype, "[XBLOCK]")
        with self.out.block("for p0 in range(0, tl.num_programs(0), XBLOCK):"):
            self.out.emit("parts = p0 + tl.arange(0, XBLOCK)")
            self.out.emit(f"got = tl.load(p_partial_{node.name} + parts, mask=parts < tl.num_programs(0), "
                          f"other={identity}, volatile=True)")
            self.out.emit(f"{acc} = {_ELEMENTWISE[kind].format(a=acc, b='got')}")
        return Value(self._library_reduce(acc, kind, dtype, [0]), dtype)


def render_reduction(graph: Graph, kernel: Kernel) -> tuple[str, str]:
    """Triton source of a reduction group's kernel and the name of its entry function."""
    return ReductionRenderer(graph, kernel).render()
