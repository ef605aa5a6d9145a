"""Matmuls end to end: epilogues fused into the template, siblings merged, the rest through torch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from tests.eager import assert_ran, check


@torch.no_grad()
def test_linear_bias_gelu_is_one_kernel():
    torch.manual_seed(0)
    lin = nn.Linear(48, 80)
    report = check(lambda x: F.gelu(lin(x)), torch.randn(4, 10, 48), kernels=1, externs=0)
    (kernel,) = report.kernels
    assert kernel.kind == "matmul" and "tl.dot" in kernel.source and "tl.math.erf" in kernel.source
    assert kernel.flops >= 2 * 40 * 80 * 48


@torch.no_grad()
def test_linear_residual_is_one_kernel():
    torch.manual_seed(1)
    lin = nn.Linear(32, 32)
    check(lambda x: x + lin(x) * 0.5, torch.randn(24, 32), kernels=1, externs=0)


@torch.no_grad()
def test_swiglu_gate_and_up_are_one_matmul_kernel():
    torch.manual_seed(2)
    gate, up = nn.Linear(32, 64, bias=False), nn.Linear(32, 64, bias=False)
    check(lambda x: F.silu(gate(x)) * up(x), torch.randn(16, 32), kernels=1, externs=0)


@torch.no_grad()
def test_qkv_from_one_input_is_one_matmul_kernel():
    torch.manual_seed(3)
    q, k, v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
    report = check(lambda x: (q(x), k(x), v(x)), torch.randn(2, 8, 32), kernels=1, externs=0)
    assert len(report.kernels[0].outputs) == 3


@torch.no_grad()
def test_mlp_block_is_two_kernels():
    from fusec.examples import build
    model, args = build("mlp")
    check(model, *args, kernels=2, externs=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(32, 32, 32), (17, 45, 23), (5, 70, 130)], ids=["square", "ragged", "long-k"])
def test_matmul_epilogue_shapes_and_dtypes(dtype, m, n, k):
    torch.manual_seed(4)
    a, b, bias = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype), torch.randn(n).to(dtype)
    # About 3x the worst error of the three shapes, max |got - eager| / (1 + |eager|):
    # 4.2e-6 (float32), 8.9e-4 (float16), 7.4e-3 (bfloat16).
    tol = {torch.float32: 1.5e-5, torch.float16: 3e-3, torch.bfloat16: 2.2e-2}[dtype]
    check(lambda a, b, bias: torch.relu(a @ b + bias), a, b, bias, kernels=1, rtol=tol, atol=tol)


def test_batched_and_transposed_operands():
    torch.manual_seed(5)
    a, b = torch.randn(3, 9, 16), torch.randn(3, 12, 16)
    check(lambda a, b: torch.tanh(torch.bmm(a, b.transpose(1, 2))), a, b, kernels=1)
    x, w = torch.randn(16, 20).t(), torch.randn(16, 8)
    check(lambda x, w: (x @ w) * 2, x, w, kernels=1)


def test_bare_matmul_runs_through_torch():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    report = check(lambda a, b: a @ b, a, b, kernels=0, externs=1)
    (graph,) = report.graphs
    assert [s.target for s in graph.plan.externs] == ["aten.mm.default"]
    assert report.stats["ran"] == {"kernels": 0, "extern_calls": 1, "through_torch": 0}


def test_integer_matmul_runs_through_torch():
    a, b = torch.randint(-3, 3, (4, 5)), torch.randint(-3, 3, (5, 6))
    check(lambda a, b: (a @ b) + 1, a, b, kernels=1, externs=1)


def test_zero_size_dims():
    for m, n, k in [(0, 4, 3), (4, 0, 3), (4, 5, 0)]:
        a, b, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
        check(lambda a, b, bias: torch.relu(a @ b + bias), a, b, bias)


def test_shape_mismatch_raises_eagers_error():
    a, b = torch.randn(4, 5), torch.randn(6, 7)
    with pytest.raises(RuntimeError) as eager:
        torch.relu(a @ b)
    with pytest.raises(RuntimeError) as compiled:
        fusec.compile(lambda a, b: torch.relu(a @ b))(a, b)
    assert str(compiled.value) == str(eager.value)


def test_gradients_through_fused_epilogue():
    torch.manual_seed(6)
    lin = nn.Linear(24, 40)
    x = torch.randn(12, 24, requires_grad=True)
    F.gelu(lin(x)).pow(2).sum().backward()
    expected = [x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone()]
    x.grad = lin.weight.grad = lin.bias.grad = None
    compiled = fusec.compile(lambda x: F.gelu(lin(x)))
    compiled(x).pow(2).sum().backward()
    for g, e in zip([x.grad, lin.weight.grad, lin.bias.grad], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    forward = assert_ran(compiled).graphs[0]
    assert forward.plan.kernels[0].kind == "matmul"


def test_attention_stays_whole_and_conv_epilogue_fuses():
    torch.manual_seed(7)
    q = torch.randn(1, 2, 8, 16)
    report = check(lambda q: F.scaled_dot_product_attention(q, q, q) * 2, q)
    targets = [s.target for g in report.graphs for s in g.plan.externs]
    assert any("scaled_dot_product" in t for t in targets)
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        report = check(lambda x: torch.relu(conv(x)) * 2 + 1, torch.randn(1, 3, 8, 8), kernels=1)
    assert any("convolution" in s.target for s in report.graphs[0].plan.externs)


@pytest.mark.parametrize("mode", ["template", "library"])
def test_template_and_library_paths_agree(mode):
    torch.manual_seed(8)
    lin = nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    fn = lambda x: F.gelu(lin(x)) + 1
    compiled = fusec.compile(fn, matmul=mode)
    with torch.no_grad():
        expected = fn(x)
        got = compiled(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    (graph,) = assert_ran(compiled).graphs
    (kernel,) = graph.plan.kernels
    library_kernels = [s.id for s in kernel.library if s.id in graph.runtime.counts.kernels]
    assert len(library_kernels) == (mode == "library")  # the library path launched its epilogue kernel


def test_library_alternative_is_torch_matmul_plus_one_epilogue_kernel():
    lin = nn.Linear(16, 32)
    with torch.no_grad():
        report = fusec.inspect(lambda x: torch.relu(lin(x)), torch.randn(4, 16))
    (kernel,) = report.kernels
    kinds = [type(s).__name__ for s in kernel.library]
    assert kinds.count("Kernel") == 1 and any("mm" in getattr(s, "target", "") for s in kernel.library)


@pytest.mark.parametrize("fastest", ["library", "template"])
def test_auto_choice_times_configs_and_library_once(monkeypatch, tmp_path, fastest):
    """Timed once per shape: kept for the process, and on disk for the next one (here: the
    process's choices forgotten), which reads it back without timing."""
    import fusec.runtime as runtime

    timed = []
    n_configs = len(runtime.matmul_configs(1, 8, 32, 16, "float32"))

    def fake_timer(run, reps=5):
        run()  # every candidate really runs
        timed.append(run)
        library_turn = len(timed) == n_configs + 1
        if library_turn:
            return 1e-6 if fastest == "library" else 1.0
        return 1e-3 - len(timed) * 1e-6  # the template's last configuration: a position other than 0

    monkeypatch.setattr(runtime, "_time_cuda", fake_timer)
    monkeypatch.setattr(runtime, "_device_name", lambda: "test-gpu")
    monkeypatch.setattr(runtime, "_MATMUL_CHOICE", {})
    lin = nn.Linear(16, 32)
    fn = lambda x: torch.relu(lin(x))
    x = torch.randn(8, 16)

    def compiled_auto():
        torch._dynamo.reset()
        compiled = fusec.compile(fn, cache_dir=tmp_path)
        compiled(x)  # on a CPU "auto" means the template; ask for the GPU's timing instead
        fusec.report_of(compiled).graphs[0].runtime.matmul = "auto"
        return compiled

    with torch.no_grad():
        compiled = compiled_auto()
        for _ in range(2):
            torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-4)
    assert len(timed) == n_configs + 1  # timed once per shape, then cached
    (choice,) = runtime._MATMUL_CHOICE.values()
    assert (choice == "library") == (fastest == "library")
    (record,) = fusec.report_of(compiled).graphs
    (kernel,) = record.plan.kernels
    configs = runtime.matmul_configs(*runtime.matmul_problem(record.plan.graph, kernel))
    assert len(configs) == n_configs > 1 and choice == ("library" if fastest == "library" else configs[-1])
    [kept] = (tmp_path / "matmul").glob("*.json")
    monkeypatch.setattr(runtime, "_MATMUL_CHOICE", {})  # a new process: only the disk remembers
    with torch.no_grad():
        again = compiled_auto()
        torch.testing.assert_close(again(x), fn(x), rtol=1e-4, atol=1e-4)
    assert len(timed) == n_configs + 1  # read back, not timed
    (reread,) = runtime._MATMUL_CHOICE.values()
    assert reread == choice
    kept.write_text("not json")  # a damaged file is timed again
    monkeypatch.setattr(runtime, "_MATMUL_CHOICE", {})
    with torch.no_grad():
        compiled_auto()(x)
    assert len(timed) == 2 * (n_configs + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, even", [(64, True), (128, True), (40, False), (100, False)])
def test_k_loop_with_and_without_a_tail(dtype, k, even):
    """EVEN_K (K a multiple of BLOCK_K) loads the operands unmasked; otherwise the last K
    step is masked. Both equal eager; an inf beyond no K tail reaches the result either way."""
    torch.manual_seed(9)
    a, b, bias = torch.randn(20, k).to(dtype), torch.randn(k, 36).to(dtype), torch.randn(36).to(dtype)
    a[3, k - 1] = float("inf")  # the last K element counts, masked or not
    tol = {torch.float32: 1e-4, torch.bfloat16: 2.2e-2}[dtype]
    compiled = fusec.compile(lambda a, b, bias: torch.relu(a @ b + bias))
    expected = torch.relu(a @ b + bias)
    torch.testing.assert_close(compiled(a, b, bias), expected, rtol=tol, atol=tol, equal_nan=True)
    (graph,) = assert_ran(compiled).graphs
    (kernel,) = graph.plan.kernels
    assert graph.runtime.calls[kernel.id].launch.constants["EVEN_K"] is even
