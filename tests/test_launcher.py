"""The generated launcher and the kernel calls it makes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fusec
from fusec.bench.overhead import _stream_stub, measure, stub_launches
from fusec.kernels.call import KernelCall
from fusec.kernels.launch import Launch
from fusec.launcher import StrideMismatch
from fusec.pointers import allocator
from fusec.torch_calls import BINDINGS, aten, entry_point
from tests.eager import assert_ran


def test_launcher_source_is_straight_line_code_of_the_plan():
    fn = lambda x, b: (F.gelu(x + b), (x * b).sum(-1))
    compiled = fusec.compile(fn, native=False)  # the Python head (tests/test_native.py: the C++ one)
    x, b = torch.randn(8, 16), torch.randn(16)
    torch.testing.assert_close(compiled(x, b), fn(x, b))
    source = fusec.report_of(compiled).graphs[0].runtime.source
    assert source.startswith("def call(inputs):")
    assert source.count("empty_strided(") == 2  # one buffer per kernel output, nothing else allocated
    assert "(k0_aligned if aligned else k0)(" in source and "(k1_aligned if aligned else k1)(" in source
    assert "is_contiguous()" in source  # inputs laid out as traced are checked by one flag
    assert source.count(".data_ptr()") == 2  # each input's alignment once per call, not once per launch


@pytest.mark.fallback_expected
def test_an_input_laid_out_otherwise_is_refused_by_the_launcher(caplog):
    fn = lambda x: x * 2 + 1
    compiled = fusec.compile(fn, strict=False)
    x = torch.randn(4, 6)
    compiled(x)
    runtime = fusec.report_of(compiled).graphs[0].runtime
    column_major = torch.randn(6, 4).t()
    with pytest.raises(StrideMismatch, match=r"arg0_1 has strides \(1, 4\), the kernel expects \(6, 1\)"):
        runtime.run([column_major])
    torch.testing.assert_close(runtime([column_major])[0], fn(column_major))  # through torch, with a warning
    assert "running this call through torch" in caplog.text


class FakeBinary:
    function = packed_metadata = "handle"

    def __init__(self, log):
        self.log = log

    def run(self, *args):
        self.log.append(("binary", args))


class FakeJit:
    """Stands in for a @triton.jit function: `fn[grid](...)` dispatches and returns a binary."""

    arg_names = ["x", "out", "n", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def dispatch(*args, **kwargs):
            self.log.append(("dispatch", args, kwargs))
            return FakeBinary(self.log)
        return dispatch


def test_kernel_call_dispatches_once_per_alignment_then_calls_the_binary():
    fn = FakeJit()
    call = KernelCall(fn, Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k0", loaded=1)
    storage = torch.zeros(130)
    x, out = storage[:100], torch.empty(100)
    with _stream_stub():
        call(x, out)
        call(x, out)
        call(storage[1:101], out)  # 4 bytes in: another specialization, so Triton dispatches again
        call(storage[1:101], out)
    kinds = [entry[0] for entry in fn.log]
    assert kinds == ["dispatch", "binary", "dispatch", "binary"]
    _, args = fn.log[1]
    # grid padded to 3-D, stream, handles, no hooks, then the tensors, sizes and constants in parameter order
    assert args[:3] == (3, 1, 1) and args[-2:] == (100, 64) and args[-4] is x
    assert call.count == 4


def test_kernel_call_names_a_missing_parameter():
    fn = FakeJit()
    fn.arg_names = ["x", "out", "n", "BLOCK", "EXTRA"]
    call = KernelCall(fn, Launch((1,), {"BLOCK": 64}, 4), sizes=(4,), interpret=False, name="k7", loaded=1)
    with _stream_stub(), pytest.raises(fusec.runtime.KernelFailed, match=r"k7.*EXTRA"):
        call(torch.zeros(4), torch.zeros(4))


def test_overhead_bench_measures_a_stubbed_launch():
    row = measure("bias_gelu", "cpu")
    assert row.kernels == 1 and row.externs == 0
    assert 0 < row.launcher_us < row.fusec_call_us  # the launcher is part of the call
    assert row.per_kernel_us == row.launcher_us


class Recording(dict):
    """A kernel call's binary cache standing in for every key: it records which path asked."""

    def __init__(self, path, value, log):
        super().__init__()
        self.path, self.value, self.log = path, value, log

    def get(self, key, default=None):
        self.log.append((self.path, key))
        return self.value


def recorded_paths(compiled, *args):
    """Run `compiled` once, then stub its launches and record, launch by launch, whether the
    launcher went straight to the aligned binary or through the per-launch alignment key."""
    compiled(*args)
    runtime = fusec.report_of(compiled).graphs[0].runtime
    stub_launches(runtime)
    log = []
    for call in runtime.calls.values():
        call.binaries = Recording("keyed", call.binaries.value, log)
        call.ready = Recording("aligned", call.ready.value, log)
    return runtime, log


def misaligned(shape):
    """A contiguous view 4 bytes into its storage: its address is not a multiple of 16."""
    view = torch.randn(1 + torch.Size(shape).numel())[1:].view(shape)
    assert view.data_ptr() % 16 == 4
    return view


@pytest.mark.parametrize("native", [True, False])
def test_alignment_is_checked_once_per_call_and_the_launchers_own_buffers_are_trusted(native):
    # k0 reads the input, k1 only k0's buffer
    compiled = fusec.compile(lambda x: (x * 2).exp(), fuse=False, native=native)
    runtime, log = recorded_paths(compiled, torch.randn(4, 8))
    head = "index, aligned, addresses = HEAD(" if native else "aligned = not (v_arg0_1.data_ptr() & 15)"
    assert runtime.source.count(head) == 1 and runtime.source.count("aligned =") == (not native)
    assert "(k0_aligned if aligned else k0)(v_arg0_1, v_mul)" in runtime.source
    assert "    k1_aligned(v_mul, v_exp)" in runtime.source
    with _stream_stub():
        runtime.run([torch.randn(4, 8)])
        assert log == [("aligned", None), ("aligned", None)]  # a CPU tensor's device index is None
        log.clear()
        runtime.run([misaligned((4, 8))])
    # k0's key holds each pointer's alignment: its input's (4 bytes off) and its output's
    assert log == [("keyed", (None, False, True)), ("aligned", None)]


def test_an_input_written_in_place_is_part_of_the_alignment_key():
    def step(x, y):
        x.copy_(torch.exp(y * 2))  # the kernel writes x without reading it

    runtime, log = recorded_paths(fusec.compile(step), torch.randn(4, 8), torch.randn(4, 8))
    assert runtime.calls["k0"].loaded == 2
    with _stream_stub():
        runtime.run([misaligned((4, 8)), torch.randn(4, 8)])
    assert log == [("keyed", (None, True, False))]  # y aligned, x (the output) not


def test_misaligned_inputs_give_eagers_results():
    fn = lambda x, b: (torch.sigmoid(x + b) * 3, (x * b).sum(-1))
    compiled = fusec.compile(fn)
    for x, b in [(torch.randn(8, 16), torch.randn(16)), (misaligned((8, 16)), misaligned((16,))),
                 (torch.randn(8, 16), misaligned((16,)))]:
        torch.testing.assert_close(compiled(x, b), fn(x, b))
    assert fusec.report_of(compiled).graphs[0].runtime.counts.calls == 3  # one graph served every layout
    assert_ran(compiled)


def test_kernel_call_aligned_binds_the_binary_once_per_device():
    fn = FakeJit()
    call = KernelCall(fn, Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k0", loaded=2)
    x, out = torch.zeros(100), torch.empty(100)
    with _stream_stub():
        call.aligned(x, out)
        call.aligned(x, out)
        call(misaligned((100,)), out)  # the keyed path keeps its own binaries
    assert [entry[0] for entry in fn.log] == ["dispatch", "binary", "dispatch"]
    _, args = fn.log[1]
    assert args[:3] == (3, 1, 1) and args[-2:] == (100, 64) and args[-4] is x
    assert list(call.ready) == [None] and call.count == 3


def test_kernel_call_keys_an_output_pointer_too():
    fn = FakeJit()
    call = KernelCall(fn, Launch((3,), {"BLOCK": 64}, 4), sizes=(100,), interpret=False, name="k0", loaded=2)
    x = torch.zeros(100)
    with _stream_stub():
        call(x, torch.empty(100))
        call(x, misaligned((100,)))  # an input written in place, at 4 bytes: another binary
    assert [entry[0] for entry in fn.log] == ["dispatch", "dispatch"]


def test_the_allocator_is_torchs_own_on_a_cpu_and_general_elsewhere():
    from torch._C._dynamo.guards import _empty_strided_cpu

    assert allocator(torch.device("cpu")) is _empty_strided_cpu
    made = allocator(torch.device("meta"))((4, 3), (1, 4), torch.float16)
    assert made.device.type == "meta" and made.stride() == (1, 4) and made.dtype == torch.float16


r = torch.randn
EXTERN_SAMPLES = {  # overload -> (args, kwargs) as a graph calls it
    aten.mm.default: ((r(2, 3), r(3, 4)), {}),
    aten.bmm.default: ((r(2, 2, 3), r(2, 3, 4)), {}),
    aten.addmm.default: ((r(4), r(2, 3), r(3, 4)), {"beta": 0.5, "alpha": 2.0}),
    aten.convolution.default: ((r(1, 2, 5, 5), r(3, 2, 3, 3), r(3), [1, 1], [1, 1], [1, 1], False, [0, 0], 1), {}),
    aten.view.default: ((r(2, 6), [3, 4]), {}),
    aten.permute.default: ((r(2, 3, 4), [2, 0, 1]), {}),
    aten.expand.default: ((r(3, 1), [3, 4]), {}),
    aten.transpose.int: ((r(2, 3), 0, 1), {}),
    aten.unsqueeze.default: ((r(2, 3), 1), {}),
    aten.t.default: ((r(2, 3),), {}),
    aten.clone.default: ((r(2, 3).t(),), {"memory_format": torch.contiguous_format}),
}


class Dispatched(TorchDispatchMode):
    """Records every ATen overload a call reaches."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_every_binding_the_launcher_calls_has_a_sample():
    assert set(EXTERN_SAMPLES) == set(BINDINGS)


@pytest.mark.parametrize("overload", list(EXTERN_SAMPLES), ids=str)
def test_a_binding_reaches_exactly_its_overload(overload):
    args, kwargs = EXTERN_SAMPLES[overload]
    fn = entry_point(overload)
    assert fn is BINDINGS[overload]
    with Dispatched() as through_op:
        expected = overload(*args, **kwargs)
    with Dispatched() as through_binding:
        got = fn(*args, **kwargs)
    assert through_binding.ops == through_op.ops == [overload]
    assert got.stride() == expected.stride()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_other_overloads_are_called_through_their_cpp_object():
    assert entry_point(aten.slice.Tensor) is aten.slice.Tensor._op
    assert entry_point(abs) is abs


def test_the_launcher_calls_torchs_bindings_for_matmuls_and_views():
    fn = lambda x, w1, w2: (F.silu(x @ w1) @ w2).view(-1)
    compiled = fusec.compile(fn)
    x, w1, w2 = torch.randn(4, 8), torch.randn(8, 16), torch.randn(16, 8)
    torch.testing.assert_close(compiled(x, w1, w2), fn(x, w1, w2))
    bound = fusec.report_of(compiled).graphs[0].runtime._call.__globals__.values()
    assert any(b is torch.mm for b in bound) and any(b is torch.Tensor.view for b in bound)
    assert_ran(compiled)


def test_views_of_the_launchers_own_buffers_are_reinterpreted():
    """A chain of views torch would run on a buffer the launcher allocated is one `_reinterpret_tensor`
    call, its layout worked out once: the same sizes, strides and offset as the view ops give."""
    fn = lambda x: F.scaled_dot_product_attention(*(x * 2).view(1, 8, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0))
    compiled = fusec.compile(fn)
    x = torch.randn(8, 24)
    torch.testing.assert_close(compiled(x), fn(x))
    source = fusec.report_of(compiled).graphs[0].runtime.source
    # q, k and v: each chain (view, permute, slice, squeeze) one call from the kernel's buffer,
    # which is deleted once the last of them is written
    assert source.count(" = REINTERPRET(v_mul, (1, 2, 8, 4), (192, 4, 24, 1), ") == 3
    assert source.index("del v_mul") > source.rindex("REINTERPRET(")
    assert source.count(" = F") == 1  # only the attention goes through torch's ops
    assert_ran(compiled)


def test_a_view_of_an_input_runs_through_torch_as_eager_lays_it_out():
    """An input's layout is checked only where it addresses memory: its views are torch's own."""
    fn = lambda x: (x[:, 1:].t(), (x * 2)[1:])
    compiled = fusec.compile(fn)
    x = torch.randn(6, 4)[:, :3]
    for got, expected in zip(compiled(x), fn(x), strict=True):
        torch.testing.assert_close(got, expected)
        assert got.stride() == expected.stride()
    assert compiled(x)[0].data_ptr() == x.data_ptr() + 4  # eager's view of the input itself
    source = fusec.report_of(compiled).graphs[0].runtime.source
    assert "REINTERPRET(v_arg0_1" not in source
    assert_ran(compiled)


def test_seeds_come_from_torchs_generator_one_draw_per_call():
    from fusec.runtime import draw_seed

    torch.manual_seed(5)
    first = [draw_seed() for _ in range(4)]
    torch.manual_seed(5)
    assert [draw_seed() for _ in range(4)] == first  # torch.manual_seed makes them repeatable
    assert len(set(first)) == 4 and all(2**62 <= s < 2**63 for s in first)  # one 64-bit class
    torch.manual_seed(5)
    draw_seed()
    after_one = torch.rand(3)
    torch.manual_seed(5)
    torch.randint(0, 2**62, (), dtype=torch.int64)  # one 64-bit draw of the generator, as a seed is
    torch.testing.assert_close(torch.rand(3), after_one)


def test_seeds_are_drawn_into_a_buffer_per_thread():
    import threading

    from fusec.runtime import _SEED

    buffers = []
    worker = threading.Thread(target=lambda: buffers.append(_SEED.value))
    worker.start()
    worker.join()
    assert buffers[0] is not _SEED.value


def test_a_thread_whose_first_seed_is_drawn_in_inference_mode_draws_outside_it():
    """Its seed buffer is made outside inference mode: a later draw writes into it."""
    import threading

    import torch.nn.functional as F

    compiled = fusec.compile(lambda x: F.dropout(x, 0.5, True))
    errors = []

    def calls():
        try:
            with torch.inference_mode():
                compiled(torch.randn(64))
            compiled(torch.randn(64))
        except Exception as error:  # reported to the test's thread
            errors.append(error)

    worker = threading.Thread(target=calls)
    worker.start()
    worker.join()
    assert errors == []


def test_the_launcher_allocates_on_the_current_device_after_one_test():
    compiled = fusec.compile(lambda x: x * 2)
    compiled(torch.randn(4))
    runtime = fusec.report_of(compiled).graphs[0].runtime
    assert "    empty_strided = ALLOC_HERE if index == HERE() else ALLOC(v_arg0_1.device)\n" in runtime.source
    names = runtime._call.__globals__
    assert names["HERE"]() == -1 == torch.randn(1).get_device()
    assert names["ALLOC_HERE"] is allocator(torch.device("cpu"))


def test_a_reshape_that_would_copy_is_not_reinterpreted():
    from fusec.ir import Graph, Kind, Node, Ref
    from fusec.torch_calls import reinterpretation

    graph = Graph(name="views")
    graph.add(Node("x", "input", Kind.INPUT, (4, 6), "float32", strides=(1, 4)))  # laid out transposed
    graph.add(Node("flat", "reshape", Kind.VIEW, (24,), "float32", strides=(1,), args=(Ref("x"), [24]),
                   target="aten.reshape.default"))
    graph.add(Node("p", "permute", Kind.VIEW, (6, 4), "float32", strides=(4, 1), args=(Ref("x"), [1, 0]),
                   target="aten.permute.default"))
    graph.add(Node("s", "slice", Kind.VIEW, (6, 3), "float32", strides=(4, 1), args=(Ref("p"), 1, 1, 4),
                   target="aten.slice.Tensor"))
    assert reinterpretation(graph, graph["flat"]) is None  # torch copies it: no view of x's memory
    assert reinterpretation(graph, graph["p"]) == ((6, 4), (4, 1), 0)
    assert reinterpretation(graph, graph["s"]) == ((6, 3), (4, 1), 1)


