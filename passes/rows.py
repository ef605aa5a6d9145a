"""Row geometry of a reduction kernel: the rows it walks, and which views and broadcasts
keep every value on its own row."""

from __future__ import annotations

import itertools
import math

from fusec.ir import Node

Domain = tuple[tuple[int, ...], tuple[int, ...]]  # (the reduced input's shape, the reduced dims)


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
