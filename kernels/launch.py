"""Block sizes and warps for each kernel kind, chosen from the problem size.

On a GPU, blocks are sized so a warp reads consecutive addresses and a
program has 1-4K elements of work; in Triton's interpreter every program
costs Python overhead, so one large block does the work of many.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton


@dataclass(frozen=True)
class Launch:
    grid: tuple[int, ...]
    constants: dict
    num_warps: int


def _pow2(n: int, floor: int = 1) -> int:
    return max(triton.next_power_of_2(max(n, 1)), floor)


def _warps(elements: int) -> int:
    return max(1, min(8, elements // 256))


def pointwise_launch(numel: int, interpret: bool) -> Launch:
    block = min(_pow2(numel, 16), 1 << 16 if interpret else 1024)
    return Launch((triton.cdiv(numel, block),), {"BLOCK": block}, _warps(block))


def reduction_launch(rows: int, rnumel: int, persistent: bool, inner: bool, interpret: bool) -> Launch:
    """XBLOCK rows per program, RBLOCK row elements per step (the whole row when persistent)."""
    budget = 1 << 16 if interpret else 4096
    if persistent:
        rblock = _pow2(rnumel, 2)
    else:
        rblock = min(_pow2(rnumel, 2), budget // 8 if interpret else (1024 if inner else 64))
    if inner:
        xblock = min(_pow2(rows), max(1, budget // rblock))
    else:
        # Rows run along the contiguous dim: take many of them so loads coalesce.
        xblock = min(_pow2(rows), max(1, (budget // rblock)), 1 << 12 if interpret else 64)
    return Launch((triton.cdiv(rows, xblock),), {"XBLOCK": xblock, "RBLOCK": rblock},
                  _warps(xblock * rblock) if not interpret else 1)
