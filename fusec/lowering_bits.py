"""Integer bit ops' lowering: and/or/xor/not on integers (logical ops on bools) and shifts.

Python integer operands are wrapped into the tensor's type as eager reads them; shifts carry
their type's width, past which eager's answer is defined (kernels/ops.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fusec.ir import Ref

aten = torch.ops.aten

Lowered = tuple[str, tuple[Any, ...]] | None
Handler = Callable[[tuple, dict, Any], Lowered]


def _wrapped(args: tuple, dtype: torch.dtype) -> tuple:
    """Python integers as eager reads them beside an integer tensor: wrapped into its type."""
    info = torch.iinfo(dtype)
    return tuple(a if isinstance(a, Ref) else (a - info.min) % (1 << info.bits) + info.min for a in args)


def _bitwise(logical_op: str, bit_op: str) -> Handler:
    """The logical op on bools, the bit op on integers (floats have no bits to combine)."""
    def handler(args: tuple, kwargs: dict, val: Any) -> Lowered:
        if val.dtype == torch.bool:
            return (logical_op, tuple(args))
        return None if val.dtype.is_floating_point or kwargs else (bit_op, _wrapped(args, val.dtype))
    return handler


def _shift(op: str) -> Handler:
    """A shift in the result's integer type; eager's answer for shifts past its width goes with it."""
    def handler(args: tuple, kwargs: dict, val: Any) -> Lowered:
        if val.dtype.is_floating_point or val.dtype == torch.bool or kwargs:
            return None
        return (op, (*_wrapped(args, val.dtype), torch.iinfo(val.dtype).bits))
    return handler


BIT_OPS: dict[Any, Handler] = {
    aten.bitwise_and: _bitwise("logical_and", "bit_and"), aten.bitwise_or: _bitwise("logical_or", "bit_or"),
    aten.bitwise_xor: _bitwise("logical_xor", "bit_xor"), aten.bitwise_not: _bitwise("logical_not", "bit_not"),
    aten.bitwise_left_shift: _shift("shift_left"), aten.__lshift__: _shift("shift_left"),
    aten.bitwise_right_shift: _shift("shift_right"), aten.__rshift__: _shift("shift_right"),
}
