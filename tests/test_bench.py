"""Tests for the benchmark suite: traffic formulas, bandwidth arithmetic, and `fusec bench` end to end on CPU.

The module imports neither rich nor the full CLI, so its CUDA tests also run
on GPU machines that have only torch and triton (bench/gpu_check.py).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import fusec
from fusec.api import tensors_in
from fusec.bench import output as bench_output
from fusec.bench import suite as benchmark
from fusec.bench.measure import count_launches_cuda, time_call
from fusec.bench.suite import FUSEC_TORCH, Settings, bandwidth, environment, run_suite, systems
from fusec.bench.workloads import WORKLOADS, adam_shapes
from fusec.cli.bench import main

CPU = torch.device("cpu")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_case(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return WORKLOADS[name].case("tiny", CPU, dtype)


# --- traffic and bandwidth ------------------------------------------------------------------------------------------

def test_unique_bytes_by_hand():
    # bias_gelu at 64 x 256 fp32: x (64*256) and bias (256) read, y (64*256) written, 4 bytes each.
    assert tiny_case("bias_gelu").unique_bytes == (64 * 256 + 256 + 64 * 256) * 4 == 132_096
    assert tiny_case("bias_gelu", torch.bfloat16).unique_bytes == 66_048
    assert tiny_case("softmax").unique_bytes == 2 * 64 * 256 * 4
    # 4 rows of 50,257 fp32 logits, 4 int64 targets, one fp32 loss.
    assert tiny_case("cross_entropy").unique_bytes == 4 * 50_257 * 4 + 4 * 8 + 4 == 804_148
    # Adam over 10 tensors cycling 32x32, 32, 128x32, 128, 32x128: 18,752 elements, 7 accesses each.
    assert sum(torch.Size(s).numel() for s in adam_shapes(10, 32)) == 18_752
    assert tiny_case("adam").unique_bytes == 7 * 18_752 * 4


@pytest.mark.parametrize("name", [n for n in WORKLOADS if tiny_case(n).unique_bytes is not None])
def test_unique_bytes_are_inputs_read_and_outputs_written(name):
    case = tiny_case(name)
    before = [a.clone() for a in tensors_in(case.args)]
    with torch.no_grad():
        outputs = tensors_in(case.fn(*case.args))
    after = tensors_in(case.args)
    updated = [a for a, b in zip(after, before, strict=True) if not torch.equal(a, b)]
    read = sum(a.nbytes for a in before)
    written = sum(t.nbytes for t in outputs) + sum(a.nbytes for a in updated)
    assert case.unique_bytes == read + written


def test_one_fused_kernel_moves_exactly_the_unique_bytes():
    case = tiny_case("bias_gelu")
    stats = fusec.inspect(case.fn, *case.args).stats
    assert stats["kernels"] == 1
    assert stats["bytes_fused"] == case.unique_bytes


def test_bandwidth_arithmetic():
    # 132,096 bytes in 10 us is 13.2096 GB/s; on a device that copies at 100 GB/s that is 13.2%.
    gbps, fraction = bandwidth(132_096, median_us=10.0, copy_gbps=100.0)
    assert gbps == pytest.approx(13.2096)
    assert fraction == pytest.approx(0.132096)


def test_dropout_check_accepts_any_mask_and_rejects_wrong_values():
    case = tiny_case("bias_dropout_residual")
    x, _, residual = case.args
    out = case.fn(*case.args)
    assert case.check(case.args, (out,)) < 1e-5
    assert case.check(case.args, (residual + x,)) > 0.1


# --- the runner ------------------------------------------------------------------------------------------------------

RECORD_FIELDS = {
    "workload", "system", "device", "device_name", "dtype", "size_tier", "torch_version", "triton_version",
    "time_median_us", "time_iqr_us", "samples", "timing_method", "speedup_vs_eager",
    "launches_per_call", "launches_counted_by", "compile_seconds", "max_abs_error", "error_checked_by",
    "unique_bytes", "achieved_gbps", "bandwidth_fraction", "device_copy_gbps", "performance_claim", "note",
    "fusec_stats", "error",
}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench.png"}
    rc = main(["--device", "cpu", "--quick", "--workload", "bias_gelu", "softmax",
               *(arg for kind, path in paths.items() for arg in (f"--{kind}", str(path)))])
    return rc, paths


@pytest.mark.slow
def test_cli_writes_every_field_for_every_workload_and_system(cpu_run):
    rc, paths = cpu_run
    assert rc == 0
    data = json.loads(paths["json"].read_text())
    records = data["records"]
    assert [(r["workload"], r["system"]) for r in records] == [
        (w, s) for w in ("bias_gelu", "softmax") for s in systems("cpu")]
    for r in records:
        assert r.keys() >= RECORD_FIELDS
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["size_tier"] == "tiny"
        assert r["torch_version"] == torch.__version__
        assert r["performance_claim"] is False and "interpreter" in r["note"]
        if r["system"] == "torch.compile" and r["error"]:
            continue  # Inductor needs a C++ compiler; its failure is recorded, not fatal
        assert r["error"] is None, r["error"]
        assert r["time_median_us"] > 0 and r["samples"] >= 5
        assert r["launches_per_call"] >= 1
        assert r["unique_bytes"] == tiny_case(r["workload"]).unique_bytes
        assert r["bandwidth_fraction"] == pytest.approx(r["achieved_gbps"] / r["device_copy_gbps"])
        if r["system"] == "eager":
            assert r["speedup_vs_eager"] == 1.0 and r["compile_seconds"] is None
        else:
            assert r["compile_seconds"] > 0
            assert r["max_abs_error"] < 1e-4
        if r["system"] == "fusec":  # timed fusec's kernels, not torch running the graph for it
            ran = r["fusec_stats"]["ran"]
            assert ran["kernels"] >= r["samples"] and ran["through_torch"] == 0, ran
    fused = next(r for r in records if r["workload"] == "bias_gelu" and r["system"] == "fusec")
    assert fused["fusec_stats"]["kernels"] == 1
    assert fused["launches_per_call"] == 1
    assert fused["fusec_stats"]["execution"] == "interpreter"
    # fusec's CPU default: the same plan and report, run through torch; its launches are the ATen ops it calls.
    by_torch = next(r for r in records if r["workload"] == "bias_gelu" and r["system"] == FUSEC_TORCH)
    # the same plan, run by torch: nothing ran as a fusec kernel
    assert by_torch["fusec_stats"] == {**fused["fusec_stats"], "execution": "torch",
                                       "compile_seconds": by_torch["fusec_stats"]["compile_seconds"],
                                       "ran": {"kernels": 0, "extern_calls": 0, "through_torch": 0}}
    assert by_torch["launches_per_call"] >= 2 and "torch.profiler" in by_torch["launches_counted_by"]
    assert data["environment"]["device_copy_gbps"] > 0


@pytest.mark.slow
def test_cli_writes_markdown_and_png(cpu_run):
    _, paths = cpu_run
    text = paths["markdown"].read_text()
    assert "| workload | system | median µs |" in text
    assert "| bias_gelu | fusec |" in text and "| softmax | torch.compile |" in text
    assert "not a performance claim" in text
    assert paths["plot"].read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_plain_output_without_rich(cpu_run, monkeypatch, capsys):
    _, paths = cpu_run
    data = json.loads(paths["json"].read_text())
    monkeypatch.setattr(bench_output, "Console", None)
    with bench_output.progress(2) as advance:
        advance("bias_gelu · eager")
    bench_output.print_table(data["records"], data["environment"])
    captured = capsys.readouterr()
    assert "[1/2] bias_gelu · eager" in captured.err
    assert "| softmax | fusec |" in captured.out


@pytest.mark.slow
def test_a_failing_system_is_recorded_and_the_run_goes_on(monkeypatch):
    real = benchmark._compile

    def no_inductor(system, fn):
        if system == "torch.compile":
            raise RuntimeError("no C++ compiler found\nmore detail")
        return real(system, fn)

    monkeypatch.setattr(benchmark, "_compile", no_inductor)
    settings = Settings(device="cpu", dtype="fp32", quick=True)
    records = list(run_suite(["bias_gelu"], settings, environment(settings)))
    by_system = {r["system"]: r for r in records}
    assert by_system["torch.compile"]["error"] == "RuntimeError: no C++ compiler found"
    assert by_system["torch.compile"]["time_median_us"] is None
    assert by_system["fusec"]["error"] is None and by_system["fusec"]["max_abs_error"] < 1e-5


def test_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark ran before its outputs were checked")
    monkeypatch.setattr("fusec.cli.bench.run_suite", no_work)
    (tmp_path / "file").write_text("")
    for flag, path in (("--json", "/proc/nope/x.json"), ("--markdown", str(tmp_path / "file" / "b.md")),
                       ("--plot", str(tmp_path))):
        assert main(["--device", "cpu", "--quick", flag, path]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fusec bench: error: cannot write {flag} {path}: ") and len(err.splitlines()) == 1, err


def test_cpu_times_fusec_both_ways():
    assert systems("cpu") == ("eager", "torch.compile", "fusec", "fusec (torch)")
    assert systems("cuda") == ("eager", "torch.compile", "fusec", "torch.compile (reduce-overhead)",
                               "fusec (cudagraphs)")


def test_unknown_workload_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--workload", "no_such_workload"])
    assert "invalid choice" in capsys.readouterr().err


def test_fusec_cli_has_the_bench_command(capsys):
    pytest.importorskip("rich")  # the rest of the CLI needs it; `fusec.cli.bench.main` does not
    from fusec.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--help"])
    assert "--markdown FILE" in capsys.readouterr().out


# --- on a GPU (tests/conftest.py skips these without one) ----------------------------------------------------------

@pytest.mark.cuda
def test_cuda_launches_and_timing():
    x = torch.randn(1024, 1024, device="cuda")
    b = torch.randn(1024, device="cuda")
    assert count_launches_cuda(lambda: x + 1) == 1
    assert count_launches_cuda(lambda: F.gelu(x + b)) == 2
    timing = time_call(lambda: x + 1, "cuda", budget_s=0.05)
    assert timing.median > 0 and timing.samples >= 5


@pytest.mark.cuda
def test_cuda_bias_gelu_is_one_launch_for_both_compilers():
    settings = Settings(device="cuda", dtype="bf16", quick=True)
    records = {r["system"]: r for r in run_suite(["bias_gelu"], settings, environment(settings))}
    assert records["eager"]["launches_per_call"] == 2
    for system in ("torch.compile", "fusec"):
        assert records[system]["error"] is None, records[system]["error"]
        assert records[system]["launches_per_call"] == 1
        assert records[system]["max_abs_error"] < 0.1
    assert 0 < records["fusec"]["bandwidth_fraction"] < 1.5


# --- the overhead bench's replayed extern calls ---------------------------------------------------------------------


def test_a_replay_returns_what_its_recorded_calls_returned_in_turn_and_computes_nothing():
    from fusec.bench.replays import Replay, recorded

    ran = []
    replay = Replay(lambda x, out=None: ran.append(x) or x * 10)
    with recorded([replay]):
        assert [replay(1), replay(2, out=None)] == [10, 20]
    assert [replay(7), replay(8), replay(9)] == [10, 20, 10]  # in the recorded order, whatever is passed
    assert ran == [1, 2]


def test_a_replay_returns_new_tensors_laid_out_as_the_recorded_ones_or_the_out_buffer_it_is_given():
    """An op called without `out=` allocates its results, under either compiler: replayed, it still
    pays for an allocation; an `out=` buffer (Inductor allocates it in its own code) comes back."""
    from fusec.bench.replays import Replay, recorded

    replay = Replay(lambda x, out=None: (x.t() * 2, x.sum()) if out is None else out.copy_(x))
    x, buffer = torch.randn(3, 5), torch.empty(3, 5)
    with recorded([replay]):
        first = replay(x)
        replay(x, out=torch.empty(3, 5))
    again = replay(x)
    for new, old in zip(again, first, strict=True):
        assert new is not old and new.data_ptr() != old.data_ptr()
        assert (new.shape, new.stride(), new.dtype) == (old.shape, old.stride(), old.dtype)
    assert replay(x, out=buffer) is buffer


def test_fusecs_extern_calls_are_replayed_after_one_recorded_call():
    from fusec.bench.overhead import _stream_stub, stub_launches
    from fusec.bench.replays import recorded, replay_fusec_externs

    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v).transpose(1, 2).sum(-1)
    compiled = fusec.compile(fn, cpu="interpret")
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    compiled(q, k, v)
    [runtime] = [g.runtime for g in fusec.report_of(compiled).graphs]
    stub_launches(runtime)
    [replay] = replay_fusec_externs([runtime])
    [target] = [t for t, c in runtime.callables.items() if c is replay]
    assert "scaled_dot_product" in str(target)  # the attention is replayed; the transpose (a view) is not
    calls = []
    real = replay.fn
    replay.fn = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    with _stream_stub():
        with recorded([replay]):
            compiled(q, k, v)
        for _ in range(3):
            compiled(torch.randn(1, 2, 8, 4), k, v)
    assert calls == [1] and replay.at == 0  # computed once, then replayed (one call each)
    assert runtime.counts.extern_calls >= 4


def test_inductors_extern_calls_are_replayed_within_and_restored_after(tmp_path):
    from torch._inductor.select_algorithm import extern_kernels

    from fusec.bench.replays import Replay, inductor_externs_replayed

    output_code = tmp_path / "output_code.py"
    output_code.write_text("extern_kernels.mm(a, b, out=c)\nbuf = torch.ops.aten.addmm.default(x, a, b)\n")

    class Module:
        __file__ = str(output_code)
    mm, addmm = extern_kernels.mm, torch.ops.aten.addmm.default
    with inductor_externs_replayed([Module()]) as replays:
        assert isinstance(extern_kernels.mm, Replay) and isinstance(torch.ops.aten.addmm.default, Replay)
        assert [r.fn for r in replays] == [mm, addmm]
    assert extern_kernels.mm is mm and torch.ops.aten.addmm.default is addmm


def test_the_overhead_bench_launches_kernels_as_their_gpu_renders_do():
    """cross_entropy's interpreted kernel takes a bounds flag; its GPU render asserts on the device
    instead: the stubbed launcher passes no flag, reads none back, and launches the binary straight."""
    from fusec.bench.overhead import _stream_stub, stub_launches
    from fusec.plan import LaunchExtra

    fn = lambda x, t: F.cross_entropy(x, t)
    compiled = fusec.compile(fn, cpu="interpret")
    x, t = torch.randn(4, 10), torch.randint(0, 10, (4,))
    compiled(x, t)
    [runtime] = [g.runtime for g in fusec.report_of(compiled).graphs]
    assert LaunchExtra.BAD_INDEX in runtime.plan.kernels[0].extras
    stub_launches(runtime)
    runtime.launch_directly()
    with _stream_stub():
        runtime.run([x, t])
        runtime.run([x, t])
    assert LaunchExtra.BAD_INDEX not in runtime.plan.kernels[0].extras
    assert "flag" not in runtime.source and "K0_RUN(" in runtime.source and "*FINALS" in runtime.source


def test_overhead_rows_of_extern_heavy_workloads_compare_both_compilers_hosts():
    from torch._inductor.select_algorithm import extern_kernels

    from fusec.bench.overhead import measure

    mm = extern_kernels.mm
    row = measure("swiglu_mlp", "cpu")
    assert row.kernels == 1 and row.externs == 2 and row.per_kernel_us is None
    assert 0 < row.launcher_us < row.fusec_call_us and row.torch_compile_call_us is not None
    assert extern_kernels.mm is mm  # torch.compile's extern calls run for real again after the bench


def test_a_stubbed_launch_reads_the_address_of_each_tensor_it_is_handed(monkeypatch):
    from fusec.bench.overhead import _NoLaunch

    asked = []
    monkeypatch.setattr(torch.Tensor, "data_ptr", lambda t: asked.append(t) or 16)
    x, out = torch.zeros(4), torch.zeros(4)
    stub = _NoLaunch()
    for _ in range(2):  # through the kernel's call: tensors
        stub.run(1, 1, 1, 0, None, None, None, None, None, x, out, 4, 64)
    assert asked == [x, out, x, out]
    asked.clear()
    for _ in range(2):  # straight from the launcher: the input's address
        stub.run(1, 1, 1, 0, None, None, None, None, None, 4096, out, 4, 64)
    assert asked == [out, out]


def test_overhead_rows_weigh_an_input_tensor_for_both_compilers():
    from fusec.bench.overhead import markdown, measure, per_input_ns

    ours, theirs = per_input_ns([torch.randn(4, 4), torch.randn(4)])
    assert ours > 0 and theirs > 0
    row = measure("residual_layer_norm", "cpu")
    assert row.inputs == 4 and row.fusec_input_ns > 0 and row.torch_compile_input_ns > 0
    assert "| residual_layer_norm |" in markdown([row], "cpu") and f"/ {row.torch_compile_input_ns:.0f} (4) |" in \
        markdown([row], "cpu")
