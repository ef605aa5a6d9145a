"""Advanced indexing decomposed into fusec's indirect loads, bounds checked as eager checks
them: one index on a dim other than the first (`x[:, idx]`, `x[..., idx]`) is a gather
along that dim with the index broadcast over the others; index tensors on the leading
dims (`x[i, j]`) are one row lookup (`take`) into x with those dims merged. One index on
the first dim is `take` itself (lowering_index.py); other forms run through torch."""

from __future__ import annotations

import torch

aten = torch.ops.aten

_INDEX_DTYPES = (torch.int32, torch.int64)


def index(x, indices):
    present = [d for d, i in enumerate(indices) if i is not None]
    if not present or any(indices[d].dtype not in _INDEX_DTYPES for d in present):
        return NotImplemented
    if len(present) > 1:
        return _leading(x, indices) if present == list(range(len(present))) else NotImplemented
    if present[0] == 0:
        return NotImplemented
    dim = present[0]
    idx = indices[dim]
    if idx.dtype not in _INDEX_DTYPES or idx.dim() != 1 or x.numel() == 0:
        return NotImplemented
    # Negative positions count from the end, as in eager; past either end the gather flags it.
    size = x.shape[dim]
    wrapped = torch.where(idx < 0, idx + size, idx)
    shape = [1] * x.dim()
    shape[dim] = idx.shape[0]
    out = list(x.shape)
    out[dim] = idx.shape[0]
    return aten.gather.default(x, dim, wrapped.reshape(shape).expand(out))


def _leading(x, indices):
    """x[i, j, ...]: one lookup into x's leading dims merged, at i * size_j + j; a position
    past either end of its own dim becomes one past the merged end, which `take` flags."""
    count = len(indices)
    if x.numel() == 0 or count > x.dim():
        return NotImplemented
    positions = torch.broadcast_tensors(*indices)
    flat, inside = None, None
    for index, size in zip(positions, x.shape[:count], strict=True):
        wrapped = torch.where(index < 0, index + size, index)
        ok = (wrapped >= 0) & (wrapped < size)
        flat = wrapped if flat is None else flat * size + wrapped
        inside = ok if inside is None else inside & ok
    rows = x.reshape(-1, *x.shape[count:])
    return aten.index.Tensor(rows, [torch.where(inside, flat, rows.shape[0])])


DECOMPOSITIONS = {aten.index.Tensor: index}
