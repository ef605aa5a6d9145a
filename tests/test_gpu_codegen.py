"""Every kernel fusec generates for representative models compiles for an H100 (sm_90)
with Triton's own compiler and ptxas, no GPU needed: catches what the CPU interpreter
accepts but the GPU compiler rejects (float-only math on integers, scalar/block mixes,
shared memory over the limit)."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
import fusec.runtime as runtime
from fusec.bench import static as bench_static
from fusec.compiler import rendered
from fusec.kernels.call import KernelCall
from fusec.kernels.compile import load_kernel
from fusec.kernels.kinds import static_launch
from fusec.kernels.reduction_split import SPLIT_PARAM
from tests.eager import check

try:
    from triton.backends.compiler import GPUTarget
except ImportError:  # pragma: no cover - very old Triton
    GPUTarget = None

SHARED_LIMIT = 227 * 1024
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}


def _signature(arg) -> str:
    if isinstance(arg, torch.Tensor):
        return "*" + _TYPES[arg.dtype]
    return "i32" if -(2**31) <= arg < 2**31 else "i64"


@pytest.fixture
def sm90(monkeypatch, tmp_path):
    """Compile, for sm_90 with the GPU launch configuration, the GPU source of every kernel the
    runtime launches, with the signature `fusec bench --static` derives (checked against the call)."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    compiled = []
    owners: dict[int, tuple] = {}  # id(KernelCall) -> (graph, plan kernel)
    build = runtime.Runtime._build

    def build_and_note_owners(self):
        call = build(self)
        for kernel in self.plan.all_kernels():
            owners[id(self.calls[kernel.id])] = (self.plan.graph, kernel)
        return call

    launch = KernelCall.__call__

    def also_for_gpu(self, *args):
        graph, kernel = owners[id(self)]
        gpu = rendered(graph, kernel, interpret=False)
        launches = bench_static.gpu_launches(graph, gpu)
        fn = load_kernel(gpu.source, gpu.fn_name, interpret=False, cache_dir=tmp_path)
        types, _ = bench_static.signature(graph, gpu, fn, launches[0].constants)
        # Every argument the interpreter's kernel takes here, by name, has the type the GPU's takes. Their
        # parameters differ in two: a row split on the GPU takes its partials (here it may run whole), and a
        # GPU gather checks its indices on the device where the interpreter's sets the bounds flag.
        given = dict(zip(self.fn.arg_names, [*args, *self.sizes], strict=False))
        plain = [n for n in fn.arg_names if n not in launches[0].constants]
        assert set(plain) ^ set(given) <= {SPLIT_PARAM, "p_bad_index"}, kernel.id
        assert {n: types[n] for n in plain if n in given} == {n: _signature(given[n]) for n in plain if n in given}
        for stage in range(len(launches)):
            binary = bench_static.compile_sm90(graph, kernel, tmp_path, stage)
            assert binary.metadata.shared <= SHARED_LIMIT, (kernel.id, binary.metadata.shared)
        compiled.append(kernel.id)
        return launch(self, *args)

    monkeypatch.setattr(runtime.Runtime, "_build", build_and_note_owners)
    monkeypatch.setattr(KernelCall, "__call__", also_for_gpu)
    return compiled


def run(fn, *args):
    torch._dynamo.reset()
    out = fusec.compile(fn)(*args)
    return out


def test_pointwise_reduction_and_combo_kernels_compile_for_sm90(sm90):
    torch.manual_seed(0)
    x, b = torch.randn(64, 96), torch.randn(96)
    run(lambda x, b: F.gelu(x + b) * torch.sigmoid(x) - x.abs().sqrt(), x, b)
    run(lambda x: (torch.softmax(x, -1), torch.var_mean(x, -1), x.argmax(-1), x.sum(0)), x)
    run(lambda x: (torch.softmax(x, -1), x.argmax(-1), x.amax(-1)), torch.randn(3, 9000))  # looped rows
    run(lambda x: (torch.logsumexp(x, -1), torch.var_mean(x, -1)), torch.randn(3, 9000))  # online, Welford
    run(lambda x: torch.var(x, -1), torch.randn(3, 9000, dtype=torch.float64))
    run(lambda x, t: F.cross_entropy(x, t), x, torch.randint(0, 96, (64,)))  # totals via the ticket
    run(lambda *xs: tuple(torch.tanh(t) * i for i, t in enumerate(xs)), *[torch.randn(5 + i) for i in range(4)])
    run(lambda x: F.dropout(x, 0.1, training=True), x)
    run(lambda x, b: torch.cat([x.sin(), b.expand(3, 96) * 2], 0), x, b)
    n = torch.randint(-5, 5, (33,))
    run(lambda n: (n ** 3 + torch.floor(n), (n > 0) & (n < 3), n.to(torch.float16) * 0.5), n)
    assert len(sm90) >= 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_kernels_compile_for_sm90(sm90, dtype):
    torch.manual_seed(1)
    lin, up = nn.Linear(64, 96).to(dtype), nn.Linear(64, 96, bias=False).to(dtype)
    x = torch.randn(2, 40, 64).to(dtype)
    with torch.no_grad():
        run(lambda x: F.gelu(lin(x)) + 1, x)
        run(lambda x: F.silu(lin(x)) * up(x), x)
        run(lambda a, b: torch.relu(torch.bmm(a, b.transpose(1, 2))), x, x)
    assert len(sm90) == 3


def test_bfloat16_rounding_is_emulated_for_the_interpreter_only(sm90, tmp_path):
    """The interpreter truncates when it converts to bfloat16, so its source rounds by bit
    manipulation; a GPU converts with round-to-nearest-even (cvt.rn.bf16), a plain cast."""
    torch.manual_seed(2)
    x, y = torch.randn(64, 96, dtype=torch.bfloat16), torch.randn(96, dtype=torch.bfloat16)
    fn = lambda x, y: (((x.float() * 1.7).to(torch.bfloat16) + y) * 0.5, torch.sigmoid(x) * y)
    report = check(fn, x, y, kernels=1)  # the interpreter's source, against eager
    assert sm90  # and the GPU's compiled for sm_90
    graph, kernel = report.graphs[0].plan.graph, report.kernels[0]
    assert "bitcast=True" in kernel.source and "0x7FFF" in kernel.source
    gpu = rendered(graph, kernel, interpret=False).source
    assert "bitcast" not in gpu and "0x7FFF" not in gpu and "tl.bfloat16" in gpu
    ptx = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ptx"]
    assert "cvt.rn.bf16" in ptx


def test_gpu_source_differs_from_the_interpreters_only_where_bfloat16_is_involved():
    x = torch.randn(33, 40)
    report = check(lambda x: torch.softmax(x * 2, -1) + 1, x, kernels=1)
    graph, kernel = report.graphs[0].plan.graph, report.kernels[0]
    assert rendered(graph, kernel, interpret=False).source == kernel.source


def test_pooling_padding_group_norm_and_gathers_compile_for_sm90(sm90):
    torch.manual_seed(3)
    x = torch.randn(2, 8, 9, 9)
    gn = nn.GroupNorm(2, 8)
    run(lambda x: F.max_pool2d(torch.relu(x), 3, 2, 1, return_indices=True), x)  # int64 indices, NaN rule
    run(lambda x: (F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), F.pad(x, (1, 2), value=-1.0)), x)
    run(lambda x: F.adaptive_avg_pool2d(F.silu(gn(x)), 1), x)
    run(lambda x, i: x[:, i] * 2, x, torch.tensor([1, -2, 0]))
    pool = nn.Sequential(nn.Tanh(), nn.MaxPool2d(3, 2, 1))
    xg = x.clone().requires_grad_()
    torch._dynamo.reset()
    fusec.compile(pool)(xg).sum().backward()  # the backward's spread and shifted windows
    assert len(sm90) >= 6


def test_special_functions_compile_for_sm90(sm90):
    # fusec's own approximations (the interpreter cannot call libdevice): float32 and float64 math,
    # bitcasts, half inputs widened.
    x = torch.rand(300) * 1.8 - 0.9
    run(lambda x: torch.atan2(x, x.flip(0)) + torch.asin(x) * torch.acosh(x.abs() + 1) + torch.erfinv(x), x)
    run(lambda x: torch.lgamma(x) + torch.digamma(x) + torch.polygamma(1, x) + torch.special.ndtri(x.abs()), x)
    run(lambda x: torch.special.i0e(x) + torch.special.modified_bessel_k1(x.abs()) + torch.erfc(x), x)
    run(lambda x: torch.nextafter(x, -x) + torch.copysign(x, -x) + torch.signbit(x), x)
    run(lambda x: torch.special.i1(x) + torch.atanh(x), x.half())
    assert len(sm90) == 5


def test_tiled_transposes_and_eviction_hints_compile_for_sm90(sm90, tmp_path):
    """2-D tiles over every transposition of a 3-D input, with a broadcast row (evict_last)
    and a looped row (evict_last, then evict_first), compile for sm_90: the hints reach the PTX."""
    torch.manual_seed(4)
    x, b = torch.randn(3, 20, 24), torch.randn(20)
    for perm in ((0, 2, 1), (2, 1, 0), (1, 2, 0)):
        y = torch.randn(*[x.shape[p] for p in perm])
        run(lambda x, y, perm=perm: y + torch.sigmoid(x.permute(*perm)), x, y)
    run(lambda x, b: x.transpose(1, 2) * b + 1, x, b)
    assert len(sm90) == 4
    long_rows = torch.randn(4, 40000)
    report = check(lambda x: torch.softmax(x, -1), long_rows, kernels=1)
    graph, kernel = report.graphs[0].plan.graph, report.kernels[0]
    # 4 rows split on a GPU: stage 1 keeps the row it reads for stage 2 (evict_last), which streams it.
    first, second = (bench_static.compile_sm90(graph, kernel, tmp_path, stage).asm["ptx"] for stage in (0, 1))
    assert "evict_last" in first and "evict_first" in second


def test_bessel_airy_and_integer_bit_ops_compile_for_sm90(sm90):
    x = torch.rand(300) * 40 - 20
    run(lambda x: torch.special.bessel_j0(x) + torch.special.bessel_y1(x.abs()) + torch.special.airy_ai(x), x)
    # Shifts and bit ops mix signedness and widths (a uint8 beside int32 counts, negative literals).
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        a, counts = torch.arange(-50, 50).to(dtype), torch.arange(100, dtype=torch.int32) % 70
        run(lambda a, c: [(a << c) ^ (a >> c), ~a & 0x5A, -100 >> c, a | c], a, counts)
    assert len(sm90) == 6


def _matmul_kernel(fn, *args):
    """The one matmul kernel fusec plans for `fn` (planned only: CPU tensors of GPU sizes)."""
    torch._dynamo.reset()
    with torch.no_grad():
        (graph,) = fusec.inspect(fn, *args).graphs
    (kernel,) = [k for k in graph.plan.kernels if k.kind == "matmul"]
    return graph.plan.graph, kernel


def _gelu_gradient(y, r):
    """A GELU's gradient times r (the shape of a backward's epilogue): 12 ops after the matmul."""
    return r * (F.gelu(y) + y * torch.exp(-0.5 * y * y) * 0.3989)


@pytest.mark.slow
@pytest.mark.parametrize("epilogue, tile, stages, persistent", [
    (lambda y, r: y, (256, 128), 4, False),
    (lambda y, r: F.gelu(y), (128, 128), 5, True),
    (_gelu_gradient, (128, 64), 5, True),
], ids=["bias", "gelu", "gelu-gradient"])
def test_hopper_matmul_tiles_compile_without_spills(tmp_path, epilogue, tile, stages, persistent):
    """Linear 1024 -> 2048 over 4096 rows, bfloat16: a bias add alone takes 256 x 128 tiles in
    4 stages (192 KiB of shared memory, an 8-byte barrier per stage), a GELU after it 128 x 128
    tiles in 5 (160 KiB), a longer epilogue 128 x 64; 8 warps of wgmma, operands copied by TMA
    (both contiguous, rows of 2 KiB), 128-bit stores, nothing spilled. 512 or 1024 tiles (two
    waves or more) take a persistent kernel, a program per SM: its output tile goes to its
    128-bit stores through shared memory of its own (the pipeline's buffers stay live across tiles)."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    torch.manual_seed(5)
    lin = nn.Linear(1024, 2048).to(torch.bfloat16)
    x, r = torch.randn(4096, 1024, dtype=torch.bfloat16), torch.randn(4096, 2048, dtype=torch.bfloat16)
    graph, kernel = _matmul_kernel(lambda x, r: epilogue(lin(x), r), x, r)
    launch = static_launch(graph, kernel, interpret=False)
    assert (launch.constants["BLOCK_M"], launch.constants["BLOCK_N"]) == tile
    assert (launch.num_warps, launch.num_stages, launch.constants["EVEN_K"], launch.constants["TMA"]) == (
        8, stages, True, True)
    assert (launch.constants["PERSISTENT"], launch.grid == (132,)) == (persistent, persistent)
    binary = bench_static.compile_sm90(graph, kernel, tmp_path)
    ptx = binary.asm["ptx"]
    assert binary.metadata.num_stages == stages
    staged = tile[0] * tile[1] * 2 if persistent else 0
    assert binary.metadata.shared == stages * ((tile[0] + tile[1]) * 64 * 2 + 8) + staged <= SHARED_LIMIT
    assert "wgmma.mma_async" in ptx and "cp.async.bulk.tensor.2d" in ptx and "cp.async.cg" not in ptx
    assert (bench_static.widest(ptx, "ld"), bench_static.widest(ptx, "st")) == (128, 128)
    assert bench_static.widest(ptx, "ld", min) == 128  # the bias too
    registers, spills = bench_static.ptxas_usage(ptx)
    assert registers is None or (registers <= 255 and spills == 0)


@pytest.mark.parametrize("k, masked", [(1024, False), (1000, True)])
def test_even_k_drops_the_k_mask_on_sm90(tmp_path, k, masked):
    """Read with pointers (a call whose tensors are not all 16-byte aligned, a GPU before Hopper):
    K a multiple of BLOCK_K: the K loop's operand loads carry no mask once compiled (the all-true
    mask folds away); otherwise both are masked. The bias is masked by N. Either way the operands
    are copied 16 bytes at a time through 5 stages: K = 1000 is compared as a number, so Triton
    knows 8 elements share each mask bit. Through TMA descriptors the tail is zero-filled: no mask."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    lin = nn.Linear(k, 512).to(torch.bfloat16)
    graph, kernel = _matmul_kernel(lambda x: torch.relu(lin(x)), torch.randn(512, k, dtype=torch.bfloat16))
    assert static_launch(graph, kernel, interpret=False).constants["EVEN_K"] is not masked
    binary = bench_static.compile_sm90(graph, kernel, tmp_path, tma=False)
    assert binary.metadata.shared == 5 * (64 + 64) * 64 * 2  # 64 x 64 tiles (few of them), 5 stages
    assert bench_static.widest(binary.asm["ptx"], "ld") == 128
    loads = re.findall(r"tt\.load %[\w.]+(,)?", binary.asm["ttir"])
    assert len(loads) == 3
    assert sum(bool(comma) for comma in loads) == (3 if masked else 1)
    ttir = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ttir"]
    assert ttir.count("tt.descriptor_load") == 2 and len(re.findall(r"tt\.load %[\w.]+,", ttir)) == 1


def test_contiguous_dims_are_indexed_as_one_run(tmp_path):
    """A channel concat of 28 x 28 planes: the row and column a plane's offset splits into are
    read back as one offset (`offs % 784`), so Triton proves 16 consecutive elements (784 =
    16 x 49; 28 = 4 x 7 allowed 4) and every load is a 128-bit vector, as Inductor's are."""
    torch.manual_seed(6)
    a, b = torch.randn(1, 8, 28, 28, dtype=torch.bfloat16), torch.randn(1, 16, 28, 28, dtype=torch.bfloat16)
    report = check(lambda a, b: torch.cat([torch.relu(a), torch.sigmoid(b)], 1), a, b, kernels=1)
    graph, kernel = report.graphs[0].plan.graph, report.kernels[0]
    assert "offs % 784" in kernel.source and "% 28" not in kernel.source
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    ptx = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ptx"]
    assert bench_static.widest(ptx, "ld", min) == bench_static.widest(ptx, "st") == 128


def test_matmul_bias_loads_full_vectors_on_sm90(tmp_path):
    """Linear + bias + GELU in bfloat16: the bias is read as a tile (Triton gives each thread 8
    of it, a 128-bit load), not in the accumulator's layout (two 16-bit values a thread, 32-bit
    loads); the tile is converted for the 128-bit stores anyway, and nothing spills."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    lin = nn.Linear(1024, 1024).to(torch.bfloat16)
    graph, kernel = _matmul_kernel(lambda x: F.gelu(lin(x)), torch.randn(4096, 1024, dtype=torch.bfloat16))
    ptx = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ptx"]
    assert bench_static.widest(ptx, "ld", min) == bench_static.widest(ptx, "st") == 128
    registers, spills = bench_static.ptxas_usage(ptx)
    assert registers is None or spills == 0


def test_batch_one_matmul_reads_its_row_and_bias_in_vectors(tmp_path):
    """A batch-1 Linear (a 256-element row): the row is loaded for every row of the 16-row
    tile, 16 bytes at a time (loaded alone it was 16-bit reads over more threads than it has
    elements), and the 32-wide bias as a tile (64-bit: 4 values a thread of 128)."""
    torch.manual_seed(7)
    lin = nn.Linear(256, 32).to(torch.bfloat16)
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    check(lambda x: lin(x), x, kernels=1, atol=2e-2, rtol=2e-2)
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    graph, kernel = _matmul_kernel(lambda x: lin(x), x)
    ptx = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ptx"]
    assert bench_static.widest(ptx, "ld") == 128 and bench_static.widest(ptx, "ld", min) >= 64
    assert bench_static.ptxas_usage(ptx)[1] in (None, 0)


def test_a_reshaped_norm_output_is_stored_without_recomputing_it(tmp_path):
    """LayerNorm whose output is read as it is (a residual) and reshaped to 2-D (a Linear's
    input): the reshape keeps the row dim, so the second output is the same values stored
    again, read from the same row and weight (`roffs`, 128-bit loads), where splitting its
    flat offset again read the input a second time and the weight at `offset % 1024`."""
    torch.manual_seed(8)
    w, b = torch.randn(1024, dtype=torch.bfloat16), torch.randn(1024, dtype=torch.bfloat16)

    def f(x):
        y = F.layer_norm(x, (1024,), w, b)
        return y + x, y.reshape(-1, 1024) * 2

    x = torch.randn(2, 8, 1024, dtype=torch.bfloat16)
    report = check(f, x, kernels=1, atol=5e-2, rtol=5e-2)
    graph, kernel = report.graphs[0].plan.graph, report.graphs[0].plan.kernels[0]
    source = rendered(graph, kernel, interpret=False).source
    assert "% 1024" not in source and source.count("tl.load(") == 3  # x, weight, bias once each
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    ptx = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ptx"]
    assert bench_static.widest(ptx, "ld", min) == bench_static.widest(ptx, "st") == 128


def test_a_concat_of_small_parts_reads_whole_vectors(tmp_path):
    """Eight 32-wide rows concatenated (parallel heads' outputs): each part's index stays in
    bounds by a modulo that runs with the position (a constant 0 broke every run: 16-bit
    loads), and a kernel this small still gives each thread 8 elements."""
    torch.manual_seed(9)
    parts = [torch.randn(1, 32, dtype=torch.bfloat16) for _ in range(8)]
    report = check(lambda *p: torch.cat([q * 2 for q in p], -1), *parts, kernels=1)
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    graph, kernel = report.graphs[0].plan.graph, report.graphs[0].plan.kernels[0]
    ptx = bench_static.compile_sm90(graph, kernel, tmp_path).asm["ptx"]
    assert bench_static.widest(ptx, "ld", min) == bench_static.widest(ptx, "st") == 128


def test_norm_weights_load_as_whole_vectors_on_sm90(tmp_path):
    """LayerNorm over 8192 rows of 1024 in bfloat16 (4 rows a program, 16 warps): the weight and
    bias, read by every row, get pointers for the whole block, so each thread loads 8 of them
    (128 bits) where the one row of 1024 over 512 threads gave 2 a thread (32-bit loads)."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    w, b = torch.randn(1024, dtype=torch.bfloat16), torch.randn(1024, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        (graph,) = fusec.inspect(lambda x: F.layer_norm(x, (1024,), w, b),
                                 torch.randn(8192, 1024, dtype=torch.bfloat16)).graphs
    (kernel,) = graph.plan.kernels
    assert static_launch(graph.plan.graph, kernel, interpret=False).constants["XBLOCK"] > 1
    ptx = bench_static.compile_sm90(graph.plan.graph, kernel, tmp_path).asm["ptx"]
    assert bench_static.widest(ptx, "ld", min) == bench_static.widest(ptx, "st") == 128
    assert bench_static.ptxas_usage(ptx)[1] in (None, 0)
