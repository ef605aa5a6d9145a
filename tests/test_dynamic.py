"""Dynamic shapes: one compiled graph serves every size, its kernels reading sizes as arguments."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
import sympy
import torch
import torch.nn.functional as F
from eager import TOL, assert_ran
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._sympy.functions import FloorDiv, PythonMod

import fusec
from fusec.cli import main
from fusec.cudagraphs import refusal, sizes_of
from fusec.ir import SIZE_DTYPE
from fusec.kernels.call import DynamicCall
from fusec.plan import does_work
from fusec.sizes import source as size_source
from tests import hf_models

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
NO_TRANSFORMERS = "Hugging Face transformers is not installed (pip install -e '.[models]')"


def run_sizes(fn, make_args, sizes, **options):
    """Compile `fn`, call it on `make_args(n)` for each n, every result equal to eager's;
    returns the compiled callable."""
    compiled = fusec.compile(fn, **options)
    for n in sizes:
        args = make_args(n)
        expected, got = fn(*args), compiled(*args)
        if isinstance(expected, torch.Tensor):
            expected, got = (expected,), (got,)
        for e, g in zip(expected, got, strict=True):
            assert g.shape == e.shape and g.dtype == e.dtype, (n, g.shape, e.shape)
            torch.testing.assert_close(g, e, equal_nan=True, **TOL.get(e.dtype, {}))
    return compiled


def graphs(compiled) -> list:
    return fusec.report_of(compiled).graphs


def dynamic_calls(compiled) -> list[DynamicCall]:
    return [c for g in graphs(compiled) for c in g.runtime.calls.values() if isinstance(c, DynamicCall)]


def test_pointwise_chain_with_broadcast_compiles_once():
    fn = lambda x, b: torch.sigmoid(x + b) * x - torch.tanh(b) / 3
    compiled = run_sizes(fn, lambda n: (torch.randn(n, 3, 17), torch.randn(17)), (2, 3, 7, 40), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and report.stats["kernels"] == 1
    (kernel,) = report.graphs[0].plan.kernels
    assert "ks_" in kernel.source  # the batch size is an argument, not a literal
    (call,) = dynamic_calls(compiled)
    assert call.count == 4


def test_reduction_rows_short_and_long_in_one_graph():
    # One graph, rows of n elements: a few, then thousands (loops of several blocks).
    fn = lambda x: (x.sum(-1), x.amax(-1), (x * 2).exp().mean(0))
    compiled = run_sizes(fn, lambda n: (torch.randn(3, n),), (2, 5, 33, 700, 9000), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1
    variants = set().union(*(c.variants for c in dynamic_calls(compiled)))
    assert len(variants) > 2  # block sizes chosen per call, from the actual row length
    # Rows of up to 8192 stay in registers (the persistent variant), 9000 loop.
    assert {name.endswith("_rows") for name, *_ in variants} == {True, False}, variants


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "layer_norm", "rms_norm", "var", "argmax"])
def test_normalizations_over_symbolic_rows(name):
    w = torch.randn(19)
    fns = {
        "softmax": lambda x: torch.softmax(x * 2, -1),
        "log_softmax": lambda x: F.log_softmax(x, -1),
        "layer_norm": lambda x: F.layer_norm(x, (19,), w, w * 0.5),
        "rms_norm": lambda x: F.rms_norm(x, (19,), w),
        "var": lambda x: x.var(-1),
        "argmax": lambda x: x.argmax(-1),
    }
    compiled = run_sizes(fns[name], lambda n: (torch.randn(n, 2, 19),), (3, 4, 9), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and report.stats["kernels"] == 1


def test_softmax_over_symbolic_row_length():
    fn = lambda x: torch.softmax(x, -1) + x.logsumexp(-1, keepdim=True)
    compiled = run_sizes(fn, lambda n: (torch.randn(4, n),), (3, 50, 3000), dynamic=True)
    assert len(assert_ran(compiled).graphs) == 1


def test_cross_entropy_over_symbolic_batch():
    fn = lambda logits, target: F.cross_entropy(logits, target)
    compiled = run_sizes(fn, lambda n: (torch.randn(n, 11), torch.randint(0, 11, (n,))), (2, 5, 70), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1


def test_automatic_dynamic_recompiles_once():
    fn = lambda x: torch.relu(x) * 2 + x.sum(-1, keepdim=True)
    compiled = run_sizes(fn, lambda n: (torch.randn(n, 8),), (2, 3, 4, 5, 9, 31))
    report = assert_ran(compiled)
    # The first shape compiles static; the second, with the batch dim symbolic, serves the rest.
    assert len(report.graphs) == 2
    assert not graphs(compiled)[0].graph.hints and graphs(compiled)[1].graph.hints


def test_dynamic_false_compiles_each_shape():
    compiled = run_sizes(lambda x: x.exp() + 1, lambda n: (torch.randn(n),), (2, 3, 4), dynamic=False)
    assert len(assert_ran(compiled).graphs) == 3


def test_mark_dynamic_and_torch_compile_backend():
    fn = lambda x: torch.tanh(x).sum(0)
    compiled = torch.compile(fn, backend="fusec", dynamic=True)
    x = torch.randn(5, 6)
    torch._dynamo.mark_dynamic(x, 0)
    for n in (5, 6, 12):
        x = torch.randn(n, 6)
        torch.testing.assert_close(compiled(x), fn(x))
    marked = fusec.compile(fn, dynamic=False)
    for n in (5, 7, 8):
        x = torch.randn(n, 6)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(marked(x), fn(x))
    assert len(assert_ran(marked).graphs) == 1


def test_views_and_cat_on_symbolic_dims():
    def fn(x, y):
        both = torch.cat([x, y], 0)  # rows s0 + s1
        flat = both.reshape(-1, 4).permute(1, 0)
        return flat * 2, x[:, 1:].sum(-1), both.transpose(0, 1) + 1
    make = lambda n: (torch.randn(n, 8), torch.randn(n + 3, 8))
    compiled = run_sizes(fn, make, (2, 4, 9), dynamic=True)
    assert len(assert_ran(compiled).graphs) == 1


def test_linear_with_epilogue_over_symbolic_batch():
    lin = nn.Linear(16, 24)
    fn = lambda x: F.gelu(lin(x)) + 1
    with torch.no_grad():
        compiled = run_sizes(fn, lambda n: (torch.randn(n, 16),), (2, 5, 33), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1
    assert any(k.kind == "matmul" for k in report.graphs[0].plan.kernels)


def test_independent_kernels_launch_as_one_combo_over_symbolic_sizes():
    fn = lambda a, b, c: (a.exp() + 1, b.sin() * 2, c.relu() - 1)
    make = lambda n: (torch.randn(n, 5), torch.randn(n + 11), torch.randn(2 * n, 3))
    compiled = run_sizes(fn, make, (4, 7, 40), dynamic=True)
    report = assert_ran(compiled)
    # Passes decide at values of about 1000 per symbol: the largest part stays a kernel of its own.
    assert len(report.graphs) == 1 and sorted(k.kind for k in report.graphs[0].plan.kernels) == ["combo", "pointwise"]
    (combo,) = [k for k in report.graphs[0].plan.kernels if k.kind == "combo"]
    assert [p for p in combo.params if p.startswith("numel")] == ["numel0", "numel1"]  # symbolic: passed per call


def test_a_combo_of_static_and_symbolic_parts():
    # b keeps its size when the others change: after the recompile its part's count is a number written
    # into the kernel, the others' are passed per call
    fn = lambda a, b, c: (a.exp() + 1, b.sin() * 2, c.relu() - 1)
    make = lambda n: (torch.randn(n, 5), torch.randn(18), torch.randn(2 * n, 3))
    compiled = run_sizes(fn, make, (4, 7, 9))
    graph = assert_ran(compiled).graphs[-1]
    combos = [k for k in graph.plan.kernels if k.kind == "combo"]
    assert combos and any("= 18" in k.source for k in combos)
    counts = [p for k in combos for p in k.params if p.startswith("numel")]
    assert counts and len(counts) < sum(len(k.parts) for k in combos)  # some written in, some passed


def test_matmul_with_m_n_and_k_symbolic():
    fn = lambda a, b, c: torch.relu(a @ b) + c
    make = lambda n: (torch.randn(n, n + 3), torch.randn(n + 3, 2 * n + 1), torch.randn(2 * n + 1))
    compiled = run_sizes(fn, make, (4, 6, 19), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and [k.kind for k in report.graphs[0].plan.kernels] == ["matmul"]


def test_dropout_over_symbolic_sizes():
    # Dropout keeps x / (1 - p) or 0: every kept element is x * 2, and about half are kept.
    fn = lambda x: F.dropout(x + 1, p=0.5, training=True)
    compiled = fusec.compile(fn, dynamic=True)
    for n in (300, 517):
        x = torch.rand(n, 7) + 1
        out = compiled(x)
        kept = out != 0
        torch.testing.assert_close(out[kept], (x[kept] + 1) * 2)
        assert 0.4 < kept.float().mean().item() < 0.6
    assert len(assert_ran(compiled).graphs) == 1


def test_training_with_a_short_last_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.LayerNorm(12), nn.Linear(12, 3))
    ref = nn.Sequential(*[m for m in model])
    compiled = fusec.compile(model)
    counts = []
    for n in (8, 8, 5, 3, 8, 7, 2, 6):
        x, target = torch.randn(n, 6), torch.randint(0, 3, (n,))
        model.zero_grad()
        loss = F.cross_entropy(compiled(x), target)
        loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        F.cross_entropy(ref(x), target).backward()
        for g, e in zip(got, [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
        counts.append(len(graphs(compiled)))
    assert_ran(compiled)
    # Dynamo wraps a module's call: its automatic dynamic makes the batch symbolic by the
    # third distinct size; that forward and backward serve every later size.
    assert counts[3] <= 6 and counts[-1] == counts[3], counts
    assert all(g.graph.hints for g in graphs(compiled)[-2:])


# Literal steps: a step read from a variable becomes a symbol of its own under dynamic=True.
@pytest.mark.parametrize("fn", [lambda x: torch.relu(x)[:, ::2] * 2, lambda x: torch.relu(x)[:, 1::3] * 2],
                         ids=["step2", "step3"])
def test_strided_slice_of_a_symbolic_dim_stays_in_bounds(fn, monkeypatch):
    # The output has s1 * ((s0 + 1) // 2) elements; read as (s1 * (s0 + 1)) // 2 the launch
    # covered more than the buffer, and the kernel wrote past its end.
    launched, launch = [], DynamicCall.__call__

    def recording(self, *args):
        launched.append(args[-1])  # the extent the launch covers: the output's element count
        launch(self, *args)
    monkeypatch.setattr(DynamicCall, "__call__", recording)
    make = lambda n: (torch.randn(n % 5 + 2, n),)
    compiled = run_sizes(fn, make, (9, 12, 13, 17, 40), dynamic=True)
    assert launched == [fn(*make(n)).numel() for n in (9, 12, 13, 17, 40)]
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and report.stats["kernels"] == 1


@pytest.mark.parametrize("fn", [lambda x: F.pad(torch.sigmoid(x), (1, 2, 3, 0), value=-1.5) * 2,
                                lambda x: F.pad(torch.sigmoid(x), (-1, 2, 0, -2)) * 2], ids=["grow", "cut"])
def test_constant_pad_of_symbolic_sizes_is_one_kernel(fn):
    compiled = run_sizes(fn, lambda n: (torch.randn(2, n, n + 3),), (5, 8, 13), dynamic=True)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and report.stats["kernels"] == 1 and report.stats["extern_calls"] == 0


def test_constant_pad_gradient_over_symbolic_sizes():
    fn = lambda x: (F.pad(torch.relu(x), (1, -1, 2, 0)) * 3).tanh()
    compiled = fusec.compile(fn, dynamic=True)
    for n in (5, 8, 11):
        x = torch.randn(2, n, n + 2, requires_grad=True)
        mine = x.detach().clone().requires_grad_()
        grad = torch.randn(2, n + 2, n + 2)
        fn(x).backward(grad)
        compiled(mine).backward(grad)
        torch.testing.assert_close(mine.grad, x.grad)
    report = assert_ran(compiled)
    assert len(report.graphs) == 2 and report.stats["extern_calls"] == 0  # forward and backward


def test_size_source_brackets_divisions_inside_products():
    s0, s1 = sympy.symbols("s0 s1", integer=True, positive=True)
    exprs = [s1 * FloorDiv(s0 + 1, 2), 3 * PythonMod(s0, 4) * s1, FloorDiv(s0, 3) * FloorDiv(s1, 2),
             (s0 + 1) ** 2, s1 * sympy.Max(1, FloorDiv(s0 + 1, 2))]
    for expr in exprs:
        for a, b in ((7, 3), (12, 5), (2, 9)):
            text = size_source(expr, python=True)
            assert eval(text, {"ks_s0": a, "ks_s1": b}) == int(expr.subs({s0: a, s1: b})), (expr, text)


@pytest.mark.fallback_expected
def test_what_fusec_cannot_do_symbolically_runs_through_torch(monkeypatch, caplog):
    monkeypatch.setenv("FUSEC_STRICT", "0")
    # A size computed through floats (a rounding of s0 * 1.5): fusec does not write those as source.
    fn = lambda x: F.interpolate(x[None, None], scale_factor=1.5).exp()
    with caplog.at_level(logging.WARNING, logger="fusec"):
        run_sizes(fn, lambda n: (torch.randn(n),), (4, 6, 10), dynamic=True)
    assert "runs through torch" in caplog.text and "is not sums, products" in caplog.text


@settings(max_examples=6, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 9), st.integers(2, 300)), min_size=2, max_size=4))
def test_random_shape_sequences_match_eager(shapes):
    torch._dynamo.reset()
    fn = lambda x, b: (torch.softmax(x + b[:, None], -1), (x * x).sum(0), torch.relu(x) - b[:, None])
    compiled = fusec.compile(fn, dynamic=True)
    for rows, cols in shapes:
        x, b = torch.randn(rows, cols), torch.randn(rows)
        for e, g in zip(fn(x, b), compiled(x, b), strict=True):
            torch.testing.assert_close(g, e)
    report = assert_ran(compiled)
    # Dynamo specializes a size equal to another (duck sizing): at most one more graph.
    assert len(report.graphs) <= 2


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason=NO_TRANSFORMERS)
def test_gpt2_over_sequence_lengths_and_batch_sizes():
    model, _ = hf_models.gpt2(layers=1)
    compiled = fusec.compile(model)
    with torch.no_grad():
        for batch, seq in ((1, 5), (2, 9), (3, 17), (1, 64), (2, 33), (3, 40)):
            ids = torch.randint(0, 256, (batch, seq))
            torch.testing.assert_close(compiled(ids).last_hidden_state, model(ids).last_hidden_state)
    report = assert_ran(compiled)
    # static (1, 5); then batch and length symbolic; a batch of 1 is a specialization of its own
    assert len(report.graphs) <= 3
    # Torch runs attention and, over a symbolic length, the position ids' arange; the rest is kernels.
    externs = {s.target for g in report.graphs for s in g.plan.externs if does_work(g.plan, s)}
    assert externs <= {"aten._scaled_dot_product_flash_attention_for_cpu.default", "aten.arange.start_step"}, externs
    assert report.stats["ran"]["kernels"] > 3 * report.stats["ran"]["extern_calls"], report.stats


def test_inspect_cli_takes_a_symbolic_dimension(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["inspect", "--example", "mlp", "--input", "Bx16x128", "--dynamic", "B=4", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(out.read_text())
    (graph,) = data["graphs"]
    (symbol,) = graph["size_hints"]
    assert graph["size_hints"][symbol] == 4 and "dynamic shapes" in printed
    shapes = {n["symbolic_shape"] for n in data["nodes"] if n["symbolic_shape"]}
    assert f"{symbol}x16x128" in shapes


@pytest.mark.parametrize(("argv", "message"), [
    (["--input", "BxSx128", "--dynamic", "S"], "dimension 'B' is no number and no --dynamic name"),
    (["--input", "4x16x128", "--dynamic", "B"], "--dynamic B names no dimension"),
    (["--input", "Bx16x128", "--dynamic", "B=1"], "integer of 2 or more"),
    (["--dynamic", "B"], "give them"),
])
def test_inspect_cli_dynamic_mistakes_are_usage_errors(capsys, argv, message):
    assert main(["inspect", "--example", "mlp", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_dynamic_compiles_once_for_every_length(monkeypatch):
    from fusec.bench import dynamic as bench_dynamic

    monkeypatch.setitem(bench_dynamic.LENGTHS, "tiny", (16, 23, 31, 40, 17))
    rows = {r.system: r for r in bench_dynamic.measure("cpu", quick=True)}
    assert rows["fusec dynamic=None"].graphs == 2  # the first length static, then one symbolic graph
    assert rows["fusec dynamic=False"].graphs == 5
    assert "| fusec dynamic=None | 5 | 2 |" in bench_dynamic.markdown(list(rows.values()), "cpu")


def test_a_dynamic_graph_is_recorded_into_a_cuda_graph_per_size():
    compiled = run_sizes(lambda x: x.exp() * 2, lambda n: (torch.randn(n, 3),), (4, 5), dynamic=True)
    (graph,) = graphs(compiled)
    assert refusal(graph.plan, graph.name) is None
    sizes = sizes_of(graph.plan.graph)  # a recording's key: the size symbols' values, read from the inputs

    def inputs(rows):  # the call's inputs as the launcher takes them: sizes as ints, then the tensor
        return [rows if node.dtype == SIZE_DTYPE else torch.randn(rows, 3) for node in graph.plan.graph.inputs]

    assert sizes(inputs(7)) == sizes(inputs(7)) != sizes(inputs(8))


def test_automatic_dynamic_serves_new_python_floats():
    compiled = run_sizes(lambda x, lr: torch.exp(x) * lr, lambda i: (torch.randn(4), 0.5 + i), range(12))
    assert len(assert_ran(compiled).graphs) == 2
    assert fusec.report_of(compiled).runs_eagerly is None


class _Binary:
    def __init__(self, runs: list) -> None:
        self.function, self.packed_metadata, self.runs = None, None, runs

    def run(self, *args) -> None:
        self.runs.append(args)


class _JitStub:
    """Stands for a @triton.jit function: indexing by a grid gives the launcher, which 'compiles'."""

    arg_names = ["p_x", "ks_s0", "numel", "BLOCK"]
    __name__ = "stub"

    def __init__(self) -> None:
        self.compiles, self.runs = [], []

    def __getitem__(self, grid):
        def launch(*args, **constants):
            self.compiles.append((grid, args, constants))
            return _Binary(self.runs)
        return launch


def test_dynamic_call_keys_gpu_binaries_by_integer_class(monkeypatch):
    from fusec.kernels.launch import pointwise_launch

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 0, raising=False)
    fn = _JitStub()
    call = DynamicCall(lambda ext: (fn, pointwise_launch(ext[0], False)), lambda ext: ext, 1, False, loaded=1)
    x = torch.zeros(64)
    for numel in (48, 64, 33, 35, 1, 2**31):
        call(x, numel, numel)
    # Blocks of 256 each (a GPU's smallest): 48 and 64 (divisible by 16) share one binary, 33 and 35 another;
    # 1 and a size past 32 bits each compile anew.
    assert len(fn.compiles) == 4 and len(fn.runs) == 2
    assert fn.runs[0][-3:] == (64, 64, 256)  # the symbol, the extent, then BLOCK in parameter order


def test_inspect_with_dynamic_shows_symbolic_shapes():
    report = fusec.inspect(lambda x: torch.softmax(x, -1) * 2, torch.randn(6, 40), options={"dynamic": True})
    (graph,) = report.graphs
    rows, cols = sorted(graph.graph.hints, key=graph.graph.hints.get)  # the example's 6 and 40
    shapes = {n["symbolic_shape"] for n in report.to_dict()["nodes"]}
    assert f"{rows}x{cols}" in shapes


def test_the_launcher_source_of_a_dynamic_graph_reads_its_sizes(tmp_path, capsys):
    out = tmp_path / "launcher.py"
    assert main(["inspect", "--example", "mlp", "--input", "Bx16x128", "--dynamic", "B=4",
                 "--launcher", str(out)]) == 0
    text = out.read_text()
    # The batch size is bound from the call's inputs, and the allocations and launches use it.
    symbol = next(line.split(" = ")[0].strip() for line in text.splitlines() if line.strip().startswith("ks_"))
    assert f"empty_strided(((16 * {symbol}), 512)" in text


@pytest.mark.fallback_expected
def test_a_variance_fusec_cannot_write_symbolically_says_why(monkeypatch, caplog):
    monkeypatch.setenv("FUSEC_STRICT", "0")
    fn = lambda x: torch.var(x, -1, correction=2)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        run_sizes(fn, lambda n: (torch.randn(3, n),), (5, 9), dynamic=True)
    assert "runs through torch: a variance with correction 2.0 over a row of symbolic length" in caplog.text
