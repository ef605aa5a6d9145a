"""Index dims that run contiguously in memory, merged back into one offset.

A pointwise kernel splits its linear offset over the output's dims (`offs % 28`,
`offs // 28 % 28`, ...). Where a tensor it reads lays two neighbouring dims out
contiguously too, their terms add up to one piece of that offset again:
`(offs // 28 % 28) * 28 + offs % 28` is `offs % 784`. Written so, Triton can
prove the longer run of consecutive addresses (16 elements for 784 = 16 x 49,
where 28 = 4 x 7 allows 4) and loads whole 128-bit vectors, as Inductor's
simplified indexes do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """An index dim that is `(linear // divisor) % size` (no `%` when `outermost`)."""

    linear: str
    divisor: int
    size: int
    outermost: bool


def piece_source(piece: Piece) -> str:
    quotient = piece.linear if piece.divisor == 1 else f"{piece.linear} // {piece.divisor}"
    return quotient if piece.outermost else f"{quotient} % {piece.size}"


def merge_contiguous(dims: Sequence[str], shape: Sequence, strides: Sequence, pieces: dict[str, Piece],
                     let: Callable[[str], str]) -> tuple[list[str], list, list]:
    """(dims, shape, strides) with each run of dims that are consecutive pieces of one
    offset, laid out contiguously (a dim's stride the next one's times its size), as one
    dim; `let` binds a merged piece's expression to a name (recorded in `pieces`)."""
    kept: list[tuple[str, object, object]] = []  # innermost first
    for d in reversed(range(len(dims))):
        if shape[d] == 1:
            continue
        if kept and _joins(pieces.get(dims[d]), pieces.get(kept[-1][0]), shape[d], strides[d], kept[-1][2]):
            inner, outer = pieces[kept[-1][0]], pieces[dims[d]]
            merged = Piece(inner.linear, inner.divisor, inner.size * outer.size, outer.outermost)
            name = let(piece_source(merged))
            pieces[name] = merged
            kept[-1] = (name, merged.size, kept[-1][2])
            continue
        kept.append((dims[d], shape[d], strides[d]))
    kept.reverse()
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


def _joins(outer: Piece | None, inner: Piece | None, size: object, stride: object, inner_stride: object) -> bool:
    """Whether `outer` (of `size` elements, `stride` apart) continues `inner` in the offset and in memory."""
    if outer is None or inner is None or inner.outermost or outer.linear != inner.linear:
        return False
    if not all(isinstance(v, int) for v in (size, stride, inner_stride)):
        return False
    return outer.divisor == inner.divisor * inner.size and stride == inner_stride * inner.size
