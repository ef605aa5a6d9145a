"""`fusec bench --overhead`: the host time a call costs, for fusec, torch.compile and eager.

At batch 1 a GPU finishes a fused kernel in microseconds, so what bounds speed
is the CPU time between launches. Each inference workload runs at its tiny
size, many calls in a row, timed by the wall clock:
- on a CPU, fusec's launches are stubbed (the compiled kernel's binary is
  replaced by a no-op, so everything up to the launch is measured and the
  interpreter is not; kernels are launched as their GPU renders are, with no
  bounds flag) and the launcher generated again to call the binaries itself,
  as on a GPU: `call` is a whole call (Dynamo's guards, AOTAutograd's
  wrapper, the launcher), `launcher` the generated function alone, and
  `per kernel` the launcher's time over its kernels; the extern calls of both
  compilers (matmuls, attention, convolutions) are replayed, not computed
  (`replays.py`), so both calls are host cost; torch.compile's own C++ kernels
  and eager run for real on tiny tensors;
- on a GPU nothing is stubbed: launches are asynchronous, so the time of a
  long run of calls, synchronized once at the end, is the host's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch._C._dynamo import guards

import fusec
from fusec import native
from fusec.api import tensors_in
from fusec.bench.replays import inductor_externs_replayed, inductor_modules, recorded, replay_fusec_externs
from fusec.bench.workloads import WORKLOADS
from fusec.kernels.call import entry_of
from fusec.kernels.signature import extra_params
from fusec.options import Options
from fusec.plan import Kernel, LaunchExtra

# The best of many short runs: on a machine shared with other work, a short run is more likely to
# be one nothing interrupted than a long one is.
RUNS, CALLS = 20, 100


@dataclass(frozen=True)
class Overhead:
    workload: str
    kernels: int
    externs: int
    fusec_call_us: float
    launcher_us: float
    per_kernel_us: float | None
    torch_compile_call_us: float | None
    eager_call_us: float
    # What one input tensor costs each compiler's call, in ns (`per_input_ns`), and how many there are
    inputs: int = 0
    fusec_input_ns: float | None = None
    torch_compile_input_ns: float | None = None


class _NoLaunch:
    """Stands in for a compiled binary: a launch costs what Triton's C launcher spends on its
    pointers before the driver's launch: a `data_ptr()` call for each tensor (handed an int, the
    launcher takes it as the address). Where the tensors are among the arguments is read at the
    first launch, and again when a launch hands an int where that one had a tensor: a kernel's
    first launch goes through its call, which passes tensors; the launcher's straight launches
    after it pass the inputs' addresses."""

    function = packed_metadata = None

    def __init__(self) -> None:
        self.at: tuple[int, ...] | None = None  # where the tensors are among the arguments

    def run(self, *args: Any) -> None:
        # Nothing but the reads it stands for: its own bookkeeping would be charged to the launcher.
        try:
            for i in self.at:
                args[i].data_ptr()
        except (TypeError, AttributeError):  # no launch yet, or an int where a tensor was
            self.at = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
            for i in self.at:
                args[i].data_ptr()


class _Always(dict):
    """A kernel call's binary cache that finds `value` under every key."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self.value


class _Parameters:
    """Stands for a compiled kernel where only its parameter names are asked for."""

    def __init__(self, names: list[str]) -> None:
        self.arg_names = names


def _as_on_a_gpu(runtime: Any) -> None:
    """Launch `runtime`'s kernels as their GPU renders are launched: an index out of range fails
    a device-side assert there, so no bounds flag is allocated, passed or read back."""
    flag = extra_params((LaunchExtra.BAD_INDEX,), ())
    steps = []
    for step in runtime.plan.steps:
        if isinstance(step, Kernel) and LaunchExtra.BAD_INDEX in step.extras:
            step = replace(step, extras=tuple(e for e in step.extras if e is not LaunchExtra.BAD_INDEX))
            call = runtime.calls[step.id]
            call.fn = _Parameters([n for n in call.fn.arg_names if n not in flag])
        steps.append(step)
    runtime.plan = replace(runtime.plan, steps=steps)


def stub_launches(runtime: Any) -> None:
    """Make every kernel of `runtime` (a static graph's) launch through the GPU path into a no-op."""
    _as_on_a_gpu(runtime)
    for call in runtime.calls.values():
        entry = entry_of(_NoLaunch())
        call.interpret = False
        given = sum(n not in call.launch.constants for n in call.fn.arg_names) - len(call.sizes)
        call.tail = call.tail_for(given)
        call.binaries = _Always(entry)
        call.ready = _Always(entry)


@contextlib.contextmanager
def _stream_stub() -> Iterator[None]:
    """A CPU-only torch has no CUDA stream to ask for: the stubbed launch gets stream 0."""
    real = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    torch._C._cuda_getCurrentRawStream = lambda device: 0
    try:
        yield
    finally:
        if real is None:
            del torch._C._cuda_getCurrentRawStream
        else:
            torch._C._cuda_getCurrentRawStream = real


def per_call_us(step: Callable[[], Any], device: str, calls: int = CALLS) -> float:
    for _ in range(10):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def measure(name: str, device: str) -> Overhead | None:
    """None for a training workload (its backward is measured by the main bench)."""
    torch.manual_seed(0)
    case = WORKLOADS[name].case("tiny", torch.device(device), torch.float32)
    if case.grad_outputs is not None:
        return None
    args = case.args
    with torch.no_grad(), _one_thread():
        eager = per_call_us(lambda: case.fn(*args), device)
        torch_compile = _torch_compile_us(case.fn, args, device)
        call, launcher, runtimes = _fusec_us(case.fn, args, device)
    kernels = sum(len(r.plan.kernels) for r in runtimes)
    # A per-kernel figure where the launcher does nothing else: on a CPU, no extern call (replayed,
    # but still a call each) and no view torch makes.
    externs = sum(len(r.plan.externs) for r in runtimes)
    per_kernel = launcher / kernels if kernels and (device == "cuda" or not externs) else None
    tensors = tensors_in(args)
    ours, theirs = per_input_ns(tensors) if tensors else (None, None)
    return Overhead(name, kernels, externs, call, launcher, per_kernel, torch_compile, eager,
                    len(tensors), ours, theirs)


def per_input_ns(tensors: list[torch.Tensor]) -> tuple[float, float]:
    """What each input tensor costs a call, in ns, each compiler's checks written out straight as
    its generated code writes them, after Dynamo's guard, which both calls pass (`TensorGuards.check`,
    the C++ check of Dynamo's tensor guards: fusec compiles through Dynamo too): fusec's launcher
    checks its layout and reads its address (which the alignment flag and a straight launch
    share), in one call of its C++ head for all of them where that is built (`fusec/native.py`),
    else a line each; Inductor's output code checks its sizes and strides again (`assert_size_stride`)."""
    names = [f"a{i}" for i in range(len(tensors))]
    head = native.module()
    if head is not None:
        ours = "    GUARD.check(*tensors)\n    index, aligned, addresses = HEAD(SPEC, tensors)\n"
    else:
        ours = "    GUARD.check(*tensors)\n" + "".join(
            f"    if not {a}.is_contiguous(): raise ValueError\n    p{a} = {a}.data_ptr()\n" for a in names)
    theirs = "    GUARD.check(*tensors)\n" + "".join(
        f"    assert_size_stride({a}, {tuple(t.shape)}, {t.stride()}, 'input')\n" for a, t in zip(names, tensors))
    scope = {"GUARD": guards.TensorGuards(*tensors, dynamic_dims_sizes=[list(t.shape) for t in tensors],
                                          dynamic_dims_strides=[list(t.stride()) for t in tensors]),
             "assert_size_stride": guards.assert_size_stride,
             "HEAD": getattr(head, "head", None),
             "SPEC": native.spec([(a, t.is_contiguous() or None, True, "", i)
                                 for i, (a, t) in enumerate(zip(names, tensors, strict=True))])}
    unpack = f"    {', '.join(names)}, = tensors\n"
    exec(f"def ours(tensors):\n{unpack}{ours}\ndef theirs(tensors):\n{unpack}{theirs}", scope)
    return tuple(per_call_us(lambda f=scope[f]: f(tensors), "cpu") * 1e3 / len(tensors) for f in ("ours", "theirs"))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch's CPU ops and Inductor's C++ kernels (compiled within) on one thread: a team of
    OpenMP threads waiting for a core of a busy machine would add milliseconds to a call of a
    few microseconds' work, which is no host cost (on a GPU these kernels run on the device)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torch_compile_us(fn: Callable[..., Any], args: tuple, device: str) -> float | None:
    """A whole call of torch.compile's; on a CPU its extern calls replayed (`replays.py`)."""
    torch._dynamo.reset()
    compiled = torch.compile(fn)
    try:
        compiled(*args)
    except Exception:  # no C++ compiler for Inductor's CPU backend, say: the row still has fusec's
        return None
    if device != "cpu":
        return per_call_us(lambda: compiled(*args), device)
    # Every module loaded: Inductor hands back a cached module for code it generated before.
    with inductor_externs_replayed(inductor_modules()) as replays:
        with recorded(replays):
            compiled(*args)
        return per_call_us(lambda: compiled(*args), device)


def _fusec_us(fn: Callable[..., Any], args: tuple, device: str) -> tuple[float, float, list[Any]]:
    """A whole call of fusec's and its launchers alone; on a CPU its launches stubbed, its extern
    calls replayed, and its launchers generated again to call the binaries themselves, as on a GPU."""
    torch._dynamo.reset()
    options = Options.from_user(cpu="interpret")
    if options.native:  # measured with the C++ head a launcher has once it is built (`fusec/native.py`)
        native.wait(options.cache_dir)
    ours = fusec.compile(fn, cpu="interpret")
    ours(*args)
    runtimes = [g.runtime for g in fusec.report_of(ours).graphs if g.runtime is not None]
    with _stream_stub() if device == "cpu" else contextlib.nullcontext():
        if device == "cpu":
            for runtime in runtimes:
                stub_launches(runtime)
            with recorded(replay_fusec_externs(runtimes)):  # launch_directly too
                ours(*args)
        call = per_call_us(lambda: ours(*args), device)
        inputs = _inputs_of(runtimes, lambda: ours(*args))
        launchers = [r._built() for r in runtimes]
        launcher = sum(per_call_us(lambda f=f, i=i: f(list(i)), device) for f, i in zip(launchers, inputs))
    return call, launcher, runtimes


def markdown(rows: list[Overhead], device: str) -> str:
    """The overhead table, with how it was measured."""
    head = ("| workload | kernels | extern calls | fusec call µs | launcher µs | per kernel µs "
            "| torch.compile call µs | eager call µs | per input ns: fusec / torch.compile |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, digits=1: "—" if v is None else f"{v:.{digits}f}"
    for r in rows:
        lines.append(f"| {r.workload} | {r.kernels} | {r.externs} | {fmt(r.fusec_call_us)} | {fmt(r.launcher_us)} "
                     f"| {fmt(r.per_kernel_us)} | {fmt(r.torch_compile_call_us)} | {fmt(r.eager_call_us)} "
                     f"| {fmt(r.fusec_input_ns, 0)} / {fmt(r.torch_compile_input_ns, 0)} ({r.inputs}) |")
    how = ("fusec's launches stubbed (no-op binaries); both compilers' extern calls replayed; torch.compile's "
           "own kernels and eager run tiny tensors for real" if device == "cpu" else
           "real launches, host time of a run of calls synchronized once")
    title = f"host cost per call on {device} ({how}); best of {RUNS} runs of {CALLS} calls"
    return "\n".join([title, "", *lines]) + "\n"


def _inputs_of(runtimes: list[Any], call: Callable[[], Any]) -> list[list[Any]]:
    """What each compiled graph receives during `call()`: the call's tensors and what Dynamo
    lifted (parameters). Each runtime's launcher is built first, then wrapped for one call."""
    seen: dict[int, list[Any]] = {}
    launchers = {}
    for runtime in runtimes:
        launchers[id(runtime)] = launcher = runtime._built()

        def recording(inputs: list[Any], runtime: Any = runtime, launcher: Callable = launcher) -> Any:
            seen[id(runtime)] = list(inputs)
            return launcher(inputs)
        runtime._call = recording
    try:
        call()
    finally:
        for runtime in runtimes:
            runtime._call = launchers[id(runtime)]
    return [seen[id(r)] for r in runtimes]
