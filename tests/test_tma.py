"""Matmul operands read through TMA descriptors: against eager in Triton's interpreter (which
reads a descriptor as masked pointers and checks its rules: base and strides 16-byte aligned,
last dim contiguous), compiled for sm_90, and the scratch the descriptors are made in."""

import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
import fusec.kernels.call as call
from fusec.bench import static as bench_static
from fusec.kernels import launch
from fusec.kernels.kinds import static_launch
from tests.eager import check

try:
    from triton.backends.compiler import GPUTarget
except ImportError:  # pragma: no cover - very old Triton
    GPUTarget = None

LOOSE = {torch.float32: {}, torch.float16: {"atol": 2e-2, "rtol": 2e-2}, torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2}}


class _Noted(list):
    launches: list


@pytest.fixture
def tma(monkeypatch):
    """Descriptors on in the interpreter; the TMA choice of every binary dispatched, in order."""
    monkeypatch.setattr(launch, "DESCRIPTORS_IN_INTERPRETER", True)
    chosen = _Noted()
    choose = call.call_constants

    def noting(launch, *args):
        constants = choose(launch, *args)
        chosen.append(constants.get("TMA"))
        launches.append(launch)
        return constants

    launches = chosen.launches = []

    monkeypatch.setattr(call, "call_constants", noting)
    return chosen


def _source(report) -> str:
    (kernel,) = [k for k in report.kernels if k.kind == "matmul"]
    return kernel.source


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_linear_gelu_reads_both_operands_through_descriptors(tma, dtype):
    """Odd M and N (37, 45: rows and columns past the ends are zero-filled, not wrapped), K = 72
    (not a multiple of the K step: its tail zero-filled too); the weight is read transposed."""
    torch.manual_seed(0)
    lin = nn.Linear(72, 45).to(dtype)
    report = check(lambda x: F.gelu(lin(x)), torch.randn(37, 72, dtype=dtype), kernels=1, externs=0, **LOOSE[dtype])
    source = _source(report)
    assert source.count("tl.make_tensor_descriptor") == 2 and "tl.trans(desc" in source
    assert tma == [True]


@torch.no_grad()
def test_batched_matmul_with_residual_takes_three_dim_descriptors(tma):
    torch.manual_seed(1)
    a, b, r = torch.randn(4, 33, 48), torch.randn(4, 48, 40), torch.randn(4, 33, 40)
    source = _source(check(lambda a, b, r: torch.relu(a @ b) + r, a, b, r, kernels=1, externs=0))
    assert "[1, BLOCK_M, BLOCK_K]" in source and "tl.reshape(desc" in source
    assert tma == [True]


@torch.no_grad()
def test_linear_on_a_three_dim_input_reads_it_as_rows(tma):
    """x [2, 9, 64] seen as [18, 64] (a reshape of a row-major tensor is a view the descriptor
    describes), bias and residual in the epilogue."""
    torch.manual_seed(2)
    lin = nn.Linear(64, 48).to(torch.bfloat16)
    x, r = torch.randn(2, 9, 64, dtype=torch.bfloat16), torch.randn(2, 9, 48, dtype=torch.bfloat16)
    source = _source(check(lambda x, r: lin(x) + r, x, r, kernels=1, externs=0, **LOOSE[torch.bfloat16]))
    assert "[18, 64], [64, 1]" in source
    assert tma == [True]


@torch.no_grad()
def test_swiglu_reads_the_shared_input_once_per_step(tma):
    torch.manual_seed(3)
    gate, up = nn.Linear(32, 64, bias=False), nn.Linear(32, 64, bias=False)
    source = _source(check(lambda x: F.silu(gate(x)) * up(x), torch.randn(19, 32), kernels=1, externs=0))
    # one read of x per K loop (the persistent one and the one-tile one), for both products
    loops = source.count("for k0 in range(")
    assert source.count("tl.make_tensor_descriptor") == 3 and source.count(".load([pid_m * BLOCK_M, k0])") == loops
    assert tma == [True]


@torch.no_grad()
@pytest.mark.parametrize("norm", ["layer_norm", "softmax"])
def test_row_epilogue_on_descriptor_tiles(tma, norm):
    torch.manual_seed(4)
    lin = nn.Linear(40, 96)
    tail = (lambda y: F.layer_norm(y, (96,))) if norm == "layer_norm" else (lambda y: torch.softmax(y, -1))
    source = _source(check(lambda x: tail(lin(x)), torch.randn(21, 40), kernels=1, externs=0))
    assert "tl.make_tensor_descriptor" in source
    assert tma == [True]


@torch.no_grad()
def test_a_call_with_an_unaligned_tensor_reads_with_pointers(tma):
    """The same compiled function called with x starting 4 bytes into its storage: no descriptor
    can be made there, so that call's binary reads with pointers (TMA off), and is as right."""
    torch.manual_seed(5)
    lin = nn.Linear(64, 24)
    compiled = fusec.compile(lambda x: torch.relu(lin(x)))
    aligned = torch.randn(17, 64)
    unaligned = torch.randn(17 * 64 + 1)[1:].view(17, 64)
    assert unaligned.data_ptr() % 16
    for x in (aligned, unaligned):
        torch.testing.assert_close(compiled(x), torch.relu(lin(x)))
    assert tma == [True, False]


@torch.no_grad()
def test_rows_not_a_multiple_of_16_bytes_take_no_descriptor(tma):
    """K = 70 float32: 280-byte rows cannot be a descriptor's stride; the kernel has pointers only."""
    torch.manual_seed(6)
    lin = nn.Linear(70, 24)
    source = _source(check(lambda x: lin(x), torch.randn(13, 70), kernels=1, externs=0))
    assert "tl.make_tensor_descriptor" not in source
    assert tma == [False]


@torch.no_grad()
def test_persistent_programs_walk_every_tile(tma, monkeypatch):
    """Two programs (as if the GPU had 2 SMs) walking 4 tiles of 64 x 64 (100 x 90, grouped
    order), and 2 programs walking 5 whole-row tiles of a LayerNorm epilogue."""
    monkeypatch.setattr(launch, "SMS", 2)
    torch.manual_seed(8)
    lin = nn.Linear(40, 90)
    check(lambda x: F.gelu(lin(x)), torch.randn(100, 40), kernels=1, externs=0)
    lin = nn.Linear(40, 256)  # 256-row tiles: a TMA box holds 256 rows at most
    check(lambda x: F.layer_norm(lin(x), (256,)), torch.randn(1100, 40), kernels=1, externs=0)
    assert [(n.grid, n.constants["PERSISTENT"]) for n in tma.launches] == [((2,), True), ((2,), True)]
    assert tma == [True, True]


def test_persistent_launches_on_a_gpu():
    """Persistent where the operands take TMA, there is one batch, the tiles fill two waves of 132
    SMs and an output tile per accumulator fits in shared memory beside the stages; the runtime
    times the grid of every tile beside it."""
    gelu = launch.matmul_launch(1, 4096, 4096, 1024, "bfloat16", 1, 6, descriptors=True, interpret=False)
    assert (gelu.grid, gelu.constants["PERSISTENT"], gelu.num_stages) == ((132,), True, 5)
    configs = launch.matmul_configs(1, 4096, 4096, 1024, "bfloat16", 1, 6, descriptors=True)
    assert configs[1] == launch.Launch((1024,), {**gelu.constants, "PERSISTENT": False}, 8, 5)
    # 128 x 256 tiles in 4 stages take 192 KiB: no room for the output tile's 128 KiB
    wide = launch.matmul_launch(1, 8192, 8192, 1024, "bfloat16", 1, 1, descriptors=True, interpret=False)
    assert (wide.constants["BLOCK_N"], wide.grid, wide.constants["PERSISTENT"]) == (256, (2048,), False)
    for problem in ((1, 4096, 4096, 1024, "bfloat16", 1, 6, False, False),  # pointers only
                    (2, 4096, 4096, 1024, "bfloat16", 1, 6, False, True),  # two batches
                    (1, 1024, 4096, 1024, "bfloat16", 1, 6, False, True)):  # 256 tiles: under two waves
        assert not launch.matmul_launch(*problem, interpret=False).constants["PERSISTENT"], problem


def test_scratch_allocator_is_set_in_each_launching_thread(monkeypatch):
    """A binary taking global scratch launched straight from a new thread (whose Triton allocator
    is unset: a context variable per thread) finds fusec's scratch set there; the stand-in for
    Triton's launcher asks the thread's allocator as Triton's does. A thread with an allocator of
    its own keeps it. The scratch is one buffer per device and stream, grown when asked for more."""
    from triton.runtime import _allocation

    scratch = call.Scratch(empty=lambda size: torch.empty(size, dtype=torch.int8), device=lambda: 0)
    monkeypatch.setattr(call, "SCRATCH", scratch)
    asked = []

    def launcher(grid_x, grid_y, grid_z, stream, *rest):
        allocator = _allocation._allocator.get()
        asked.append((allocator, allocator(grid_x * 256, 128, stream)))

    binary = SimpleNamespace(run=launcher, function=1, packed_metadata=2,
                             metadata=SimpleNamespace(global_scratch_size=256))
    run, function, metadata = call.entry_of(binary)
    own = call.Scratch(empty=lambda size: torch.empty(size, dtype=torch.int8), device=lambda: 0)

    def launch_in_thread(grid, stream, allocator=None):
        def body():
            if allocator is not None:
                import triton
                triton.set_allocator(allocator)
            run(grid, 1, 1, stream, function, metadata, None, None, None)
        thread = threading.Thread(target=body)
        thread.start()
        thread.join()

    launch_in_thread(4, 7)
    launch_in_thread(2, 7)
    launch_in_thread(8, 7)
    launch_in_thread(2, 9)
    launch_in_thread(2, 7, own)
    assert [a for a, _ in asked] == [scratch] * 4 + [own]
    first, second, grown, other_stream, _ = (buffer for _, buffer in asked)
    assert first is second and first.numel() == 1024 and grown.numel() == 2048
    assert other_stream is not grown and scratch.outgrown == [first]
    # a binary without scratch launches as it is
    plain = SimpleNamespace(**{**vars(binary), "metadata": SimpleNamespace(global_scratch_size=0)})
    assert call.entry_of(plain)[0] is launcher


def test_each_launch_captured_into_a_cuda_graph_gets_scratch_of_its_own():
    """Replays of two graphs may run at once on two streams, each with the addresses its capture
    recorded (all captures are on torch's one capture stream): no buffer is shared between
    captured launches, and each stays alive; launches outside a capture share their stream's."""
    capturing = [True]
    scratch = call.Scratch(empty=lambda size: torch.empty(size, dtype=torch.int8), device=lambda: 0,
                           capturing=lambda: capturing[0])
    one, two = scratch(512, 128, 7), scratch(512, 128, 7)
    assert one is not two and scratch.captured == [one, two] and not scratch.buffers
    capturing[0] = False
    assert scratch(512, 128, 7) is scratch(256, 128, 7) is scratch.buffers[(0, 7)]
    assert scratch.captured == [one, two]


def _matmul_kernel(fn, *args):
    with torch.no_grad():
        (graph,) = fusec.inspect(fn, *args).graphs
    (kernel,) = [k for k in graph.plan.kernels if k.kind == "matmul"]
    return graph.plan.graph, kernel


@pytest.mark.slow
def test_batched_descriptors_compile_for_sm90_and_the_unaligned_binary_uses_pointers(tmp_path):
    """A bfloat16 batched matmul + residual: the aligned binary copies both operands by TMA (3-D
    boxes), makes its descriptors in 256 bytes of global scratch a program and spills nothing;
    the binary for unaligned tensors reads with cp.async and takes no scratch."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    a, b = torch.randn(8, 512, 256, dtype=torch.bfloat16), torch.randn(8, 256, 384, dtype=torch.bfloat16)
    r = torch.randn(8, 512, 384, dtype=torch.bfloat16)
    graph, kernel = _matmul_kernel(lambda a, b, r: a @ b + r, a, b, r)
    assert static_launch(graph, kernel, interpret=False).constants["TMA"] is True
    binary = bench_static.compile_sm90(graph, kernel, tmp_path)
    ptx = binary.asm["ptx"]
    assert ptx.count("cp.async.bulk.tensor.3d") >= 2 and "cp.async.cg" not in ptx
    assert binary.metadata.global_scratch_size == 256
    registers, spills = bench_static.ptxas_usage(ptx)
    assert registers is None or (registers <= 255 and spills == 0)
    pointers = bench_static.compile_sm90(graph, kernel, tmp_path, aligned=False)
    assert "cp.async.bulk.tensor" not in pointers.asm["ptx"] and pointers.metadata.global_scratch_size == 0


@pytest.mark.cuda
@torch.no_grad()
def test_descriptor_matmuls_match_eager_on_a_gpu():
    """On a GPU: Linear + GELU in bfloat16 with aligned and unaligned inputs, and a batched
    matmul; run from the caller's thread and from a new one (its own scratch allocator)."""
    torch.manual_seed(7)
    lin = nn.Linear(1024, 768).to("cuda", torch.bfloat16)
    compiled = fusec.compile(lambda x: F.gelu(lin(x)))
    aligned = torch.randn(1000, 1024, device="cuda", dtype=torch.bfloat16)
    unaligned = torch.randn(1000 * 1024 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(1000, 1024)
    for x in (aligned, unaligned, aligned):
        torch.testing.assert_close(compiled(x), F.gelu(lin(x)), atol=5e-2, rtol=5e-2)
    results = []
    thread = threading.Thread(target=lambda: results.append(compiled(aligned)))
    thread.start()
    thread.join()
    torch.testing.assert_close(results[0], F.gelu(lin(aligned)), atol=5e-2, rtol=5e-2)
    a, b = torch.randn(6, 300, 256, device="cuda"), torch.randn(6, 256, 200, device="cuda")
    torch.testing.assert_close(fusec.compile(lambda a, b: torch.relu(a @ b))(a, b), torch.relu(a @ b))


@pytest.mark.cuda
@torch.no_grad()
def test_persistent_descriptor_matmuls_match_eager_on_a_gpu():
    """On a GPU: Linear + GELU large enough for the persistent grid (4096 x 2048 -> 4096 in
    128 x 128 tiles: 1024 tiles, 132 programs), through the template, aligned and unaligned (the
    same grid and loop with pointer loads), and recorded into CUDA graphs: two models replayed at
    once on two streams, each with its own descriptors' scratch."""
    torch.manual_seed(8)
    lins = [nn.Linear(2048, 4096).to("cuda", torch.bfloat16) for _ in range(2)]
    fns = [lambda x, lin=lin: F.gelu(lin(x)) for lin in lins]
    x = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    unaligned = torch.randn(4096 * 2048 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(4096, 2048)
    for fn in fns:
        model = fusec.compile(fn, matmul="template")
        for inp in (x, unaligned):
            torch.testing.assert_close(model(inp), fn(inp), atol=0.25, rtol=5e-2)
        (record,) = fusec.report_of(model).graphs
        (kernel,) = record.plan.kernels
        launch = record.runtime.calls[kernel.id].launch
        assert launch.constants["TMA"] and launch.constants["PERSISTENT"] and launch.grid == (132,)
    graphed = [fusec.compile(fn, matmul="template", cudagraphs=True) for fn in fns]
    outs = [m(x).clone() for m in graphed]  # the first call runs the launcher; the second records
    streams = [torch.cuda.Stream() for _ in graphed]
    for _ in range(5):
        for i, (stream, model) in enumerate(zip(streams, graphed, strict=True)):
            with torch.cuda.stream(stream):
                outs[i] = model(x).clone()
        torch.cuda.synchronize()
        for out, fn in zip(outs, fns, strict=True):
            torch.testing.assert_close(out, fn(x), atol=0.25, rtol=5e-2)
    for model in graphed:
        (record,) = fusec.report_of(model).graphs
        assert record.runtime.cudagraph_refusal is None and record.runtime._call.replays >= 4
