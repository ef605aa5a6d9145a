"""The on-disk kernel cache: never a source of code, never a reason to fall back to torch."""

import importlib.util
import linecache
import logging
import os
import stat
from importlib._bootstrap_external import _code_to_timestamp_pyc

import pytest
import torch

import fusec
from fusec.kernels import compile as kernel_cache

SOURCE = '''import triton
import triton.language as tl


@triton.jit
def add_one(p_x, p_out, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    tl.store(p_out + offs, tl.load(p_x + offs, mask=mask) + 1, mask=mask)
'''


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Every test loads from its own cache directory, with nothing loaded in memory yet."""
    monkeypatch.setattr(kernel_cache, "_LOADED", {})
    monkeypatch.setattr(kernel_cache, "_WARNED", set(), raising=False)


def _entry(cache_dir) -> str:
    return f"add_one_{kernel_cache.source_key(SOURCE, True)}.py"


def _load_and_run(cache_dir):
    kernel = kernel_cache.load_kernel(SOURCE, "add_one", interpret=True, cache_dir=cache_dir)
    x = torch.arange(10.0)
    out = torch.empty_like(x)
    with kernel_cache.interpreter(True):
        kernel[(1,)](x, out, 10, BLOCK=16)
    torch.testing.assert_close(out, x + 1)


def test_planted_bytecode_never_runs(tmp_path):
    _load_and_run(tmp_path)
    path = tmp_path / _entry(tmp_path)
    info = path.stat()
    planted = compile("import builtins\nbuiltins.fusec_planted = True\n" + SOURCE, str(path), "exec")
    pyc = importlib.util.cache_from_source(str(path))
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    with open(pyc, "wb") as f:  # a header that matches the .py: the import system would run it
        f.write(_code_to_timestamp_pyc(planted, int(info.st_mtime), info.st_size))
    kernel_cache._LOADED.clear()
    _load_and_run(tmp_path)
    import builtins
    assert not getattr(builtins, "fusec_planted", False)


def test_the_file_on_disk_is_not_what_runs(tmp_path):
    _load_and_run(tmp_path)
    path = tmp_path / _entry(tmp_path)
    os.chmod(path, 0o600)
    kernel_cache._LOADED.clear()
    linecache.clearcache()
    path.write_text(SOURCE.replace("+ 1, mask", "+ 2, mask"))
    _load_and_run(tmp_path)  # the source given is checked against the file and rewritten
    assert path.read_text() == SOURCE


def test_cache_directories_are_private(tmp_path):
    cache = tmp_path / "a" / "kernels"
    _load_and_run(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert (cache / _entry(cache)).read_text() == SOURCE


@pytest.mark.parametrize("problem", ["others may write", "another user owns"])
def test_an_unsafe_cache_directory_is_refused(tmp_path, monkeypatch, caplog, problem):
    if problem == "others may write":
        os.chmod(tmp_path, 0o777)
    else:
        monkeypatch.setattr(kernel_cache.os, "getuid", lambda: tmp_path.stat().st_uid + 1)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        _load_and_run(tmp_path)
        kernel_cache._LOADED.clear()
        _load_and_run(tmp_path)
    assert not (tmp_path / _entry(tmp_path)).exists()
    warnings = [r.getMessage() for r in caplog.records if "not using the kernel cache" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not on every kernel


@pytest.mark.parametrize("corruption", ["invalid utf-8", "directory", "truncated pyc"])
def test_a_corrupt_entry_heals(tmp_path, corruption):
    path = tmp_path / _entry(tmp_path)
    if corruption == "invalid utf-8":
        path.write_bytes(b"\xff\xfe not python \x80")
    elif corruption == "directory":
        path.mkdir()
    else:
        path.write_text(SOURCE)
        info = path.stat()
        whole = _code_to_timestamp_pyc(compile(SOURCE, str(path), "exec"), int(info.st_mtime), info.st_size)
        pyc = importlib.util.cache_from_source(str(path))
        os.makedirs(os.path.dirname(pyc))
        with open(pyc, "wb") as f:
            f.write(whole[: len(whole) // 2])
    _load_and_run(tmp_path)
    if corruption == "invalid utf-8":
        assert path.read_text() == SOURCE


def test_an_unwritable_cache_still_gives_generated_kernels(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(kernel_cache.tempfile, "mkstemp", refuse)  # root may write anywhere: simulate
    blocked = tmp_path / "file"
    blocked.write_text("")
    x = torch.randn(32)
    for cache_dir in (tmp_path / "ro", blocked / "under-a-file"):
        kernel_cache._LOADED.clear()
        torch._dynamo.reset()
        with caplog.at_level(logging.WARNING, logger="fusec"):
            compiled = fusec.compile(lambda x: torch.sigmoid(x) * 3, cache_dir=cache_dir, strict=False)
            torch.testing.assert_close(compiled(x), torch.sigmoid(x) * 3)
        report = fusec.report_of(compiled)
        assert report.stats["kernels"] == 1 and report.graphs[0].fallback is None, report.summary()
        assert not any("internal error" in r.getMessage() for r in caplog.records)
