"""Render a matmul group whose epilogue reduces the product's rows (Linear -> LayerNorm,
RMSNorm, softmax): each tile holds whole rows, reduced in registers before the tail.

Grouping admits reductions into a matmul kernel only over rows laid out as the product's
(its last dim N, possibly through a reshape such as [B*S, N] -> [B, S, N]; of the product or
of another tensor of its shape), over static rows of at most `grouping.MATMUL_ROW`, all of
one domain, and no permute of what they compute. The launch (`launch.row_tiles`) makes BLOCK_N
cover N, so the grid has one program per BLOCK_M rows (grid_n = 1) and every row a program
reduces is complete in its accumulator. A reduction is then a combine across axis 1 of
its operand over the tile, masked by nmask (a sum adds 0 past N, a max takes -inf there,
a variance is the mean and then the squared deviations from it, as a reduction kernel's
row in registers); it is a [BLOCK_M, 1] block the rest of the epilogue broadcasts. Outputs
per element are stored over the tile, outputs per row (LayerNorm's mean and rstd) once
per row under mmask.
"""

from __future__ import annotations

from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node
from fusec.kernels.dtypes import compute_dtype
from fusec.kernels.matmul import MatmulRenderer, render_matmul
from fusec.kernels.reduction import ReductionRenderer, highest, lowest
from fusec.kernels.render import Index, Value
from fusec.kernels.signature import Rendered
from fusec.plan import Kernel
from fusec.sizes import prod

# reduction op -> the library combine's kind and the identity past the row's end
_COMBINES = {"sum": ("sum", lambda dtype: "0"), "amax": ("max", lowest), "amin": ("min", highest)}


class MatmulRowsRenderer(MatmulRenderer):
    """A matmul tile spanning whole rows, with reductions along them in its epilogue."""

    ROOTS = {**MatmulRenderer.ROOTS, "orow": "rowmask"}

    # The combine across the tile's axis, as a reduction kernel's (NaN kept by max and min),
    # and a whole row's variance, as a reduction kernel's row in registers.
    _library_reduce = ReductionRenderer._library_reduce
    _row_variance = ReductionRenderer._row_variance

    def __init__(self, graph: Graph, kernel: Kernel, interpret: bool = True) -> None:
        super().__init__(graph, kernel, interpret)
        if len(self.nodes) != 1:
            raise ValueError(f"matmul kernel {kernel.id}: a row reduction after {len(self.nodes)} matmuls")
        self.row_length = self.node.shape[-1]
        self.rows = prod(self.node.shape[:-1])
        self.reduced: dict[str, Value] = {}

    def compute(self, node: Node, idx: Index) -> Value:
        if node.kind is not Kind.REDUCTION or node.name not in self.members:
            return super().compute(node, idx)
        # Grouping admits only reads of a row's reduction from the same row: one value per
        # tile row, whatever index it is read at.
        if node.name not in self.reduced:
            self.reduced[node.name] = self._reduce(node)
        return self.reduced[node.name]

    def _reduce(self, node: Node) -> Value:
        src = self.graph[node.operands()[0]]
        dtype = compute_dtype(node.dtype)
        x = self.value(src.name, self.output_at(src)[0])
        x = self.to(f"tl.broadcast_to({x.expr}, [BLOCK_M, BLOCK_N])", dtype)
        if node.op == "var":
            if dtype not in FLOAT_DTYPES:
                raise ValueError(f"{node.name}: a variance of {dtype}")
            return Value(self._row_variance(self._lanes(x, "0"), dtype, self.row_length, node.args[3]), dtype)
        kind, identity = _COMBINES[node.op]
        return Value(self._across(self._lanes(x, identity(dtype)), kind, dtype), dtype)

    def _lanes(self, expr: str, identity: str) -> str:
        """`expr` over the tile, `identity` past the row's end."""
        return self.out.let(f"tl.where(nmask, {expr}, {identity})")

    def _across(self, lanes: str, kind: str, dtype: str) -> str:
        """Reduce the tile along its rows, keeping the rows' axis."""
        return self._library_reduce(lanes, kind, dtype, [1], "[:, None]")

    def _epilogue_index(self) -> None:
        """Also the tile's rows as a column (`orow`): `om` spans the whole tile, so a per-row value
        stored or loaded at it would be a [BLOCK_M, BLOCK_N] block."""
        super()._epilogue_index()
        self.out.emit("orow = rm[:, None]")
        self.out.emit("rowmask = orow < M")

    def output_at(self, node: Node) -> tuple[Index, str, str]:
        """A per-row output is stored once per row of the tile; the rest as the product's tile."""
        if node.numel == self.node.numel or node.numel != self.rows:
            return super().output_at(node)
        row = self.linearize(self._index("orow"), self.node.shape[:-1])
        return self.unravel(row, node.shape), "rowmask", "[BLOCK_M, 1]"


def render_matmul_kernel(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """A matmul group's kernel: with its rows reduced in the epilogue where it has reductions."""
    if any(graph[m].kind is Kind.REDUCTION for m in kernel.members):
        return MatmulRowsRenderer(graph, kernel, interpret).render()
    return render_matmul(graph, kernel, interpret)
