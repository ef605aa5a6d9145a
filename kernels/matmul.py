"""Render a matmul group: a tiled Triton matmul with its pointwise epilogue fused.

The group is one `matmul` node (a [*batch, M, K] @ [*batch, K, N], zero or
one batch dim), the views its operands are read through, and pointwise
members that consume its [*batch, M, N] result (bias, activation, residual,
cast). One program computes a BLOCK_M x BLOCK_N output tile: it walks K in
BLOCK_K steps accumulating `tl.dot` in float32, then evaluates every output
at the tile, with the matmul's value being the accumulator, and stores it.

Programs form a 1-D grid of batch * ceil(M / BLOCK_M) * ceil(N / BLOCK_N);
within a batch, GROUP_M row tiles sweep the column tiles together so the B
tiles they share stay in L2 (the Triton tutorial's grouped ordering).

Kernel parameters, in order: the group's inputs then its outputs (as every
renderer), then the runtime sizes `matmul_sizes` returns (M, N, K), then the
constexprs BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, DOT_F32, TMA and PERSISTENT that
`kernels.launch.matmul_launch` chooses. EVEN_K (K a multiple of BLOCK_K) drops
the K mask from the loop's loads. DOT_F32 upcasts the operand tiles to
float32 before the dot: Triton's interpreter computes bfloat16 dots wrongly,
and 16-bit products are exact in float32, so the result is the tensor-core one.
TMA reads each operand that can take one (kernels/descriptors.py) through a
tensor descriptor made once before the K loop; the others, and every operand
when TMA is off, load with pointers. A kernel with descriptors also has a
persistent form: with PERSISTENT, a grid of one program per SM walks the tiles
in the same grouped order (`launch.persistent` says when).
"""

from __future__ import annotations

from typing import NamedTuple

from fusec.ir import Graph, Kind, Node
from fusec.kernels.descriptors import Descriptor, operand_descriptor
from fusec.kernels.render import Index, Renderer, Value, live_lines, needs_int64
from fusec.kernels.signature import Rendered, kernel_name, param, rendered_module, size_params
from fusec.plan import Kernel
from fusec.sizes import source

# float32 operands multiply in full precision ("ieee"), as torch does by
# default; the tf32 Triton would otherwise pick drops 13 mantissa bits.
# 16-bit operands ignore the setting, so they get none.
_PRECISION = {"float32": ', input_precision="ieee"'}


def matmul_nodes(graph: Graph, kernel: Kernel) -> list[Node]:
    """The group's matmuls: one, or several of one shape that read the same left operand
    (Q/K/V projections, SwiGLU's gate and up), sharing each loaded tile of it."""
    found = [graph[m] for m in kernel.members if graph[m].kind is Kind.MATMUL]
    if not found:
        raise ValueError(f"matmul kernel {kernel.id} has no matmul member")
    return found


def matmul_node(graph: Graph, kernel: Kernel) -> Node:
    return matmul_nodes(graph, kernel)[0]


class MatmulProblem(NamedTuple):
    """What `matmul_launch` sizes the tiles from."""

    batch: int
    m: int
    n: int
    k: int
    dtype: str  # the operands'
    accumulators: int  # matmuls sharing each tile of the left operand, each with a tile of its own
    epilogue: int  # arithmetic ops after the matmuls (casts aside): registers each output tile needs
    rows: bool = False  # the epilogue reduces rows: a tile spans every column (matmul_rows.py)
    descriptors: bool = False  # an operand can be read through a TMA descriptor (kernels/descriptors.py)


def matmul_problem(graph: Graph, kernel: Kernel) -> MatmulProblem:
    nodes = matmul_nodes(graph, kernel)
    a = graph[nodes[0].operands()[0]]
    *batch, m, n = nodes[0].shape
    epilogue = sum(graph[p].kind is Kind.POINTWISE and graph[p].op != "cast" for p in kernel.members)
    rows = any(graph[p].kind is Kind.REDUCTION for p in kernel.members)
    described = any(operand_tiles(graph, kernel).values())
    return MatmulProblem((batch[0] if batch else 1), m, n, a.shape[-1], a.dtype, len(nodes), epilogue, rows,
                         described)


def operand_tiles(graph: Graph, kernel: Kernel) -> dict[tuple[str, tuple[str, ...]], Descriptor | None]:
    """Each operand tile the K loop reads, (operand, its indices), and the descriptor it can be read through."""
    nodes = matmul_nodes(graph, kernel)
    batch = ("pid_b",) if len(nodes[0].shape) == 3 else ()
    tiles = {}
    for node in nodes:
        a, b = node.operands()
        for name, tile in ((a, (*batch, "am", "ka")), (b, (*batch, "kb", "bn"))):
            tiles[(name, tile)] = operand_descriptor(graph, kernel, name, tile)
    return tiles


def matmul_sizes(graph: Graph, kernel: Kernel) -> tuple[int, ...]:
    """The size arguments the kernel takes after its tensors: (M, N, K)."""
    problem = matmul_problem(graph, kernel)
    return problem.m, problem.n, problem.k


class MatmulRenderer(Renderer):
    # Operand rows and columns wrap around (`am`, `bn`) and need no mask;
    # only K is masked while loading, and M and N when storing.
    ROOTS = {"om": "mmask", "on": "nmask", "ka": "kmask[None, :]", "kb": "kmask[:, None]"}

    def __init__(self, graph: Graph, kernel: Kernel, interpret: bool = True) -> None:
        super().__init__(graph, kernel, dict(self.ROOTS), interpret=interpret)
        self.nodes = matmul_nodes(graph, kernel)
        self.node = self.nodes[0]
        self.accumulator = {node.name: f"acc{i}" for i, node in enumerate(self.nodes)}
        self.batched = len(self.node.shape) == 3
        self.tile = self._index("om", "on")
        self.wide = needs_int64(graph, kernel)
        self.reading_operand: str | None = None  # the operand tile's shape while one is read
        self.scalar_shape = "[1, 1]"
        self.descriptors = {key: d for key, d in operand_tiles(graph, kernel).items() if d is not None}
        self.described: dict[Descriptor, str] = {}  # descriptor -> its name in the kernel
        self.tiles: dict[tuple[str, tuple[str, ...]], str] = {}  # operand tiles read in this K step

    def _index(self, *dims: str) -> Index:
        return Index(("pid_b", *dims) if self.batched else dims)

    # values --------------------------------------------------------------------
    def compute(self, node: Node, idx: Index) -> Value:
        if node.name not in self.accumulator:
            return super().compute(node, idx)
        # Fusion admits only reshapes between the matmul and its epilogue, so every
        # read of it inside the group is of the current tile, however it is spelled.
        return Value(self.accumulator[node.name], "float32")

    def load(self, node: Node, idx: Index) -> Value:
        """Operand tiles load in their own dtype (tl.dot takes 16-bit floats); the epilogue upcasts."""
        if not self.reading_operand:
            return super().load(node, idx)
        addr = self.address(idx, node)
        mask = self.out.mask(addr)
        guard = "" if mask is None else f", mask={mask}, other=0"
        # Pointers for the whole tile, even where the address lacks a dim (a batch-1 row read by
        # every row of the tile): Triton then copies 16 bytes at a time, where a [1, BLOCK_K]
        # vector spread over more threads than it has elements is read 16 bits at a time.
        pointers = f"tl.broadcast_to({param(node.name)} + {addr}, {self.reading_operand})"
        return Value(self.out.let(f"tl.load({pointers}{guard})", "v"), node.dtype)

    def operand(self, name: str, idx: Index, shape: str) -> str:
        """The operand's tile (of `shape`), loaded in the operand dtype."""
        self.reading_operand = shape
        try:
            value = self.value(name, Index(idx.dims[-len(self.graph[name].shape):]))
        finally:
            self.reading_operand = None
        dtype = self.graph[name].dtype
        return value.expr if value.dtype == dtype else self.to(value.expr, dtype)

    # the kernel ----------------------------------------------------------------
    def render(self) -> Rendered:
        self._make_descriptors()
        pid = "tl.program_id(0).to(tl.int64)" if self.wide else "tl.program_id(0)"
        self.out.emit(f"{'first' if self.descriptors else 'pid'} = {pid}")
        self.out.emit("grid_m = (M + BLOCK_M - 1) // BLOCK_M")
        self.out.emit("grid_n = (N + BLOCK_N - 1) // BLOCK_N")
        if self.descriptors:
            self._persistent_or_not()
        else:
            self._output_tile()
        symbols = size_params(self.graph, self.kernel)
        constexprs = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "EVEN_K", "DOT_F32", "TMA", "PERSISTENT")
        params = [*self.params(), *symbols, "M", "N", "K", *(f"{c}: tl.constexpr" for c in constexprs)]
        body = live_lines(self.out.scope.lines, [])
        return rendered_module(kernel_name(self.graph, self.kernel), params, body, [self], self.extras(), symbols)

    def _persistent_or_not(self) -> None:
        """The tile's code twice: PERSISTENT (a launch of one program per SM, for a matmul of one
        batch) walks the tiles, with the loop nest flattened so the next tile's copies start under
        this one's epilogue; else the program's one tile (a loop run once is not compiled away)."""
        lines = self.out.scope.lines
        start = len(lines)
        with self.out.block("for pid in tl.range(first, grid_m * grid_n, tl.num_programs(0), flatten=True):"):
            self._output_tile()
        loop = lines[start:]
        del lines[start:]
        lines += ["if PERSISTENT:", *("    " + line for line in loop), "else:", "    pid = first", *loop[1:]]

    def _output_tile(self) -> None:
        """One output tile: its K loop, then its epilogue and stores."""
        self._tile_order()
        for acc in self.accumulator.values():
            self.out.emit(f"{acc} = tl.full([BLOCK_M, BLOCK_N], 0, tl.float32)")
        with self.out.block("for k0 in range(0, K, BLOCK_K):"):
            offsets = "k0 + tl.arange(0, BLOCK_K)"
            self.out.emit(f"k = ({offsets}).to(tl.int64)" if self.wide else f"k = {offsets}")
            # EVEN_K: no K tail; the all-true mask folds away, so K loads go unmasked. Otherwise K
            # is compared as written in the graph (a number when static): Triton then knows how many
            # elements share a mask bit (8 for K = 1000) and copies 16 bytes at a time, pipelined,
            # where the argument K, not a multiple of 16, would give it 1: scalar loads, no stages.
            limit = source(self.graph[self.node.operands()[0]].symbolic_shape[-1])
            self.out.emit(f"kmask = tl.full([BLOCK_K], True, tl.int1) if EVEN_K else k < {limit}")
            self.out.bind_root("ka", "k[None, :]", {"ka"})
            self.out.bind_root("kb", "k[:, None]", {"kb"})
            for node in self.nodes:
                self._accumulate(node)
        self._epilogue_index()
        for name in self.kernel.outputs:
            node = self.graph[name]
            idx, mask, shape = self.output_at(node)
            self.out.emit(self.store(node, idx, self.value(name, idx), mask, shape))

    def _epilogue_index(self) -> None:
        """The epilogue's rows and columns, spanning the whole tile: a bias (or a per-row value) then
        loads as a tile too, which Triton lays out for 128-bit loads (a [1, BLOCK_N] vector would be
        read in the accumulator's layout, two 16-bit values a thread) and the accumulator is
        converted to that layout once, as its 128-bit stores need anyway."""
        self.out.emit("om = tl.broadcast_to(rm[:, None], [BLOCK_M, BLOCK_N])")
        self.out.emit("on = tl.broadcast_to(rn[None, :], [BLOCK_M, BLOCK_N])")
        self.out.emit("mmask = om < M")
        self.out.emit("nmask = on < N")

    def output_at(self, node: Node) -> tuple[Index, str, str]:
        """Where an output is stored from the tile: its index, mask and block shape."""
        idx = self.tile
        if node.shape != self.node.shape:  # a reshape of the product, e.g. [B*S, N] -> [B, S, N]
            idx = self.reshape_index(self.tile, self.node.shape, node.shape)
        return idx, "mmask & nmask", "[BLOCK_M, BLOCK_N]"

    def _accumulate(self, node: Node) -> None:
        """acc += the K slice of a @ b; a tile loaded once serves every matmul that reads it."""
        a, b = node.operands()
        dtype = self.graph[a].dtype
        acc = self.accumulator[node.name]
        x = self._operand_tile(a, self._index("am", "ka"), "[BLOCK_M, BLOCK_K]")
        y = self._operand_tile(b, self._index("kb", "bn"), "[BLOCK_K, BLOCK_N]")
        self.out.emit("if DOT_F32:")
        self.out.emit(f"    {acc} = tl.dot({x}.to(tl.float32), {y}.to(tl.float32), {acc})")
        self.out.emit("else:")
        self.out.emit(f"    {acc} = tl.dot({x}, {y}, {acc}{_PRECISION.get(dtype, '')})")

    def _make_descriptors(self) -> None:
        """One descriptor per operand that can take one, made before the K loop when TMA is on."""
        for descriptor in self.descriptors.values():
            self.described.setdefault(descriptor, f"desc{len(self.described)}")
        if self.described:
            with self.out.block("if TMA:"):
                for descriptor, name in self.described.items():
                    self.out.emit(descriptor.make(name, param(descriptor.input)))

    def _operand_tile(self, name: str, idx: Index, shape: str) -> str:
        """The operand's tile this K step, read once for every matmul that uses it: through its
        descriptor when TMA is on and it has one, else with pointers."""
        key = (name, idx.dims)
        if key not in self.tiles:
            descriptor = self.descriptors.get(key)
            if descriptor is None:
                self.tiles[key] = self._pointer_tile(name, idx, shape)
                return self.tiles[key]
            tile = self.tiles[key] = self.out.fresh("tile")
            with self.out.block("if TMA:"):
                self.out.emit(f"{tile} = {descriptor.load(self.described[descriptor], idx.dims[-2:])}")
            with self.out.block("else:"):
                self.out.emit(f"{tile} = {self._pointer_tile(name, idx, shape)}")
        return self.tiles[key]

    def _pointer_tile(self, name: str, idx: Index, shape: str) -> str:
        """The operand's tile loaded with pointers, zero past K, broadcast to the dot's `shape`."""
        x = self.operand(name, idx, shape)
        root = idx.dims[-1] if idx.dims[-1] == "ka" else idx.dims[-2]
        # An operand whose K dim is size 1 or stride 0 loads unmasked: zero its K tail
        # (a padded 0 * inf would otherwise make NaN).
        if root not in self.out.depends(x):
            x = f"tl.where({self.out.roots[root]}, {x}, 0)"
        # A dim missing from an address leaves the tile narrower than the dot needs.
        return self.out.let(f"tl.broadcast_to({x}, {shape})", "v")

    def _tile_order(self) -> None:
        """Which tile `pid` is, grouped for L2 reuse, and its wrapped row/column offsets."""
        if self.batched:
            self.out.emit("pid_b = pid // (grid_m * grid_n)")
            self.out.emit("tile = pid % (grid_m * grid_n)")
        else:
            self.out.emit("tile = pid")
        for line in (
            "width = GROUP_M * grid_n",
            "first_m = (tile // width) * GROUP_M",
            "group_m = tl.minimum(grid_m - first_m, GROUP_M)",
            "pid_m = first_m + (tile % width) % group_m",
            "pid_n = (tile % width) // group_m",
            "rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
            "rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
            "am = (rm % M)[:, None]",
            "bn = (rn % N)[None, :]",
        ):
            self.out.emit(line)


def render_matmul(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """A matmul group's kernel, for the interpreter or a GPU."""
    return MatmulRenderer(graph, kernel, interpret).render()
