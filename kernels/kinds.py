"""The kernel kinds in one table: each kind's renderer, extents, launch rule and size arguments.

A kernel's extents are its problem sizes as expressions over the size symbols.
A kernel of a static graph is launched with them as numbers, once; a kernel of
a dynamic graph gets them at each call, computed by the launcher from the
symbols it bound, and its blocks and grid are chosen then (`launch_at`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, replace

from fusec import sizes
from fusec.ir import Graph, row_domain
from fusec.kernels.launch import (
    Launch,
    Split,
    combo_launch,
    matmul_launch,
    pointwise_launch,
    reduction_launch,
    row_split,
    split_launches,
    tile_launch,
)
from fusec.kernels.matmul import matmul_problem
from fusec.kernels.matmul_rows import render_matmul_kernel
from fusec.kernels.pointwise import combo_extents, render_combo, render_pointwise
from fusec.kernels.reduction import ReductionRenderer
from fusec.kernels.reduction_split import SPLIT_PARAM, partial_count, writes_elements
from fusec.kernels.scan import render_scan, scan_extents, scan_launch
from fusec.kernels.scatter import render_scatter, scatter_extents, scatter_launch
from fusec.kernels.signature import Rendered
from fusec.kernels.sort import render_sort, sort_extents, sort_launch, sorts_by_key
from fusec.kernels.tiles import tiling
from fusec.plan import PERSISTENT_COLUMN, PERSISTENT_ROW, Kernel, KernelKind
from fusec.sizes import Size

# The name of a reduction's persistent variant, beside its looped entry in one module.
ROWS_VARIANT = "_rows"

Renderer = Callable[[Graph, Kernel, bool], Rendered]


@dataclass(frozen=True)
class KindRules:
    """How one kind of kernel is rendered and launched."""

    render: Renderer
    extents: Callable[[Graph, Kernel], tuple[Size, ...]]
    # (graph, kernel, extents, interpret, persistent) -> blocks, grid and warps
    launch: Callable[[Graph, Kernel, tuple, bool, bool], Launch]
    # (kernel, extents) -> the size arguments after the tensors and symbols
    size_args: Callable[[Kernel, tuple], tuple]
    # The entry keeping each row in registers, rendered beside the looped one when the row length is a symbol.
    render_rows: Renderer | None = None


def _elements(graph: Graph, kernel: Kernel) -> tuple[Size, ...]:
    """(numel,), or (rows, columns) of the 2-D tiles of a kernel reading a transposed layout."""
    tiles = tiling(graph, kernel)
    return (graph[kernel.outputs[0]].numel,) if tiles is None else (tiles.ynumel, tiles.xnumel)


def _pointwise_launch(graph: Graph, kernel: Kernel, values: tuple, interpret: bool, persistent: bool) -> Launch:
    return pointwise_launch(values[0], interpret) if len(values) == 1 else tile_launch(*values, interpret)


def _rows(graph: Graph, kernel: Kernel) -> tuple[Size, ...]:
    shape, dims = row_domain(graph, [graph[m] for m in kernel.members])
    return sizes.prod(s for d, s in enumerate(shape) if d not in dims), sizes.prod(shape[d] for d in dims)


def _render_reduction(graph: Graph, kernel: Kernel, interpret: bool, entry_suffix: str = "") -> Rendered:
    rows, length = _rows(graph, kernel)
    exact = replace(kernel, numel=rows, rnumel=length)
    split = None if entry_suffix else row_split(rows, length, kernel.persistent, kernel.reduce_inner, interpret)
    out = ReductionRenderer(graph, exact, interpret, split).render(entry_suffix)
    # Split where the body could be (splittable): the launch reads the decision from here.
    return replace(out, split=astuple(split)) if SPLIT_PARAM in out.params else out


def _all(kernel: Kernel, values: tuple) -> tuple:
    return tuple(values)


def _combo_counts(kernel: Kernel, values: tuple) -> tuple:
    """A combo's element counts that are not numbers written into it (`render_combo`)."""
    return tuple(v for i, v in enumerate(values) if f"numel{i}" in kernel.params)


def _render_rows(graph: Graph, kernel: Kernel, interpret: bool) -> Rendered:
    return _render_reduction(graph, replace(kernel, persistent=True), interpret, ROWS_VARIANT)


KINDS: dict[KernelKind, KindRules] = {
    KernelKind.POINTWISE: KindRules(
        render_pointwise, _elements, _pointwise_launch, _all),
    KernelKind.REDUCTION: KindRules(
        _render_reduction, _rows,
        lambda graph, kernel, values, interpret, persistent: reduction_launch(
            *values, persistent, kernel.reduce_inner, interpret),
        _all, render_rows=_render_rows),
    KernelKind.MATMUL: KindRules(
        render_matmul_kernel, lambda graph, kernel: matmul_problem(graph, kernel)[:4],
        lambda graph, kernel, values, interpret, persistent: matmul_launch(
            *values, *matmul_problem(graph, kernel)[4:], interpret=interpret),
        lambda kernel, values: tuple(values[1:])),  # the batch count is in the grid only
    KernelKind.COMBO: KindRules(
        render_combo, combo_extents,
        lambda graph, kernel, values, interpret, persistent: combo_launch(list(values), interpret),
        _combo_counts),
    KernelKind.SCAN: KindRules(
        render_scan, scan_extents,
        lambda graph, kernel, values, interpret, persistent: scan_launch(*values, interpret),
        _all),
    KernelKind.SCATTER: KindRules(render_scatter, scatter_extents, scatter_launch, _all),
    KernelKind.SORT: KindRules(
        render_sort, sort_extents,
        lambda graph, kernel, values, interpret, persistent: sort_launch(
            *values, interpret, sorts_by_key(graph, kernel)),
        _all),
}


def render(graph: Graph, kernel: Kernel, interpret: bool) -> Rendered:
    """The kernel's module (for Triton's interpreter or a GPU), with the rows-in-registers
    entry beside the looped one where the kind has one and the row length is a symbol."""
    rules = KINDS[kernel.kind]
    out = rules.render(graph, kernel, interpret)
    if rules.render_rows is not None and row_variants(graph, kernel):
        rows = rules.render_rows(graph, kernel, interpret)
        out = replace(out, source=f"{out.source}\n\n{rows.source}", rows_fn=rows.fn_name)
    return out


def extents(graph: Graph, kernel: Kernel) -> tuple[Size, ...]:
    """pointwise (numel,) or (rows, columns) of its tiles; reduction and scan (rows, row
    length); combo each part's numel; matmul (batch, M, N, K); scatter (stored elements,)."""
    return KINDS[kernel.kind].extents(graph, kernel)


def is_dynamic(graph: Graph, kernel: Kernel) -> bool:
    """Whether the kernel's sizes depend on a symbol: its launch is then chosen per call."""
    return not sizes.all_static(extents(graph, kernel)) or bool(kernel.symbols)


def size_args(kernel: Kernel, values: tuple) -> tuple:
    """The size arguments the kernel takes after its tensors and symbols."""
    return KINDS[kernel.kind].size_args(kernel, values)


def launch_at(graph: Graph, kernel: Kernel, values: tuple[int, ...], interpret: bool,
              persistent: bool | None = None) -> Launch:
    """Blocks, grid and warps for these extents (`persistent`: a reduction's variant, if not its own)."""
    persistent = kernel.persistent if persistent is None else persistent
    return with_options(kernel, KINDS[kernel.kind].launch(graph, kernel, values, interpret, persistent))


def with_options(kernel: Kernel, launch: Launch) -> Launch:
    """A kernel checking its indices on the device is compiled with Triton's debug on, which
    keeps its asserts; the launch turns off what debug also adds, an overflow check on every
    32-bit integer add, subtract and multiply (+42% PTX instructions in embedding + layer_norm).
    Compile options travel with the constants: the launch passes both as keywords."""
    if not kernel.asserts:
        return launch
    return replace(launch, constants={**launch.constants, "sanitize_overflow": False})


def static_launch(graph: Graph, kernel: Kernel, interpret: bool) -> Launch:
    """The launch of a kernel whose extents are numbers (a static graph's): chosen once."""
    return launch_at(graph, kernel, extents(graph, kernel), interpret)


def static_size_args(graph: Graph, kernel: Kernel) -> tuple[int, ...]:
    """The size arguments of a kernel whose extents are numbers, after its tensors."""
    return size_args(kernel, extents(graph, kernel))


def fits_block(kernel: Kernel, row_length: int) -> bool:
    """Whether a row of this length stays in registers (the persistent variant)."""
    return row_length <= (PERSISTENT_ROW if kernel.reduce_inner else PERSISTENT_COLUMN)


def row_variants(graph: Graph, kernel: Kernel) -> bool:
    """A kernel with rows whose length is a symbol has both entries, picked per call."""
    return KINDS[kernel.kind].render_rows is not None and not sizes.is_static(extents(graph, kernel)[1])


def persistent_for(graph: Graph, kernel: Kernel) -> bool:
    """A row whose length is a symbol may be any length: it loops (the loop serves short rows too)."""
    return kernel.persistent and not row_variants(graph, kernel)


@dataclass(frozen=True)
class SplitLaunch:
    """A rendered kernel whose rows are split: its two launches and its partials' size."""

    first: Launch
    second: Launch
    partials: int  # float32 values


def split_launch(graph: Graph, kernel: Kernel, interpret: bool, values: tuple | None = None) -> SplitLaunch | None:
    """The launches of a rendered static reduction that split its rows, cut as its render cut
    them (None: it did not); `values`: its extents, where known already."""
    if not kernel.split:
        return None
    rows, length = extents(graph, kernel) if values is None else values
    split = Split(*kernel.split)
    first, second = split_launches(rows, length, split, writes_elements(graph, kernel, rows), interpret)
    first, second = with_options(kernel, first), with_options(kernel, second)
    return SplitLaunch(first, second, partial_count(graph, kernel) * rows * split.split)
