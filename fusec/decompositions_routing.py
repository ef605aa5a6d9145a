"""The counting op of mixture-of-experts routing, `histc` over a given range, decomposed into
a compare against an `arange` and a sum: one reduction with its binning fused in front, the
`arange` index math, never a tensor. `bincount` runs through torch: its length depends on the
largest value, known only at run time.
"""

from __future__ import annotations

import struct

import torch

aten = torch.ops.aten

_HISTC_DTYPES = (torch.float32, torch.float64)


def _rounded(value: float, dtype: torch.dtype) -> float:
    """`value` as eager holds it in `dtype` (the range's ends are rounded to x's dtype)."""
    return struct.unpack("f", struct.pack("f", value))[0] if dtype == torch.float32 else value


def histc(x, bins=100, min=0, max=0):
    """Eager's CPU binning: bin `int((x - min) * bins / (max - min))` in x's dtype, the last
    edge closed, values outside [min, max] (NaN included) not counted. With min == max eager
    takes the range from the data (a value known only at run time): torch runs it, as it
    does for 16-bit inputs and bad arguments (eager's error)."""
    if x.dtype not in _HISTC_DTYPES or not min < max or bins <= 0:
        return NotImplemented
    try:
        low, high = (_rounded(float(v), x.dtype) for v in (min, max))
    except OverflowError:  # an end past float32's range: eager's inf edges, from torch
        return NotImplemented
    if not low < high:  # a range that rounds to nothing in x's dtype
        return NotImplemented
    flat = x.reshape(-1)
    position = ((flat - low) * bins / (high - low)).to(torch.int64)
    position = torch.where(position == bins, bins - 1, position)
    inside = (flat >= low) & (flat <= high)
    hits = (position.unsqueeze(-1) == torch.arange(bins, device=x.device)) & inside.unsqueeze(-1)
    return hits.sum(0).to(x.dtype)


DECOMPOSITIONS = {aten.histc.default: histc}
