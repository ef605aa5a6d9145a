"""Stores at computed positions decomposed to torch's `put` (x with values stored at, or added
to, its elements at row-major positions), which lowers to one scatter kernel: index_put with
index tensors (`x[i] = v`, `x[:, i] += v`, a KV-cache write, embedding's gradient), index_add,
index_copy, scatter, scatter_add and scatter_reduce's sum.

Each position is computed from the index tensors in the kernel that stores, so the index math,
the values and their producers fuse with the store. A position past either end of its own dim
becomes one past the end of x, which the kernel flags: the call then raises eager's own error.
The base is cloned first, so the store writes into a buffer of its own; the clone fuses with
whatever computed x.
"""

from __future__ import annotations

import torch

from fusec.decompositions_masked import DECOMPOSITIONS as MASKED
from fusec.ir import contiguous_strides
from fusec.kernels.dtypes import ATOMIC_ADD_DTYPES
from fusec.lowering_sizes import dtype_name

aten = torch.ops.aten

INDEX_DTYPES = (torch.int32, torch.int64)  # what eager's index ops take as indices


def _put(x, coords: list, wrap: bool, values, accumulate: bool, contiguous: bool):
    """x with `values` stored at (added to) the elements at `coords` (per dim of x, an integer
    tensor broadcast to values' shape: an index to check, or an arange that is in range).
    `wrap`: negative indices count from the end; `contiguous`: the result is laid out row-major
    (as eager's scatter and index_add give it) rather than as x is (index_put, put)."""
    position, inside = None, None
    for (coord, check), size, stride in zip(coords, x.shape, contiguous_strides(tuple(x.shape)), strict=True):
        if check:
            coord = coord.to(torch.int64)
            coord = torch.where(coord < 0, coord + size, coord) if wrap else coord
            ok = (coord >= 0) & (coord < size)
            inside = ok if inside is None else inside & ok
        term = coord * stride if stride != 1 else coord
        position = term if position is None else position + term
    position = torch.where(inside, position, x.numel()).expand(values.shape)
    if contiguous and not x.is_contiguous():
        # a copy into a row-major layout (a memory_format argument would not survive an export)
        base = aten.copy.default(torch.zeros(x.shape, dtype=x.dtype, device=x.device), x)
    else:
        base = aten.clone.default(x)
    return aten.put.default(base, position, values, accumulate)


def _arange_at(size: int, dim: int, rank: int, device: torch.device):
    """arange(size) shaped to broadcast along `dim` of a rank-`rank` shape."""
    shape = [1] * rank
    shape[dim] = size
    return torch.arange(size, device=device).reshape(shape)


def _supported(x, values, accumulate: bool) -> bool:
    return values.dtype == x.dtype and x.dim() > 0 and (not accumulate or dtype_name(x.dtype) in ATOMIC_ADD_DTYPES)


def index_put(x, indices, values, accumulate=False, contiguous=False):
    """x[..., i, j, ...] = values (or += with `accumulate`) with integer index tensors; the
    broadcast indices' dims sit where the indexed dims are when those are adjacent, else first."""
    indices = list(indices) + [None] * (x.dim() - len(indices))
    present = [d for d, i in enumerate(indices) if i is not None]
    if not present or len(indices) > x.dim() or not _supported(x, values, accumulate) or \
            any(indices[d].dtype not in INDEX_DTYPES for d in present):
        return NotImplemented
    try:
        batch = torch.broadcast_shapes(*(indices[d].shape for d in present))
    except RuntimeError:
        return NotImplemented  # indices that do not broadcast: eager's error, from torch
    rest = [d for d in range(x.dim()) if d not in present]
    adjacent = present == list(range(present[0], present[-1] + 1))
    first = present[0] if adjacent else 0  # where the indices' dims go in the indexed shape
    shape = [x.shape[d] for d in rest]
    shape[first:first] = batch
    try:
        if torch.broadcast_shapes(values.shape, shape) != torch.Size(shape):
            return NotImplemented
    except RuntimeError:
        return NotImplemented
    rank, coords = len(shape), []
    for d in range(x.dim()):
        if d in present:
            index = indices[d].expand(batch).reshape([1] * first + list(batch) + [1] * (rank - first - len(batch)))
            coords.append((index, True))
        else:
            at = rest.index(d)
            coords.append((_arange_at(x.shape[d], at if at < first else at + len(batch), rank, x.device), False))
    return _put(x, coords, True, values.expand(shape), accumulate, contiguous)


def _along(x, dim, index, source, accumulate: bool):
    """index_add / index_copy: source's slices along dim stored at (added to) x's slices at index."""
    if x.dim() == 0 or index.dim() > 1 or source.dim() != x.dim():
        return NotImplemented  # a 0-d form, or eager's shape error: torch's decomposition checks it
    dim, index = dim % x.dim(), index.reshape(-1)
    if list(source.shape) != [len(index) if d == dim else s for d, s in enumerate(x.shape)]:
        return NotImplemented
    return index_put(x, [None] * dim + [index], source, accumulate, contiguous=True)


def index_add(x, dim, index, source, alpha=1):
    # eager checks alpha's type against x's: a float scales floats only, and nothing scales bools
    scalar = (int, float) if x.dtype.is_floating_point else (int,)
    if alpha != 1 and (x.dtype == torch.bool or isinstance(alpha, bool) or not isinstance(alpha, scalar)):
        return NotImplemented
    return _along(x, dim, index, source if alpha == 1 else source * alpha, True)


def index_copy(x, dim, index, source):
    if index.dtype != torch.int64:
        return NotImplemented  # eager's index_copy takes int64 indices only (index_add int32 too)
    return _along(x, dim, index, source, False)


def _scatter(x, dim, index, src, accumulate: bool):
    """out[..., index[i, j, ...], ...] = src[i, j, ...] along `dim` (no wrap: eager rejects a negative index)."""
    if x.dim() == 0 or index.dtype not in INDEX_DTYPES or index.dim() != x.dim() or not _supported(x, src, accumulate):
        return NotImplemented
    dim = dim % x.dim()
    if src.dim() != x.dim() or any(index.shape[d] > src.shape[d] or (d != dim and index.shape[d] > x.shape[d])
                                   for d in range(x.dim())):
        return NotImplemented  # eager's shape error, from torch
    values = src
    for d, size in enumerate(index.shape):
        if size != src.shape[d]:
            values = aten.slice.Tensor(values, d, 0, size)
    rank = x.dim()
    coords = [(index, True) if d == dim else (_arange_at(index.shape[d], d, rank, x.device), False)
              for d in range(rank)]
    return _put(x, coords, False, values, accumulate, True)


def scatter_src(x, dim, index, src):
    return _scatter(x, dim, index, src, False)


def scatter_value(x, dim, index, value):
    return _scatter(x, dim, index, torch.full(index.shape, value, dtype=x.dtype, device=x.device), False)


def scatter_add(x, dim, index, src):
    return _scatter(x, dim, index, src, True)


def scatter_with_reduce(x, dim, index, src, *, reduce):
    """scatter's older `reduce=` form: "add" is scatter_add; "multiply" runs through torch."""
    return _scatter(x, dim, index, src, True) if reduce == "add" else NotImplemented


def scatter_reduce(x, dim, index, src, reduce, include_self=True):
    """The sum that keeps x's own values is scatter_add; other reductions run through torch."""
    return _scatter(x, dim, index, src, True) if reduce == "sum" and include_self else NotImplemented


def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    """x with src in x[start:end] along dim: a concatenation of x's ends around src (step 1)."""
    if x.dim() == 0 or src.dim() != x.dim():
        return NotImplemented
    dim = dim % x.dim()
    size = x.shape[dim]
    start = 0 if start is None else min(max(start + size if start < 0 else start, 0), size)
    end = size if end is None else min(max(end + size if end < 0 else end, start), size)
    expected = [end - start if d == dim else s for d, s in enumerate(x.shape)]
    if step != 1 or src.dtype != x.dtype or list(src.shape) != expected:
        return NotImplemented  # eager's error, or a strided slice: torch
    parts = [aten.slice.Tensor(x, dim, 0, start), src, aten.slice.Tensor(x, dim, end, size)]
    return aten.cat.default([p for p in parts if p.shape[dim]] or [src], dim)


DECOMPOSITIONS = {
    aten.scatter.src: scatter_src, aten.scatter.value: scatter_value,
    aten.scatter.reduce: scatter_with_reduce, aten.scatter_add.default: scatter_add,
    aten.scatter_reduce.two: scatter_reduce, aten.slice_scatter.default: slice_scatter,
    aten.index_add.default: index_add, aten.index_copy.default: index_copy, **MASKED,
}
