"""`fusec bench --ops`: which of PyTorch's elementwise ops fusec generates code for, and is each right.

The samples are PyTorch's own OpInfo database (`torch.testing._internal`, the
inputs PyTorch tests every operator with): every float32 unary and binary
elementwise op, its first samples on the CPU. Each sample is compiled alone and
run in Triton's interpreter against eager, and lands in one class:

- `kernel`: every op ran in generated kernels;
- `partly`: some in kernels, some through torch (an extern call);
- `torch`: nothing generated (fusec ran it through torch, as it says);
- `none`: nothing to compute (a float32 tensor's `.float()`: the input is the result);
- `wrong`: the compiled result differs from eager's (a bug);
- `error`: compiling or running raised where eager did not (a bug).
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

CLASSES = ("kernel", "partly", "torch", "none", "wrong", "error")
# Not elementwise math fusec is meant to cover: reference implementations of the same ops,
# CUDA-only jiterator ops, complex results, and conversions to other dtypes (casts are covered by `float`).
_SKIP_PREFIXES = ("_refs.", "jiterator_")
_SKIP = frozenset({"complex", "polar", "cfloat", "cdouble", "chalf", "angle", "conj", "real", "isreal",
                   "bfloat16", "half", "double", "bool", "byte", "char", "int", "long", "short", "frexp"})


@dataclass(frozen=True)
class OpResult:
    op: str  # the OpInfo name, with its variant (`div.floor_rounding`)
    cls: str  # one of CLASSES
    kernels: int
    extern_calls: int
    detail: str = ""  # what differed or what was raised


def op_name(info: Any) -> str:
    """An OpInfo's name with its variant, as `--op` takes it (`div.floor_rounding`)."""
    return info.name + (f".{info.variant_test_name}" if info.variant_test_name else "")


def elementwise_opinfos() -> list[Any]:
    """PyTorch's float32 elementwise OpInfos on the CPU (unary and binary ufuncs), by name."""
    try:
        from torch.testing._internal.common_methods_invocations import binary_ufuncs, unary_ufuncs
    except ImportError as exc:  # PyTorch's test helpers need `expecttest`
        raise RuntimeError(f"PyTorch's OpInfo database cannot be imported ({exc}): pip install expecttest") from exc
    chosen = {}
    for info in (*unary_ufuncs, *binary_ufuncs):
        name = op_name(info)
        if name.startswith(_SKIP_PREFIXES) or info.name in _SKIP:
            continue
        if torch.float32 in info.supported_dtypes("cpu"):
            chosen[name] = info
    return [chosen[n] for n in sorted(chosen)]


def samples(info: Any, per_op: int) -> Iterator[Any]:
    """The op's first `per_op` float32 CPU samples."""
    yield from itertools.islice(info.sample_inputs("cpu", torch.float32, requires_grad=False), per_op)


def check(info: Any, sample: Any) -> OpResult:
    """Compile one sample alone, run it against eager, and classify it."""
    import fusec

    name = op_name(info)
    tensors = [sample.input, *sample.args]
    positions = [i for i, v in enumerate(tensors) if isinstance(v, torch.Tensor)]

    def fn(*given: torch.Tensor) -> Any:
        values = list(tensors)
        for i, v in zip(positions, given, strict=True):
            values[i] = v
        return info.op(values[0], *values[1:], **sample.kwargs)

    inputs = [tensors[i] for i in positions]
    try:
        expected = fn(*inputs)
    except Exception:  # eager rejects the sample: nothing to compare
        return OpResult(name, "torch", 0, 0, "eager raises")
    torch._dynamo.reset()
    compiled = fusec.compile(fn, cpu="interpret", strict=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = compiled(*inputs)
        torch.testing.assert_close(got, expected, equal_nan=True, atol=1e-5, rtol=1e-4)
    except AssertionError as exc:
        return OpResult(name, "wrong", 0, 0, str(exc).splitlines()[0][:200])
    except Exception as exc:
        return OpResult(name, "error", 0, 0, f"{type(exc).__name__}: {exc}"[:200])
    stats = fusec.report_of(compiled).stats
    kernels, externs = stats["kernels"], stats["extern_calls"]
    cls = ("kernel" if not externs else "partly") if kernels else ("torch" if externs else "none")
    return OpResult(name, cls, kernels, externs)


def sweep(per_op: int = 1, only: list[str] | None = None) -> list[OpResult]:
    """One result per sample of every elementwise OpInfo (or those named in `only`)."""
    results = []
    # fusec says on its logger what runs through torch: here that is the measurement, not news.
    logger = logging.getLogger("fusec")
    level, logger.level = logger.level, logging.ERROR
    try:
        for info in elementwise_opinfos():
            if only and op_name(info) not in only:
                continue
            results += [check(info, sample) for sample in samples(info, per_op)]
    finally:
        logger.setLevel(level)
    return results


def per_op(results: list[OpResult]) -> dict[str, str]:
    """Each op's class: its worst sample's (wrong and error first, then torch, partly, kernel)."""
    rank = {c: i for i, c in enumerate(("wrong", "error", "torch", "partly", "none", "kernel"))}
    ops: dict[str, str] = {}
    for r in results:
        if r.op not in ops or rank[r.cls] < rank[ops[r.op]]:
            ops[r.op] = r.cls
    return ops


def markdown(results: list[OpResult], seconds: float) -> str:
    ops = per_op(results)
    counts = Counter(ops.values())
    samples = Counter(r.cls for r in results)
    lowered = samples["kernel"] + samples["none"]
    lines = [f"{len(ops)} elementwise ops ({len(results)} samples, {seconds:.0f} s): " +
             ", ".join(f"{counts[c]} {c}" for c in CLASSES),
             f"samples: {lowered} of {len(results)} lowered ({100 * lowered / max(len(results), 1):.1f}%: "
             f"{samples['kernel']} in kernels, {samples['none']} with nothing to compute)",
             "", "| class | ops |", "|---|---|"]
    for cls in CLASSES:
        names = sorted(op for op, c in ops.items() if c == cls)
        lines.append(f"| {cls} | {' '.join(f'`{n}`' for n in names) or '—'} |")
    bad = [r for r in results if r.cls in ("wrong", "error")]
    if bad:
        lines += ["", "| op | class | detail |", "|---|---|---|"]
        lines += [f"| `{r.op}` | {r.cls} | {r.detail.replace('|', '/')} |" for r in bad]
    return "\n".join(lines)


def run(per_sample: int, only: list[str] | None, path: Any) -> int:
    start = time.perf_counter()
    results = sweep(per_sample, only)
    table = markdown(results, time.perf_counter() - start)
    print(table)
    if path is not None:
        path.write_text(table + "\n")
    return 1 if any(r.cls in ("wrong", "error") for r in results) else 0
