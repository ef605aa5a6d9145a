"""fusec.export / fusec.load: packages load in a fresh process with no Dynamo, run fusec's kernels,
equal eager; damaged, changed or foreign packages are refused before anything in them runs."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import fusec
from fusec import compiler
from fusec.bench.export import measure
from fusec.cli import main
from fusec.examples import build
from fusec.launcher_text import launcher_source
from fusec.lowering import Unsupported
from fusec.package import PackageError, dump_plan, load_plan, read, write

ROOT = Path(__file__).resolve().parent.parent


def reduction(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1) * x.sum(-1, keepdim=True)


def two_outputs(x: torch.Tensor, residual: torch.Tensor) -> dict[str, torch.Tensor]:
    h = x + residual
    return {"h": h, "normed": torch.nn.functional.layer_norm(h, h.shape[-1:])}


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():  # running statistics other than 0 and 1, so the affine matters
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def cases() -> dict[str, tuple]:
    torch.manual_seed(0)
    return {
        "pointwise": build("pointwise"),
        "reduction": (reduction, (torch.randn(16, 96),)),
        "matmul": build("mlp"),
        "transformer": build("transformer"),
        "inception": build("inception"),
        "cnn": (small_cnn(), (torch.randn(2, 3, 8, 8),)),
        "two_outputs": (two_outputs, (torch.randn(8, 64), torch.randn(8, 64))),
    }


CHILD = """
import json, sys
import torch
import fusec

results = {}
for name, spec in json.loads(sys.argv[1]).items():
    calls = torch.load(spec["inputs"], weights_only=True)
    expected = torch.load(spec["expected"], weights_only=True)
    runner = fusec.load(spec["package"])
    error = None
    for inputs, want in zip(calls, expected, strict=True):
        try:
            torch.testing.assert_close(runner(*inputs), want, rtol=1e-5, atol=1e-5)
        except AssertionError as exc:
            error = f"shapes {[tuple(x.shape) for x in inputs]}: {exc}"
    graph = runner.report().graphs[0]
    counts = graph.runtime.counts
    results[name] = {"error": error, "planned": sorted(k.id for k in graph.plan.kernels),
                     "ran": dict(counts.kernels), "calls": counts.calls, "through_torch": counts.through_torch,
                     "execution": graph.execution}
from torch._dynamo.utils import counters
frames, aot = dict(counters["frames"]), dict(counters["aot_autograd"])
# The same counters see a compile: a nonzero count below shows they would have caught one at load.
fusec.compile(lambda x: x * 2 + 1)(torch.randn(4))
print(json.dumps({"results": results, "frames": frames, "aot_autograd": aot,
                  "frames_after_compile": sum(counters["frames"].values())}))
"""


def dynamic_cases() -> dict[str, tuple]:
    """Model, example inputs, torch.export's dynamic_shapes, and the inputs of each call a package serves."""
    torch.manual_seed(0)
    batch, seq = Dim("batch", min=1, max=64), Dim("seq", min=2, max=32)
    transformer, (x,) = build("transformer")
    return {
        "dynamic_batch": (reduction, (torch.randn(16, 96),), {"x": {0: batch}},
                          [(torch.randn(n, 96),) for n in (1, 5, 16, 64)]),
        "dynamic_shared_batch": (two_outputs, (torch.randn(8, 64), torch.randn(8, 64)),
                                 {"x": {0: batch}, "residual": {0: batch}},
                                 [(torch.randn(n, 64), torch.randn(n, 64)) for n in (3, 8, 33)]),
        "dynamic_sequence": (transformer, (x,), ({1: seq},),
                             [(torch.randn(2, n, x.shape[2]),) for n in (3, 16, 29)]),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple]:
    """Each case exported, with the inputs of its calls and eager's outputs saved beside it."""
    folder = tmp_path_factory.mktemp("packages")
    out = {}
    every = {name: (model, args, None, [args]) for name, (model, args) in cases().items()} | dynamic_cases()
    for name, (model, args, dynamic, calls) in every.items():
        with torch.no_grad():
            expected = [model(*inputs) for inputs in calls]
        package = folder / f"{name}.fusec"
        done = fusec.export(model, *args, path=package, dynamic_shapes=dynamic)
        torch.save(calls, folder / f"{name}.inputs.pt")
        torch.save(expected, folder / f"{name}.expected.pt")
        out[name] = (done, model, args, expected[0])
    return out


@pytest.fixture(scope="module")
def fresh_process(exported) -> dict:
    """Every package loaded and called in one new Python process (what a server does)."""
    specs = {name: {"package": str(done.path), "inputs": str(done.path.with_suffix(".inputs.pt")),
                    "expected": str(done.path.with_suffix(".expected.pt"))} for name, (done, *_) in exported.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(specs)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(cases()))
def test_loaded_in_a_fresh_process_equals_eager_and_runs_every_kernel(fresh_process, name):
    result = fresh_process["results"][name]
    assert result["error"] is None, result["error"]
    assert result["execution"] == "interpreter"
    assert result["planned"], "the package has no generated kernel"
    assert result["ran"] == dict.fromkeys(result["planned"], 1), result
    assert result["calls"] == 1 and result["through_torch"] == 0


@pytest.mark.parametrize("name", list(dynamic_cases()))
def test_dynamic_package_serves_several_sizes_in_a_fresh_process(exported, fresh_process, name):
    calls = len(dynamic_cases()[name][3])
    result = fresh_process["results"][name]
    assert result["error"] is None, result["error"]
    assert result["planned"], "the package has no generated kernel"
    assert result["ran"] == dict.fromkeys(result["planned"], calls), result
    assert result["calls"] == calls and result["through_torch"] == 0
    assert any(isinstance(d, str) for d in exported[name][0].manifest["placeholders"][-1]["shape"])


def test_dynamic_manifest_holds_symbols_with_their_ranges(exported):
    manifest = exported["dynamic_shared_batch"][0].manifest
    x, residual = manifest["placeholders"]
    assert isinstance(x["shape"][0], str) and x["shape"] == residual["shape"] and x["shape"][1] == 64
    assert manifest["symbols"] == {x["shape"][0]: {"dim": "batch", "min": 1, "max": 64}}
    assert manifest["outputs"][0]["shape"] == x["shape"]


def test_dynamic_package_refuses_sizes_it_does_not_serve(exported):
    runner = fusec.load(exported["dynamic_batch"][0].path)
    with pytest.raises(ValueError, match=r"input 1 \(x\) dim 0 is 65, outside batch \(s\d+\)'s range \[1, 64\]: "
                                         r"export again with a Dim"):
        runner(torch.randn(65, 96))
    with pytest.raises(ValueError, match=r"has shape \(4, 95\); the package serves \(s\d+, 96\), "
                                         r"at this call's sizes \(4, 96\)"):
        runner(torch.randn(4, 95))
    with pytest.raises(ValueError, match=r"has 3 dims, shape \(4, 96, 1\); the package serves 2 dims"):
        runner(torch.randn(4, 96, 1))
    shared = fusec.load(exported["dynamic_shared_batch"][0].path)
    with pytest.raises(ValueError, match=r"input 2 \(residual\) dim 0 is 5 but input 1 \(x\) dim 0 is 4: both "
                                         r"are batch \(s\d+\) in the exported program, so they must be equal"):
        shared(torch.randn(4, 64), torch.randn(5, 64))


def test_dynamic_input_in_another_layout_is_copied_at_its_sizes(exported):
    runner = fusec.load(exported["dynamic_batch"][0].path)
    transposed = torch.randn(96, 7).t()
    torch.testing.assert_close(runner(transposed), reduction(transposed))
    assert runner.report().graphs[0].runtime.counts.through_torch == 0


def test_dynamic_shapes_naming_no_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"dynamic_shapes names y, which the model's inputs \(x\) are not"):
        fusec.export(reduction, torch.randn(4, 8), path=tmp_path / "r.fusec", dynamic_shapes={"y": {0: Dim("b")}})


def test_loading_compiles_no_frame(fresh_process):
    assert not fresh_process["frames"] and not fresh_process["aot_autograd"], fresh_process
    assert fresh_process["frames_after_compile"] > 0  # the counters do see a compile


@pytest.mark.parametrize("name", ["pointwise", "transformer", "inception"])
def test_package_plan_is_fusec_compiles_plan(exported, name):
    done, model, args, _ = exported[name]
    live = fusec.inspect(model, *args).stats
    stored = fusec.Report([done.record]).stats
    # Op counts may differ by a getitem: torch.export keeps scaled_dot_product_attention whole where
    # AOTAutograd calls its CPU kernel and takes the first of its results; both run through torch.
    for key in ("kernels", "extern_calls", "bytes_fused", "bytes_unfused"):
        assert stored[key] == live[key], (key, stored[key], live[key])


def test_package_members_are_what_load_runs(exported):
    done, *_ = exported["transformer"]
    package = read(done.path, expected=done.sha256)
    runner = fusec.load(done.path, sha256=done.sha256)
    plan = runner.record.plan
    assert package.text("launcher.py") == launcher_source(plan)
    kernels = {name for name in package.members if name.startswith("kernels/")}
    assert kernels == {f"kernels/{k.id}.py" for k in plan.all_kernels()}
    assert all(package.text(f"kernels/{k.id}.py") == k.source for k in plan.all_kernels())
    assert set(runner.state_dict()) == set(dict(exported["transformer"][1].state_dict()))


def _rewritten(path: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the package with members replaced (None: removed), the manifest kept."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change.get(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)
        for name, data in change.items():
            if name not in src.namelist() and data is not None:
                dst.writestr(name, data)
    return out


@pytest.mark.parametrize("change, message", [
    ({"graph.py": b"raise SystemExit('package code ran')\n"}, "member graph.py does not match its SHA-256"),
    ({"weights.pt": b"not the weights"}, "member weights.pt does not match its SHA-256"),
    ({"plan.pkl": None}, "member plan.pkl is missing"),
    ({"extra.py": b"print('hi')\n"}, "member extra.py is not in the manifest"),
])
def test_changed_package_is_refused_before_use(exported, tmp_path, change, message):
    done, *_ = exported["pointwise"]
    bad = _rewritten(done.path, tmp_path / "bad.fusec", change)
    with pytest.raises(PackageError, match=message):
        fusec.load(bad)


def test_pinned_digest_refuses_a_package_rewritten_whole(exported, tmp_path):
    done, *_ = exported["pointwise"]
    package = read(done.path)
    manifest = {k: v for k, v in package.manifest.items() if k not in ("members", "format")}
    members = {**package.members, "graph.py": package.members["graph.py"] + b"\n# changed\n"}
    rewritten = tmp_path / "rewritten.fusec"
    write(rewritten, manifest, members)
    fusec.load(rewritten)  # consistent with its own manifest: only the pinned digest tells
    with pytest.raises(PackageError, match=f"not the expected {done.sha256}"):
        fusec.load(rewritten, sha256=done.sha256)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_plan_pickle_may_name_only_fusec_classes(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done, *_ = exported["pointwise"]
    package = read(done.path)
    manifest = {k: v for k, v in package.manifest.items() if k not in ("members", "format")}
    write(tmp_path / "evil.fusec", manifest, {**package.members, "plan.pkl": pickle.dumps(_Payload())})
    with pytest.raises(PackageError, match=r"plan.pkl names (posix|nt)\.system"):
        fusec.load(tmp_path / "evil.fusec")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last, torch.preserve_format])
def test_plan_pickle_may_hold_a_memory_format(fmt):
    """A plan's op arguments may name a memory format, which torch pickles by a dotted name."""
    assert load_plan(dump_plan({"memory_format": fmt})) == {"memory_format": fmt}


@pytest.mark.parametrize("field, value, message", [
    ("torch", "1.0.0", "exported with torch 1.0.0; this process has torch " + torch.__version__),
    ("fusec", "0.0.1", "exported with fusec 0.0.1; this process has fusec " + fusec.__version__),
    ("triton", "2.0.0", "exported with triton 2.0.0"),
    ("format", 99, "package format 99, this fusec reads format 1"),
])
def test_version_mismatch_names_what_differs(exported, tmp_path, field, value, message):
    done, *_ = exported["pointwise"]
    with zipfile.ZipFile(done.path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest[field] = value
    bad = _rewritten(done.path, tmp_path / "old.fusec", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(PackageError, match=re.escape(message)):
        fusec.load(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_gpu_package_without_a_gpu(exported, tmp_path):
    done, *_ = exported["pointwise"]
    with zipfile.ZipFile(done.path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["device"] = "cuda"
    bad = _rewritten(done.path, tmp_path / "gpu.fusec", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(PackageError, match=r"exported for a CUDA GPU .* and this process has none"):
        fusec.load(bad)


def test_inputs_other_than_exported_are_refused_with_what_to_do(exported):
    done, _, args, _ = exported["reduction"]
    runner = fusec.load(done.path)
    with pytest.raises(ValueError, match=r"input 1 \(x\) has shape \(8, 96\); the package was exported for "
                                         r"\(16, 96\) \(this package's shapes are static: export again"):
        runner(torch.randn(8, 96))
    with pytest.raises(ValueError, match=r"input 1 .* is float64; the package was exported for float32"):
        runner(args[0].double())
    with pytest.raises(TypeError, match=r"takes 1 input\(s\) \(x\), got 2"):
        runner(*args, *args)


def test_input_in_another_layout_is_copied_to_the_exported_one(exported):
    done, _, args, expected = exported["reduction"]
    runner = fusec.load(done.path)
    transposed = args[0].t().contiguous().t()
    assert transposed.stride() != args[0].stride()
    torch.testing.assert_close(runner(transposed), expected)
    assert runner.report().graphs[0].runtime.counts.through_torch == 0


def test_weights_given_after_load(tmp_path):
    model, args = build("mlp")
    path = tmp_path / "mlp.fusec"
    done = fusec.export(model, *args, path=path, weights=False)
    with zipfile.ZipFile(path) as zf:
        assert len(zf.read("weights.pt")) < 2048  # no tensor data
    runner = fusec.load(path)
    with pytest.raises(RuntimeError, match=r"exported without its weights: give them first with runner\.load_state"):
        runner(*args)
    with pytest.raises(KeyError, match=r"down\.bias missing"):
        runner.load_state_dict({k: v for k, v in model.state_dict().items() if k != "down.bias"})
    runner.load_state_dict(model.state_dict())
    torch.testing.assert_close(runner(*args), model(*args).detach())
    assert done.manifest["weights_included"] is False


def test_cpu_torch_runs_the_stored_graph_through_torch(exported):
    done, _, args, expected = exported["two_outputs"]
    runner = fusec.load(done.path, cpu="torch")
    got = runner(*args)
    assert set(got) == {"h", "normed"}
    torch.testing.assert_close(got, expected)
    graph = runner.report().graphs[0]
    assert graph.execution == "torch" and graph.runtime is None


def test_load_takes_only_options_that_decide_how_it_runs(exported):
    done, *_ = exported["pointwise"]
    with pytest.raises(TypeError, match="fuse decided the plan at export"):
        fusec.load(done.path, fuse=False)


def test_export_refuses_a_model_that_updates_its_buffers(tmp_path):
    model = small_cnn().train()
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        fusec.export(model, torch.randn(2, 3, 8, 8), path=tmp_path / "train.fusec")
    assert not (tmp_path / "train.fusec").exists()


def test_export_refuses_a_function_that_writes_into_its_input(tmp_path):
    def bump(x):
        x.add_(1)
        return x * 2
    with pytest.raises(ValueError, match=r"writes into its input\(s\) \w+ .*compute into a new tensor"):
        fusec.export(bump, torch.randn(4), path=tmp_path / "bump.fusec")


def test_export_refuses_non_tensor_inputs(tmp_path):
    with pytest.raises(TypeError, match="argument 2 is a int; example inputs must be tensors"):
        fusec.export(lambda x, n: x * n, torch.randn(3), 2, path=tmp_path / "f.fusec")


def test_load_of_something_else_says_what_it_is(tmp_path):
    (tmp_path / "notes.fusec").write_text("hello")
    with pytest.raises(PackageError, match="is not a fusec package"):
        fusec.load(tmp_path / "notes.fusec")
    with pytest.raises(PackageError, match="no package at"):
        fusec.load(tmp_path / "missing.fusec")


def test_inspect_shows_the_stored_plan(exported, tmp_path, capsys):
    done, *_ = exported["transformer"]
    out = tmp_path / "report.json"
    assert main(["inspect", str(done.path), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["stats"]["kernels"] == fusec.Report([done.record]).stats["kernels"] > 1
    assert data["inputs"] == [{"shape": [2, 16, 128], "dtype": "float32"}]
    assert "exported with fusec" in capsys.readouterr().out
    assert main(["inspect", str(done.path), "--training"]) == 2
    assert "not for a package" in capsys.readouterr().err


def test_bench_export_measures_a_fresh_load_against_a_fresh_compile():
    row = measure("softmax", "cpu", quick=True, cpu="torch")
    assert row.load_dynamo_frames == 0 and row.error < 1e-5
    assert 0 < row.load_first_call < row.compile_first_call


@pytest.mark.fallback_expected
def test_a_graph_fusec_cannot_plan_runs_through_torch_and_says_so(tmp_path, monkeypatch, caplog):
    def unsupported(gm):
        raise Unsupported("tensors on a device fusec has no code for")
    monkeypatch.setattr(compiler, "graph_device", unsupported)
    x = torch.randn(4, 32)
    done = fusec.export(reduction, x, path=tmp_path / "torch.fusec", strict=False)
    monkeypatch.undo()
    assert done.manifest["fallback"] == "tensors on a device fusec has no code for"
    with caplog.at_level(logging.WARNING, logger="fusec"):
        runner = fusec.load(tmp_path / "torch.fusec")
    assert "torch.fusec runs through torch: tensors on a device fusec has no code for" in caplog.text
    torch.testing.assert_close(runner(x), reduction(x))
    assert runner.report().stats["execution"] == "torch"
