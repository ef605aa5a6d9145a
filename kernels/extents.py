"""The sizes a kernel is launched with, as expressions over the size symbols.

A kernel of a static graph gets them as numbers, once; a kernel of a dynamic
graph gets them at each call, computed by the launcher from the symbols it
bound, and its blocks and grid are chosen then (`launch_at`).
"""

from __future__ import annotations

from fusec import sizes
from fusec.ir import Graph, row_domain
from fusec.kernels.launch import Launch, combo_launch, matmul_launch, pointwise_launch, reduction_launch, tile_launch
from fusec.kernels.matmul import matmul_node
from fusec.kernels.tiles import tiling
from fusec.plan import PERSISTENT_COLUMN, PERSISTENT_ROW, Kernel
from fusec.sizes import Size


def extents(graph: Graph, kernel: Kernel) -> tuple[Size, ...]:
    """pointwise (numel,), or (rows, columns) of its 2-D tiles; reduction (rows, row length);
    combo each part's numel; matmul (batch, M, N, K)."""
    if kernel.kind == "reduction":
        members = [graph[m] for m in kernel.members]
        shape, dims = row_domain(graph, members)
        return (sizes.prod(s for d, s in enumerate(shape) if d not in dims), sizes.prod(shape[d] for d in dims))
    if kernel.kind == "matmul":
        node = matmul_node(graph, kernel)
        *batch, m, n = node.shape
        return (batch[0] if batch else 1), m, n, graph[node.operands()[0]].shape[-1]
    if kernel.kind == "combo":
        return tuple(graph[p.outputs[0]].numel for p in kernel.parts)
    tiles = tiling(graph, kernel)
    return (graph[kernel.outputs[0]].numel,) if tiles is None else (tiles.ynumel, tiles.xnumel)


def is_dynamic(graph: Graph, kernel: Kernel) -> bool:
    """Whether the kernel's sizes depend on a symbol: its launch is then chosen per call."""
    return not sizes.all_static(extents(graph, kernel)) or any(p.startswith(sizes.KERNEL_PREFIX)
                                                              for p in kernel.params)


def size_args(kernel: Kernel, values: tuple) -> tuple:
    """The size arguments the kernel takes after its tensors and symbols (a matmul's
    batch count is in its grid only)."""
    return tuple(values[1:]) if kernel.kind == "matmul" else tuple(values)


def launch_at(graph: Graph, kernel: Kernel, values: tuple[int, ...], interpret: bool,
              persistent: bool | None = None) -> Launch:
    """Blocks, grid and warps for these extents (`persistent`: a reduction's variant, if not its own)."""
    if kernel.kind == "reduction":
        persistent = kernel.persistent if persistent is None else persistent
        return reduction_launch(*values, persistent, kernel.reduce_inner, interpret)
    if kernel.kind == "matmul":
        dtype = graph[matmul_node(graph, kernel).operands()[0]].dtype
        return matmul_launch(*values, dtype, interpret)
    if kernel.kind == "combo":
        return combo_launch(list(values), interpret)
    return pointwise_launch(values[0], interpret) if len(values) == 1 else tile_launch(*values, interpret)


# The name of a reduction's persistent variant, beside its looped entry in one module.
ROWS_VARIANT = "_rows"


def fits_block(kernel: Kernel, row_length: int) -> bool:
    """Whether a row of this length stays in registers (the persistent variant)."""
    return row_length <= (PERSISTENT_ROW if kernel.reduce_inner else PERSISTENT_COLUMN)


def row_variants(graph: Graph, kernel: Kernel) -> bool:
    """A reduction whose row length is a symbol has both variants, picked per call."""
    return kernel.kind == "reduction" and not sizes.is_static(extents(graph, kernel)[1])


def persistent_for(graph: Graph, kernel: Kernel) -> bool:
    """A row whose length is a symbol may be any length: it loops (the loop serves short rows too)."""
    if kernel.kind != "reduction":
        return kernel.persistent
    return kernel.persistent and sizes.is_static(extents(graph, kernel)[1])
