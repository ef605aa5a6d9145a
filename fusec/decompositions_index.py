"""Advanced indexing decomposed into fusec's indirect loads, bounds checked as eager checks
them: one index on a dim other than the first (`x[:, idx]`, `x[..., idx]`) is a gather
along that dim with the index broadcast over the others; index tensors on the leading
dims (`x[i, j]`) are one row lookup (`take`) into x with those dims merged. One index on
the first dim is `take` itself (lowering_index.py); other forms run through torch.

A store through a boolean mask over x's leading dims (`x[mask] = value`, `index_put`) with a
value that does not depend on how many elements the mask selects is a `where`: it fuses with
whatever made x and whatever reads it; one value per selected element is decompositions_masked.py's.
"""

from __future__ import annotations

import torch

from fusec.decompositions_masked import per_selected, static_shapes
from fusec.decompositions_scatter import INDEX_DTYPES
from fusec.decompositions_scatter import index_put as put_at_positions

aten = torch.ops.aten



def index(x, indices):
    present = [d for d, i in enumerate(indices) if i is not None]
    if not present or any(indices[d].dtype not in INDEX_DTYPES for d in present):
        return NotImplemented
    if len(present) > 1:
        return _leading(x, indices) if present == list(range(len(present))) else NotImplemented
    if present[0] == 0:
        return NotImplemented
    dim = present[0]
    idx = indices[dim]
    if idx.dim() != 1 or x.numel() == 0:
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


def index_put(x, indices, values, accumulate=False):
    """x[mask] = values, x[..., mask] = values (or += with `accumulate`: a mask selects each
    element once)."""
    lead = len(indices) - 1  # the dims before the mask, taken whole
    mask = indices[-1] if indices and all(i is None for i in indices[:-1]) else None
    if mask is None or mask.dtype != torch.bool:
        return _positions(x, indices, values, accumulate)
    if tuple(mask.shape) != tuple(x.shape[lead:lead + mask.dim()]):
        return NotImplemented  # a mask eager rejects with its own error
    trailing = x.shape[lead + mask.dim():]
    if not lead and values.dim() == len(trailing) + 1 and values.shape[0] == 1:
        values = values[0]  # the selected elements' dim, broadcast
    fits = values.dim() <= len(trailing) and all(
        v in (1, t) for v, t in zip(reversed(values.shape), reversed(trailing), strict=False))
    if not fits and not lead:
        return per_selected(x, mask, values, accumulate)  # a value per selected element
    if not fits or (accumulate and values.dtype != x.dtype):
        return NotImplemented
    selected = mask.reshape(*[1] * lead, *mask.shape, *[1] * len(trailing))
    values = values.to(x.dtype)
    return torch.where(selected, x + values if accumulate else values, x)


def _positions(x, indices, values, accumulate):
    """Index tensors: a store at computed positions (decompositions_scatter.py), for static
    shapes (a position's wrap-around uses a size as a value, which kernels do not take)."""
    tensors = [x, values, *(i for i in indices if i is not None)]
    if not static_shapes(*tensors):
        return NotImplemented
    return put_at_positions(x, indices, values, accumulate)


DECOMPOSITIONS = {aten.index.Tensor: index}
# Shape-independent math: decomposed with symbolic sizes too.
MASKED_STORES = {aten.index_put.default: index_put}
