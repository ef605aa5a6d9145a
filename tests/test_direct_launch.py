"""A generated launcher's straight launches of compiled binaries: the addresses its head reads,
the binaries it binds after a call, and what a launch passes (fusec/direct_launch.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton

import fusec
from fusec.bench.overhead import _stream_stub, stub_launches
from fusec.direct_launch import BIND_TRIES, Binder, passed
from fusec.kernels.call import KernelCall, entry_of, launch_hooks_set
from fusec.kernels.launch import Launch
from fusec.launcher_code import Source, StepCode
from tests.eager import assert_ran
from tests.test_launcher import FakeJit, Recording, misaligned


class LoggedBinary:
    """A compiled kernel's stand-in: its entry point records what each launch passed."""

    function, packed_metadata = "function", "metadata"

    def __init__(self):
        self.launches = []

    def run(self, *args):
        self.launches.append(args)


def direct_runtime(fn, *args, **options):
    """A graph compiled and run once; then its launches stubbed by one recording binary, the paths
    through the kernels' calls logged, and its launcher generated again to launch binaries straight."""
    compiled = fusec.compile(fn, **options)
    compiled(*args)
    runtime = fusec.report_of(compiled).graphs[0].runtime
    stub_launches(runtime)
    binary, log = LoggedBinary(), []
    for call in runtime.calls.values():
        call.binaries = Recording("keyed", entry_of(binary), log)
        call.ready = Recording("aligned", entry_of(binary), log)
    runtime.launch_directly()
    return runtime, binary, log


@pytest.mark.parametrize("native", [True, False])
def test_the_launcher_launches_binaries_straight_with_what_their_calls_pass(native):
    runtime, binary, log = direct_runtime(lambda x: (x * 2).exp(), torch.randn(4, 8), fuse=False, native=native)
    x = torch.randn(4, 8)
    with _stream_stub():
        runtime.run([x])  # each kernel's first launch goes through its call, which finds its binary
        assert [path for path, _ in log] == ["aligned"] * 4  # launched, then its binary looked up to bind
        through_calls, log[:] = list(binary.launches), []
        binary.launches.clear()
        runtime.run([x])
    assert log == []  # the second call launched both binaries from the launcher's own code
    assert "    if direct and K0_ON and aligned:\n        K0_RUN(" in runtime.source
    assert "    if direct and K1_ON:\n        K1_RUN(" in runtime.source  # k1 reads only the launcher's buffer
    assert len(binary.launches) == len(through_calls) == 2
    for straight, called in zip(binary.launches, through_calls, strict=True):
        same = [(type(a), a.shape, a.dtype) if isinstance(a, torch.Tensor) else a for a in straight[10:]]
        assert same == [(type(a), a.shape, a.dtype) if isinstance(a, torch.Tensor) else a for a in called[10:]]
    # grid, stream, function, metadata and three hooks, then x: its address, read once per call
    assert binary.launches[0][9] == x.data_ptr() and through_calls[0][9] is x
    if native:
        assert ".data_ptr()" not in runtime.source and runtime.source.count("addresses = HEAD(") == 1
        assert "K0_RUN(1, 1, 1, stream, K0_FN, K0_META, None, None, None, addresses[0]," in runtime.source
    else:
        assert runtime.source.count(".data_ptr()") == runtime.source.count("v_arg0_1.data_ptr()") == 1
    # A new input each call: each straight launch passes that call's address.
    binary.launches.clear()
    fresh = [torch.randn(4, 8) for _ in range(3)]
    with _stream_stub():
        for y in fresh:
            runtime.run([y])
    assert log == [] and [launch[9] for launch in binary.launches[::2]] == [y.data_ptr() for y in fresh]


@pytest.mark.parametrize("native", [True, False])
def test_a_launch_of_many_inputs_passes_the_heads_addresses_as_one_run(native):
    fn = lambda a, b, c, d, e: a * b + c * d - e
    args = [torch.randn(4, 8) for _ in range(5)]
    runtime, binary, log = direct_runtime(fn, *args, native=native)
    with _stream_stub():
        runtime.run(list(args))  # the first launch goes through the kernel's call, which binds its binary
        binary.launches.clear()
        log.clear()
        runtime.run(list(args))
    assert log == [] and len(binary.launches) == 1
    # grid, stream, function, metadata and three hooks, then the five inputs' addresses in order
    assert list(binary.launches[0][9:14]) == [t.data_ptr() for t in args]
    passed = "*addresses, " if native else "p_arg0_1, p_arg1_1, p_arg2_1, p_arg3_1, p_arg4_1, "
    assert f"None, None, None, {passed}" in runtime.source


def test_runs_of_the_heads_addresses_are_slices_and_the_rest_items():
    src = Source(head_slots={f"x{i}": i for i in range(8)})
    args = ["v_x0", "v_x1", "v_buf", "v_x2", "v_x3", "v_x4", "v_x5", "v_x7", "v_x6", "v_x6"]
    assert passed(src, StepCode(calls={}, callables={}), args) == [
        "addresses[0]", "addresses[1]", "v_buf", "*addresses[2:6]", "addresses[7]", "addresses[6]", "addresses[6]"]
    whole = [f"v_x{i}" for i in range(8)]
    assert passed(src, StepCode(calls={}, callables={}), [*whole, "v_out"]) == ["*addresses", "v_out"]


def test_a_misaligned_input_is_not_launched_straight():
    runtime, binary, log = direct_runtime(lambda x: (x * 2).exp(), torch.randn(4, 8), fuse=False)
    with _stream_stub():
        runtime.run([torch.randn(4, 8)])
        log.clear()
        runtime.run([misaligned((4, 8))])
    # k0 reads the input: keyed by its pointers' alignment; k1 reads k0's buffer only: straight
    assert log == [("keyed", (None, False, True))]
    assert len(binary.launches) == 4


def test_the_launcher_asks_once_per_call_whether_a_profiler_hooks_launches():
    runtime, binary, _ = direct_runtime(lambda x: (x * 2).exp(), torch.randn(4, 8), fuse=False)
    with _stream_stub():
        runtime.run([torch.randn(4, 8)])
    assert runtime.source.count("HOOKS()") == 1 and runtime.source.count("_RUN(") == 2
    assert runtime._call.__globals__["HOOKS"] is launch_hooks_set
    dispatched = []  # launches through Triton's own path, which calls the hooks
    for call in runtime.calls.values():
        call._dispatch = lambda args, call=call: dispatched.append(call.name) or binary
    binary.launches.clear()
    hook = lambda *args: None
    assert not launch_hooks_set()
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert launch_hooks_set()
        with _stream_stub():
            runtime.run([torch.randn(4, 8)])
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert sorted(dispatched) == sorted(runtime.calls) and binary.launches == []  # none launched straight


def test_a_binary_is_bound_after_a_call_launched_it_with_the_launchers_constants():
    fn = FakeJit()
    call = KernelCall(fn, Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k0", loaded=2)
    other = KernelCall(FakeJit(), Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k1", loaded=2)
    scope = {}
    bind = Binder(scope, None)
    bind.add(call, ("K0_RUN", "K0_FN", "K0_META", "K0_ON"), (100, 64))
    bind.add(other, ("K1_RUN", "K1_FN", "K1_META", "K1_ON"), (100, 32))  # not the constants its call passes
    assert scope == {"K0_RUN": None, "K0_FN": None, "K0_META": None, "K0_ON": False,
                     "K1_RUN": None, "K1_FN": None, "K1_META": None, "K1_ON": False}
    x, out = torch.zeros(100), torch.empty(100)
    bind()
    assert not scope["K0_ON"] and "BOUND" not in scope  # nothing launched yet: nothing to bind
    with _stream_stub():
        call.aligned(x, out)
        other.aligned(x, out)
    bind()
    assert [entry[0] for entry in fn.log] == ["dispatch"]  # Triton compiled it; binding launched nothing
    assert scope["K0_ON"] and scope["K0_FN"] == scope["K0_META"] == "handle" and scope["K0_RUN"].__self__.log is fn.log
    assert not scope["K1_ON"] and scope["BOUND"]  # k1 launches through its call; nothing is left to try


def test_a_launcher_stops_trying_to_bind_a_binary_its_calls_never_compile():
    call = KernelCall(FakeJit(), Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k0", loaded=1)
    scope = {}
    bind = Binder(scope, None)
    bind.add(call, ("K0_RUN", "K0_FN", "K0_META", "K0_ON"), (100, 64))
    for _ in range(BIND_TRIES - 1):
        bind()
    assert "BOUND" not in scope
    bind()
    assert scope["BOUND"] and not scope["K0_ON"]


def test_a_dynamic_kernel_chooses_its_launch_once_per_extents():
    compiled = fusec.compile(lambda x: (x * 2).softmax(-1), dynamic=True)
    compiled(torch.randn(3, 5))
    (call,) = fusec.report_of(compiled).graphs[0].runtime.calls.values()
    chosen = []
    choose = call.choose
    call.choose = lambda extents: chosen.append(extents) or choose(extents)
    for n in (5, 7, 5, 7, 7):
        x = torch.randn(3, n)
        torch.testing.assert_close(compiled(x), (x * 2).softmax(-1))
    assert len(chosen) == 1  # 5 was chosen at the first call; 7 once
    assert len(call.chosen) == 2
    assert_ran(compiled)


def test_a_final_reductions_partials_and_ticket_are_kept_across_calls():
    """cross_entropy's batch mean: the partials and ticket counter are allocated once per
    thread, device and stream, and a later call on other values still equals eager."""
    fn = lambda x, t: F.cross_entropy(x, t)
    compiled = fusec.compile(fn)
    seen = []
    for seed in range(3):
        torch.manual_seed(seed)
        x, t = torch.randn(6, 40) * 3, torch.randint(0, 40, (6,))
        torch.testing.assert_close(compiled(x, t), fn(x, t))
        [graph] = assert_ran(compiled).graphs
        [kernel] = [k for k in graph.plan.kernels if k.finals]
        seen.append([id(b) for b in graph.runtime._final_buffers(kernel, x.device)])
    assert seen[0] == seen[1] == seen[2] and len(seen[0]) == len(kernel.finals) + 1


def test_a_straight_launch_finds_its_partials_by_stream_without_a_call():
    """The launcher's straight launch of a kernel with a final reduction passes the runtime's own
    partials and ticket, looked up by stream in a dict kept per thread; a stream's first launch asks
    the runtime once, later calls ask nothing."""
    import threading

    fn = lambda x, t: F.cross_entropy(x, t)
    x, t = torch.randn(4, 10), torch.randint(0, 10, (4,))
    runtime, binary, _ = direct_runtime(fn, x, t)
    [kernel] = [k for k in runtime.plan.kernels if k.finals]
    asked = []
    find = runtime._final_buffers
    runtime._final_buffers = lambda kernel, device: asked.append(device) or find(kernel, device)
    runtime.launch_directly()
    with _stream_stub():
        for _ in range(3):
            runtime.run([x, t])
    assert "K0_RUN(" in runtime.source and ".kept.get(stream) or " in runtime.source
    # the first call launches through the kernel's call, which asks; the second call's straight launch
    # asks once for its stream; the third asks nothing
    assert len(asked) == 2 and len(binary.launches) == 3
    expected = find(kernel, x.device)
    for launch in binary.launches[1:]:  # grid, stream, function, metadata, three hooks, x, t, out, partials
        assert [id(a) for a in launch[12:12 + len(expected)]] == [id(b) for b in expected]
    [kept] = [v for k, v in runtime._call.__globals__.items() if k.startswith("P") and hasattr(v, "kept")]
    other = []
    worker = threading.Thread(target=lambda: other.append(dict(kept.kept)))
    worker.start()
    worker.join()
    assert other == [{}] and list(kept.kept) == [0]  # per thread, by stream



def test_a_launch_hook_set_as_a_plain_function_is_seen(monkeypatch):
    assert not launch_hooks_set()
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", lambda *args: None)
    assert launch_hooks_set()



def test_partials_kept_by_stream_are_bounded():
    from fusec.pointers import MAX_KEPT, PartialsByStream

    found = []
    kept = PartialsByStream(lambda kernel, device: found.append(device) or [torch.zeros(1)], kernel=None)
    for stream in range(MAX_KEPT + 3):
        kept.first(torch.device("cpu"), stream)
    assert len(found) == MAX_KEPT + 3 and 0 < len(kept.kept) <= MAX_KEPT
    assert list(kept.kept)[-1] == MAX_KEPT + 2  # the stream just asked for is kept



def test_an_input_written_in_place_is_passed_as_itself_and_the_device_read_as_an_int():
    def step(x, y):
        x.mul_(2).add_(y)

    compiled = fusec.compile(step)
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    expected = x * 2 + y
    compiled(x, y)
    torch.testing.assert_close(x, expected)
    source = fusec.report_of(compiled).graphs[0].runtime.source
    assert "    # written into inputs: add -> arg0_1\n" in source and " = v_arg0_1  # written into input" not in source
    # x read and written: passed once, the kernel storing through the pointer it reads
    assert "(v_arg0_1, v_arg1_1)" in source
    (kernel,) = fusec.report_of(compiled).graphs[0].plan.kernels
    assert kernel.into == (("add", "arg0_1"),) and kernel.params[:2] == ("p_arg0_1", "p_arg1_1")
    assert "tl.store(p_arg0_1 +" in kernel.source and "p_add" not in kernel.source
    assert "    index, aligned, addresses = HEAD(" in source and "device =" not in source
    assert_ran(compiled)
