"""Row geometry of a reduction kernel: the rows it walks, and which views and broadcasts
keep every value on its own row."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from fusec.ir import Kind, Node
from fusec.passes.refusal import Refusal

Domain = tuple[tuple[int, ...], tuple[int, ...]]  # (the reduced input's shape, the reduced dims)
# How a value with one element per element of the domain lays them out: its dim k is the
# domain's dim frame[k] (the domain's own order is range(rank); a permute of it reorders that).
Frame = tuple[int, ...]
# Ops that read their operands at other positions than their own: their values keep the domain's order.
_INDEXED = frozenset({"gather", "take", "cat"})


def row_shapes(domain: Domain) -> tuple[int, int]:
    """(elements per kernel = rows x row length, rows) of a reduction domain."""
    shape, dims = domain
    return math.prod(shape), math.prod(s for d, s in enumerate(shape) if d not in dims)


def keepdim_shape(domain: Domain) -> tuple[int, ...]:
    shape, dims = domain
    return tuple(1 if d in dims else s for d, s in enumerate(shape))


def outer_shape(domain: Domain) -> tuple[int, ...]:
    shape, dims = domain
    return tuple(s for d, s in enumerate(shape) if d not in dims)


def unit_dims_only(view: Node, src: Node) -> bool:
    """Whether a reshape only adds or drops size-1 dims ([C] -> [1,C,1,1]): such a view keeps
    every value on its row.

    Why that is sound: dropping the size-1 dims from both shapes leaves the same shape, so
    the view and its source have the same row-major strides over the dims of size > 1, and
    the element at linear position i of the view is the element at linear position i of
    the source (the renderer reads a reshape at `unravel(linearize(idx))`). A reduction
    kernel holds every per-row value with its rows in row-major order (position r is row
    r) and every per-element value in the reduced input's row-major order (position i
    lies in the row of element i), and it stores and reads a value at the position of the
    row it works on; a reduction's result is only ever asked for at its own row. A view
    that is the identity on positions therefore never asks for a value of another row.
    Where the viewed value is then broadcast against another shape, that read is checked
    on its own (`_misaligned_read`: [1,C] against [N,C,H,W] would land on W's row).
    """
    return view.op in ("reshape", "alias") and _without_ones(view.shape) == _without_ones(src.shape)


def _without_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def reads_own_row(source: tuple[int, ...], reader: tuple[int, ...], domain: Domain) -> bool:
    """Whether broadcasting a per-row value of shape `source` into `reader` gives each
    element its own row's value."""
    shape, dims = domain
    if source == reader:
        return True
    if reader == shape and len(source) <= len(shape):
        padded = (1,) * (len(shape) - len(source)) + source
        return all(padded[d] == (1 if d in dims else shape[d]) or padded[d] == shape[d] == 1
                   for d in range(len(shape)))
    def strip(s: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(itertools.dropwhile(lambda size: size == 1, s))
    return math.prod(reader) == row_shapes(domain)[1] and strip(source) == strip(reader)


def keeps_rows(view: Node, src: Node, domain: Domain) -> bool:
    """Whether a broadcast_in_dim puts per-row values on the outer dims, in their order."""
    shape, dims = domain
    moved = [d for d, size in zip(view.args[1], src.shape, strict=True) if size != 1]
    if len(view.shape) != len(shape):  # into the rows' own shape
        return moved == sorted(moved)
    return moved == [d for d in range(len(shape)) if d not in dims and shape[d] != 1]


def computed_from_rows(ordered: list[Node]) -> set[str]:
    """The nodes of `ordered` (topological) computed from one of its reductions: their values
    exist only for the row a reduction kernel is on."""
    found: set[str] = set()
    for node in ordered:
        if node.kind is Kind.REDUCTION or not found.isdisjoint(node.operands()):
            found.add(node.name)
    return found


def in_order(frame: Frame, shape: tuple[int, ...]) -> bool:
    """Whether a frame lays elements out in the domain's row-major order (it may move size-1 dims)."""
    moved = [d for d in frame if shape[d] != 1]
    return moved == sorted(moved)


def element_frames(ordered: list[Node], row_valued: set[str], domain: Domain,
                   nodes: Mapping[str, Node]) -> dict[str, Frame] | Refusal:
    """The frame of each member of `ordered` (topological) with one value per element of the
    domain computed from the group's reductions (`row_valued`), or why one would mix frames.

    Why a permuted frame is sound: a reduction kernel works on one element of the domain at
    a time (its row and its place in the row), and a value computed from the row's results
    holds that element's value. A permute only renames which of its dims is which: the
    kernel asks for the permuted value at the element's own index, permuted the same way
    (`index_for`), and the permute reads its source back at the element's index. Values
    stay on their rows, whatever the permutation; only the memory strides a row walks
    change. What would move values is reading two frames as one (a transposed square
    tensor added to itself), a per-row value or a reduction read in a permuted frame, an
    index-reading op, or a view other than a reshape over a permuted frame: refused.
    """
    shape = domain[0]
    per_element = math.prod(shape)
    frames: dict[str, Frame] = {}
    for node in ordered:
        if node.name not in row_valued:
            continue
        framed = [op for op in dict.fromkeys(node.operands()) if op in frames]
        moved = [op for op in framed if not in_order(frames[op], shape)]
        if node.kind is Kind.REDUCTION and moved:
            return Refusal("row-read", f"{node.name} would reduce {moved[0]} in a permuted order of its rows")
        if node.kind is Kind.REDUCTION or node.numel != per_element:
            continue  # per-row values: reads_own_row and keeps_rows check how they are read
        frame = _frame(node, framed, frames, shape, nodes)
        if isinstance(frame, Refusal):
            return frame
        if not in_order(frame, shape):
            per_row = next((op for op in node.operands() if op in row_valued and op not in frames), None)
            if per_row is not None or node.op in _INDEXED:
                what = f"the per-row value {per_row}" if per_row else f"{moved[0]} ({node.op})"
                return Refusal("row-read", f"{node.name} would read {what} in a permuted order of the rows")
        frames[node.name] = frame
    return frames


def _frame(node: Node, framed: list[str], frames: dict[str, Frame], shape: tuple[int, ...],
           nodes: Mapping[str, Node]) -> Frame | Refusal:
    """A per-element member's frame from its operands' (`framed`: those with one)."""
    identity = tuple(range(len(shape)))
    if node.kind is not Kind.VIEW:
        kinds = {tuple(d for d in frames[op] if shape[d] != 1): op for op in framed}
        if len(kinds) > 1:
            a, b = list(kinds.values())[:2]
            return Refusal("row-read", f"{node.name} would read {a} and {b} in different orders of the rows")
        return frames[framed[0]] if framed else identity
    src = nodes[node.operands()[0]]
    frame = frames.get(src.name, identity)
    if node.op in ("reshape", "alias"):
        return frame  # row-major positions kept: index_for unravels them over the frame's shape
    if node.op == "permute":
        if src.shape != tuple(shape[d] for d in frame):
            return Refusal("row-move", f"{node.name} (permute) would move values between the rows of a "
                                       f"reduction: it permutes {src.name}, a reshape of the rows")
        return tuple(frame[d] for d in node.args[1])
    if not in_order(frame, shape):
        return Refusal("row-move", f"{node.name} ({node.op}) would move values between the rows of a "
                                   f"reduction: it reads {src.name} in a permuted order")
    return identity
