"""`fusec bench --static`: every workload's kernels compiled for an H100 (sm_90) on this
machine, with no GPU, and what the compiler made of them.

Each kernel is rendered for the GPU, compiled by Triton with the launch
configuration the runtime uses and the hints Triton's launch would pass
(16-byte aligned pointers, sizes divisible by 16), then assembled by ptxas:
registers, spills, shared memory, the widest global load and store in the
PTX (128 bits is a full vector), and for a reduction the passes over each
row and the bytes it moves against the minimum (each input read once, each
output written once). Beside each workload's kernels, TorchInductor's for the
same graph, compiled the same way (`inductor_static`), and both systems'
launches per call, so "as good as Inductor" is read from one table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusec.bench.inductor_static import inductor_stats
from fusec.bench.ptx import H100, ptxas_usage, widest
from fusec.bench.workloads import WORKLOADS
from fusec.compiler import rendered
from fusec.ir import Graph
from fusec.kernels.compile import load_kernel
from fusec.kernels.dtypes import compute_dtype
from fusec.kernels.kinds import split_launch, static_launch, static_size_args
from fusec.kernels.launch import Launch
from fusec.kernels.reduction_split import SPLIT_PARAM
from fusec.plan import Kernel, KernelKind, LaunchExtra

_POINTER = {"bool": "i1", "uint8": "u8", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
            "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
LOOP = "for r0 in range("  # a loop over a row, or over this program's chunk of a split row


@dataclass(frozen=True)
class KernelStats:
    workload: str
    kernel: str
    kind: str
    warps: int
    registers: int | None  # None: ptxas not found
    spills: int | None  # bytes stored to local memory
    shared: int  # bytes
    load_bits: int  # the widest global load
    store_bits: int
    passes: int | None  # over each row (reductions)
    bytes_vs_min: float | None  # bytes moved / (inputs once + outputs once), reductions
    narrowest_load: int = 0  # bits: a scalar 16-bit load here means a read that does not coalesce
    system: str = "fusec"  # or "inductor": TorchInductor's kernel for the same workload


def signature(graph: Graph, kernel: Kernel, fn: Any, constants: dict[str, Any],
              aligned: bool = True) -> tuple[dict, dict]:
    """Triton's signature of the kernel as the runtime calls it, and the divisibility hints
    (`aligned` False: for a call whose tensors are not all 16-byte aligned)."""
    types, hints = {}, {}
    plain = iter(_arguments(graph, kernel))
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            types[name] = "constexpr"
            continue
        types[name], divisible = next(plain)
        if divisible and (aligned or not types[name].startswith("*")):
            hints[(i,)] = [["tt.divisibility", 16]]
    return types, hints


def _arguments(graph: Graph, kernel: Kernel) -> list[tuple[str, bool]]:
    """(Triton type, divisible by 16) of each argument the launcher passes a static kernel: its
    buffers (allocations are 16-byte aligned), its launch extras, its host scalars, then its sizes."""
    args = [("*" + _POINTER[graph[n].dtype], True) for n in kernel.buffers if not graph[n].host]
    for extra in kernel.extras:
        if extra is LaunchExtra.SEED:
            args.append(("i64", False))  # a fresh value every call: never specialized on
        elif extra is LaunchExtra.BAD_INDEX:
            args.append(("*i32", True))
        else:  # one partial per final reduction, then the ticket
            args += [("*" + _POINTER[compute_dtype(graph[f].dtype)], True) for f in kernel.finals] + [("*i32", True)]
    # host scalars: values of the type the kernel computes with, never specialized on
    args += [(_POINTER[compute_dtype(graph[n].dtype)], False) for n in kernel.inputs if graph[n].host]
    if SPLIT_PARAM in kernel.params:
        args.append(("*fp32", True))  # the split row's partials, from the allocator
    return args + [("i32" if -(2**31) <= n < 2**31 else "i64", n % 16 == 0) for n in static_size_args(graph, kernel)]


def gpu_launches(graph: Graph, gpu: Kernel) -> list[Launch]:
    """The launches of a kernel rendered for the GPU: one, or a split row's two stages."""
    split = split_launch(graph, gpu, interpret=False)
    return [static_launch(graph, gpu, interpret=False)] if split is None else [split.first, split.second]


def compile_sm90(graph: Graph, kernel: Kernel, cache_dir: Path, stage: int = 0, aligned: bool = True,
                 tma: bool = True) -> Any:
    """The kernel compiled for sm_90 as a GPU launch would compile it (`stage`: which of its launches):
    for tensors all 16-byte aligned, or not (`aligned`: then a matmul reads its operands with
    pointers, as with `tma` False)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    gpu = rendered(graph, kernel, interpret=False)
    launch = gpu_launches(graph, gpu)[stage]
    fn = load_kernel(gpu.source, gpu.fn_name, interpret=False, cache_dir=cache_dir)
    constants = {n: v for n, v in launch.constants.items() if n in fn.arg_names}
    if "TMA" in constants:
        constants["TMA"] = constants["TMA"] and aligned and tma
    types, hints = signature(graph, gpu, fn, constants, aligned)
    source = ASTSource(fn, types, constants, attrs=hints)
    # The rest are compile options; a kernel asserting on the device is compiled with debug on, as its JIT asks.
    options = {n: v for n, v in launch.constants.items() if n not in constants}
    options |= {**launch.options(), "debug": bool(fn.debug)}
    return triton_compile(source, target=GPUTarget("cuda", *H100), options=options)


def row_traffic(graph: Graph, kernel: Kernel, source: str) -> tuple[int | None, float | None]:
    """Passes over each row and bytes moved against the minimum: every per-element input
    is read once per pass, everything else once."""
    if kernel.kind is not KernelKind.REDUCTION:
        return None, None
    passes = 1 if kernel.persistent else source.count(LOOP)
    elements = kernel.numel * kernel.rnumel
    moved = minimum = 0
    for name in kernel.inputs + kernel.outputs:
        node = graph[name]
        size = node.numel * torch.empty(0, dtype=getattr(torch, node.dtype)).element_size()
        reads = passes if name in kernel.inputs and node.numel == elements else 1
        moved, minimum = moved + reads * size, minimum + size
    return passes, round(moved / max(minimum, 1), 2)


def kernel_stats(workload: str, graph: Graph, kernel: Kernel, cache_dir: Path) -> list[KernelStats]:
    """A row per launch: one, or a split row's two stages (`k0/1`, `k0/2`; the passes and bytes
    of the whole kernel on the first)."""
    gpu = rendered(graph, kernel, interpret=False)
    stages = len(gpu_launches(graph, gpu))
    passes, ratio = row_traffic(graph, kernel, gpu.source)
    rows = []
    for stage in range(stages):
        binary = compile_sm90(graph, kernel, cache_dir, stage)
        ptx = binary.asm["ptx"]
        registers, spills = ptxas_usage(ptx)
        name = kernel.id if stages == 1 else f"{kernel.id}/{stage + 1}"
        rows.append(KernelStats(workload, name, kernel.kind, binary.metadata.num_warps, registers, spills,
                                binary.metadata.shared, widest(ptx, "ld"), widest(ptx, "st"),
                                *((passes, ratio) if stage == 0 else (None, None)), widest(ptx, "ld", min)))
    return rows


def static_report(names: list[str], dtype: torch.dtype, tier: str, cache_dir: Path,
                  sizes: dict[str, int] | None = None) -> list[KernelStats]:
    """Plan each workload at `tier`'s sizes (updated by `sizes`) on CPU tensors, then compile
    every kernel of its plan for sm_90."""
    return [row for name in names for row in workload_report(name, dtype, tier, cache_dir, sizes)[0]]


def workload_report(name: str, dtype: torch.dtype, tier: str, cache_dir: Path,
                    sizes: dict[str, int] | None = None) -> tuple[list[KernelStats], int]:
    """One workload's kernels compiled for sm_90, and its launches per call (kernels and
    extern calls that do work)."""
    import fusec

    workload = WORKLOADS[name]
    case = workload.build({**workload.sizes[tier], **(sizes or {})}, torch.device("cpu"), dtype)
    report = fusec.inspect(case.fn, *case.args, training=case.grad_outputs is not None)
    rows = [row for graph in report.graphs if graph.plan is not None for k in graph.plan.all_kernels()
            for row in kernel_stats(name, graph.plan.graph, k, cache_dir)]
    second_stages = sum(row.kernel.endswith("/2") for row in rows)  # a split row launches twice
    return rows, report.stats["kernels"] + report.stats["extern_calls"] + second_stages


def markdown(rows: list[KernelStats]) -> str:
    def show(value: object) -> str:
        return "-" if value is None else str(value)

    lines = ["| workload | system | kernel | kind | warps | registers | spill bytes | shared | widest load "
             "| widest store | narrowest load | passes | bytes / min |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r.workload} | {r.system} | {r.kernel} | {r.kind} | {r.warps} | {show(r.registers)} "
                     f"| {show(r.spills)} | {r.shared} | {r.load_bits} b | {r.store_bits} b | {r.narrowest_load} b "
                     f"| {show(r.passes)} | {show(r.bytes_vs_min)} |")
    return "\n".join(lines) + "\n"


def run(names: list[str], dtype: torch.dtype, quick: bool, markdown_path: Path | None) -> int:
    """`fusec bench --static`: the table on stdout (and in `markdown_path`)."""
    from fusec.options import Options

    tier = "quick" if quick else "full"  # the sizes a GPU run times
    print(f"fusec bench --static: kernels of {len(names)} workload(s) compiled for sm_90, {dtype}, {tier} sizes; "
          "nothing runs on a GPU", file=sys.stderr)
    rows, notes = [], []
    for name in names:
        ours, launches = workload_report(name, dtype, tier, Options.from_user().cache_dir)
        rows += ours
        try:
            found, their_launches = inductor_stats(name, dtype, tier, None)
        except RuntimeError as exc:
            notes.append(f"- {name}: launches per call: fusec {launches}; Inductor not compiled: {exc}")
            continue
        rows += [KernelStats(**row) for row in found]
        notes.append(f"- {name}: launches per call: fusec {launches}, Inductor {their_launches}")
    text = markdown(rows) + "\n" + "\n".join(notes) + "\n"
    print(text)
    if markdown_path:
        markdown_path.write_text(text)
    return 0
