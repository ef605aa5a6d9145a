"""Launches per forward of a real model under eager, torch.compile and fusec, counted the same
way for every zoo (`bench/cnn_zoo.py`, `bench/transformer_zoo.py`), on any device, GPU or not.

- eager: the top-level ATen ops that do work, as torch.profiler sees them (`count_launches_cpu`);
- torch.compile: read from the code Inductor generates (`run_and_get_code`): each call in its
  wrapper's `call()` of a generated kernel (`cpp_fused_*` on a CPU, `triton_*` on a GPU), of a
  library kernel (`extern_kernels.*`) or of an ATen op (`torch.ops.*`), views excluded
  (`reinterpret_tensor` is not a call; an ATen view op is not counted);
- fusec: its planned kernels plus the extern calls that do work, from `fusec.inspect` (nothing runs).

Each compiler is counted twice: as is, and frozen (weights as constants: Inductor's
`torch._inductor.config.freezing`, fusec's `freeze=True`).

`fusec bench --zoo` prints both zoos' tables, `python bench/cnn_zoo.py` (or transformer_zoo.py) one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from fusec.bench.measure import count_launches_cpu

# One launch per line of Inductor's wrapper that calls a kernel (`triton_*.run(` on a GPU) or an op.
_WRAPPER_CALL = re.compile(
    r"^\s*(?:[\w, ]+=\s*)?(cpp_fused_\w+|triton_\w+(?:\.run)?|extern_kernels\.\w+|torch\.ops\.[\w.]+)\(", re.M)


@dataclass(frozen=True)
class ZooRow:
    """One model's launches per forward: eager's ATen ops, Inductor's, fusec's kernels and extern calls;
    Inductor's and fusec's again with the weights frozen."""

    model: str
    eager: int
    inductor: int
    fusec_kernels: int
    fusec_extern_calls: int
    inductor_frozen: int
    fusec_frozen: int

    @property
    def fusec(self) -> int:
        return self.fusec_kernels + self.fusec_extern_calls


def _is_view(name: str) -> bool:
    """`torch.ops.aten.view.default` and the like alias their input: no launch."""
    if not name.startswith("torch.ops."):
        return False
    op: Any = torch.ops
    for part in name.split(".")[2:]:
        op = getattr(op, part, None)
        if op is None:
            return False
    return bool(getattr(op, "is_view", False))


def wrapper_launches(code: str) -> int:
    """Kernel and op calls in one Inductor wrapper module's `call()` (views excluded)."""
    lines = code.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("def call(")]
    if not starts:
        return 0
    indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    body = []
    for line in lines[starts[0] + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break  # the next statement at the def's level ends `call()`
        body.append(line)
    return sum(not _is_view(m.group(1)) for m in _WRAPPER_CALL.finditer("\n".join(body)))


def inductor_launches(fn: Callable, *args: Any, freeze: bool = False) -> int:
    """torch.compile's launches for one call of `fn(*args)`, read from its generated code."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with config.patch(freezing=freeze):
        _, codes = run_and_get_code(torch.compile(fn), *args)
    return sum(wrapper_launches(code) for code in codes)


def fusec_launches(fn: Callable, *args: Any, freeze: bool = False) -> tuple[int, int]:
    """fusec's planned (kernels, extern calls that do work) for one call of `fn(*args)`."""
    import fusec

    torch._dynamo.reset()  # a function Dynamo saw before would be recompiled with dynamic sizes
    stats = fusec.inspect(fn, *args, options={"freeze": freeze}).stats
    return stats["kernels"], stats["extern_calls"]


def measure(name: str, fn: Callable, *args: Any) -> ZooRow:
    """The three systems' launches for one forward of `fn(*args)`, under `torch.no_grad()`."""
    with torch.no_grad():
        eager = round(count_launches_cpu(lambda: fn(*args), calls=1))
        kernels, externs = fusec_launches(fn, *args)
        fusec_frozen = sum(fusec_launches(fn, *args, freeze=True))
        inductor = inductor_launches(fn, *args)
        inductor_frozen = inductor_launches(fn, *args, freeze=True)
    torch._dynamo.reset()
    return ZooRow(name, eager, inductor, kernels, externs, inductor_frozen, fusec_frozen)


def markdown(rows: list[ZooRow]) -> str:
    lines = ["| model | eager ATen ops | torch.compile launches | fusec kernels + extern | fusec launches "
             "| torch.compile frozen | fusec frozen |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r.fusec <= r.inductor else " (more than torch.compile)"
        frozen_mark = "" if r.fusec_frozen <= r.inductor_frozen else " (more than torch.compile)"
        lines.append(f"| {r.model} | {r.eager} | {r.inductor} | {r.fusec_kernels} + {r.fusec_extern_calls} | "
                     f"{r.fusec}{mark} | {r.inductor_frozen} | {r.fusec_frozen}{frozen_mark} |")
    return "\n".join(lines)


def run(zoos: dict[str, ModuleType], path: Path | None = None) -> int:
    """Print the launch table of each zoo module (its `ZOO`, `example(name)` and `missing()`),
    and write them to `path` if given."""
    text = []
    for key, zoo in zoos.items():
        missing = zoo.missing()
        if missing:
            print(f"{key} zoo skipped: {missing}")
            continue
        table = markdown([measure(name, *zoo.example(name)) for name in zoo.ZOO])
        text.append(f"{key} zoo: launches per eval forward (models and inputs: {Path(zoo.__file__).name})"
                    f"\n\n{table}\n")
        print(text[-1])
    if path is not None:
        path.write_text("\n".join(text))
    return 0
