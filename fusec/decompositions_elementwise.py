"""Elementwise ops written in fusec's primitives, where torch's own decompositions end in a prim.

Each keeps eager's special values: NaN, ±inf, -0.0 and overflow where eager's
result is still finite; the sign ops read the sign bit itself (a bitcast), so -0.0 and
a negative NaN count as negative. Checked against eager in tests/test_elementwise_math.py,
tests/test_special_functions.py and over PyTorch's OpInfo samples (`fusec bench --ops`).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable

import torch

aten = torch.ops.aten

_LOG10_E = 1.0 / math.log(10.0)


def _log10(x):
    return aten.log(x) * _LOG10_E


def _fmax(a, b):
    # NaN only when both are: the other operand wins over a NaN.
    return aten.where(aten.isnan(a), b, aten.where(aten.isnan(b), a, aten.maximum(a, b)))


def _fmin(a, b):
    return aten.where(aten.isnan(a), b, aten.where(aten.isnan(b), a, aten.minimum(a, b)))


def _tan(x):
    return aten.sin(x) / aten.cos(x)


def _half_exp_pair(x):
    """(e^x / 2, e^-x / 2) without overflowing while e^|x| / 2 is finite: e^(|x| - ln 2) for large |x|."""
    big = aten.abs(x) > 80.0
    shift = aten.where(big, aten.abs(x) - math.log(2.0), x)
    up = aten.where(big, aten.exp(shift), aten.exp(x) * 0.5)
    down = aten.where(big, aten.exp(-aten.abs(x) - math.log(2.0)), aten.exp(-x) * 0.5)
    return big, up, down


def float32_math(fn: Callable | None = None, *, floats_only: bool = False, no_16bit: bool = False):
    """`fn` computed in float32 and returned in eager's dtype (integers give torch's default float).

    The approximations written with it are float32's: a float64 op stays whole and runs through
    torch, as do the dtypes eager refuses (`floats_only`: integer inputs; `no_16bit`: half types).
    """
    if fn is None:
        return functools.partial(float32_math, floats_only=floats_only, no_16bit=no_16bit)

    @functools.wraps(fn)
    def in_float32(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
        if (floats_only and not dtype.is_floating_point) or (no_16bit and dtype in (torch.float16, torch.bfloat16)):
            return NotImplemented
        dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return NotImplemented
        widened = [a.to(torch.float32) if isinstance(a, torch.Tensor) else a for a in args]
        return fn(*widened, **kwargs).to(dtype)
    return in_float32


def _floating(x):
    """An integer or bool input as the float torch computes these ops in (negating a uint8 or
    the most negative int8 first would wrap)."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _sinh(x):
    # Near 0, e^x - e^-x cancels: expm1 keeps the digits there.
    x = _floating(x)
    small = (aten.expm1(x) - aten.expm1(-x)) * 0.5
    big, up, down = _half_exp_pair(x)
    large = aten.where(big, aten.sign(x) * (up - down), up - down)
    return aten.where(aten.abs(x) < 1.0, small, large)


def _cosh(x):
    x = _floating(x)
    _, up, down = _half_exp_pair(x)
    return up + down


@float32_math(floats_only=True)
def _round_decimals(x, *, decimals=0):
    # eager's kernel: nearbyint(x * 10^d) / 10^d (x / 10^-d for negative d), 10^d rounded to float.
    scale = struct.unpack("f", struct.pack("f", 10.0 ** abs(decimals)))[0]
    if decimals < 0:
        return aten.round(x / scale) * scale
    return aten.round(x * scale) / scale


def _ldexp(x, exponent):
    return aten.mul(x, aten.pow(2.0, exponent))  # as eager's ldexp: x * 2.0 ** exponent


def _sign_bit(x):
    """The sign bit of a float32 or float64 tensor (-0.0 and a negative NaN have it)."""
    return x.view(torch.int64 if x.dtype == torch.float64 else torch.int32) < 0


def _signbit(x):
    if not x.is_floating_point():
        return x < 0
    return _sign_bit(x if x.dtype == torch.float64 else x.to(torch.float32))


@float32_math
def _copysign(a, b):
    return torch.where(_sign_bit(b), -aten.abs(a), aten.abs(a))


def _nextafter(a, b):
    # The next float32 after a towards b: the bit pattern's magnitude one step up or down.
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        return NotImplemented
    bits = a.view(torch.int32)
    away_from_zero = (b > a) == (a > 0)
    step = torch.where(away_from_zero, bits + 1, bits - 1)
    tiny = torch.where(b > 0, 1, -(2 ** 31 - 1)).to(torch.int32)  # the smallest subnormal, signed
    step = torch.where(a == 0, tiny, step)
    after = step.view(torch.float32)
    return torch.where(a == b, b, torch.where(aten.isnan(a) | aten.isnan(b), a + b, after))


# aten op -> its decomposition (integer inputs are computed in torch's default float dtype, as eager does).
TABLE = {
    aten.log10.default: _log10,
    aten.fmax.default: _fmax,
    aten.fmin.default: _fmin,
    aten.tan.default: _tan,
    aten.sinh.default: _sinh,
    aten.cosh.default: _cosh,
    aten.round.decimals: _round_decimals,
    aten.ldexp.Tensor: _ldexp,
    aten.signbit.default: _signbit,
    aten.copysign.Tensor: _copysign,
    aten.nextafter.default: _nextafter,
}
