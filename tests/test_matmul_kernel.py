"""The matmul renderer on hand-built groups, run by Triton's interpreter against float64 torch."""

import math

import pytest
import torch

from fusec.ir import Graph, Kind, Node, Ref, contiguous_strides
from fusec.kernels.compile import load_kernel
from fusec.kernels.launch import matmul_configs, matmul_launch
from fusec.kernels.matmul import matmul_problem, matmul_sizes, render_matmul
from fusec.plan import Kernel, KernelKind

TOL = {"float32": dict(rtol=1e-4, atol=1e-4), "float16": dict(rtol=2e-3, atol=1e-2),
       "bfloat16": dict(rtol=1.6e-2, atol=6e-2)}
SQRT1_2 = 0.7071067811865476


class Builder:
    """A graph under construction, and the random tensors its inputs stand for."""

    def __init__(self, dtype: str = "float32") -> None:
        self.graph = Graph(name="test")
        self.dtype = dtype
        self.tensors: dict[str, torch.Tensor] = {}

    def input(self, name: str, shape: tuple[int, ...], transposed: bool = False, dtype: str | None = None) -> str:
        """An input of `shape`; `transposed` stores its last two dims swapped in memory."""
        dtype = dtype or self.dtype
        storage = (*shape[:-2], shape[-1], shape[-2]) if transposed else shape
        tensor = torch.randn(storage).to(getattr(torch, dtype))
        tensor = tensor.transpose(-1, -2) if transposed else tensor
        self.tensors[name] = tensor
        self.graph.add(Node(name, "input", Kind.INPUT, shape, dtype, strides=tuple(tensor.stride())))
        return name

    def op(self, name: str, op: str, kind: Kind, args: tuple, shape: tuple[int, ...], dtype: str | None = None) -> str:
        dtype = dtype or self.dtype
        self.graph.add(Node(name, op, kind, shape, dtype, strides=contiguous_strides(shape), args=args))
        return name

    def matmul(self, name: str, a: str, b: str) -> str:
        sa, sb = self.graph[a].shape, self.graph[b].shape
        return self.op(name, "matmul", Kind.MATMUL, (Ref(a), Ref(b)), (*sa[:-1], sb[-1]))

    def pointwise(self, name: str, op: str, *args, dtype: str | None = None) -> str:
        """An epilogue op: its first operand has the output's shape, the others broadcast."""
        return self.op(name, op, Kind.POINTWISE, args, self.graph[args[0].name].shape, dtype)

    def kernel(self, outputs: list[str]) -> Kernel:
        """Every non-input node is a member; tensors they read from outside are inputs."""
        members = [n.name for n in self.graph if n.kind is not Kind.INPUT]
        inputs = [op for m in members for op in self.graph[m].operands() if op not in members]
        return Kernel(id="k0", kind=KernelKind.MATMUL, members=tuple(members), inputs=tuple(dict.fromkeys(inputs)),
                      outputs=tuple(outputs), numel=self.graph[outputs[0]].numel, bytes=0)


def run(b: Builder, kernel: Kernel, tmp_path) -> dict[str, torch.Tensor]:
    """Render, load and launch the kernel as the runtime does; outputs start as NaN."""
    result = render_matmul(b.graph, kernel)
    source, fn_name = result.source, result.fn_name
    outs = {}
    for name in kernel.outputs:
        node = b.graph[name]
        outs[name] = torch.full(node.shape, math.nan, dtype=getattr(torch, node.dtype))
    if kernel.numel:
        launch = matmul_launch(*matmul_problem(b.graph, kernel), interpret=True)
        fn = load_kernel(source, fn_name, interpret=True, cache_dir=tmp_path)
        args = [b.tensors[name] for name in kernel.inputs] + list(outs.values())
        fn[launch.grid](*args, *matmul_sizes(b.graph, kernel), **launch.constants, num_warps=launch.num_warps)
    return outs


def check(got: torch.Tensor, expected: torch.Tensor, dtype: str) -> None:
    assert got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, **TOL[dtype])


def f64(b: Builder, name: str) -> torch.Tensor:
    return b.tensors[name].double()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mnk", [(32, 32, 32), (37, 45, 70), (5, 130, 17), (600, 70, 16), (1, 9, 1), (20, 16, 100)],
                         ids=["square", "ragged", "wide", "tall", "outer", "k-tail"])
def test_mm(mnk, dtype, tmp_path):
    torch.manual_seed(0)
    m, n, k = mnk
    b = Builder(dtype)
    b.matmul("mm", b.input("a", (m, k)), b.input("b", (k, n)))
    got = run(b, b.kernel(["mm"]), tmp_path)["mm"]
    check(got, f64(b, "a") @ f64(b, "b"), dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bmm(dtype, tmp_path):
    torch.manual_seed(1)
    b = Builder(dtype)
    b.matmul("mm", b.input("a", (3, 19, 29)), b.input("b", (3, 29, 23)))
    got = run(b, b.kernel(["mm"]), tmp_path)["mm"]
    check(got, f64(b, "a") @ f64(b, "b"), dtype)


def test_transposed_operands(tmp_path):
    """a arrives transposed in memory; b is a permute view of an [N, K] weight (x @ w.t())."""
    torch.manual_seed(2)
    b = Builder()
    a = b.input("a", (21, 40), transposed=True)
    wt = b.op("wt", "permute", Kind.VIEW, (Ref(b.input("w", (18, 40))), (1, 0)), (40, 18))
    b.matmul("mm", a, wt)
    got = run(b, b.kernel(["mm"]), tmp_path)["mm"]
    check(got, f64(b, "a") @ f64(b, "w").t(), "float32")


def test_batched_views(tmp_path):
    """A Linear over [B, S, K] reads x through a reshape and its weight through expand + permute."""
    torch.manual_seed(3)
    b = Builder("float16")
    x = b.op("x", "reshape", Kind.VIEW, (Ref(b.input("x2", (2 * 11, 24))), (2, 11, 24)), (2, 11, 24))
    wx = b.op("wx", "expand", Kind.VIEW, (Ref(b.input("w", (1, 13, 24))), (2, 13, 24)), (2, 13, 24))
    wt = b.op("wt", "permute", Kind.VIEW, (Ref(wx), (0, 2, 1)), (2, 24, 13))
    b.matmul("mm", x, wt)
    got = run(b, b.kernel(["mm"]), tmp_path)["mm"]
    check(got, f64(b, "x2").reshape(2, 11, 24) @ f64(b, "w").transpose(1, 2), "float16")


@pytest.mark.parametrize("both", [False, True], ids=["one", "both"])
def test_stride_zero_k(both, tmp_path):
    """Operands expanded along K drop k from their addresses: the K tail past K must still add nothing."""
    torch.manual_seed(4)
    b = Builder()
    col = b.op("col", "expand", Kind.VIEW, (Ref(b.input("c", (9, 1))), (9, 20)), (9, 20))
    row = b.input("r", (1, 7) if both else (20, 7))
    if both:
        row = b.op("row", "expand", Kind.VIEW, (Ref(row), (20, 7)), (20, 7))
    b.matmul("mm", col, row)
    got = run(b, b.kernel(["mm"]), tmp_path)["mm"]
    check(got, f64(b, "c").expand(9, 20) @ f64(b, "r").expand(20, 7), "float32")


def gelu_epilogue(b: Builder, mm: str, bias: str) -> str:
    """Linear + bias + exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    x = b.pointwise("mm_bias", "add", Ref(mm), Ref(bias))
    erf = b.pointwise("mm_erf", "erf", Ref(b.pointwise("mm_scaled", "mul", Ref(x), SQRT1_2)))
    half = b.pointwise("mm_half", "mul", Ref(x), 0.5)
    return b.pointwise("mm_gelu", "mul", Ref(half), Ref(b.pointwise("mm_one", "add", Ref(erf), 1.0)))


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x * SQRT1_2))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bias_gelu_epilogue(dtype, tmp_path):
    torch.manual_seed(5)
    b = Builder(dtype)
    mm = b.matmul("mm", b.input("x", (33, 48)), b.input("w", (48, 40), transposed=True))
    out = gelu_epilogue(b, mm, b.input("bias", (40,)))
    kernel = b.kernel([out])
    source = render_matmul(b.graph, kernel).source
    assert "tl.dot" in source and "tl.math.erf" in source
    got = run(b, kernel, tmp_path)[out]
    check(got, gelu(f64(b, "x") @ f64(b, "w") + f64(b, "bias")), dtype)


def test_residual_scale_and_raw_output(tmp_path):
    """The raw product escapes too (used elsewhere), next to 0.5 * mm + residual."""
    torch.manual_seed(6)
    b = Builder()
    mm = b.matmul("mm", b.input("a", (2, 17, 30)), b.input("b", (2, 30, 26)))
    out = b.pointwise("mm_res", "add", Ref(b.pointwise("mm_scale", "mul", Ref(mm), 0.5)),
                      Ref(b.input("r", (2, 17, 26))))
    got = run(b, b.kernel([mm, out]), tmp_path)
    product = f64(b, "a") @ f64(b, "b")
    check(got[mm], product, "float32")
    check(got[out], 0.5 * product + f64(b, "r"), "float32")


def test_cast_output(tmp_path):
    torch.manual_seed(7)
    b = Builder()
    mm = b.matmul("mm", b.input("a", (24, 36)), b.input("b", (36, 28)))
    out = b.pointwise("mm_half", "cast", Ref(mm), dtype="float16")
    got = run(b, b.kernel([out]), tmp_path)[out]
    assert got.dtype == torch.float16
    check(got, f64(b, "a") @ f64(b, "b"), "float16")


@pytest.mark.parametrize("mnk", [(0, 8, 16), (8, 0, 16), (12, 10, 0)], ids=["m0", "n0", "k0"])
def test_zero_sizes(mnk, tmp_path):
    """Empty M or N launch nothing; K = 0 is a product of zeros, so only the bias is left."""
    m, n, k = mnk
    b = Builder()
    mm = b.matmul("mm", b.input("a", (m, k)), b.input("b", (k, n)))
    out = b.pointwise("mm_bias", "add", Ref(mm), Ref(b.input("bias", (n,))))
    got = run(b, b.kernel([mm, out]), tmp_path)
    check(got[mm], torch.zeros(m, n, dtype=torch.float64), "float32")
    check(got[out], f64(b, "bias").expand(m, n), "float32")


def test_source_shape(tmp_path):
    """One kernel holds the K loop, the dot and the epilogue; sizes follow the tensors."""
    b = Builder("bfloat16")
    mm = b.matmul("mm", b.input("x", (4, 8, 32)), b.input("w", (4, 32, 16)))
    out = b.pointwise("mm_relu", "relu", Ref(mm))
    kernel = b.kernel([out])
    result = render_matmul(b.graph, kernel)
    source, fn_name = result.source, result.fn_name
    assert fn_name == "k0_matmul_relu"
    # the tile's code twice: walked by a persistent program, or a program's one tile (its
    # operands can take TMA descriptors, with which a persistent launch is chosen)
    assert source.count("@triton.jit") == 1 and source.count("for k0 in range(0, K, BLOCK_K):") == 2
    assert "tl.dot" in source and "tl.where" in source and source.count("tl.store") == 2
    assert "if PERSISTENT:" in source
    assert "input_precision" not in source  # 16-bit operands take tensor cores as they are
    assert matmul_sizes(b.graph, kernel) == (8, 16, 32)
    # one matmul, relu after it; both operands contiguous with 64-byte rows: TMA descriptors can read them
    assert matmul_problem(b.graph, kernel) == (4, 8, 16, 32, "bfloat16", 1, 1, False, True)


def test_huge_operands_index_in_int64():
    """Offsets past 2**31 elements need 64-bit index math (rendered only: nothing is allocated)."""
    b = Builder("float16")
    for name, shape in (("a", (65536, 40000)), ("b", (40000, 64))):
        b.graph.add(Node(name, "input", Kind.INPUT, shape, "float16", strides=contiguous_strides(shape)))
    b.matmul("mm", "a", "b")
    source = render_matmul(b.graph, b.kernel(["mm"])).source
    assert "pid = tl.program_id(0).to(tl.int64)" in source and "k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)" in source


def test_float32_dot_is_ieee():
    b = Builder()
    b.matmul("mm", b.input("a", (16, 16)), b.input("b", (16, 16)))
    source = render_matmul(b.graph, b.kernel(["mm"])).source
    assert 'input_precision="ieee"' in source


@pytest.mark.parametrize("problem, blocks, warps, stages", [
    # A bias add after one matmul: Hopper's 128 x 256 tiles, the long side along the larger dim.
    ((1, 4096, 4096, 4096, "float16", 1, 1), (128, 256, 64), 8, 4),
    ((1, 8192, 1024, 1024, "bfloat16", 1, 1), (256, 128, 64), 8, 4),
    # GELU or a residual after it, SwiGLU's two accumulators: 128 x 128, stages up to shared memory.
    ((1, 4096, 4096, 4096, "bfloat16", 1, 6), (128, 128, 64), 8, 5),
    ((1, 4096, 5632, 2048, "bfloat16", 2, 3), (128, 128, 64), 8, 4),
    ((1, 4096, 4096, 1024, "bfloat16", 3, 3), (128, 64, 64), 8, 5),  # Q, K, V: narrower tiles
    ((1, 8192, 4096, 1024, "bfloat16", 1, 14), (128, 64, 64), 8, 5),  # a GELU's gradient
    ((1, 512, 512, 512, "bfloat16", 1, 1), (64, 64, 64), 4, 5),
    ((1, 8, 4096, 4096, "float16", 1, 0), (16, 64, 64), 4, 5),
    # 16 heads sharing a batch-1 row: half the accumulator budget (16 x 64 spilled 68 bytes).
    ((1, 1, 512, 512, "bfloat16", 16, 2), (16, 32, 64), 4, 3),
    ((8, 1024, 1024, 64, "float32", 1, 0), (128, 128, 32), 8, 3),
    ((1, 30, 20, 10, "float32", 1, 0), (32, 32, 16), 4, 3),
])
def test_gpu_tiles(problem, blocks, warps, stages):
    launch = matmul_launch(*problem, interpret=False)
    c = launch.constants
    assert (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) == blocks
    assert (launch.num_warps, launch.num_stages) == (warps, stages)
    assert c["DOT_F32"] is False and c["EVEN_K"] is (problem[3] % blocks[2] == 0)
    batch, m, n = problem[:3]
    assert launch.grid == (batch * -(-m // blocks[0]) * -(-n // blocks[1]),)
    # Every K step's operand tiles, each stage's, fit in an sm_90 program's shared memory.
    size = 4 if problem[4] == "float32" else 2
    assert launch.num_stages * (blocks[0] + blocks[1] * problem[5]) * blocks[2] * size <= 227 * 1024


@pytest.mark.parametrize("k, even", [(4096, True), (4000, False), (24, False), (16, True)])
def test_even_k_is_decided_at_launch(k, even):
    for interpret in (True, False):
        assert matmul_launch(1, 256, 256, k, "bfloat16", interpret=interpret).constants["EVEN_K"] is even


def test_configs_timed_on_a_gpu_start_with_the_heuristics_and_differ():
    configs = matmul_configs(1, 8192, 3072, 1024, "bfloat16", 1, 1)
    assert configs[0] == matmul_launch(1, 8192, 3072, 1024, "bfloat16", 1, 1, interpret=False)
    shapes = [(c.constants["BLOCK_M"], c.constants["BLOCK_N"], c.num_warps) for c in configs]
    assert shapes == [(256, 128, 8), (128, 128, 8), (64, 64, 4), (128, 64, 4)]
    assert all(c.num_stages and c.constants["EVEN_K"] for c in configs)
