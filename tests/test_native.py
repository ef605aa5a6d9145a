"""The launcher's C++ head (fusec/native.py): built, equal to the Python head, and never required."""

import gc
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusec
from fusec import native
from fusec.launcher import StrideMismatch
from fusec.options import Options
from fusec.runtime import draw_seed

HEAD = native.wait(Options.from_user().cache_dir)
# Without a C++ compiler the head is not built and launchers keep the Python head: only the tests of
# that path run (the others skip, saying why).
needs_head = pytest.mark.skipif(HEAD is None, reason=f"the C++ head was not built: {native.refusal()}")


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
def test_the_head_builds_on_a_machine_with_a_compiler():
    assert HEAD is not None, native.refusal()
    assert native.refusal() is None


def _entries(tensors, checks, addresses, positions=None):
    positions = range(len(tensors)) if positions is None else positions
    return [(f"t{i}", check, wants, "(expected)", at)
            for i, (check, wants, at) in enumerate(zip(checks, addresses, positions, strict=True))]


def _spec(*entries):
    """A spec of (name, check, address?) entries for tensors given in that order."""
    return native.spec([(*e, "", at) for at, e in enumerate(entries)])


def _layout(draw, shape):
    """A tensor of `shape`: contiguous, transposed, sliced or offset into its storage."""
    base = torch.randn(*shape)
    kind = draw(st.sampled_from(["contiguous", "transposed", "offset", "sliced"]))
    if kind == "transposed" and len(shape) >= 2:
        return torch.randn(*reversed(shape)).permute(*reversed(range(len(shape))))
    if kind == "offset":
        return torch.randn(base.numel() + 3)[draw(st.integers(1, 3)):][: base.numel()].view(shape)
    if kind == "sliced" and shape[-1] > 1:
        return torch.randn(*shape[:-1], shape[-1] * 2)[..., ::2]
    return base


@st.composite
def _heads(draw):
    n = draw(st.integers(1, 6))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    tensors = [_layout(draw, shape) for _ in range(n)]
    checks = []
    for t in tensors:
        kind = draw(st.sampled_from(["none", "contiguous", "strides"]))
        if kind == "none":
            checks.append(None)
        elif kind == "contiguous":
            checks.append(True)
        else:  # the strides of a contiguous tensor of the shape, or of this one
            like = t if draw(st.booleans()) else torch.empty(shape)
            checks.append(tuple(v for d in range(len(shape)) for v in (d, like.stride(d))))
    addresses = [draw(st.booleans()) for _ in tensors]
    # the call's inputs: the tensors among other values (a host scalar, None), in any order
    inputs = draw(st.permutations([*tensors, 3, None]))
    positions = [next(i for i, x in enumerate(inputs) if x is t) for t in tensors]
    return inputs, _entries(tensors, checks, addresses, positions)


@needs_head
@settings(max_examples=200, deadline=None)
@given(_heads())
def test_the_cpp_head_computes_what_the_python_head_does(case):
    inputs, entries = case
    spec = native.spec(entries)
    try:
        expected = native.python_head(spec, inputs)
    except StrideMismatch as exc:
        with pytest.raises(StrideMismatch) as raised:
            HEAD.head(spec, inputs)
        assert str(raised.value) == str(exc)
        return
    first, again = HEAD.head(spec, inputs), HEAD.head(spec, inputs)
    assert first == again == expected
    # plain tensors laid out as expected: read in C++, which hands back the tuple it kept
    assert first[2] is again[2]


@needs_head
def test_the_head_reads_index_alignment_and_addresses():
    a, b = torch.randn(4, 8), torch.randn(8)
    spec = _spec(("a", True, True), ("b", True, True))
    assert HEAD.head(spec, [a, b]) == (-1, True, (a.data_ptr(), b.data_ptr()))
    odd = torch.randn(9)[1:]  # 4 bytes past an aligned start
    assert HEAD.head(spec, [a, odd]) == (-1, False, (a.data_ptr(), odd.data_ptr()))
    assert HEAD.head(_spec(("a", True, False)), [a]) == (-1, True, ())  # no address read: aligned
    assert HEAD.head(spec, [a, b]) == (-1, True, (a.data_ptr(), b.data_ptr()))  # a new tensor in a slot


@needs_head
def test_the_head_finds_each_tensor_at_its_position_in_the_inputs():
    a, b = torch.randn(4), torch.randn(5)
    spec = native.spec([("b", True, True, "", 2), ("a", True, True, "", 0)])
    assert HEAD.head(spec, [a, 7, b]) == (-1, True, (b.data_ptr(), a.data_ptr()))
    assert HEAD.head(spec, (a, 7, b)) == (-1, True, (b.data_ptr(), a.data_ptr()))  # a tuple: Python's head
    with pytest.raises(IndexError):  # fewer inputs than the spec names: Python's head says so
        HEAD.head(spec, [a])


@needs_head
def test_addresses_that_repeat_are_the_same_tuple_and_ints():
    a, b = torch.randn(16), torch.randn(16)
    spec = _spec(("a", True, True), ("b", True, True))
    first, second = HEAD.head(spec, [a, b])[2], HEAD.head(spec, [a, b])[2]
    assert first is second and first == (a.data_ptr(), b.data_ptr())
    c = torch.randn(16)
    third = HEAD.head(spec, [a, c])[2]
    assert third == (a.data_ptr(), c.data_ptr()) and third[0] is first[0]


@needs_head
@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_call_of_the_head_within_its_own_allocation_leaves_no_stale_address(nth):
    # A new tuple may start a garbage collection, whose callbacks and finalizers run Python code (on
    # a server, another thread calling the same launcher): the head must read what it kept after.
    a, b, c, d = (torch.randn(16) for _ in range(4))
    spec = _spec(("a", True, True), ("b", True, True))
    kept = HEAD.head(spec, [a, b])  # the addresses (a, b) kept
    collections, inner = [], []

    def reenter(phase, info):
        collections.append(phase)
        if phase == "start" and collections.count("start") == nth and not inner:
            inner.append(HEAD.head(spec, [d, c])[2])

    gc.collect()
    threshold = gc.get_threshold()
    gc.callbacks.append(reenter)
    gc.set_threshold(1)
    try:
        got = HEAD.head(spec, [a, c])[2]
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(reenter)
    assert got == (a.data_ptr(), c.data_ptr())
    assert not inner or inner[0] == (d.data_ptr(), c.data_ptr())
    assert kept[2] == (a.data_ptr(), b.data_ptr())


@needs_head
def test_a_mismatch_raises_the_launchers_error_naming_the_input():
    x = torch.randn(6, 4).t()
    spec = native.spec([("arg0_1", True, True, "(6, 1)", 0)])
    with pytest.raises(StrideMismatch, match=r"arg0_1 has strides \(1, 4\), the kernel expects \(6, 1\)"):
        HEAD.head(spec, [x])
    strided = native.spec([("arg0_1", (0, 6, 1, 1), True, "(6, 1)", 0)])
    with pytest.raises(StrideMismatch):
        HEAD.head(strided, [x])
    assert HEAD.head(native.spec([("arg0_1", (0, 1, 1, 4), True, "(1, 4)", 0)]), [x])[2] == (x.data_ptr(),)


class Tagged(torch.Tensor):
    """A subclass whose methods Python overrides: the C++ head leaves it to Python."""

    def data_ptr(self):
        return 48


@needs_head
def test_a_tensor_subclass_goes_through_the_python_head():
    a = torch.randn(4).as_subclass(Tagged)
    spec = _spec(("a", True, True))
    assert HEAD.head(spec, [a]) == (-1, True, (48,))  # its own data_ptr, which only Python calls
    parameter = torch.nn.Parameter(torch.randn(4))
    assert HEAD.head(spec, [parameter]) == (-1, True, (parameter.data_ptr(),))


@needs_head
def test_a_malformed_spec_is_a_type_error():
    with pytest.raises(TypeError, match="a spec and the call's inputs"):
        HEAD.head(_spec(("a", True, True)), [torch.randn(2)], [torch.randn(2)])
    with pytest.raises(TypeError, match="a spec and the call's inputs"):
        HEAD.head()
    with pytest.raises(TypeError, match="addresses kept"):
        HEAD.head(("python head", None, None, ("a", True, True, "", 0)), [torch.randn(2)])
    with pytest.raises(TypeError, match="a tensor entry at least"):
        HEAD.head((native.python_head, [None], bytearray()), [torch.randn(2)])


@needs_head
@pytest.mark.parametrize("seed", [0, 7, 2**40])
def test_the_cpp_seed_is_the_python_draw(seed):
    torch.manual_seed(seed)
    python = [draw_seed() for _ in range(4)]
    torch.manual_seed(seed)
    assert [HEAD.seed() for _ in range(4)] == python
    assert all(s >> 62 == 1 for s in python)  # bit 62 set, 62 random bits below it


def _source(compiled):
    return fusec.report_of(compiled).graphs[0].runtime.source


@needs_head
def test_launchers_check_inputs_in_one_call_and_compute_as_the_python_head():
    fn = lambda x, w, b: torch.nn.functional.layer_norm(x + 1, (16,), w, b) * 2
    args = torch.randn(8, 16), torch.randn(16), torch.randn(16)
    with_head, python = fusec.compile(fn), fusec.compile(fn, native=False)
    torch.testing.assert_close(with_head(*args), fn(*args))
    torch.testing.assert_close(python(*args), fn(*args))
    source = _source(with_head)
    assert source.count("HEAD(") == 1 and "is_contiguous()" not in source and ".data_ptr()" not in source
    assert "HEAD(" not in _source(python) and _source(python).count("is_contiguous()") == 3


@needs_head
def test_the_seed_of_a_random_kernel_comes_from_the_cpp_head_and_repeats():
    fn = lambda x: torch.nn.functional.dropout(x, 0.5, training=True) + 1
    x = torch.randn(64, 64)
    with_head, python = fusec.compile(fn), fusec.compile(fn, native=False)
    torch.manual_seed(3)
    a = with_head(x)
    torch.manual_seed(3)
    b = python(x)
    torch.testing.assert_close(a, b)  # the same draw of torch's generator, so the same mask
    assert not torch.equal(with_head(x), a)  # a new draw each call
    launcher = fusec.report_of(with_head).graphs[0].runtime._call
    assert [name for name, value in launcher.__globals__.items() if value is HEAD.seed] != []
    assert all(value is not draw_seed for value in launcher.__globals__.values())


@needs_head
@pytest.mark.fallback_expected
def test_an_input_laid_out_otherwise_runs_through_torch_with_the_cpp_head(caplog):
    fn = lambda x: x * 2 + 1
    compiled = fusec.compile(fn, strict=False)
    compiled(torch.randn(4, 6))
    runtime = fusec.report_of(compiled).graphs[0].runtime
    column_major = torch.randn(6, 4).t()
    with pytest.raises(StrideMismatch, match=r"arg0_1 has strides \(1, 4\), the kernel expects \(6, 1\)"):
        runtime.run([column_major])
    torch.testing.assert_close(runtime([column_major])[0], fn(column_major))
    assert "running this call through torch" in caplog.text


@needs_head
def test_a_launcher_written_before_the_head_loads_is_written_again(monkeypatch):
    building = native._State()
    building.thread = object()  # a build under way: launchers written now wait to be told
    monkeypatch.setattr(native, "_STATE", building)
    fn = lambda x: x.sin() + 1
    compiled = fusec.compile(fn)
    x = torch.randn(32)
    compiled(x)
    runtime = fusec.report_of(compiled).graphs[0].runtime
    assert "HEAD(" not in runtime.source and len(building.waiting) == 1
    building.module, waiting = HEAD, building.waiting  # what the build's thread does once it loads
    native._tell(waiting)
    torch.testing.assert_close(compiled(x), fn(x))
    assert "HEAD(" in runtime.source


def test_a_cache_directory_others_may_write_keeps_the_python_head(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native, "_STATE", native._State())
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with caplog.at_level(logging.INFO, logger="fusec"):
        assert native.wait(shared) is None
    assert "other users may write to it" in native.refusal()
    assert "launchers read their inputs in Python" in caplog.text
    assert not (shared / "native").exists() or not any((shared / "native").iterdir())
    compiled = fusec.compile(lambda x: x * 3, cache_dir=shared)
    torch.testing.assert_close(compiled(torch.ones(4)), torch.full((4,), 3.0))
    assert "HEAD(" not in fusec.report_of(compiled).graphs[0].runtime.source


def _compiler(tmp_path, monkeypatch, script):
    """A fresh process's head state, and `script` as the C++ compiler it would build with."""
    monkeypatch.setattr(native, "_STATE", native._State())
    compiler = tmp_path / "bin" / "c++"
    compiler.parent.mkdir()
    compiler.write_text("#!/bin/sh\n" + script)
    compiler.chmod(compiler.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CXX", str(compiler))


def test_a_failed_build_says_why_and_keeps_the_python_head(tmp_path, monkeypatch):
    _compiler(tmp_path, monkeypatch, "echo 'no headers here' >&2\nexit 3\n")
    cache = tmp_path / "cache"
    assert native.wait(cache) is None
    assert "building it failed" in native.refusal() and "no headers here" in native.refusal()
    assert "exited with 3" in native.refusal()  # the compiler's own exit status
    # no half-built module, no lock left: what the compiler said, which later processes read
    (failed,) = (cache / "native").iterdir()
    assert failed.name.endswith(".failed") and "no headers here" in failed.read_text()
    monkeypatch.setattr(native, "_STATE", native._State())  # the next process: it does not build again
    assert native.start(cache) is None
    assert "an earlier build failed" in native.refusal() and str(failed) in native.refusal()
    os.utime(failed, (time.time() - native.RETRY_SECONDS - 1,) * 2)  # a day later it is tried again
    assert native._failure(failed) is None


@pytest.mark.skipif(shutil.which("timeout") is None, reason="no `timeout` command to stop a compiler")
def test_a_compiler_that_hangs_is_stopped(tmp_path, monkeypatch):
    _compiler(tmp_path, monkeypatch, "sleep 30\n")
    monkeypatch.setattr(native, "BUILD_SECONDS", 1)
    cache = tmp_path / "cache"
    started = time.monotonic()
    assert native.wait(cache) is None
    assert time.monotonic() - started < 20 and "stopped after 1 s" in native.refusal()
    (failed,) = (cache / "native").iterdir()  # what it said, nothing half-built, no lock
    assert failed.name.endswith(".failed")


def test_anything_going_wrong_while_starting_the_build_keeps_the_python_head(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_STATE", native._State())
    monkeypatch.setattr(native, "SOURCE", tmp_path / "missing.cpp")  # an install without the source, say
    assert native.start(tmp_path / "cache") is None
    assert "starting its build failed" in native.refusal()
    compiled = fusec.compile(lambda x: x + 1, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(compiled(torch.zeros(3)), torch.ones(3))


def test_a_lock_whose_build_is_over_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_STATE", native._State())
    path, _ = native._target(tmp_path)
    lock = native._lock(path)
    gone = subprocess.Popen(["true"])  # a process of this host that has ended: its lock holds nothing
    gone.wait()
    lock.write_text(f"{native._host()}:{gone.pid}")
    assert not native._held(lock)
    assert native._locked(lock) and lock.exists()  # taken over: this process may build
    lock.write_text(f"{native._host()}:{os.getpid()}")  # a live process, but older than any build takes
    os.utime(lock, (time.time() - native.BUILD_SECONDS - 120,) * 2)
    assert not native._held(lock)
    lock.write_text(f"another-host:{gone.pid}")  # another machine's, on a shared cache: its age decides
    assert native._held(lock)


def test_another_processs_build_is_waited_for_not_repeated(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_STATE", native._State())
    path, why = native._target(tmp_path)
    assert why is None
    lock = native._lock(path)
    lock.touch()  # another process is building it
    assert native._spawn(path) is None
    monkeypatch.setattr(native, "BUILD_SECONDS", 1)
    native._build_and_load(path, None)  # waits for the other build, which never comes
    assert "another process's build of it ended without one" in native.refusal()
    assert lock.exists() and not path.exists()  # neither built nor the other's lock taken


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
def test_a_build_left_by_a_process_that_exited_finishes_for_the_next(tmp_path):
    """A short script ends before the build; the build finishes in its own session."""
    script = ("import sys; from pathlib import Path; from fusec import native; "
              "native.start(Path(sys.argv[1])); print('exiting')")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert done.returncode == 0 and "exiting" in done.stdout, done.stderr
    path, _ = native._target(tmp_path)
    for _ in range(240):  # the build outlives the script
        if path.exists() and not list(path.parent.glob("*.building")):
            break
        time.sleep(0.5)
    assert path.exists(), sorted(p.name for p in path.parent.iterdir())
    assert not list(path.parent.glob("*.tmp*"))
