"""`_foreach_*` ops (lists in, lists out) as one ATen op per tensor.

An optimizer's foreach path (`torch.optim.AdamW(..., foreach=True)`) runs each
step of its update as one `_foreach_*` op over a whole parameter list; torch
launches every such op on its own. Decomposed into per-tensor ops, the update
of each parameter becomes one fusable chain, and the horizontal pass launches
the chains of the list together. TorchInductor does the same:
`register_foreach_pointwise` lowers each element with the pointwise op's own
lowering, and its scheduler combines the results into combo kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten

# _foreach_X -> the per-tensor op X (all of its list, scalar, scalar-list and tensor forms)
_POINTWISE = {
    "add": aten.add, "sub": aten.sub, "mul": aten.mul, "div": aten.div, "pow": aten.pow,
    "lerp": aten.lerp, "maximum": aten.maximum, "minimum": aten.minimum,
    "clamp_min": aten.clamp_min, "clamp_max": aten.clamp_max,
    "abs": aten.abs, "neg": aten.neg, "sqrt": aten.sqrt, "rsqrt": aten.rsqrt, "exp": aten.exp,
    "expm1": aten.expm1, "log": aten.log, "log1p": aten.log1p, "log2": aten.log2,
    "reciprocal": aten.reciprocal, "sign": aten.sign, "sigmoid": aten.sigmoid, "tanh": aten.tanh,
    "erf": aten.erf, "sin": aten.sin, "cos": aten.cos, "floor": aten.floor, "ceil": aten.ceil,
    "trunc": aten.trunc, "round": aten.round,
}


def _addc(op: Any) -> Callable:
    # The foreach form takes the scale positionally; the per-tensor op only as `value=`.
    def per_tensor(self: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, value: Any = 1) -> torch.Tensor:
        return op(self, t1, t2, value=value)
    return per_tensor


def _bound(op: Any) -> Callable:
    # maximum/minimum take tensors only; with a scalar they are a clamp.
    def per_tensor(self: torch.Tensor, other: Any) -> torch.Tensor:
        return op(self, other)
    return per_tensor


def _nth(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, list | tuple) else value


def _elementwise(op: Callable) -> Callable:
    """The foreach form of `op`: lists are taken element by element, anything else is shared."""
    def decomposition(*args: Any, **kwargs: Any) -> list[torch.Tensor]:
        count = len(next(a for a in args if isinstance(a, list | tuple)))
        return [op(*(_nth(a, i) for a in args), **{k: _nth(v, i) for k, v in kwargs.items()})
                for i in range(count)]
    return decomposition


def _per_tensor_op(name: str, overload: str) -> Callable | None:
    """The per-tensor op for `_foreach_<name>.<overload>`, or None where torch keeps it."""
    scalar = overload in ("Scalar", "ScalarList")
    if name in ("addcmul", "addcdiv"):
        # The `.Tensor` form's scales are a tensor of values: a host read per element.
        return None if overload == "Tensor" else _addc(getattr(aten, name))
    if name in ("maximum", "minimum") and scalar:
        return _bound(aten.clamp_min if name == "maximum" else aten.clamp_max)
    return _POINTWISE.get(name)


def foreach_decompositions() -> dict:
    """Every functional `_foreach_*` overload fusec splits, mapped to its per-tensor decomposition."""
    table = {}
    for name in (*_POINTWISE, "addcmul", "addcdiv"):
        packet = getattr(aten, f"_foreach_{name}")
        for overload in packet.overloads():
            if overload.endswith("out"):
                continue
            op = _per_tensor_op(name, overload)
            if op is not None:
                table[getattr(packet, overload)] = _elementwise(op)
    return table
