"""Rows split across programs: when a kernel's rows are too few to give every SM a program
and each row is long, a row is cut into chunks and the kernel runs twice (`STAGE`).

Stage 1 reduces each chunk to partials: a sum, a max or a min of the chunk; Welford's
(mean, M2) of the chunk; for softmax's sum of exp(x - max) the chunk's max and the sum
rescaled to it. Stage 2 combines each row's partials (Chan's merge for Welford, each
chunk's sum rescaled to the row's max) and goes on as a whole-row kernel: it stores the
rows' values, and where outputs are per element each program writes its own chunk.
"""

from __future__ import annotations

import networkx as nx

from fusec.ir import Graph, Kind, Node
from fusec.kernels.dtypes import compute_dtype
from fusec.kernels.indexed import Value
from fusec.kernels.launch import Split
from fusec.kernels.render import row_count
from fusec.plan import Kernel

_SPLITTABLE = frozenset({"sum", "amax", "amin", "var"})
# What a missing chunk's partial holds, by op: it changes nothing when combined.
_EMPTY = {"sum": "0.0", "amax": '-float("inf")', "amin": 'float("inf")'}
_COMBINE = {"sum": "sum", "amax": "max", "amin": "min"}

SPLIT_PARAM = "p_split"  # the partials: one float32 per statistic, row and chunk
SPLIT_CONSTANTS = ("CHUNK: tl.constexpr", "SPLIT: tl.constexpr", "STAGE: tl.constexpr")


def safe_shift(m: str) -> str:
    """A row's shift for exp: its max, or 0 where the max is infinite (NaN stays NaN)."""
    return f"tl.where(tl.abs({m}) == float(\"inf\"), 0.0, {m})"


def statistics(node: Node) -> int:
    """Partials a chunk keeps of a reduction: Welford's mean and M2 for a variance, else one."""
    return 2 if node.op == "var" else 1


def partial_count(graph: Graph, kernel: Kernel) -> int:
    """Float32 partials per row and chunk of a split kernel (its workspace's row stride / SPLIT)."""
    return sum(statistics(graph[n]) for n in kernel.members
               if graph[n].kind is Kind.REDUCTION and n not in kernel.finals)


def writes_elements(graph: Graph, kernel: Kernel, rows: int) -> bool:
    """Whether an output is per element, as the renderer tells them (not one a row, nor computed
    from a total over all rows): then stage 2 has a program per chunk too, to write it."""
    later = set(kernel.finals).union(*(nx.descendants(graph.nx, f) for f in kernel.finals))
    return any(graph[o].numel != rows and o not in later for o in kernel.outputs)


class SplitRows:
    """The split kernel's body, mixed into ReductionRenderer (which provides the rest)."""

    split: Split | None
    stage: int  # 0: not split; 1 or 2: the stage being rendered

    def splittable(self, passes: list[list[str]], per_element: list[str]) -> bool:
        """One pass of reductions whose chunks merge (sum, amax, amin, Welford's variance,
        online softmax), all in float32; totals over all rows only where no output is per element."""
        if self.split is None or len(passes) != 1:
            return False
        nodes = [self.graph[n] for n in passes[0]]
        if any(n.op not in _SPLITTABLE or compute_dtype(n.dtype) != "float32" for n in nodes):
            return False
        return not (self.kernel.finals and per_element)

    def render_split(self, names: list[str], per_element: list[str], totals: set[str]) -> None:
        """Both stages in one body, picked by the constant STAGE (each launch compiles one)."""
        self.out.emit("rstart = tl.program_id(1) * CHUNK")
        self.out.emit("rlen = tl.minimum(rnumel - rstart, CHUNK)")
        self.partials: dict[str, list[str]] = {}
        self.slots = self._slots(names)
        with self.out.block("if STAGE == 1:"):
            self.stage = 1
            self._pass(names)
            self._store_partials(names)
        self.reduced = {}
        with self.out.block("else:"):
            self.stage = 2
            self.out.emit("sp = tl.arange(0, SPLIT)[None, :]")
            for name in names:
                self.reduced[name] = self._combined(self.graph[name])
            # As a block (the interpreter takes no scalar in a store's mask): chunk 0 stores the rows' values.
            self.out.emit("first = (xoffs * 0 + tl.program_id(1)) == 0")
            self.finish_rows(per_element, totals, "xmask & first")

    def _slots(self, names: list[str]) -> dict[str, int]:
        """Each reduction's first statistic's position in the partials."""
        slots, at = {}, 0
        for name in names:
            slots[name] = at
            at += statistics(self.graph[name])
        return slots

    def _store_partials(self, names: list[str]) -> None:
        for name in names:
            values = self.partials.get(name, [self.reduced[name].expr])
            for j, value in enumerate(values, start=self.slots[name]):
                self.out.emit(f"tl.store({SPLIT_PARAM} + ({j} * numel + xoffs) * SPLIT + tl.program_id(1), "
                              f"tl.broadcast_to({value}, {self.row_shape}), mask=xmask)")

    def _chunks(self, slot: int, empty: str) -> str:
        """Every chunk's partial number `slot` of the current rows: [XBLOCK, SPLIT]."""
        return self.out.let(f"tl.load({SPLIT_PARAM} + ({slot} * numel + xoffs) * SPLIT + sp, "
                            f"mask=xmask & (sp * CHUNK < rnumel), other={empty})", "c")

    def _combined(self, node: Node) -> Value:
        """A row's reduction from its chunks' partials."""
        slot = self.slots[node.name]
        if node.op == "var":
            return self._merged_variance(node, slot)
        if node.name in self.online:
            return self._merged_online(node, slot)
        chunks = self._chunks(slot, _EMPTY[node.op])
        return Value(self._across(chunks, _COMBINE[node.op], "float32"), "float32")

    def _merged_variance(self, node: Node, slot: int) -> Value:
        """Chan et al.: the row's mean from the chunks' means weighted by their lengths, its
        M2 the chunks' M2 plus each length times its mean's squared distance from the row's."""
        means, m2s = self._chunks(slot, "0.0"), self._chunks(slot + 1, "0.0")
        n = self.kernel.rnumel
        count = self.out.let("tl.maximum(tl.minimum(rnumel - sp * CHUNK, CHUNK), 0).to(tl.float32)")
        total = self._across(self.out.let(f"{count} * {means}"), "sum", "float32")
        mean = self.out.let(f"{total} / {row_count(n, 0, floor=1)}", "m")
        spread = self.out.let(f"tl.where({count} > 0, {m2s} + {count} * ({means} - {mean}) * ({means} - {mean}), 0.0)")
        divisor = row_count(n, node.args[3])
        return Value(self.out.let(f"{self._across(spread, 'sum', 'float32')} / {divisor}"), "float32")

    def _merged_online(self, node: Node, slot: int) -> Value:
        """sum(exp(x - c)) from each chunk's sum of exp(x - h(m)), m the chunk's max: each
        rescaled by exp(h(m) - h(M)), M the row's max (see `_online_sum`)."""
        peak = self.online[node.name]
        maxes, sums = self._chunks(self.slots[peak], _EMPTY["amax"]), self._chunks(slot, "0.0")
        row_max = self.out.let(safe_shift(self.reduced[peak].expr), "m")
        lanes = self.out.let(f"tl.where({maxes} == -float(\"inf\"), 0.0, "
                             f"{sums} * tl.exp({safe_shift(maxes)} - {row_max}))")
        total = self._across(lanes, "sum", "float32")
        shift = self.graph[self.graph[node.operands()[0]].operands()[0]].operands()[1]
        c = self.value(shift, self.index_for(self.graph[shift], self.x_index())).expr
        return Value(self.out.let(f"{total} * tl.exp({row_max} - {c})"), "float32")
