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


# An H100's multiprocessors: the GPU the shapes are chosen for when there is none to ask.
SMS = 132


def _pow2(n: int, floor: int = 1) -> int:
    return max(triton.next_power_of_2(max(n, 1)), floor)


def _warps(elements: int, most: int = 8) -> int:
    return max(1, min(most, elements // 256))


def _fill(count: int, block: int, least: int) -> int:
    """`block` halved (not below `least`) while `count` items in blocks would leave SMs idle."""
    while block > least and triton.cdiv(count, block) < SMS:
        block //= 2
    return block


def pointwise_launch(numel: int, interpret: bool) -> Launch:
    """1024 elements a program on a GPU (4 warps: 8 a thread, one 128-bit vector of a
    16-bit type), fewer, down to 256, where that leaves SMs without a program."""
    block = min(_pow2(numel, 16), 1 << 16) if interpret else _fill(numel, min(_pow2(numel, 16), 1024), 256)
    return Launch((triton.cdiv(numel, block),), {"BLOCK": block}, _warps(block))


def tile_launch(ynumel: int, xnumel: int, interpret: bool) -> Launch:
    """YBLOCK x XBLOCK tiles, numbered row by row on a 1-D grid. On a GPU 32 x 32 (as
    Inductor's first tile): each thread holds 8 elements, a 128-bit vector of a 16-bit
    type along either dim; a dim shorter than 32 gives its share to the other."""
    if interpret:
        xblock = min(_pow2(xnumel), 1 << 16)
        yblock = min(_pow2(ynumel), max(1, (1 << 16) // xblock))
    else:
        xblock = min(_pow2(xnumel), 32)
        yblock = min(_pow2(ynumel), 1024 // xblock)
        xblock = min(_pow2(xnumel), 1024 // yblock)
    grid = (triton.cdiv(ynumel, yblock) * triton.cdiv(xnumel, xblock),)
    return Launch(grid, {"YBLOCK": yblock, "XBLOCK": xblock}, _warps(yblock * xblock))


def combo_launch(numels: list[int], interpret: bool) -> Launch:
    """One BLOCK for every part (sized for the largest); the grid is the parts' blocks end to end."""
    single = pointwise_launch(max(numels), interpret)
    block = single.constants["BLOCK"]
    return Launch((sum(triton.cdiv(n, block) for n in numels),), single.constants, single.num_warps)


def reduction_launch(rows: int, rnumel: int, persistent: bool, inner: bool, interpret: bool) -> Launch:
    """XBLOCK rows per program, RBLOCK row elements per step (the whole row when persistent).

    On a GPU a program takes up to 4096 elements a step (a looped row as many at a time),
    fewer rows while the grid would leave SMs idle; warps grow with the step, one per 256
    elements up to 16 (Inductor's for long rows): 8 values a thread, a 128-bit vector of
    a 16-bit type."""
    budget = 1 << 16 if interpret else 4096
    if persistent:
        rblock = _pow2(rnumel, 2)
    else:
        rblock = min(_pow2(rnumel, 2), budget // 8 if interpret else (budget if inner else 64))
    if interpret:
        xblock = min(_pow2(rows), max(1, budget // rblock), 1 << 16 if inner else 1 << 12)
        return Launch((triton.cdiv(rows, xblock),), {"XBLOCK": xblock, "RBLOCK": rblock}, 1)
    if inner:
        xblock = _fill(rows, min(_pow2(rows), max(1, budget // rblock)), 1)
        warps = _warps(xblock * rblock, 16)
    else:
        # Rows run along the contiguous dim: take many of them so loads coalesce.
        xblock = min(_pow2(rows), max(1, (budget // rblock)), 64)
        warps = _warps(xblock * rblock)
    return Launch((triton.cdiv(rows, xblock),), {"XBLOCK": xblock, "RBLOCK": rblock}, warps)


# Triton's interpreter runs one program at a time: a split row only adds programs there, so
# it keeps whole rows unless this is set (tests set it, to run the split kernels).
SPLIT_IN_INTERPRETER = False
MAX_SPLITS = 512


@dataclass(frozen=True)
class Split:
    """A row cut into chunks of CHUNK elements (a multiple of RBLOCK), one program each;
    `chunks` of them are non-empty, SPLIT is that count rounded up to a power of two."""

    chunk: int
    chunks: int
    split: int


def row_split(rows: int, rnumel: int, persistent: bool, inner: bool, interpret: bool) -> Split | None:
    """How a looped row is cut when the rows alone would leave SMs idle (fewer than two
    programs an SM, as Inductor's rule) and each row is at least two steps long: chunks
    of whole steps, enough for four programs an SM (a 16-warp program is a quarter of an
    SM's threads). None: one program per row group."""
    if persistent or not inner or (interpret and not SPLIT_IN_INTERPRETER):
        return None
    if not isinstance(rows, int) or not isinstance(rnumel, int) or rnumel >= 2**31:
        return None  # a symbolic size is split never; chunk offsets are 32-bit
    rblock = reduction_launch(rows, rnumel, persistent, inner, interpret).constants["RBLOCK"]
    if rows >= 2 * SMS or rnumel <= 2 * rblock:
        return None
    want = min(_pow2(triton.cdiv(4 * SMS, rows)), MAX_SPLITS)
    chunk = triton.cdiv(triton.cdiv(rnumel, want), rblock) * rblock
    chunks = triton.cdiv(rnumel, chunk)
    return None if chunks < 2 else Split(chunk, chunks, _pow2(chunks))


def split_launches(rows: int, rnumel: int, split: Split, write_pass: bool, interpret: bool) -> tuple[Launch, Launch]:
    """The two launches of a split row: every chunk's partials (a program per row group and
    chunk), then the rows' values from them, with a program per chunk again where a pass
    writes each element (softmax), else one per row group."""
    whole = reduction_launch(rows, rnumel, False, True, interpret)
    groups = whole.grid[0]
    constants = {**whole.constants, "CHUNK": split.chunk, "SPLIT": split.split}
    first = Launch((groups, split.chunks), {**constants, "STAGE": 1}, whole.num_warps)
    if write_pass:
        return first, Launch((groups, split.chunks), {**constants, "STAGE": 2}, whole.num_warps)
    # Only the partials to combine: a warp per 256 of them.
    warps = 1 if interpret else _warps(constants["XBLOCK"] * split.split, 16)
    return first, Launch((groups, 1), {**constants, "STAGE": 2}, warps)


def matmul_launch(batch: int, m: int, n: int, k: int, dtype: str, interpret: bool) -> Launch:
    """Output tiles of BLOCK_M x BLOCK_N walking K by BLOCK_K; 16 is the smallest tile tl.dot takes."""
    if interpret:
        # Every program and every K step costs Python time: few, large tiles.
        block_m, block_n, block_k = (min(_pow2(size, 16), 64) for size in (m, n, k))
        warps = 1
    else:
        # 128x128 tiles once there are enough to fill the SMs; a smaller problem
        # gets 64x64 tiles so more programs run at once.
        edge = 128 if batch * triton.cdiv(m, 128) * triton.cdiv(n, 128) >= 64 else 64
        block_m, block_n = min(_pow2(m, 16), edge), min(_pow2(n, 16), edge)
        # A K step of 128 bytes per row for either operand width.
        block_k = min(_pow2(k, 16), 32 if dtype == "float32" else 64)
        warps = 8 if block_m * block_n >= 128 * 128 else 4
    grid = (batch * triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    constants = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8,
                 # The interpreter's bfloat16 dot is wrong; a float32 dot of 16-bit operands is exact.
                 "DOT_F32": interpret}
    return Launch(grid, constants, warps)


def matmul_configs(batch: int, m: int, n: int, k: int, dtype: str) -> list[Launch]:
    """The GPU tile configurations timed once per shape: the size heuristic's choice,
    then square 64 and wide 128x64 tiles (each clipped to the problem), deduplicated."""
    first = matmul_launch(batch, m, n, k, dtype, interpret=False)
    configs = [first]
    for edge_m, edge_n, warps in ((64, 64, 4), (128, 64, 4)):
        block_m, block_n = min(_pow2(m, 16), edge_m), min(_pow2(n, 16), edge_n)
        constants = {**first.constants, "BLOCK_M": block_m, "BLOCK_N": block_n}
        grid = (batch * triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
        if all(c.constants != constants for c in configs):
            configs.append(Launch(grid, constants, warps))
    return configs
