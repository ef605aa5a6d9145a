"""Advanced indexing on a dim other than the first (`x[:, idx]`, `x[..., idx]`) as a gather
along that dim with the index broadcast over the others: an indirect load in the
consuming kernel, bounds checked as eager checks them. The first dim's lookups are
fusec's `take` (lowering_index.py); several index tensors run through torch."""

from __future__ import annotations

import torch

aten = torch.ops.aten

_INDEX_DTYPES = (torch.int32, torch.int64)


def index(x, indices):
    present = [d for d, i in enumerate(indices) if i is not None]
    if len(present) != 1 or present[0] == 0:
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


DECOMPOSITIONS = {aten.index.Tensor: index}
