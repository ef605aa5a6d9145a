"""IR dtype names -> Triton types, and the dtype each value is computed in."""

from __future__ import annotations

import math

from fusec.ir import FLOAT_DTYPES

TL_TYPE = {
    "bool": "tl.int1", "uint8": "tl.uint8", "int8": "tl.int8", "int16": "tl.int16",
    "int32": "tl.int32", "int64": "tl.int64", "float16": "tl.float16",
    "bfloat16": "tl.bfloat16", "float32": "tl.float32", "float64": "tl.float64",
}

# The dtypes a scatter kernel adds to memory with `tl.atomic_add`, on a GPU and in Triton's interpreter
# alike (bfloat16 and the narrow integers have no atomic add in the interpreter: torch adds those).
ATOMIC_ADD_DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64"})

# Wider types win when operands meet (torch's promotion within a category).
_RANK = ["bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64"]


def compute_dtype(dtype: str) -> str:
    """Loads upcast: 16-bit floats compute in float32 (Triton's interpreter gets bfloat16 math wrong)."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def promote(dtypes: list[str]) -> str:
    return max((compute_dtype(d) for d in dtypes), key=_RANK.index)


def literal(value: object, dtype: str) -> str:
    """A Python scalar as Triton source in a context of `dtype`."""
    if isinstance(value, bool):
        value = int(value)
    if dtype in FLOAT_DTYPES or isinstance(value, float):
        value = float(value)
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else '-float("inf")'
        return repr(value)
    return repr(int(value))
