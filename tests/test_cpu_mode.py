"""CPU graphs: planned and reported the same either way; run by torch (cpu="torch") or by Triton's interpreter."""

import logging

import pytest
import torch

import fusec
import fusec.compiler
from fusec.execution import announce

fn = lambda x, b: torch.softmax(torch.sigmoid(x + b) * 2, dim=-1)


def _inputs():
    return torch.randn(8, 32), torch.randn(32)


def _without_times(data):
    """The report without what differs between runs of one plan: times, how it ran, what ran."""
    if isinstance(data, dict):
        varying = ("compile_seconds", "seconds", "execution", "ran")
        return {k: _without_times(v) for k, v in data.items() if k not in varying}
    if isinstance(data, list):
        return [_without_times(v) for v in data]
    return data


def test_torch_mode_runs_no_kernel_and_reports_the_same_plan(monkeypatch):
    x, b = _inputs()
    interpreted = fusec.compile(fn, cpu="interpret")
    torch.testing.assert_close(interpreted(x, b), fn(x, b))

    def refuse(*args, **kwargs):
        raise AssertionError("cpu='torch' loaded a kernel")
    monkeypatch.setattr(fusec.compiler, "load_kernels", refuse)
    torch._dynamo.reset()
    compiled = fusec.compile(fn, cpu="torch")
    torch.testing.assert_close(compiled(x, b), fn(x, b))
    ran, planned = fusec.report_of(compiled), fusec.report_of(interpreted)
    assert ran.stats["execution"] == "torch" and planned.stats["execution"] == "interpreter"
    assert ran.stats["kernels"] == planned.stats["kernels"] == 1
    assert _without_times(ran.to_dict()) == _without_times(planned.to_dict())
    assert [g["execution"] for g in ran.to_dict()["graphs"]] == ["torch"]


def test_torch_is_the_default_on_cpu(monkeypatch):
    monkeypatch.delenv("FUSEC_CPU", raising=False)
    x, b = _inputs()
    compiled = fusec.compile(fn)
    torch.testing.assert_close(compiled(x, b), fn(x, b))
    assert fusec.report_of(compiled).stats["execution"] == "torch"
    assert fusec.report_of(compiled).graphs[0].runtime is None


def test_torch_mode_runs_the_model_as_eager_does():
    x, b = _inputs()
    compiled = fusec.compile(fn, cpu="torch")
    compiled(x, b)
    with torch.profiler.profile() as prof:
        compiled(x, b)
    ops = {e.name for e in prof.events() if e.name.startswith("aten::")}
    assert "aten::_softmax" in ops and "aten::amax" not in ops  # torch's own softmax, not fusec's decomposition


def test_training_graphs_run_through_torch_with_the_same_gradients():
    x, b = _inputs()
    x.requires_grad_()
    compiled = fusec.compile(fn, cpu="torch")
    out = compiled(x, b)
    assert len(fusec.report_of(compiled).graphs) == 2  # the backward is planned with the forward
    out.square().sum().backward()
    expected = torch.autograd.grad(fn(x, b).square().sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)
    report = fusec.report_of(compiled)
    assert [(g.name, g.execution) for g in report.graphs] == [("forward_0", "torch"), ("backward_1", "torch")]
    assert report.stats["kernels"] >= 2


@pytest.mark.parametrize(("cpu", "level", "says", "names"), [
    ("interpret", logging.WARNING, "Triton's interpreter", ("100-500x slower", "CUDA GPU", "cpu='torch'")),
    ("torch", logging.INFO, "eager speed", ("cpu='interpret'",)),
], ids=["interpreter warns", "torch informs"])
def test_how_cpu_graphs_run_is_said_once_per_process(caplog, cpu, level, says, names):
    announce.cache_clear()
    x, b = _inputs()
    with caplog.at_level(logging.INFO, logger="fusec"):
        fusec.compile(fn, cpu=cpu)(x, b)
        fusec.compile(lambda x: torch.exp(x) * 2, cpu=cpu)(x)
    said = [r for r in caplog.records if says in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == level
    assert all(words in said[0].getMessage() for words in names)
    # the interpreter's warning is the only warning; torch mode warns of nothing
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == (said if level == logging.WARNING else [])


@pytest.mark.fallback_expected
def test_a_graph_that_falls_back_runs_through_torch(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(fusec.compiler, "render", broken)
    compiled = fusec.compile(lambda x: torch.exp(x) + 1, strict=False, cpu="interpret")
    compiled(torch.randn(4))
    assert fusec.report_of(compiled).stats["execution"] == "torch"


@pytest.mark.parametrize(("cpu", "expected"), [("torch", "torch"), ("interpret", "interpreter")])
def test_inspect_reports_how_compile_would_run(cpu, expected):
    x, b = _inputs()
    report = fusec.inspect(fn, x, b, options={"cpu": cpu})
    assert report.stats["execution"] == expected


def test_demo_runs_the_generated_kernels_whatever_the_environment(monkeypatch, capsys):
    pytest.importorskip("rich")
    from fusec.cli import main

    monkeypatch.setenv("FUSEC_CPU", "torch")
    assert main(["demo", "pointwise"]) == 0
    out = capsys.readouterr().out
    assert "matches eager: yes" in out and "interpreter" in out
