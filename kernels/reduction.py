"""Render a reduction fusion group: rows of XBLOCK, each reduced over RBLOCK at a time.

Members are per-element (the shape being reduced), per-row (the reduced
shape), or broadcast operands. A row that fits one block stays in registers
(persistent: the input is read once, and softmax reads and writes each element
once). A longer row loops, in as few passes as the reductions' dependencies
allow: reductions that do not read each other share a pass, softmax's sum of
exp(x - max) is kept online (rescaled as the running max grows) in the max's
pass, and variance is Welford's; per-element outputs take one more pass. Few long
rows are split across programs (reduction_split.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator

import networkx as nx

from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node, row_domain
from fusec.kernels.dtypes import TL_TYPE, compute_dtype
from fusec.kernels.hints import last_loops
from fusec.kernels.launch import Split
from fusec.kernels.reduction_index import RowIndex, kernel_frames
from fusec.kernels.reduction_split import SPLIT_CONSTANTS, SPLIT_PARAM, SplitRows, safe_shift
from fusec.kernels.render import Index, Renderer, Value, live_lines, needs_int64, row_count
from fusec.kernels.signature import Rendered, kernel_name, param, rendered_module, size_params
from fusec.plan import Kernel
from fusec.sizes import Size

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


# A reduction's code in three steps, run by `_pass`: what goes before the loop over the
# row (accumulators), inside it (the update with one chunk), and after it (the
# combine across lanes, returned). A whole row in registers has no loop, same steps.
Steps = Generator[None, None, Value]


def lowest(dtype: str) -> str:
    return '-float("inf")' if dtype in FLOAT_DTYPES else str(_INT_MIN[dtype])


def highest(dtype: str) -> str:
    return 'float("inf")' if dtype in FLOAT_DTYPES else str(_INT_MAX[dtype])


class ReductionRenderer(RowIndex, SplitRows, Renderer):
    def __init__(self, graph: Graph, kernel: Kernel, interpret: bool = True, split: Split | None = None) -> None:
        super().__init__(graph, kernel, roots={"xoffs": "xmask", "roffs": "rmask"}, interpret=interpret)
        self.shape, self.dims = row_domain(graph, [graph[m] for m in kernel.members])
        self.frames = kernel_frames(graph, kernel, (self.shape, self.dims))
        self.outer = [d for d in range(len(self.shape)) if d not in self.dims]
        self.inner = kernel.reduce_inner
        self.block_shape = "[XBLOCK, RBLOCK]" if self.inner else "[RBLOCK, XBLOCK]"
        self.row_shape = "[XBLOCK, 1]" if self.inner else "[1, XBLOCK]"
        self.scalar_shape = "[1, 1]"
        self.axis, self.fast_root = (1, "roffs") if self.inner else (0, None)  # see Renderer.fast_root
        self.reduced: dict[str, Value] = {}
        self.accumulators = 0
        self.online: dict[str, str] = {}  # sum of exp(x - max) -> the max, computed in one pass
        self.lane_max: dict[str, str] = {}  # such a max -> the running max per lane its sum keeps
        self.split = split  # the chunks a row is cut into, where its shape asks for them
        self.stage = 0

    @contextlib.contextmanager
    def over_row(self) -> Iterator[None]:
        """Code inside sees `roffs`: the whole row (persistent) or one chunk of it (loop)."""
        if self.kernel.persistent:
            yield
            return
        self.loop = 0 if self.loop is None else self.loop + 1  # numbered for the eviction hints
        span = "rstart, rstart + rlen" if self.stage else "0, rnumel"  # a split row: this program's chunk
        with self.out.block(f"for r0 in range({span}, RBLOCK):"):
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

    def reduce(self, node: Node) -> Steps:
        """The steps of one reduction (see `Steps`)."""
        src = node.operands()[0]
        dtype = compute_dtype(node.dtype)
        if node.op == "var":
            return (yield from self._var(node, src, dtype))
        if node.op in ("argmax", "argmin"):
            return (yield from self._arg(node, src))
        if node.name in self.online:
            return (yield from self._online_sum(node, self.online[node.name]))
        if node.name in self.online.values():  # its online sum keeps the running max per lane
            yield
            yield
            return Value(self._across(self.lane_max[node.name], "max", dtype), dtype)
        kind, identity, acc = {
            "sum": lambda: ("sum", "0", dtype), "prod": lambda: ("prod", "1", dtype),
            "amax": lambda: ("max", lowest(dtype), dtype), "amin": lambda: ("min", highest(dtype), dtype),
            "any": lambda: ("max", "0", "int32"), "all": lambda: ("min", "1", "int32"),
        }[node.op]()
        if node.op in ("any", "all"):
            convert = lambda v: self.to(f"{v} != 0", "int32")
        else:
            convert = lambda v: self.to(v, acc)
        result = yield from self._fold(src, kind, identity, acc, convert)
        return Value(self.out.let(self.to(result, dtype) if node.op in ("any", "all") else result), dtype)

    def _var(self, node: Node, src: str, dtype: str) -> Steps:
        """A whole row in registers: the mean, then the squared deviations from it. A looped row:
        Welford's update per lane in one pass, the lanes merged exactly (Chan et al.)."""
        n = self.kernel.rnumel
        if self.kernel.persistent:
            yield
            lanes = self._lanes(self.to(self.value(src, self.row_index()).expr, dtype), "0")
            yield
            return Value(self._row_variance(lanes, dtype, n, node.args[3]), dtype)
        divisor = row_count(n, node.args[3])
        mean, m2 = self._accumulator("0", dtype), self._accumulator("0", dtype)
        yield
        # A lane is valid in every chunk before the last: the k-th valid value is chunk k's.
        x = self.out.let(f"tl.broadcast_to({self.to(self.value(src, self.row_index()).expr, dtype)}, "
                         f"{self.block_shape})")
        delta = self.out.let(f"{x} - {mean}")
        # One reciprocal per chunk (a float32 one: float64 divides, to keep its precision).
        k = "(r0 - rstart) // RBLOCK + 1" if self.stage else "r0 // RBLOCK + 1"
        step = f"{delta} * (1.0 / ({k}))" if dtype == "float32" else f"{delta} / ({k})"
        self.out.emit(f"{mean} = tl.where(xmask & rmask, {mean} + {step}, {mean})")
        self.out.emit(f"{m2} = tl.where(xmask & rmask, {m2} + {delta} * ({x} - {mean}), {m2})")
        yield
        lane = self._arange("RBLOCK", reduced=True)
        length = "rlen" if self.stage else "rnumel"
        count = self.out.let(f"(({length} - {lane} + RBLOCK - 1) // RBLOCK).to({TL_TYPE[dtype]})")
        total = self._across(self.out.let(f"{count} * {mean}"), "sum", dtype)
        size = "rlen.to(tl.float32)" if self.stage else row_count(n, 0, floor=1)
        row_mean = self.out.let(f"{total} / {size}", "m")
        spread = self.out.let(f"{m2} + {count} * ({mean} - {row_mean}) * ({mean} - {row_mean})")
        if self.stage == 1:  # a chunk's partials: its mean and M2
            self.partials[node.name] = [row_mean, self._across(spread, "sum", dtype)]
            return Value(row_mean, dtype)
        return Value(self.out.let(f"{self._across(spread, 'sum', dtype)} / {divisor}"), dtype)

    def _row_variance(self, lanes: str, dtype: str, length: Size, correction: float) -> str:
        """The variance of rows held whole in `lanes` (0 where masked): the mean, then the mean
        of the squared deviations from it (`_lanes` masks, `_across` reduces along the rows)."""
        mean = self.out.let(f"{self._across(lanes, 'sum', dtype)} / {row_count(length, 0, floor=1)}", "m")
        squares = self._lanes(f"(({lanes} - {mean}) * ({lanes} - {mean}))", "0")
        return self.out.let(f"{self._across(squares, 'sum', dtype)} / {row_count(length, correction)}")

    def _online_sum(self, node: Node, peak: str) -> Steps:
        """sum(exp(x - c)), c per row from peak = max(x), in the peak's pass: each lane keeps its
        running max m and s = sum(exp(x - h(m))), rescaled when m grows; h(m) is m, or 0 where m
        is infinite (then exp(x - h) neither overflows nor turns into inf - inf). After the loop,
        s = exp(h(M) - c) * sum over lanes of s_lane * exp(h(m_lane) - h(M)), M the row's max."""
        sub = self.graph[self.graph[node.operands()[0]].operands()[0]]
        x_name, shift = sub.operands()
        dtype = node.dtype
        lane_max, lane_sum = self._accumulator('-float("inf")', dtype), self._accumulator("0", dtype)
        self.lane_max.setdefault(peak, lane_max)
        yield
        x = self._lanes(self.value(x_name, self.row_index()).expr, '-float("inf")')
        grown = self.out.let(_ELEMENTWISE["max"].format(a=lane_max, b=x))
        scale = f"tl.where({lane_max} == -float(\"inf\"), 0.0, tl.exp({safe_shift(lane_max)} - {safe_shift(grown)}))"
        self.out.emit(f"{lane_sum} = {lane_sum} * {scale} + tl.exp({x} - {safe_shift(grown)})")
        self.out.emit(f"{lane_max} = {grown}")
        yield
        row_max = self.out.let(safe_shift(self.reduced[peak].expr), "m")
        lanes = self.out.let(f"tl.where({lane_max} == -float(\"inf\"), 0.0, "
                             f"{lane_sum} * tl.exp({safe_shift(lane_max)} - {row_max}))")
        total = self._across(lanes, "sum", dtype)
        if self.stage == 1:  # a chunk's partial: its sum relative to its own max
            return Value(total, dtype)
        c = self.value(shift, self.index_for(self.graph[shift], self.x_index())).expr
        return Value(self.out.let(f"{total} * tl.exp({row_max} - {c})"), dtype)

    def _peak_of(self, node: Node, reductions: set[str]) -> str | None:
        """The max M when `node` is sum(exp(x - c)), M = amax(x) in this kernel and c per row
        from M alone (softmax, log_softmax, logsumexp, cross-entropy), all in one 32- or 64-bit type."""
        exp = self.graph[node.operands()[0]]
        if node.op != "sum" or exp.op != "exp" or exp.name not in self.members:
            return None
        sub = self.graph[exp.operands()[0]]
        if sub.op != "sub" or sub.name not in self.members or len(sub.args) != 2 or len(sub.operands()) != 2:
            return None
        x, shift = sub.operands()
        found = (nx.ancestors(self.graph.nx, shift) | {shift}) & reductions
        if len(found) != 1 or self.graph[shift].numel != self.kernel.numel:
            return None
        peak = self.graph[found.pop()]
        if peak.op != "amax" or peak.operands()[0] != x or self.graph[x].shape != self.shape:
            return None
        types = {self.graph[n].dtype for n in (node.name, exp.name, sub.name, x, shift, peak.name)}
        if types not in ({"float32"}, {"float64"}):
            return None
        return peak.name

    def _passes(self) -> list[list[str]]:
        """The reductions, grouped into passes over the row: a reduction joins the first pass
        after the passes of those it reads, and sum(exp(x - max)) joins the max's pass.
        A row in registers has no passes to share: one reduction at a time."""
        names = [n for n in self.kernel.members
                 if self.graph[n].kind is Kind.REDUCTION and n not in self.kernel.finals]
        if self.kernel.persistent:
            return [[n] for n in names]
        level: dict[str, int] = {}
        for name in names:
            reads = nx.ancestors(self.graph.nx, name) & level.keys()
            peak = self._peak_of(self.graph[name], set(names))
            if peak is not None and all(level[r] < level[peak] for r in reads - {peak}):
                self.online[name] = peak
                level[name] = level[peak]
            else:
                level[name] = 1 + max((level[r] for r in reads), default=-1)
        return [[n for n in names if level[n] == i] for i in range(max(level.values(), default=-1) + 1)]

    def _pass(self, names: list[str]) -> None:
        """One loop over the row (none for a row in registers) computing `names`."""
        steps = [self.reduce(self.graph[name]) for name in names]
        for step in steps:
            next(step)
        with self.over_row():
            for step in steps:
                next(step)
        for name, step in zip(names, steps, strict=True):
            try:
                next(step)
            except StopIteration as done:
                self.reduced[name] = done.value
            else:
                raise AssertionError(f"reduction {name}: more steps than three")

    def _lanes(self, expr: str, identity: str) -> str:
        """`expr` over the block, `identity` where masked."""
        return self.out.let(f"tl.where(xmask & rmask, tl.broadcast_to({expr}, {self.block_shape}), {identity})")

    def _fold(self, src: str, kind: str, identity: str, acc: str, convert: Callable[[str], str]) -> Steps:
        """The row-wise combine of `convert(src)`: an expression of shape row_shape."""
        looped = not self.kernel.persistent
        name = self._accumulator(identity, acc) if looped else ""
        yield
        lanes = self._lanes(convert(self.value(src, self.row_index()).expr), identity)
        if looped:
            self.out.emit(f"{name} = {_ELEMENTWISE[kind].format(a=name, b=lanes)}")
        yield
        return self._across(name if looped else lanes, kind, acc)

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

    def _arg(self, node: Node, src: str) -> Steps:
        """Index of the first max (min) of each row, NaN counting as the extreme, as torch."""
        dtype = compute_dtype(self.graph[src].dtype)
        extreme = "max" if node.op == "argmax" else "min"
        identity = lowest(dtype) if extreme == "max" else highest(dtype)
        looped = not self.kernel.persistent
        if looped:
            self.helpers.add("_" + node.op)
            best_v = self._accumulator(identity, dtype, self.row_shape)
            best_i = self._accumulator(row_count(self.kernel.rnumel, 0, "int"), "int64", self.row_shape)
        yield
        lanes = self._lanes(self.value(src, self.row_index()).expr, identity)
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
        if looped:
            chunk = self._across(lanes, extreme, dtype)
            self.out.emit(f"{best_v}, {best_i} = _{node.op}({best_v}, {best_i}, {chunk}, r0 + {at})")
        yield
        return Value(best_i if looped else at, "int64")

    def _accumulator(self, identity: str, dtype: str, shape: str | None = None) -> str:
        name = f"acc{self.accumulators}"
        self.accumulators += 1
        self.out.emit(f"{name} = tl.full({shape or self.block_shape}, {identity}, {TL_TYPE[dtype]})")
        return name

    def _keep(self) -> str:
        return "[:, None]" if self.inner else "[None, :]"

    # the kernel ----------------------------------------------------------------
    def render(self, entry_suffix: str = "") -> Rendered:
        k = self.kernel
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        self.out.emit(f"xoffs = {pid} * XBLOCK + {self._arange('XBLOCK', reduced=False)}")
        self.out.emit("xmask = xoffs < numel")
        if k.persistent:
            self.out.emit(f"roffs = {self._arange('RBLOCK', reduced=True)}")
            self.out.emit("rmask = roffs < rnumel")
        totals, passes = self._after_finals(), self._passes()
        per_element = [n for n in k.outputs if self._per_element(self.graph[n]) and n not in totals]
        self.last_loop = {} if k.persistent else last_loops(self.graph, k, [*passes, per_element])
        split = self.splittable(passes, per_element)
        if split:
            self.render_split(passes[0], per_element, totals)
        else:
            for names in passes:
                self._pass(names)
            self.finish_rows(per_element, totals, "xmask")
        symbols = size_params(self.graph, k)
        params = [*self.params(), *([SPLIT_PARAM] if split else []), *symbols, "numel", "rnumel",
                  "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr", *(SPLIT_CONSTANTS if split else ())]
        body = live_lines(self.out.scope.lines, [])
        fn_name = kernel_name(self.graph, k) + entry_suffix
        return rendered_module(fn_name, params, body, [self], self.extras(), symbols)

    def finish_rows(self, per_element: list[str], totals: set[str], row_mask: str) -> None:
        """Once the reductions are known: the per-row outputs (stored under `row_mask`), a pass
        writing the per-element ones, and the totals over all rows."""
        k = self.kernel
        stores = []
        for name in k.outputs:
            if name not in per_element and name not in totals:
                node = self.graph[name]
                idx = self.index_for(node, self.x_index())
                stores.append(self.store(node, idx, self.value(name, idx), row_mask, self.row_shape))
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
            lanes = self.out.let(f"tl.where(xmask, tl.broadcast_to({self.to(value.expr, dtype)}, {self.row_shape}), "
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
                              f"tl.broadcast_to({self.to(value.expr, node.dtype)}, [1, 1]))")

    def _final_kind(self, node: Node) -> tuple[str, str, str]:
        dtype = compute_dtype(node.dtype)
        kind = {"sum": "sum", "amax": "max", "amin": "min"}[node.op]
        identity = {"sum": "0", "max": lowest(dtype), "min": highest(dtype)}[kind]
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
