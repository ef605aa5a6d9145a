"""Compiled GPU kernels in a package: packed from Triton's cache, covered by the manifest's hashes,
installed into the loading process's Triton cache when the package was made for its GPU (Triton
then finds them: nothing compiles), and left unused, saying so, on another GPU. On a CPU the
binaries are compiled for sm_90 with Triton's own compiler (no GPU needed)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import triton

import fusec
import fusec.runner as runner_module
from fusec.bench import static as bench_static
from fusec.cli.stored import stored_report
from fusec.kernels.binaries import PREFIX, install, pack, target_name
from fusec.package import PackageError, read, write

try:
    from triton.backends.compiler import GPUTarget
except ImportError:  # pragma: no cover - very old Triton
    GPUTarget = None

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(GPUTarget is None, reason="this Triton has no ahead-of-time compile API")


def _plan():
    def fn(x, y):
        return torch.softmax(x, -1) * torch.sigmoid(y).sum(-1, keepdim=True)
    plan = fusec.inspect(fn, torch.randn(8, 32), torch.randn(8, 32)).graphs[0].plan
    return plan.graph, [k for k in plan.kernels if k.numel]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The plan's kernels compiled for sm_90 into a Triton cache of their own: (graph, kernels, binaries)."""
    folder = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_CACHE_DIR", str(folder / "triton"))
        graph, kernels = _plan()
        binaries = {k.id: bench_static.compile_sm90(graph, k, folder / "fusec") for k in kernels}
    return graph, kernels, binaries


def test_packed_binaries_installed_elsewhere_are_what_triton_finds(compiled, tmp_path, monkeypatch):
    graph, kernels, binaries = compiled
    keys, members = pack(binaries)
    assert keys == {kid: b.hash for kid, b in binaries.items()}
    assert all(name.startswith(PREFIX) for name in members)
    assert any(name.endswith(".cubin") for name in members) and any(name.endswith(".json") for name in members)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "loading"))  # another machine's empty cache
    assert install(members) == len(binaries)
    assert install(members) == len(binaries)  # again: already there, left as they are
    hits = []
    monkeypatch.setattr(triton.knobs.compilation, "listener", lambda **info: hits.append(info["cache_hit"]))
    again = {k.id: bench_static.compile_sm90(graph, k, tmp_path / "fusec") for k in kernels}
    assert hits == [True] * len(kernels)  # every compile found the installed binary
    assert all(again[kid].asm["cubin"] == binaries[kid].asm["cubin"] for kid in binaries)


def test_a_member_that_is_no_packed_binary_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"binaries/<hex key>/<file name>"):
        install({f"{PREFIX}{'a' * 64}/../../evil.json": b"{}"})
    with pytest.raises(ValueError, match=r"no metadata \(\.json\)"):
        install({f"{PREFIX}{'a' * 64}/k.cubin": b"\0"})


def _package(tmp_path, binaries, target: str) -> str:
    keys, members = pack(binaries)
    manifest = {"device": "cuda", "binaries": {"target": target, "kernels": keys}}
    path = tmp_path / "gpu.fusec"
    write(path, manifest, {"plan.pkl": b"", **members})
    return str(path)


def test_binaries_are_covered_by_the_manifest(compiled, tmp_path):
    path = _package(tmp_path, compiled[2], "cuda:90:32")
    package = read(path)
    assert set(package.manifest["members"]) >= {n for n in package.members if n.startswith(PREFIX)}
    cubin = next(n for n in package.members if n.endswith(".cubin"))
    changed = tmp_path / "changed.fusec"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(changed, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-1] + bytes([data[-1] ^ 1]) if info.filename == cubin else data)
    with pytest.raises(PackageError, match=rf"member {cubin} does not match its SHA-256"):
        read(changed)


def test_loading_on_the_gpu_they_were_made_for_installs_them(compiled, tmp_path, monkeypatch):
    path = _package(tmp_path, compiled[2], "cuda:90:32")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "loading"))
    monkeypatch.setattr(runner_module, "current_target", lambda: "cuda:90:32")
    said = runner_module.install_binaries(read(path))
    assert said == f"{len(compiled[2])} compiled kernel(s) for cuda:90:32 installed into Triton's cache"
    assert len(list((tmp_path / "loading").rglob("*.cubin"))) == len(compiled[2])


def test_another_gpu_compiles_from_sources_and_says_so(compiled, tmp_path, monkeypatch, caplog):
    path = _package(tmp_path, compiled[2], "cuda:90:32")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "loading"))
    monkeypatch.setattr(runner_module, "current_target", lambda: "cuda:80:32")
    with caplog.at_level(logging.INFO, logger="fusec"):
        said = runner_module.install_binaries(read(path))
    assert said == "compiled for cuda:90:32, this GPU is cuda:80:32: the kernels compile from their sources at load"
    assert said in caplog.text
    assert not (tmp_path / "loading").exists() or not list((tmp_path / "loading").rglob("*.cubin"))


def test_target_name_and_inspect_say_what_the_package_holds(compiled, tmp_path, monkeypatch, capsys):
    assert target_name(GPUTarget("cuda", 90, 32)) == "cuda:90:32"
    exported = fusec.export(lambda x: torch.sigmoid(x) * 2, torch.randn(4, 8), path=tmp_path / "cpu.fusec")
    assert "binaries" not in exported.manifest  # a CPU package: nothing compiled to keep

    class Args:
        input = training = streams = example = None
    _, label, _ = stored_report(str(exported.path), Args())
    assert "compiled for" not in label and "sources only" not in label
    made = read(exported.path)
    keys, members = pack(compiled[2])
    write(tmp_path / "gpu.fusec", {**made.manifest, "device": "cuda",
                                   "binaries": {"target": "cuda:90:32", "kernels": keys}},
          {**made.members, **members})
    _, label, _ = stored_report(str(tmp_path / "gpu.fusec"), Args())
    assert f"on cuda, {len(keys)} kernel(s) compiled for cuda:90:32)" in label


_LOAD = """
import json, sys, torch, triton, fusec
hits = []
triton.knobs.compilation.listener = lambda **info: hits.append(info["cache_hit"])
runner = fusec.load(sys.argv[1])
loading = list(hits)
hits.clear()
x = torch.randn(16, 96, device="cuda")
torch.testing.assert_close(runner(x), torch.softmax(x, -1) * x.sum(-1, keepdim=True))
torch.cuda.synchronize()
print(json.dumps({"binaries": runner.binaries, "loading": loading, "calling": hits}))
"""


@pytest.mark.cuda
def test_gpu_export_packs_binaries_and_a_fresh_load_compiles_nothing(tmp_path):
    def reduction(x):
        return torch.softmax(x, -1) * x.sum(-1, keepdim=True)
    exported = fusec.export(reduction, torch.randn(16, 96, device="cuda"), path=tmp_path / "r.fusec")
    kernels = exported.record.plan.all_kernels()
    assert set(exported.manifest["binaries"]["kernels"]) == {k.id for k in kernels}
    # Another machine's process: an empty Triton cache.
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "elsewhere"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _LOAD, str(exported.path)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["binaries"].startswith(f"{len(kernels)} compiled kernel(s) for cuda:")
    assert result["loading"] == [True] * len(kernels)  # every kernel found installed: none compiled
    assert result["calling"] == []  # the first call compiled nothing either
