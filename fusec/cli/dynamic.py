"""`fusec inspect --dynamic NAME[=SIZE]`: a named dimension of the --input shapes made symbolic.

`--input Bx128:float32 --dynamic B=8` builds an 8x128 tensor and marks its first
dim dynamic (torch._dynamo.mark_dynamic), so the report shows the graphs fusec
compiles once for every B, with shapes such as `s0x128`.
"""

from __future__ import annotations

import re

import torch

from fusec.cli.targets import UsageError

DEFAULT_SIZE = 8
_NAME = re.compile(r"[A-Za-wyzA-Z_][A-Za-wyz0-9_]*")  # no 'x': it joins the dims of a shape


def parse_dynamic(specs: list[str]) -> dict[str, int]:
    """NAME or NAME=SIZE -> {NAME: example size}."""
    sizes: dict[str, int] = {}
    for spec in specs:
        name, _, size = spec.partition("=")
        if not _NAME.fullmatch(name):
            raise UsageError(f"bad --dynamic {spec!r}: the name must be letters, digits and '_' without 'x' "
                             "(which joins dims), e.g. --dynamic B=8")
        if size and not (size.isascii() and size.isdigit() and int(size) >= 2):
            raise UsageError(f"bad --dynamic {spec!r}: the example size must be an integer of 2 or more "
                             "(torch specializes sizes 0 and 1), e.g. --dynamic B=8")
        sizes[name] = int(size) if size else DEFAULT_SIZE
    return sizes


def substitute(specs: list[str], sizes: dict[str, int]) -> tuple[list[str], list[list[int]]]:
    """The --input specs with named dims replaced by their sizes, and each input's symbolic dims
    (without --dynamic, the specs as given: their own check says what is wrong)."""
    if not sizes:
        return list(specs), [[] for _ in specs]
    concrete, marked = [], []
    for spec in specs:
        shape, colon, dtype = spec.partition(":")
        dims = shape.split("x")
        unknown = [d for d in dims if _NAME.fullmatch(d) and d not in sizes]
        if unknown:
            raise UsageError(f"bad --input {spec!r}: dimension {unknown[0]!r} is no number and no --dynamic name "
                             f"(add --dynamic {unknown[0]}=SIZE)")
        concrete.append("x".join(str(sizes.get(d, d)) for d in dims) + colon + dtype)
        marked.append([i for i, d in enumerate(dims) if d in sizes])
    unused = sorted(set(sizes) - {d for spec in specs for d in spec.partition(":")[0].split("x")})
    if unused:
        raise UsageError(f"--dynamic {unused[0]} names no dimension of any --input (e.g. --input {unused[0]}x128)")
    return concrete, marked


def mark(inputs: tuple, marked: list[list[int]]) -> None:
    for tensor, dims in zip(inputs, marked, strict=True):
        for d in dims:
            torch._dynamo.mark_dynamic(tensor, d)
