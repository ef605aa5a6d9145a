"""The public surface: decorator forms, modules, backend name, inspect, options, fallbacks."""

import logging

import pytest
import torch
from torch import nn

import fusec
import fusec.compiler
import fusec.frontend
import fusec.kernels.parallel_load
from tests.eager import assert_ran


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(16))

    def forward(self, x):
        return torch.nn.functional.gelu(x + self.bias) * 0.5


def test_bare_decorator_and_options_forms():
    @fusec.compile
    def f(x):
        return torch.exp(x) + 1

    @fusec.compile(fuse=False)
    def g(x):
        return torch.exp(x) + 1

    x = torch.randn(4, 5)
    torch.testing.assert_close(f(x), torch.exp(x) + 1)
    torch.testing.assert_close(g(x), torch.exp(x) + 1)
    assert assert_ran(f).stats["kernels"] == 1
    assert assert_ran(g).stats["kernels"] == 2  # fusion off: one kernel per op


def test_module_compiles_and_matches_eager():
    torch.manual_seed(0)
    m = Block()
    x = torch.randn(3, 16)
    compiled = fusec.compile(m)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))
    assert assert_ran(compiled).stats["kernels"] == 1


def test_torch_compile_backend_name(monkeypatch):
    m = Block()
    x = torch.randn(3, 16)
    records = []
    monkeypatch.setattr(fusec.frontend, "compile_graph",
                        lambda gm, name, options, _: fusec.compiler.compile_graph(gm, name, options, records))
    compiled = torch.compile(m, backend="fusec")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))
    (record,) = records
    assert record.runtime.counts.calls == 1 and sum(record.runtime.counts.kernels.values()) == 1


def test_training_gradients_match_eager():
    torch.manual_seed(0)
    m = Block()
    x = torch.randn(3, 16, requires_grad=True)
    ref = m(x).sum()
    ref.backward()
    expected = (x.grad.clone(), m.bias.grad.clone())
    x.grad, m.bias.grad = None, None
    compiled = fusec.compile(m)
    compiled(x).sum().backward()
    torch.testing.assert_close(x.grad, expected[0])
    torch.testing.assert_close(m.bias.grad, expected[1])
    names = [g.name.split("_")[0] for g in assert_ran(compiled).graphs]
    assert names == ["forward", "backward"]


def test_inspect_launches_no_kernel(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("inspect compiled a kernel")
    monkeypatch.setattr(fusec.kernels.parallel_load, "load_kernel", refuse)
    x, b, y = torch.randn(4, 8), torch.randn(8), torch.randn(4, 8)
    report = fusec.inspect(lambda x, b, y: torch.sigmoid(x + b) * y - torch.tanh(y) / 3, x, b, y)
    assert report.stats["kernels"] == 1
    assert set(report.stats) == {"nodes", "kernels", "extern_calls", "bytes_unfused", "bytes_fused",
                                 "peak_bytes_unfused", "peak_bytes", "streams", "dag_width", "cross_stream_waits",
                                 "compile_seconds", "execution", "ran", "saved_bytes", "host_ops",
                                 "stores_in_place", "stores_copied"}
    # one 4x8 float32 output; op by op, two results are alive at once (e.g. sigmoid(x + b) and tanh(y))
    assert report.stats["peak_bytes"] == 128
    assert report.stats["peak_bytes_unfused"] >= 2 * 128
    assert report.stats["ran"] == {"kernels": 0, "extern_calls": 0, "through_torch": 0}
    kernel = report.kernels[0]
    assert "@triton.jit" in kernel.source and kernel.kind == "pointwise"
    assert '"stats"' in report.to_json()


def test_inspect_twice_and_after_compile_still_captures():
    fn = lambda x: torch.exp(x) * 3
    x = torch.randn(4)
    fusec.compile(fn)(x)
    for _ in range(10):  # more than Dynamo's recompile limit for one code object
        assert fusec.inspect(fn, x).stats["kernels"] == 1


def test_graph_break_compiles_each_piece_and_is_right():
    def fn(x):
        y = torch.exp(x) + 1
        if y.sum() > 0:  # data-dependent branch: Dynamo breaks the graph here
            return y * 2
        return y - 2
    x = torch.randn(5, 5)
    compiled = fusec.compile(fn)
    torch.testing.assert_close(compiled(x), fn(x))
    torch.testing.assert_close(compiled(-x - 10), fn(-x - 10))
    report = assert_ran(compiled)
    assert len(report.graphs) == 2  # the branch splits the function in two graphs


def test_non_tensor_arguments():
    def fn(x, scale, flag):
        return torch.exp(x) * scale if flag else x
    x = torch.randn(3, 3)
    compiled = fusec.compile(fn)
    torch.testing.assert_close(compiled(x, 2.5, True), fn(x, 2.5, True))
    torch.testing.assert_close(compiled(x, 2.5, False), fn(x, 2.5, False))
    assert assert_ran(compiled).stats["ran"]["kernels"] == 1  # flag False returns x: no graph to run


def test_exotic_op_is_extern_and_right():
    fn = lambda x: torch.igamma(torch.exp(x), torch.exp(-x)) + 1  # igamma: a loop to convergence, in torch
    x = torch.randn(4, 4)
    compiled = fusec.compile(fn)
    torch.testing.assert_close(compiled(x), fn(x))
    stats = assert_ran(compiled).stats
    assert stats["extern_calls"] == 1 and stats["kernels"] == 2
    assert stats["ran"] == {"kernels": 2, "extern_calls": 1, "through_torch": 0}


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TypeError, match=r"unknown option.*fusee.*valid options are"):
        fusec.compile(lambda x: x, fusee=True)
    with pytest.raises(ValueError, match="fuel must be"):
        fusec.compile(lambda x: x, fuel=-1)
    with pytest.raises(TypeError, match=r"expects a function or an nn\.Module"):
        fusec.compile(42)


def test_dump_writes_graph_after_each_pass(tmp_path):
    x = torch.randn(4)
    fusec.compile(lambda x: torch.exp(x) + 1, dump_dir=tmp_path)(x)
    (folder,) = tmp_path.iterdir()
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["00_capture.dot", "00_capture.txt", "01_cleanup.dot", "01_cleanup.txt",
                     "02_private_constants.dot", "02_private_constants.txt", "03_fuse.dot", "03_fuse.txt",
                     "04_view_outputs.dot", "04_view_outputs.txt", "05_horizontal.dot", "05_horizontal.txt"]
    assert "[k0]" in (folder / "03_fuse.txt").read_text()


def test_kernel_source_is_cached_on_disk(tmp_path):
    x = torch.randn(4)
    fusec.compile(lambda x: torch.cos(x) * 7 - 2, cache_dir=tmp_path)(x)
    files = list(tmp_path.glob("*.py"))
    assert len(files) == 1 and "@triton.jit" in files[0].read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_input_shape_raises_eagers_error():
    lin = nn.Linear(8, 4)
    compiled = fusec.compile(lin)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        compiled(torch.randn(3, 5))


@pytest.mark.fallback_expected
def test_internal_error_falls_back_to_torch_unless_strict(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(fusec.compiler, "render", broken)
    fn = lambda x: torch.exp(x) + 1
    x = torch.randn(4)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        compiled = fusec.compile(fn, strict=False)
        torch.testing.assert_close(compiled(x), fn(x))
    assert "internal error: RuntimeError: boom" in caplog.text
    assert fusec.report_of(compiled).graphs[0].fallback.startswith("internal error")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="boom"):
        fusec.compile(fn, strict=True)(x)


@pytest.mark.fallback_expected
def test_kernel_failure_at_launch_falls_back(monkeypatch, caplog):
    import fusec.runtime

    fn = lambda x: torch.sin(x) * 3
    compiled = fusec.compile(fn, strict=False)
    x = torch.randn(5)
    compiled(x)
    from fusec.kernels.call import KernelCall

    def failing(self, *args):
        raise fusec.runtime.KernelFailed("kernel k0 failed: simulated")
    monkeypatch.setattr(KernelCall, "__call__", failing)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        torch.testing.assert_close(compiled(x), fn(x))
        torch.testing.assert_close(compiled(x), fn(x))
    assert caplog.text.count("simulated") == 1  # said once; later calls go straight to torch
    counts = fusec.report_of(compiled).graphs[0].runtime.counts
    assert (counts.calls, counts.through_torch, counts.kernels["k0"]) == (3, 2, 1)
    assert fusec.report_of(compiled).stats["ran"]["through_torch"] == 2


def test_report_to_html_is_self_contained(tmp_path):
    x, b = torch.randn(4, 8), torch.randn(8)
    report = fusec.inspect(lambda x, b: torch.sigmoid(x + b) * 2, x, b)
    page = report.to_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == page
    assert "<svg" in page and "@triton.jit" in page and "http://" not in page.replace("http://www.w3.org", "")


@pytest.mark.fallback_expected
@pytest.mark.parametrize("strict", [True, False])
def test_input_with_other_strides_raises_if_strict_else_runs_through_torch(strict, caplog):
    from fusec.runtime import StrideMismatch

    fn = lambda x: torch.exp(x) + 1
    compiled = fusec.compile(fn, strict=strict)
    compiled(torch.randn(4, 6))
    runtime = fusec.report_of(compiled).graphs[0].runtime
    transposed = torch.randn(6, 4).t()  # what Dynamo's guards would send elsewhere, handed in directly
    if strict:
        with pytest.raises(StrideMismatch, match=r"strides \(1, 4\), the kernel expects \(6, 1\)"):
            runtime([transposed])
        return
    with caplog.at_level(logging.WARNING, logger="fusec"):
        (out,) = runtime([transposed])
    torch.testing.assert_close(out, fn(transposed))
    assert "running this call through torch" in caplog.text
    assert (runtime.counts.calls, runtime.counts.through_torch) == (2, 1)


def test_a_compiled_modules_state_dict_has_the_modules_own_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    compiled = fusec.compile(model)
    outer = torch.nn.ModuleDict({"body": compiled})
    assert list(compiled.state_dict()) == list(model.state_dict()) == ["0.weight", "0.bias"]
    assert list(outer.state_dict()) == ["body.0.weight", "body.0.bias"]
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    fresh.load_state_dict(compiled.state_dict())  # strict: every key matched
    torch.testing.assert_close(fresh[0].weight, model[0].weight)
    fresh[0].weight.data.add_(1)
    outer.load_state_dict({f"body.{k}": v for k, v in fresh.state_dict().items()})
    torch.testing.assert_close(model[0].weight, fresh[0].weight)
