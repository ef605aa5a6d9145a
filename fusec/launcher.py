"""The launcher: a Python function generated from a Plan that runs one call of the graph.

Like TorchInductor's output code, every decision that does not depend on the
call's values is taken once, when the source is written: which buffer each
step reads, each output's shape, strides and dtype, each kernel's grid, sizes
and constants (written out in its launch), which stream each step runs on
and which events it waits for, and when a buffer is dead. What is left per
call is straight-line code: a head that reads the device and each input's
address once (`direct_launch.py`), a stride check per input, an allocation per
output, a launch per kernel, a torch call per extern op (a chain of views of a
buffer it allocated: one reinterpretation of that buffer). On a GPU a launch is
a call of the kernel's compiled binary itself (no Python frame of fusec's in
between), once a call through the kernel's own call has bound it. The source is
readable (`Runtime.source`, `fusec inspect --launcher`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fusec import sizes
from fusec.direct_launch import bind_line, callee, head, ident, straight
from fusec.ir import Graph, Kind, Ref, iter_refs
from fusec.kernels.scatter import owns_base
from fusec.launcher_code import Source, StepCode, literal
from fusec.passes.memory import StepBuffers, live_bytes_peak, plan_reuse
from fusec.plan import Extern, Kernel, KernelKind, LaunchExtra, Plan, Step
from fusec.pointers import (
    NOT_STATIC,
    StrideMismatch,
    allocator,
    expected_strides,
    fresh_buffers,
    inputs_taken,
    native_check,
    stride_check,
)
from fusec.size_reads import symbol_sources, var
from fusec.stores import in_place, stores
from fusec.torch_calls import REINTERPRET, entry_point, exact_layouts, folded_views

DTYPES = {name: getattr(torch, name) for name in
          ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")}


def generate(plan: Plan, code: StepCode, streams: bool, inputs: list[str] | None = None,
             result: Any = None) -> tuple[str, dict[str, Any]]:
    """The source of `def call(inputs)` for `plan` and the globals it needs: it takes the graph's
    inputs (or `inputs`, node names) and returns the graph's outputs (or `result`, node names)."""
    graph = plan.graph
    src = Source(names={"ALLOC": allocator, "StrideMismatch": StrideMismatch,
                        "torch": torch, **{f"D_{k}": v for k, v in DTYPES.items()}, **code.stream_ops})
    inputs = [n.name for n in graph.inputs] if inputs is None else inputs
    src.emit("def call(inputs):", 0)
    if inputs:
        src.emit(f"{', '.join(var(n) for n in inputs)}, = inputs")
    at_start = len(src.lines)  # where the per-call head goes, once the steps say what it must read
    for symbol, read in symbol_sources(graph, inputs).items():
        src.emit(f"{sizes.KERNEL_PREFIX}{symbol} = {read}")
    # Stores into the graph's inputs belong to the whole graph's launcher, not to one run for
    # `result` (a matmul's library alternative, timed on inputs of its own).
    into_inputs = stores(graph) if result is None else ()
    direct = written_into_inputs(plan) if result is None else {}
    code = _decided(plan, code, streams, inputs, direct)
    first = next((n for n in inputs if graph[n].dtype in DTYPES and not graph[n].host and not _token(graph, n)), None)
    at_head, head_checked = (_checked_at_head(plan, code, inputs, first) if code.native is not None and first
                             is not None else ([], set()))
    src.head_slots = {name: i for i, name in enumerate(e[0] for e in at_head if e[2])} if at_head else None
    checked = _checked_before_stores(src, plan, code, inputs, head_checked)
    src.views, src.needed, src.last_view = folded_views(plan, exact_layouts(graph, list(code.fresh)))
    returned = graph.output.args if result is None else tuple(Ref(n) for n in result)
    # A value stored into two inputs is written in place into one at most: the other is copied.
    copied = [(value, dst) for value, dst in into_inputs if code.in_place.get(value) != dst]
    src.read = _read(plan, returned, [value for value, _ in copied])
    _steps(src, plan, code, streams, checked, written={dst for _, dst in into_inputs})
    for value, dst in copied:
        src.emit(f"{var(dst)}.copy_({var(value)})  # the new value of input {dst}")
    src.lines += bind_line(src)
    src.emit(f"return {literal(src, returned)}")
    src.lines[at_start:at_start] = head(src, code, first, at_head)
    return "\n".join(src.lines) + "\n", src.names


def _read(plan: Plan, returned: Any, copied: list[str]) -> set[str]:
    """The values some step reads (a library alternative's too), the call returns, or a store copies."""
    steps = [*plan.steps, *(part for k in plan.kernels for part in k.library)]
    return {*(n for step in steps for n in plan.reads(step)), *(r.name for r in iter_refs(returned)),
            *copied}


def _decided(plan: Plan, code: StepCode, streams: bool, inputs: list[str], direct: dict[str, str]) -> StepCode:
    """`code` with what the plan decides: which new values are written into inputs (`direct`),
    which buffers take over dead ones (on several streams, ones their events order), which the launcher allocates, which
    inputs the alignment flag vouches for, and whether binaries may be launched straight."""
    # A kernel's output may take over a dead buffer of the same layout (one written into an input has one).
    reuse = plan_reuse(step_buffers(plan, code.library, streams, frozenset(direct)),
                       frozenset(plan.graph.output.operands()))
    run = _run(plan, code)
    static = [k for k in run if k.id not in code.extents]  # a library alternative not chosen takes nothing
    scalars = frozenset(n for k in run for n in k.inputs if plan.graph[n].host)
    return replace(code, reuse=reuse, in_place=direct, fresh=fresh_buffers(run, direct, reuse), scalars=scalars,
                   vouched=inputs_taken(static, direct, [n for n in inputs if n not in scalars]),
                   direct=code.direct and not streams)


def _checked_at_head(plan: Plan, code: StepCode, inputs: list[str],
                     first: str) -> tuple[list[tuple[str, Any, bool, str, int]], set[str]]:
    """The C++ head's entries (`native.spec`): the first tensor input (the call's device), then
    every input a kernel takes whose layout it can check, or whose address the flag `aligned`
    covers, in the call's order; and the inputs whose layout needs no other check."""
    graph = plan.graph
    taken = {n for k in _run(plan, code) for n in k.inputs} | set(code.in_place.values())
    entries, checked = [], set()
    position = {name: i for i, name in enumerate(inputs)}
    for name in dict.fromkeys([first, *inputs]):
        check = native_check(graph[name]) if name in taken and not graph[name].host else None
        if check is NOT_STATIC:  # a symbolic stride: Python lines check it where a kernel first reads it
            check = None
        elif name in taken:
            checked.add(name)
        if name == first or check is not None or name in code.vouched:
            shown = expected_strides(graph[name]) if check is not None else ""
            entries.append((name, check, name in code.vouched, shown, position[name]))
    return entries, checked


def _token(graph: Graph, name: str) -> bool:
    """Whether input `name` is an effect token AOTAutograd threads through `with_effects` calls: an
    empty tensor when traced, None when called, so never the tensor a call's device is read from."""
    users = graph.users(name)
    return bool(users) and all(graph[u].target == WITH_EFFECTS and graph[u].args[0] == Ref(name) for u in users)


WITH_EFFECTS = "torch.ops.higher_order.with_effects"


def _run(plan: Plan, code: StepCode) -> list[Kernel]:
    """The kernels a call launches: each matmul's template, or its library alternative's epilogue."""
    return [p for k in plan.kernels for p in (k.library if k.id in code.library else (k,)) if isinstance(p, Kernel)]


def _checked_before_stores(src: Source, plan: Plan, code: StepCode, inputs: list[str], at_head: set[str]) -> set[str]:
    """Where kernels write into inputs, every input's strides checked first: a call that must run
    through torch instead finds its inputs as they came. The inputs checked (`at_head`: by the
    C++ head, before any of it)."""
    checked = set(at_head)
    if code.in_place:
        for name in dict.fromkeys([*(i for k in _run(plan, code) for i in k.inputs), *code.in_place.values()]):
            if name in inputs and name not in checked:
                _stride_check(src, plan.graph, name, 1)
                checked.add(name)
    return checked


def _steps(src: Source, plan: Plan, code: StepCode, streams: bool, checked: set[str], written: set[str]) -> None:
    """Each step in order: on its stream after the events it waits for, then the buffers it was
    the last reader of deleted (inputs written into stay named until their store)."""
    graph = plan.graph
    produced_by_kernel = {o for k in plan.kernels for o in _outputs(k, code.library)}
    n_streams = 1 + max((s.stream for s in plan.steps), default=0)
    recorded = {w for s in plan.steps for w in s.waits}  # steps some other step waits for
    if streams:
        _stream_prologue(src, n_streams)
    handed_on = set(code.reuse.values())
    later: dict[int, list[str]] = {}
    for i, (step, dead) in enumerate(zip(plan.steps, plan.frees or [()] * len(plan.steps), strict=True)):
        indent = 1
        if streams:
            for producer in step.waits:
                src.emit(f"S{step.stream}.wait_event(E_{ident(producer)})")
            if step.stream:
                src.emit(f"with stream_context(S{step.stream}):")
                indent = 2
        if code.step_hook is not None:
            src.emit(f"{src.bind(code.step_hook, 'HOOK')}({step.id!r})", indent)
        _step(src, graph, step, code, checked, produced_by_kernel, indent)
        if streams and step.id in recorded:
            src.emit(f"E_{ident(step.id)} = S{step.stream}.record_event()")
        if streams:  # nothing is freed before the call ends: the allocator would hand a block back
            continue  # to its own stream while another may still read it (passes/memory.py)
        dead = [d for d in dead if d not in handed_on and d not in written and d not in src.unnamed
                and (d not in src.views or d in src.needed)]  # a view never written has no name
        for d in [d for d in dead if src.last_view.get(d, i) > i]:  # views of it are written later
            dead.remove(d)
            later.setdefault(src.last_view[d], []).append(d)
        dead += later.pop(i, [])
        if dead:
            src.emit(f"del {', '.join(var(d) for d in dead)}")
    if streams:
        _stream_epilogue(src, plan, n_streams)


def written_into_inputs(plan: Plan) -> dict[str, str]:
    """{new value: the input its kernel writes it into}: decided on the plan (`stores.in_place`), and
    where a kernel was rendered to store through an input's pointer, there, whatever was decided."""
    return {**in_place(plan), **{out: dst for k in plan.kernels for out, dst in k.into}}


def step_buffers(plan: Plan, library: frozenset[str], streams: bool = False,
                 into: frozenset[str] = frozenset()) -> list[StepBuffers]:
    """What each step allocates and reads, for the memory plan: a kernel's buffers may be pooled;
    a torch call's (or a matmul run as torch's matmul and an epilogue) never are; a value written
    into an input (`into`) allocates nothing. `streams`: on the plan's streams, each step with the
    steps whose events it waits for; else all on one."""
    graph, out = plan.graph, []
    at = {step.id: i for i, step in enumerate(plan.steps)}
    for step in plan.steps:
        order = {"stream": step.stream, "waits": tuple(at[w] for w in step.waits)} if streams else {}
        if isinstance(step, Kernel) and step.id not in library:
            writes = tuple((o, (graph[o].shape, graph[o].strides, graph[o].dtype)) for o in step.outputs
                           if o not in into)
            # a scatter's buffer is its base's: neither is handed on while the other lives
            pooled = step.numel > 0 and step.kind is not KernelKind.SCATTER
            out.append(StepBuffers(writes, tuple(step.inputs), pooled=pooled, **order))
        elif isinstance(step, Kernel):
            writes = tuple((o, None) for o in _outputs(step, library))
            out.append(StepBuffers(writes, tuple(step.inputs), pooled=False, **order))
        else:
            out.append(StepBuffers(((step.node, None),), tuple(plan.reads(step)), pooled=False, **order))
    return out


def planned_peak(plan: Plan, streams: bool = False) -> int:
    """Modeled peak bytes of the buffers the launcher allocates (graph inputs excluded, and so
    are the new values written into them), with the memory plan's take-overs, on one stream or
    (`streams`) on the plan's: what `stats["peak_bytes"]` reports."""
    into = frozenset(written_into_inputs(plan))  # a kernel's new value written straight into its input
    steps = step_buffers(plan, frozenset(), streams, into)
    keep = frozenset(plan.graph.output.operands())
    # A view torch runs shares its operand's memory; a kernel writes a buffer of its own.
    views = [s.node for s in plan.externs if plan.graph[s.node].kind is Kind.VIEW]
    aliases = set(views)
    sizes = {name: 0 if name in aliases else plan.graph[name].nbytes for step in steps for name, _ in step.writes}
    reuse = plan_reuse(steps, keep)
    steps, keep = _through_views(plan.graph, views, steps, keep)
    return live_bytes_peak(steps, sizes, reuse, keep)


def unfused_peak(graph: Graph) -> int:
    """The same for eager: every op's result a tensor of its own, freed after its last reader
    (views share their operand's memory)."""
    steps, sizes = [], {}
    for node in graph.op_nodes():
        steps.append(StepBuffers(((node.name, None),), tuple(node.operands()), pooled=False))
        sizes[node.name] = 0 if node.kind is Kind.VIEW else node.nbytes
    views = [node.name for node in graph.op_nodes() if node.kind is Kind.VIEW]
    steps, keep = _through_views(graph, views, steps, frozenset(graph.output.operands()))
    return live_bytes_peak(steps, sizes, {}, keep)


def _through_views(graph: Graph, views: list[str], steps: list[StepBuffers],
                   keep: frozenset[str]) -> tuple[list[StepBuffers], frozenset[str]]:
    """`steps` and `keep` for a peak: a step reading a view (`views`, in graph order) reads the
    buffer whose memory the view shares, and an output that is a view keeps that buffer, so
    the buffer lives as long as its views."""
    roots: dict[str, str] = {}
    for name in views:
        operands = graph[name].operands()
        if operands:
            roots[name] = roots.get(operands[0], operands[0])
    steps = [replace(s, reads=tuple(dict.fromkeys([*s.reads, *(roots[r] for r in s.reads if r in roots)])))
             for s in steps]
    return steps, keep | {roots[name] for name in keep if name in roots}


def _outputs(kernel: Kernel, library: frozenset[str]) -> list[str]:
    """The buffers a kernel step writes: its own, or its library alternative's when it runs as one."""
    if kernel.id in library:
        return [o for s in kernel.library for o in (s.outputs if isinstance(s, Kernel) else (s.node,))]
    return list(kernel.outputs)


def _stream_prologue(src: Source, n_streams: int) -> None:
    """Stream 0 is the caller's; side streams first wait for it."""
    src.emit("S0 = current_stream()")
    for i in range(1, n_streams):
        src.emit(f"S{i} = SIDE[{i - 1}]")
        src.emit(f"S{i}.wait_stream(S0)")


def _stream_epilogue(src: Source, plan: Plan, n_streams: int) -> None:
    """The caller's stream waits for every side stream; outputs are marked as used on it."""
    for i in range(1, n_streams):
        src.emit(f"S0.wait_stream(S{i})")
    for ref in dict.fromkeys(r.name for r in iter_refs(plan.graph.output.args)):
        src.emit(f"record_stream({var(ref)}, S0)")


def _step(src: Source, graph: Graph, step: Step, code: StepCode, checked: set[str],
          produced_by_kernel: set[str], indent: int) -> None:
    if isinstance(step, Extern):
        _extern(src, graph, step, code, indent)
    elif step.id in code.library:
        src.emit(f"# {step.id}: torch's matmul and an epilogue kernel", indent)
        for part in step.library:
            _step(src, graph, part, code, checked, produced_by_kernel, indent)
    else:
        _kernel(src, graph, step, code, checked, produced_by_kernel, indent)
    if code.counts is not None and step.id in code.counted:
        src.emit(f"{src.bind(code.counts, 'RAN')}[{code.counted[step.id]}] += 1", indent)


def _extern(src: Source, graph: Graph, step: Extern, code: StepCode, indent: int) -> None:
    node = graph[step.node]
    if node.op == "getitem" or node.target == "_operator.getitem":
        src.emit(f"{var(node.name)} = {var(node.args[0].name)}[{node.args[1]!r}]", indent)
        return
    view = src.views.get(node.name)
    if view is not None:  # written where read, straight from its root; else not at all
        if node.name in src.needed:
            src.names["REINTERPRET"] = REINTERPRET
            src.emit(f"{var(node.name)} = REINTERPRET({var(view.root)}, {view.size}, {view.stride}, {view.offset})  "
                     f"# {node.target}", indent)
        return
    fn = src.bind(entry_point(code.callables[node.target]), "F")
    args, kwargs = node.torch_call if node.torch_call is not None else (node.args, node.kwargs)
    parts = [literal(src, a) for a in args]
    parts += [f"{k}={literal(src, v)}" for k, v in dict(kwargs).items()]
    src.emit(f"{var(node.name)} = {fn}({', '.join(parts)})  # {node.target}", indent)


def _kernel(src: Source, graph: Graph, kernel: Kernel, code: StepCode, checked: set[str],
            produced_by_kernel: set[str], indent: int) -> None:
    emit = lambda line: src.emit(line, indent)
    emit(f"# {kernel.id} ({kernel.kind}): {' '.join(graph[m].op for m in kernel.members)}")
    for name in kernel.inputs:
        if name not in checked and name not in produced_by_kernel:
            _stride_check(src, graph, name, indent)
            checked.add(name)
    args = [var(n) for n in kernel.inputs if not graph[n].host] + _outputs_made(src, graph, kernel, code, indent)
    if kernel.numel == 0:
        return
    flag = LaunchExtra.BAD_INDEX in kernel.extras
    src.wants_device |= flag or LaunchExtra.PARTIALS in kernel.extras
    if flag:
        emit("flag = torch.zeros(1, dtype=D_int32, device=device)")
        args.append("flag")
    if LaunchExtra.SEED in kernel.extras:
        args.append(f"{src.bind(code.draw_seed, 'SEED')}()")
    exact = code.extents.get(kernel.id)
    if LaunchExtra.PARTIALS in kernel.extras:
        at = f", {sizes.tuple_source(exact)}" if exact else ""
        args.append(f"*{src.bind(code.final_buffers, 'FINALS')}({src.bind(kernel, 'KERNEL')}, device{at})")
    args += [f"{var(n)}.item()" for n in kernel.inputs if graph[n].host]  # host scalars, after the extras
    if exact:  # a kernel of a dynamic graph: its symbols, then the extents its launch is chosen from
        args += list(kernel.symbols)
        args += [sizes.source(e, python=True) for e in exact]
    called, tests = callee(src, kernel, code)
    if code.direct and tests is not None and not flag and straight(src, kernel, code, args, tests, indent):
        emit("else:")
        src.emit(f"{called}({', '.join(args)})", indent + 1)
    else:
        emit(f"{called}({', '.join(args)})")
    if flag:
        emit(f"{src.bind(code.bounds_error, 'BOUNDS')}({src.bind(kernel, 'KERNEL')}, flag)")


def _outputs_made(src: Source, graph: Graph, kernel: Kernel, code: StepCode, indent: int) -> list[str]:
    """Each output's buffer made ready (allocated, taken over, or the input it is written into):
    the launch's arguments for them."""
    emit = lambda line: src.emit(line, indent)
    unnamed = [name for name in kernel.outputs if name in code.in_place and name not in src.read]
    if unnamed:  # passed as the inputs they are written into
        emit(f"# written into inputs: {', '.join(f'{n} -> {code.in_place[n]}' for n in unnamed)}")
        src.unnamed.update(unnamed)
    args = []
    through_input = {out for out, _ in kernel.into}  # stored through an input's pointer, passed once
    for name in kernel.outputs:
        node = graph[name]
        if name in src.unnamed:
            if name not in through_input:
                args.append(var(code.in_place[name]))
            continue
        if name in code.in_place:
            emit(f"{var(name)} = {var(code.in_place[name])}  # written into input {code.in_place[name]}")
        elif name in code.reuse:
            emit(f"{var(name)} = {var(code.reuse[name])}; del {var(code.reuse[name])}  # takes over its buffer")
        elif node.kind is Kind.SCATTER and owns_base(graph, name):
            emit(f"{var(name)} = {var(node.args[0].name)}  # stores into its base's buffer")
        else:
            layout = f"{sizes.tuple_source(node.shape)}, {sizes.tuple_source(node.strides)}"
            emit(f"{var(name)} = empty_strided({layout}, D_{node.dtype})")
            if node.kind is Kind.SCATTER:
                emit(f"{var(name)}.copy_({var(node.args[0].name)})  # its base, another step reads too")
        if name not in through_input:
            args.append(var(name))
    return args


def _stride_check(src: Source, graph: Graph, name: str, indent: int) -> None:
    for line, deeper in stride_check(graph[name], var(name)):
        src.emit(line, indent + deeper)


def dynamic(kernel: Kernel, exact: tuple) -> bool:
    """Whether a kernel with these extents is launched at sizes chosen per call (`kinds.is_dynamic`)."""
    return not sizes.all_static(exact) or bool(kernel.symbols)
