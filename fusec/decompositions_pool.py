"""Padding and 2-D pooling decomposed into slices, concatenations and pointwise math.

A constant pad is a concatenation with constants (a masked read in the consuming
kernel); a pooling window is a pointwise max or sum over strided slices of the
padded input, one slice per window offset, so pooling fuses into its producer's
kernel (ReLU -> max pool is one launch). A backward pass pulls, for every input
position, the gradient of each output whose window holds it: the output grid
spread out by the stride (zeros between) and shifted by the window offset, again
views and concatenations only. The window is unrolled, so large windows (and
what these forms do not cover) return NotImplemented and run through torch.
Positions, windows and sum order follow eager's CPU kernels.
"""

from __future__ import annotations

import math

import torch
from torch._prims_common import suggest_memory_format

aten = torch.ops.aten

# Window offsets unrolled into one kernel at most (a 7x7 window); larger pools run in torch.
MAX_WINDOW = 49


def _pair(value, default: tuple[int, int] | None = None) -> tuple[int, int]:
    if not value:
        return default
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def laid_out_like(result, x):
    """`result` in x's memory format, as eager's pad and pooling kernels lay out their outputs."""
    if x.dim() == 4 and suggest_memory_format(x) == torch.channels_last:
        return result.contiguous(memory_format=torch.channels_last)
    return result.contiguous()


def _full(x, shape, value, dtype=None):
    return aten.full.default(list(shape), value, dtype=dtype or x.dtype, device=x.device)


def pad_dim(x, dim: int, lo: int, hi: int, value=0):
    """x with `lo` values before and `hi` after along `dim` (negative: cut off)."""
    size = x.shape[dim]
    if lo < 0 or hi < 0:
        x = aten.slice.Tensor(x, dim, max(-lo, 0), size - max(-hi, 0))
    pieces = []
    for amount in (lo, None, hi):
        if amount is None:
            pieces.append(x)
        elif amount > 0:
            shape = list(x.shape)
            shape[dim] = amount
            pieces.append(_full(x, shape, value))
    return aten.cat.default(pieces, dim) if len(pieces) > 1 else x


def constant_pad_nd(x, pad, value=0):
    if len(pad) % 2 or len(pad) // 2 > x.dim():
        return NotImplemented  # torch raises its own message
    for i in range(len(pad) // 2):
        dim = x.dim() - 1 - i
        if x.shape[dim] + pad[2 * i] + pad[2 * i + 1] < 0:
            return NotImplemented
    value = _cast(value, x.dtype)
    out = x
    for i in range(len(pad) // 2):
        out = pad_dim(out, x.dim() - 1 - i, pad[2 * i], pad[2 * i + 1], value)
    return laid_out_like(out, x)


def _cast(value, dtype: torch.dtype):
    """A Python scalar as torch fills a tensor of `dtype` with it (integers truncate)."""
    if dtype == torch.bool:
        return bool(value)
    return float(value) if dtype.is_floating_point or dtype.is_complex else int(value)


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: a last window starting in the right padding is dropped."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _positions(out: int, stride: int, offset: int, device):
    """Input positions read by window offset `offset` of each of `out` outputs."""
    return aten.arange.start_step(offset, offset + out * stride, stride, dtype=torch.int64, device=device)


def _windows(x, kernel, stride, pad, dilation, out):
    """(slice of padded x, its input rows, its input columns) per window offset, row-major."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, pad, dilation, out
    height, width = x.shape[-2:]
    bottom = max((oh - 1) * sh + (kh - 1) * dh + 1 - height - ph, 0)
    right = max((ow - 1) * sw + (kw - 1) * dw + 1 - width - pw, 0)
    padded = pad_dim(pad_dim(x, -2, ph, bottom), -1, pw, right)
    for i in range(kh):
        rows = aten.slice.Tensor(padded, -2, i * dh, i * dh + (oh - 1) * sh + 1, sh)
        for j in range(kw):
            window = aten.slice.Tensor(rows, -1, j * dw, j * dw + (ow - 1) * sw + 1, sw)
            yield window, _positions(oh, sh, i * dh - ph, x.device), _positions(ow, sw, j * dw - pw, x.device)


def _geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = _pair(kernel_size)
    stride = _pair(stride, kernel)
    pad, dilation = _pair(padding, (0, 0)), _pair(dilation, (1, 1))
    if x.dim() not in (3, 4) or kernel[0] * kernel[1] > MAX_WINDOW or not x.dtype.is_floating_point:
        return None
    if any(p > k // 2 for p, k in zip(pad, kernel)) or 0 in x.shape:
        return None  # torch rejects the padding; an empty input runs in torch
    out = tuple(output_size(s, k, st, p, d, ceil_mode)
                for s, k, st, p, d in zip(x.shape[-2:], kernel, stride, pad, dilation))
    if min(out) < 1:
        return None  # torch's "output size is too small"
    return kernel, stride, pad, dilation, out


def max_pool2d_with_indices(x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    """Eager's loop: over the window's in-bounds positions in order, take one when it is
    greater than the best so far or NaN; the index starts at the first in-bounds one."""
    geometry = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    if geometry is None:
        return NotImplemented
    height, width = x.shape[-2:]
    best = index = None
    for window, rows, cols in _windows(x, *geometry):
        inside = (((rows >= 0) & (rows < height)).unsqueeze(-1)) & ((cols >= 0) & (cols < width))
        position = rows.unsqueeze(-1) * width + cols
        if best is None:
            best = torch.where(inside, window, -math.inf)
            index = torch.where(inside, position, -1).expand(best.shape)
            continue
        take = inside & ((window > best) | torch.isnan(window) | (index < 0))
        best = torch.where(take, window, best)
        index = torch.where(take, position, index)
    return laid_out_like(best, x), laid_out_like(index, x)


def _spread(grad, stride: tuple[int, int], fill):
    """grad's output grid placed every `stride` positions, `fill` between."""
    for dim, step in ((-2, stride[0]), (-1, stride[1])):
        if step == 1:
            continue
        shape = list(grad.shape)
        part = grad.unsqueeze(dim)
        gaps = list(part.shape)
        gaps[dim] = step - 1
        merged = aten.cat.default([part, _full(grad, gaps, fill)], dim)
        shape[dim] = shape[dim] * step
        grad = merged.reshape(shape)
    return grad


def _shifted(spread, i: int, j: int, geometry, size, fill):
    """The spread grid read at input positions: what window offset (i, j) of the output
    covering each input position holds there (`fill` where no output covers it)."""
    _, _, (ph, pw), (dh, dw), _ = geometry
    rows = pad_dim(spread, -2, i * dh - ph, size[0] + ph - i * dh - spread.shape[-2], fill)
    return pad_dim(rows, -1, j * dw - pw, size[1] + pw - j * dw - rows.shape[-1], fill)


def _offsets_back(kernel):
    # Outputs that cover one input position, in eager's accumulation order (rows, then columns).
    return [(i, j) for i in reversed(range(kernel[0])) for j in reversed(range(kernel[1]))]


def max_pool2d_with_indices_backward(grad, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """Per window offset, the outputs whose max sat there pass their gradient, moved onto
    the input grid (a position off the grid is cut away with the padding)."""
    geometry = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    if geometry is None or tuple(grad.shape[-2:]) != geometry[4]:
        return NotImplemented
    (sh, sw), (ph, pw), (dh, dw), (oh, ow) = geometry[1:]
    height, width = x.shape[-2:]
    total = None
    for i, j in _offsets_back(geometry[0]):
        rows, cols = _positions(oh, sh, i * dh - ph, x.device), _positions(ow, sw, j * dw - pw, x.device)
        mine = torch.where(indices == rows.unsqueeze(-1) * width + cols, grad, 0)
        part = _shifted(_spread(mine, (sh, sw), 0), i, j, geometry, (height, width), 0)
        total = part if total is None else total + part
    return laid_out_like(total.to(x.dtype), x)


def _window_sizes(out: int, kernel: int, stride: int, pad: int, size: int, include_pad: bool) -> list[int]:
    """Elements each window divides by: eager clips windows at the padded edge, and at the
    input's edge when padding is not counted."""
    sizes = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        sizes.append(end - start if include_pad else min(end, size) - max(start, 0))
    return sizes


def _divisor(x, geometry, include_pad: bool):
    """The per-output divisor: a number when every window has the same, else a tensor."""
    (kh, kw), (sh, sw), (ph, pw), _, (oh, ow) = geometry
    height, width = x.shape[-2:]
    rows = _window_sizes(oh, kh, sh, ph, height, include_pad)
    cols = _window_sizes(ow, kw, sw, pw, width, include_pad)
    if len(set(rows)) == 1 and len(set(cols)) == 1:
        return rows[0] * cols[0]
    # Uneven windows: the sizes as index math (start = o * stride - pad, clipped).
    factors = []
    for out, kernel, stride, pad, size in ((oh, kh, sh, ph, height), (ow, kw, sw, pw, width)):
        start = _positions(out, stride, -pad, x.device)
        end = torch.clamp(start + kernel, max=size + pad)
        factors.append(end - start if include_pad else torch.clamp(end, max=size) - torch.clamp(start, min=0))
    return factors[0].unsqueeze(-1) * factors[1]


def _avg_geometry(x, kernel_size, stride, padding, ceil_mode, divisor_override):
    if divisor_override == 0:
        return None  # eager raises its own message
    return _geometry(x, kernel_size, stride, padding, (1,), ceil_mode)


def avg_pool2d(x, kernel_size, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    geometry = _avg_geometry(x, kernel_size, stride, padding, ceil_mode, divisor_override)
    if geometry is None:
        return NotImplemented
    total = None
    for window, _, _ in _windows(x, *geometry):
        total = window if total is None else total + window
    return laid_out_like(total / (divisor_override or _divisor(x, geometry, count_include_pad)), x)


def avg_pool2d_backward(grad, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    geometry = _avg_geometry(x, kernel_size, stride, padding, ceil_mode, divisor_override)
    if geometry is None or tuple(grad.shape[-2:]) != geometry[4]:
        return NotImplemented
    spread = _spread(grad / (divisor_override or _divisor(x, geometry, count_include_pad)), geometry[1], 0)
    total = None
    for i, j in _offsets_back(geometry[0]):
        part = _shifted(spread, i, j, geometry, tuple(x.shape[-2:]), 0)
        total = part if total is None else total + part
    return laid_out_like(total, x)


def _adaptive_kernel(x, output_size) -> tuple[int, int] | None:
    """The window of an adaptive pool that tiles the input evenly; None when uneven."""
    size = tuple(x.shape[-2:])
    out = tuple(output_size)
    if x.dim() not in (3, 4) or 0 in size or 0 in out or any(s % o for s, o in zip(size, out)):
        return None
    return size[0] // out[0], size[1] // out[1]


def adaptive_avg_pool2d(x, output_size):
    """An even tiling is a mean over each tile's own two dims (a global pool: a plain mean)."""
    kernel = _adaptive_kernel(x, output_size)
    if kernel is None or not x.dtype.is_floating_point:
        return NotImplemented
    (oh, ow), (kh, kw) = output_size, kernel
    if (oh, ow) == (1, 1):
        return laid_out_like(x.mean(dim=(-2, -1), keepdim=True), x)
    if kh * kw <= MAX_WINDOW:
        return avg_pool2d(x, kernel, kernel)
    tiles = x.reshape(*x.shape[:-2], oh, kh, ow, kw)
    return laid_out_like(tiles.mean(dim=(-3, -1)), x)


def adaptive_avg_pool2d_backward(grad, x):
    kernel = _adaptive_kernel(x, grad.shape[-2:])
    if kernel is None:
        return NotImplemented
    (oh, ow), (kh, kw) = grad.shape[-2:], kernel
    share = (grad / kh / kw).reshape(*grad.shape[:-2], oh, 1, ow, 1)
    return laid_out_like(share.expand(*grad.shape[:-2], oh, kh, ow, kw).reshape(x.shape), x)


DECOMPOSITIONS = {
    aten.constant_pad_nd.default: constant_pad_nd,
    aten.max_pool2d_with_indices.default: max_pool2d_with_indices,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
    aten.avg_pool2d.default: avg_pool2d,
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
    aten._adaptive_avg_pool2d.default: adaptive_avg_pool2d,
    aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
}
