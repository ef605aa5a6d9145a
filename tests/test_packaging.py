"""The wheel holds every module, under fusec only; the source tree imports the same way."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    (path,) = out.glob("fusec-*.whl")
    return path


def test_wheel_holds_every_module_inside_fusec(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"fusec/{p.relative_to(ROOT / 'fusec').as_posix()}" for p in (ROOT / "fusec").rglob("*.py")}
    for folder in ("passes", "kernels", "bench"):
        expected |= {f"fusec/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
                     for p in (ROOT / folder).rglob("*.py")}
    expected.add("fusec/native_head.cpp")  # the launcher's C++ head, built where it is installed
    assert expected <= names, sorted(expected - names)
    top_level = {n.split("/")[0] for n in names}
    assert not top_level & {"passes", "kernels", "bench"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[torch_dynamo_backends]" in text and "fusec = fusec.frontend:fusec_backend" in text


def test_installed_wheel_imports_from_anywhere(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import fusec, fusec.passes.fuse, fusec.kernels.pointwise, fusec.bench.suite, fusec.cli.bench; "
             "print(fusec.__file__)")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    # From elsewhere: the installed copy. From the repo root: the checkout shadows it and still works.
    away = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert away.returncode == 0, away.stderr
    assert str(target) in away.stdout
    here = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert here.returncode == 0, here.stderr


def test_bench_runs_from_the_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    # `fusec bench` imports the whole suite (fusec.bench.*) before it parses its arguments.
    done = subprocess.run([sys.executable, "-m", "fusec", "bench", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--workload" in done.stdout
