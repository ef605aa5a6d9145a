"""Block sizes and warps for each kernel kind, chosen from the problem size.

On a GPU, blocks are sized so a warp reads consecutive addresses and a
program has 1-4K elements of work; a matmul's tiles, warps and pipeline
stages are Hopper's (sm_90: wgmma, 227 KiB of shared memory a program). In
Triton's interpreter every program costs Python overhead, so one large block
does the work of many.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import triton

from fusec.ir import ITEMSIZE
from fusec.kernels.descriptors import MAX_BOX


@dataclass(frozen=True)
class Launch:
    grid: tuple[int, ...]
    constants: dict
    num_warps: int
    num_stages: int | None = None  # software-pipelined loads in flight (matmul); None: Triton's default

    def options(self) -> dict[str, int]:
        """The compile options Triton takes beside the constexprs."""
        staged = {} if self.num_stages is None else {"num_stages": self.num_stages}
        return {"num_warps": self.num_warps, **staged}


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
    16-bit type), fewer, down to 256, where that leaves SMs without a program. Never fewer
    than 256: a block smaller than a warp's 8 elements a thread is read 16 bits at a time."""
    block = min(_pow2(numel, 16), 1 << 16) if interpret else _fill(numel, min(_pow2(numel, 256), 1024), 256)
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
    programs an SM, as Inductor's rule) and each row is longer than two steps: chunks
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


# Shared memory one program may use on an sm_90 GPU: what bounds the stages of a pipelined K loop.
SHARED = 227 * 1024
# float32 accumulator values a thread may hold with room left for the epilogue (of 255 registers).
ACCUMULATOR_REGISTERS = 128
# Epilogue ops past which 128 x 128 tiles spill on sm_90 (a backward's GELU gradient, 14 ops: 28
# bytes; the forward GELU, 6 ops, takes 160 registers): such epilogues get 128 x 64 tiles.
HEAVY_EPILOGUE = 8


def matmul_launch(batch: int, m: int, n: int, k: int, dtype: str, accumulators: int = 1, epilogue: int = 0,
                  rows: bool = False, descriptors: bool = False, *, interpret: bool) -> Launch:
    """Output tiles of BLOCK_M x BLOCK_N walking K by BLOCK_K; 16 is the smallest tile tl.dot takes.
    `accumulators`: the matmuls that share each tile of the left operand (each holds a tile);
    `epilogue`: the arithmetic ops applied to the tiles before they are stored; `rows`: the
    epilogue reduces whole rows, so a tile spans every column (`row_tiles`); `descriptors`: an
    operand can be read through a TMA descriptor (`with_descriptors`)."""
    tiles = _matmul_tiles(batch, m, n, k, dtype, accumulators, epilogue, rows, interpret)
    return persistent(with_descriptors(tiles, descriptors, interpret), batch, dtype, accumulators)


# Triton's interpreter reads descriptors as pointers (checking their rules): fusec reads operands with
# pointers there unless this is set (tests set it, to run the descriptor path).
DESCRIPTORS_IN_INTERPRETER = False


def with_descriptors(launch: Launch, descriptors: bool, interpret: bool) -> Launch:
    """The launch with its TMA constexpr: on where an operand can take a descriptor and every box
    dim fits one (at most 256 elements: a whole-row tile may be wider), on a GPU (the call turns it
    off for pointers not 16-byte aligned and GPUs before Hopper, kernels/call.py) or in the
    interpreter when asked."""
    boxes = (launch.constants[b] for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    on = descriptors and (DESCRIPTORS_IN_INTERPRETER or not interpret) and max(boxes) <= MAX_BOX
    return replace(launch, constants={**launch.constants, "TMA": on})


def persistent(launch: Launch, batch: int, dtype: str, accumulators: int) -> Launch:
    """A program per SM walking the tiles in the grid's order, for an unbatched matmul whose
    operands come by TMA and whose tiles fill two waves or more (Triton's persistent matmul,
    Inductor's persistent TMA template): each program then has two tiles or more, and the loop
    nest flattened lets the next tile's copies start under this one's epilogue. Fewer tiles: a
    grid of every tile is as full, and each program has one tile anyway. The pipeline's buffers
    then stay live across tiles, so the output tiles go to their stores through shared memory
    of their own (as compiled for sm_90): where that would not fit beside the stages, not persistent.
    A call that cannot take descriptors (a pointer not 16-byte aligned, a GPU before Hopper) runs
    the same grid and loop with the pointer loads (`call_constants` turns TMA off, not PERSISTENT:
    the grid is written into the launcher; on sm_90 up to 255 registers, unspilled)."""
    tiles = launch.grid[0]
    if batch != 1 or not launch.constants["TMA"] or tiles < 2 * SMS:
        return launch
    if launch.num_stages is not None and _persistent_shared(launch, dtype, accumulators) > SHARED:
        return launch
    return replace(launch, grid=(SMS,), constants={**launch.constants, "PERSISTENT": True})


def _persistent_shared(launch: Launch, dtype: str, accumulators: int) -> int:
    """Shared memory a persistent program takes, at most: its stages of operand tiles, an output
    tile per accumulator (float32 at the widest), 1 KiB for the stages' barriers."""
    c = launch.constants
    step = (c["BLOCK_M"] + c["BLOCK_N"] * accumulators) * c["BLOCK_K"] * ITEMSIZE[dtype]
    return launch.num_stages * step + c["BLOCK_M"] * c["BLOCK_N"] * accumulators * 4 + 1024


def _matmul_tiles(batch: int, m: int, n: int, k: int, dtype: str, accumulators: int, epilogue: int,
                  rows: bool, interpret: bool) -> Launch:
    if rows:
        return row_tiles(batch, m, n, k, dtype, interpret, epilogue)
    if interpret:
        # Every program and every K step costs Python time: few, large tiles.
        block_m, block_n, block_k = (min(_pow2(size, 16), 64) for size in (m, n, k))
        return _matmul_config(batch, m, n, k, (block_m, block_n, block_k), 1, dtype, interpret=True)
    # A K step of 128 bytes per row for either operand width.
    block_k = 32 if dtype == "float32" else 64
    if dtype != "float32" and accumulators == 1 and epilogue <= 1 and _tiles(batch, m, n, 128, 256) >= SMS:
        # Hopper's large tiles (a full wave of them): 8 warps, two warpgroups of wgmma, the long
        # side along the larger of M and N, and as many stages as shared memory holds (4). Their
        # 128 accumulator values a thread leave room for a bias add (230 registers on sm_90); a
        # residual add or a GELU more spills (84-144 bytes), so those take 128 x 128 tiles.
        tile = (128, 256) if n >= m else (256, 128)
        return _matmul_config(batch, m, n, k, (*tile, block_k), 8, dtype, accumulators)
    if _tiles(batch, m, n, 128, 128) >= 64:
        block_n = 128 if epilogue <= HEAVY_EPILOGUE else 64
        return _matmul_config(batch, m, n, k, (128, block_n, block_k), 8, dtype, accumulators)
    # A smaller problem gets 64x64 tiles so more programs run at once.
    return _matmul_config(batch, m, n, k, (64, 64, block_k), 4, dtype, accumulators)


# A whole-row tile's float32 accumulators: 16 rows of the widest row fused (1024, grouping.MATMUL_ROW).
ROW_TILE = 16 * 1024
# Epilogue ops past which a whole-row tile takes half as many rows: a LayerNorm backward (15-17
# ops) over 32 rows of 512 spilled 748-804 bytes on sm_90 at 16 warps (128 registers a thread).
HEAVY_ROW_EPILOGUE = 12


def row_tiles(batch: int, m: int, n: int, k: int, dtype: str, interpret: bool, epilogue: int = 0) -> Launch:
    """Tiles of whole rows for an epilogue that reduces them: BLOCK_N covers N, BLOCK_M takes
    as many rows as ROW_TILE accumulators allow (half as many past HEAVY_ROW_EPILOGUE ops; 16 to
    128, fewer while the grid would leave SMs idle), one warp per 1024 of them (4 to 16: 32 to 64
    accumulator registers a thread, the rest for the epilogue's live tiles, x - mean and the
    result). BLOCK_K shrinks until three K steps of both operand tiles fit in shared memory."""
    block_n = _pow2(n, 16)
    if interpret:  # few, large programs
        block_m = min(_pow2(m, 16), max(16, (1 << 16) // block_n))
        block_k = min(_pow2(k, 16), 64)
        return _row_config(batch, m, k, (block_m, block_n, block_k), 1, None)
    tile = ROW_TILE if epilogue <= HEAVY_ROW_EPILOGUE else ROW_TILE // 2
    block_m = _fill(batch * m, min(_pow2(m, 16), max(16, tile // block_n), 128), 16)
    block_k = min(_pow2(k, 16), 32 if dtype == "float32" else 64)
    while block_k > 16 and 3 * (block_m + block_n) * block_k * ITEMSIZE[dtype] > SHARED:
        block_k //= 2
    step = (block_m + block_n) * block_k * ITEMSIZE[dtype]
    stages = max(2, min(3 if dtype == "float32" else 4, SHARED // step))
    warps = max(4, min(16, block_m * block_n // (1024 if tile == ROW_TILE else 512)))
    return _row_config(batch, m, k, (block_m, block_n, block_k), warps, stages)


def _row_config(batch: int, m: int, k: int, blocks: tuple[int, int, int], warps: int, stages: int | None) -> Launch:
    block_m, block_n, block_k = blocks
    constants = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 1,
                 "EVEN_K": k % block_k == 0, "DOT_F32": stages is None, "PERSISTENT": False}
    return Launch((batch * triton.cdiv(m, block_m),), constants, warps, stages)


def _tiles(batch: int, m: int, n: int, block_m: int, block_n: int) -> int:
    return batch * triton.cdiv(m, block_m) * triton.cdiv(n, block_n)


def _matmul_config(batch: int, m: int, n: int, k: int, blocks: tuple[int, int, int], warps: int,
                   dtype: str, accumulators: int = 1, interpret: bool = False) -> Launch:
    """A tile configuration clipped to the problem, with its grid, EVEN_K and stages (none
    in the interpreter, which has no pipeline)."""
    block_m, block_n, block_k = (min(_pow2(size, 16), edge) for size, edge in zip((m, n, k), blocks, strict=True))
    # Several accumulators share the registers one would have: narrower tiles keep them out of local memory.
    # Past four, each accumulator brings its own operand tile in flight too: half the budget (16
    # heads sharing a batch-1 row at 16 x 64 spilled 68 bytes on sm_90 with the whole of it).
    budget = ACCUMULATOR_REGISTERS if accumulators <= 4 else ACCUMULATOR_REGISTERS // 2
    while not interpret and block_n > 32 and block_m * block_n * accumulators > budget * 32 * warps:
        block_n //= 2
    constants = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8,
                 # K a multiple of the step: the K loop's loads need no mask (a constexpr, as Inductor's).
                 "EVEN_K": k % block_k == 0,
                 # The interpreter's bfloat16 dot is wrong; a float32 dot of 16-bit operands is exact.
                 "DOT_F32": interpret,
                 "PERSISTENT": False}
    stages = None if interpret else _stages(block_m, block_n * accumulators, block_k, dtype)
    return Launch((_tiles(batch, m, n, block_m, block_n),), constants, warps, stages)


def _stages(block_m: int, block_n: int, block_k: int, dtype: str) -> int:
    """Loads in flight: as many K steps of both operand tiles as fit in shared memory, 2 to 5.
    float32 operands multiply on the FMA units (an "ieee" dot), which the loads already outpace:
    Triton's default of 3."""
    if dtype == "float32":
        return 3
    step = (block_m + block_n) * block_k * ITEMSIZE[dtype]
    return max(2, min(5, SHARED // step))


def matmul_configs(batch: int, m: int, n: int, k: int, dtype: str, accumulators: int = 1,
                   epilogue: int = 0, rows: bool = False, descriptors: bool = False) -> list[Launch]:
    """The GPU tile configurations timed once per shape: the size heuristic's choice, then
    128 x 128 (8 warps), square 64 and wide 128 x 64 tiles (4 warps), each clipped to the
    problem, deduplicated. Whole-row tiles have the one choice (their width is the row's)."""
    configs = [matmul_launch(batch, m, n, k, dtype, accumulators, epilogue, rows, descriptors, interpret=False)]
    if rows:
        return configs
    if configs[0].constants["PERSISTENT"]:  # a grid of every tile is timed too
        tiles = _tiles(batch, m, n, configs[0].constants["BLOCK_M"], configs[0].constants["BLOCK_N"])
        configs.append(replace(configs[0], grid=(tiles,), constants={**configs[0].constants, "PERSISTENT": False}))
    block_k = configs[0].constants["BLOCK_K"]
    for block_m, block_n, warps in ((128, 128, 8), (64, 64, 4), (128, 64, 4)):
        config = with_descriptors(_matmul_config(batch, m, n, k, (block_m, block_n, block_k), warps, dtype,
                                                 accumulators), descriptors, False)
        if all((c.constants, c.num_warps) != (config.constants, config.num_warps) for c in configs):
            configs.append(config)
    return configs
