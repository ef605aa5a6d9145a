"""A row reduction as a matmul epilogue: Linear -> LayerNorm / RMSNorm / softmax in one kernel
when a row of the product fits one output tile; refused, with the reason, where it does not."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.kernels.launch import ROW_TILE, SHARED, matmul_configs, matmul_launch
from fusec.passes.grouping import MATMUL_ROW
from tests.eager import assert_ran, check


def _rms_norm(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _matmul_kernel(report):
    (kernel,) = [k for k in report.kernels if k.kind == "matmul"]
    return kernel


@torch.no_grad()
@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_norm_is_one_kernel(bias):
    torch.manual_seed(0)
    lin, ln = nn.Linear(32, 48, bias=bias), nn.LayerNorm(48)
    nn.init.normal_(ln.weight), nn.init.normal_(ln.bias)
    report = check(lambda x: ln(lin(x)), torch.randn(2, 5, 32), kernels=1, externs=0)
    source = _matmul_kernel(report).source
    assert "tl.dot" in source and "tl.reduce(" in source and "nmask" in source


@torch.no_grad()
def test_rows_wider_than_one_tile_of_m_and_not_a_power_of_two():
    """N = 1000 takes a 1024-wide tile, so M = 100 rows are two tiles of 64, the last one partial."""
    torch.manual_seed(1)
    lin, ln = nn.Linear(24, 1000), nn.LayerNorm(1000)
    x = torch.randn(100, 24)
    report = check(lambda x: ln(lin(x)), x, kernels=1, externs=0, rtol=1e-4, atol=1e-4)
    graph = report.graphs[0]
    kernel = _matmul_kernel(report)
    launch = graph.runtime.calls[kernel.id].launch
    assert (launch.constants["BLOCK_M"], launch.constants["BLOCK_N"], launch.grid) == (64, 1024, (2,))


@torch.no_grad()
def test_rms_norm_after_linear():
    torch.manual_seed(2)
    lin, w = nn.Linear(32, 40, bias=False), torch.randn(40)
    check(lambda x: _rms_norm(lin(x), w), torch.randn(3, 7, 32), kernels=1, externs=0)


@torch.no_grad()
def test_residual_add_then_layer_norm():
    """A transformer block's out projection: Linear, + residual, LayerNorm; the sum is an output too."""
    torch.manual_seed(3)
    lin, ln = nn.Linear(48, 48), nn.LayerNorm(48)

    def block(x, r):
        h = lin(x) + r
        return h, ln(h)

    check(block, torch.randn(2, 9, 48), torch.randn(2, 9, 48), kernels=1, externs=0)


@torch.no_grad()
@pytest.mark.parametrize("fn", [lambda y: torch.softmax(y, -1), lambda y: F.log_softmax(y, -1),
                                lambda y: torch.logsumexp(y, -1), lambda y: y.amin(-1) + y.sum(-1)],
                         ids=["softmax", "log_softmax", "logsumexp", "amin-sum"])
def test_softmax_family_after_linear(fn):
    torch.manual_seed(4)
    lin = nn.Linear(16, 50)
    check(lambda x: fn(lin(x)), torch.randn(4, 6, 16), kernels=1, externs=0)


@torch.no_grad()
def test_nan_in_a_row_is_kept_by_its_max():
    lin = nn.Linear(8, 20)
    x = torch.randn(6, 8)
    x[2, 3] = float("nan")
    check(lambda x: torch.softmax(lin(x), -1), x, kernels=1)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_linear_layer_norm(dtype):
    torch.manual_seed(5)
    lin, ln = nn.Linear(32, 96).to(dtype), nn.LayerNorm(96).to(dtype)
    check(lambda x: ln(lin(x)), torch.randn(3, 10, 32).to(dtype), kernels=1, externs=0)
    # The epilogue reads the float32 accumulator (every matmul epilogue does), where eager rounds
    # the product to 16 bits before .float(): a 16-bit tolerance.
    check(lambda x: torch.softmax(lin(x).float(), -1), torch.randn(12, 32).to(dtype), kernels=1,
          rtol=1.6e-2, atol=1e-3)


def test_training_matches_eager_and_saves_mean_and_rstd():
    torch.manual_seed(6)
    lin, ln = nn.Linear(24, 40), nn.LayerNorm(40)
    x = torch.randn(2, 6, 24, requires_grad=True)
    fn = lambda x: ln(lin(x))
    grad = torch.randn(2, 6, 40)
    fn(x).backward(grad)
    params = [x, lin.weight, lin.bias, ln.weight, ln.bias]
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    compiled = fusec.compile(fn)
    out = compiled(x)
    torch.testing.assert_close(out, fn(x), rtol=1e-5, atol=1e-5)
    out.backward(grad)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-4)
    forward = assert_ran(compiled).graphs[0]
    (kernel,) = forward.plan.kernels
    graph = forward.plan.graph
    assert kernel.kind == "matmul"
    per_row = [o for o in kernel.outputs if graph[o].numel == 12]
    assert per_row, "the forward's one kernel stores LayerNorm's per-row statistics for the backward"


@torch.no_grad()
def test_template_and_library_paths_agree():
    """On a GPU the template is timed against torch's matmul + the epilogue as a reduction kernel."""
    torch.manual_seed(7)
    lin, ln = nn.Linear(16, 24), nn.LayerNorm(24)
    fn = lambda x: ln(lin(x))
    x = torch.randn(5, 16)
    for mode in ("template", "library"):
        compiled = fusec.compile(fn, matmul=mode)
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
        (graph,) = assert_ran(compiled).graphs
        (kernel,) = graph.plan.kernels
        ran = [s.id for s in kernel.library if s.id in graph.runtime.counts.kernels]
        assert len(ran) == (mode == "library")


def _edges(fn, *args):
    torch._dynamo.reset()
    with torch.no_grad():
        return fusec.inspect(fn, *args).to_dict()["edges"]


def test_rows_too_wide_are_refused_with_the_reason():
    torch.manual_seed(13)
    lin, ln = nn.Linear(8, MATMUL_ROW + 1), nn.LayerNorm(MATMUL_ROW + 1)
    with torch.no_grad():
        report = check(lambda x: ln(lin(x)), torch.randn(4, 8), kernels=2, rtol=1e-4, atol=1e-4)
    edges = report.to_dict()["edges"]
    refused = [e for e in edges if e["code"] == "matmul-rows"]
    assert refused and all(f"rows of {MATMUL_ROW + 1} are too wide" in e["reason"] for e in refused), edges


@torch.no_grad()
def test_a_row_reduction_after_several_matmuls_is_refused():
    """Q and K projections share their left operand (one kernel); a softmax of their product
    would need both accumulators' rows whole: it is a kernel of its own."""
    torch.manual_seed(14)
    q, k = nn.Linear(16, 32), nn.Linear(16, 32)
    report = check(lambda x: torch.softmax(q(x) * k(x), -1), torch.randn(8, 16), kernels=2)
    edges = report.to_dict()["edges"]
    assert any(e["code"] == "matmul-reduction" and "several matmuls" in e["reason"] for e in edges), edges


def test_reduction_over_another_axis_is_refused():
    lin = nn.Linear(8, 16)
    edges = _edges(lambda x: torch.softmax(lin(x), 0), torch.randn(16, 8))
    assert any(e["code"] == "matmul-reduction" and "not along the rows" in e["reason"] for e in edges), edges


@torch.no_grad()
def test_square_product_transposed_before_its_reduction_is_not_fused():
    """(x @ w).t() reduced along its last dim reads the product's columns: same shape as a row
    reduction, but it would read other tiles. Refused, and the result is still eager's."""
    torch.manual_seed(8)
    w = torch.randn(16, 16)
    fn = lambda x: torch.softmax((x @ w).t() + 1, -1)
    report = check(fn, torch.randn(16, 16))
    assert not any(k.kind == "matmul" and "tl.reduce(" in k.source for k in report.kernels)


def test_gpu_tiles_cover_the_row_and_fit():
    for n, dtype in ((768, "bfloat16"), (1000, "float32"), (64, "float16"), (48, "float32")):
        launch = matmul_launch(1, 4096, n, 768, dtype, 1, 10, True, interpret=False)
        c = launch.constants
        assert c["BLOCK_N"] >= n and c["BLOCK_M"] * c["BLOCK_N"] <= max(ROW_TILE, 16 * c["BLOCK_N"])
        assert c["GROUP_M"] == 1 and launch.grid == (4096 // c["BLOCK_M"],)
        item = 4 if dtype == "float32" else 2
        assert launch.num_stages * (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * item <= SHARED
        assert matmul_configs(1, 4096, n, 768, dtype, 1, 10, True) == [launch]
    few = matmul_launch(1, 256, 64, 64, "float32", 1, 10, True, interpret=False)
    assert few.constants["BLOCK_M"] == 16  # 16 programs, not 2, for 256 rows
    # A LayerNorm backward's 16 ops over 512-wide rows: half the rows a tile, twice the warps.
    light, heavy = (matmul_launch(1, 8192, 512, 512, "bfloat16", 1, ops, True, interpret=False) for ops in (9, 16))
    assert (light.constants["BLOCK_M"], light.num_warps) == (32, 16)
    assert (heavy.constants["BLOCK_M"], heavy.num_warps) == (16, 16)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, n, norm, training, tokens", [
    (torch.bfloat16, 768, "layer_norm", False, 4096), (torch.float32, 1024, "layer_norm", False, 4096),
    (torch.float16, 512, "softmax", False, 4096), (torch.bfloat16, 96, "rms_norm", False, 4096),
    (torch.bfloat16, 512, "layer_norm", True, 4096), (torch.bfloat16, 512, "layer_norm", True, 8192),
], ids=["bf16-768-ln", "fp32-1024-ln", "fp16-512-softmax", "bf16-96-rms", "bf16-512-ln-training",
        "bf16-512-ln-training-8192"])
def test_row_epilogue_compiles_for_sm90_without_spills(tmp_path, dtype, n, norm, training, tokens):
    """BERT/GPT-2's widths over 4096 rows: whole-row tiles compile for sm_90 within shared memory,
    no register spilled; in training, LayerNorm's input gradient after the next layer's matmul
    too (over rows wider than 512 its 15 ops are refused: MATMUL_ROW_WORK; at 512 over 8192
    rows, enough for 32-row tiles, its tile takes 16: HEAVY_ROW_EPILOGUE)."""
    if not hasattr(pytest.importorskip("triton.backends.compiler"), "GPUTarget"):
        pytest.skip("this Triton has no ahead-of-time compile API")
    from fusec.bench import static as bench_static
    from fusec.bench.ptx import ptxas_usage

    torch.manual_seed(9)
    lin, ln, w = nn.Linear(768, n).to(dtype), nn.LayerNorm(n).to(dtype), torch.randn(n, dtype=dtype)
    down = nn.Linear(n, 768).to(dtype)
    tail = {"layer_norm": ln, "softmax": lambda y: torch.softmax(y, -1), "rms_norm": lambda y: _rms_norm(y, w)}[norm]
    fn = (lambda x: down(tail(lin(x)))) if training else (lambda x: tail(lin(x)))
    torch._dynamo.reset()
    x = torch.randn(tokens, 768, dtype=dtype, requires_grad=training)
    with torch.set_grad_enabled(training):
        report = fusec.inspect(fn, x, training=training)
    rows = [(g.plan.graph, k) for g in report.graphs for k in g.plan.kernels
            if k.kind == "matmul" and "tl.reduce(" in k.source]
    assert len(rows) == 1 + training, [k.id for _, k in rows]
    for graph, kernel in rows:
        binary = bench_static.compile_sm90(graph, kernel, tmp_path)
        assert binary.metadata.shared <= SHARED, binary.metadata.shared
        registers, spills = ptxas_usage(binary.asm["ptx"])
        assert registers is None or (registers <= 255 and spills == 0), (kernel.id, registers, spills)


def test_symbolic_rows_fuse_and_a_symbolic_row_length_is_refused():
    torch.manual_seed(10)
    lin, ln = nn.Linear(16, 24), nn.LayerNorm(24)
    fn = lambda x: ln(lin(x))
    compiled = fusec.compile(fn, dynamic=True)
    with torch.no_grad():
        for n in (2, 5, 70):
            x = torch.randn(n, 16)
            torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
    (graph,) = assert_ran(compiled).graphs
    assert [k.kind for k in graph.plan.kernels] == ["matmul"]
    torch._dynamo.reset()
    rows = lambda a, b: torch.softmax(a @ b, -1)
    compiled = fusec.compile(rows, dynamic=True)
    with torch.no_grad():
        for n in (4, 6, 19):
            a, b = torch.randn(8, n + 3), torch.randn(n + 3, 2 * n + 1)
            torch.testing.assert_close(compiled(a, b), rows(a, b), rtol=1e-5, atol=1e-5)
    (graph,) = assert_ran(compiled).graphs
    assert [k.kind for k in graph.plan.kernels] == ["reduction"]  # the bare matmul: torch's
    edges = fusec.report_of(compiled).to_dict()["edges"]
    assert any(e["code"] == "matmul-rows" and "symbolic length" in e["reason"] for e in edges), edges


@torch.no_grad()
def test_a_gather_of_the_product_is_not_in_its_epilogue():
    """Cross-entropy reads log_softmax at each row's target: a computed column the tile's
    accumulator does not hold by position. The row reduction fuses, the gather does not."""
    torch.manual_seed(11)
    lin = nn.Linear(16, 40)
    x, target = torch.randn(12, 16), torch.randint(0, 40, (12,))
    report = check(lambda x, t: F.cross_entropy(lin(x), t), x, target)
    edges = report.to_dict()["edges"]
    assert any(e["code"] == "tile-read" and "computed positions" in e["reason"] for e in edges), edges


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_scores_softmax_is_one_kernel(dtype):
    """Attention written out: (q @ k^T) * scale + mask, softmax over the keys. A batched product's
    rows are (batch, row) pairs: 600 keys take a 1024-wide tile, so the 70 query rows of each batch
    are two tiles of 64, the second partial."""
    torch.manual_seed(12)
    q, k = torch.randn(2, 70, 8, dtype=dtype), torch.randn(2, 600, 8, dtype=dtype)
    mask = torch.randn(70, 600, dtype=dtype)
    fn = lambda q, k, m: torch.softmax(q @ k.transpose(-1, -2) * 0.25 + m, -1)
    report = check(fn, q, k, mask, kernels=1, externs=0)
    graph = report.graphs[0]
    launch = graph.runtime.calls[report.kernels[0].id].launch
    assert (launch.constants["BLOCK_M"], launch.constants["BLOCK_N"], launch.grid) == (64, 1024, (4,))


def test_backward_layer_norm_gradient_after_the_next_layers_matmul():
    """Linear -> LayerNorm -> Linear: in the backward, LayerNorm's input gradient reduces the rows
    of the next layer's input gradient (a matmul), so its row sums can be that matmul's epilogue."""
    torch.manual_seed(15)
    up, ln, down = nn.Linear(16, 40), nn.LayerNorm(40), nn.Linear(40, 24)
    fn = lambda x: down(ln(up(x)))
    x = torch.randn(3, 7, 16, requires_grad=True)
    grad = torch.randn(3, 7, 24)
    fn(x).backward(grad)
    params = [x, up.weight, up.bias, ln.weight, ln.bias, down.weight, down.bias]
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    compiled = fusec.compile(fn)
    compiled(x).backward(grad)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-4)
    report = assert_ran(compiled)
    backward = next(g for g in report.graphs if g.name.startswith("backward"))
    rows = [k for k in backward.plan.kernels if k.kind == "matmul" and "tl.reduce(" in k.source]
    assert rows, backward.plan.kernels


def test_a_long_epilogue_over_wide_rows_is_refused():
    """Over rows wider than 512 a 16-row tile leaves about 4 registers an element: LayerNorm with a
    GELU and more after it (over MATMUL_ROW_WORK ops) stops joining the matmul, with the reason."""
    lin, ln = nn.Linear(8, 600), nn.LayerNorm(600)
    edges = _edges(lambda x: F.gelu(ln(lin(x))) * torch.tanh(lin(x)) + 1, torch.randn(4, 8))
    assert any(e["code"] == "matmul-rows" and "would not fit in registers" in e["reason"] for e in edges), edges


@torch.no_grad()
def test_a_permuted_normalised_row_stays_out_of_the_matmul_tile():
    """A permute after the epilogue's reduction would read the product at another tile."""
    torch.manual_seed(7)
    lin, ln = nn.Linear(16, 24), nn.LayerNorm(24)
    nn.init.normal_(ln.weight), nn.init.normal_(ln.bias)
    y = torch.randn(2, 24, 5)
    fn = lambda x, y: ln(lin(x)).permute(0, 2, 1) + y
    check(fn, torch.randn(2, 5, 16), y)
    assert any(e["code"] == "tile-read" and "permute" in e["reason"] for e in _edges(fn, torch.randn(2, 5, 16), y))


@torch.no_grad()
def test_a_permuted_row_value_beside_the_product_stays_out_of_its_tile():
    """A LayerNorm of another tensor, transposed, added to the product: the tile holds each row's
    mean and variance at its own row only, so the permute is refused whatever it reads."""
    torch.manual_seed(8)
    lin, ln = nn.Linear(4, 8), nn.LayerNorm(8)
    nn.init.normal_(ln.weight), nn.init.normal_(ln.bias)
    check(lambda x, r: lin(x) + ln(r).t(), torch.randn(8, 4), torch.randn(8, 8))


@torch.no_grad()
def test_a_sibling_norm_transposed_keeps_its_own_rows():
    torch.manual_seed(9)
    lin, ln1, ln2 = nn.Linear(4, 8), nn.LayerNorm(8), nn.LayerNorm(8)
    nn.init.normal_(ln2.weight)
    check(lambda x, r: (ln1(lin(x)), ln2(r).t() * 2), torch.randn(6, 4), torch.randn(6, 8))


@torch.no_grad()
@pytest.mark.parametrize("shape", [(10, 16), (3, 10, 16)])
def test_a_per_row_output_that_reads_a_tensor(shape):
    """A row sum plus a per-row input: stored once per row (at the tile's rows as a column)."""
    torch.manual_seed(10)
    lin = nn.Linear(16, 24)
    report = check(lambda x, b: lin(x).sum(-1) + b, torch.randn(*shape), torch.randn(*shape[:-1]), kernels=1)
    assert "rowmask" in _matmul_kernel(report).source


def test_an_epilogue_storing_many_tiles_of_wide_rows_is_refused():
    """Each per-element output is a live tile: over rows wider than 512 at most MATMUL_ROW_TILES
    (a LayerNorm backward storing 3-5 spilled on sm_90)."""
    lin, ln = nn.Linear(8, 600), nn.LayerNorm(600)
    def fn(x):
        y = lin(x)
        return ln(y), y * 2, torch.exp(y)

    edges = _edges(fn, torch.randn(4, 8))
    assert any(e["code"] == "matmul-rows" and "storing 3 tiles" in e["reason"] for e in edges), edges
