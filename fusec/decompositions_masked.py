"""Stores through a boolean mask with a value per selected element (`x[mask] = v` with v holding
one row per selected element, `masked_scatter`): the k-th selected element takes v's k-th row,
k counted by a running sum of the mask (one scan kernel); a row lookup at that count and a
`where` then fuse with whatever made x and whatever reads the result.

How many elements the mask selects is known only when it runs: a count eager rejects (other
than v's length for `x[mask] = v`, more than the source holds for masked_scatter) sends the
lookup past the end of v, which the kernel flags, and the call raises eager's own error.
"""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten


def static_shapes(*tensors) -> bool:
    """Whether no size of these tensors is a symbol (dynamic shapes)."""
    return not any(isinstance(size, torch.SymInt) for t in tensors for size in t.shape)


def _picked(mask, rows, exact: bool):
    """rows[k] at each element of mask that is its k-th selected one (any row elsewhere), shaped
    (*mask.shape, *rows.shape[1:]). `exact`: a count of selected elements other than len(rows)
    reads past the end of rows (flagged); else only a count above it does."""
    flat = mask.reshape(-1)
    rank = torch.cumsum(flat.to(torch.int64), 0) - 1
    index = torch.where(flat, rank, 0)
    if exact:  # another count than len(rows): every read past the end, so eager's error is raised
        index = torch.where(rank[-1] + 1 == rows.shape[0], index, rows.shape[0])
    return aten.index.Tensor(rows, [index]).reshape(*mask.shape, *rows.shape[1:])


def _stored(x, mask, rows, exact: bool, accumulate: bool):
    """x with its k-th selected row (the mask over its leading dims) set to (added) rows[k]."""
    picked = _picked(mask, rows, exact)
    selected = mask.reshape(*mask.shape, *[1] * (x.dim() - mask.dim()))
    return torch.where(selected, x + picked if accumulate else picked, x)


def per_selected(x, mask, values, accumulate: bool):
    """x[mask] = values (or += with `accumulate`), the mask over x's leading dims and values
    one row per selected element, broadcast over the rest of x's dims."""
    trailing = x.shape[mask.dim():]
    if values.dim() != len(trailing) + 1 or values.shape[0] == 0 or mask.numel() == 0 or \
            not static_shapes(x, mask, values) or (accumulate and values.dtype != x.dtype):
        return NotImplemented
    try:
        if torch.broadcast_shapes(values.shape[1:], trailing) != trailing:
            return NotImplemented
    except RuntimeError:
        return NotImplemented  # eager's shape error, from torch
    return _stored(x, mask, values.expand(values.shape[0], *trailing).to(x.dtype), True, accumulate)


def masked_scatter(x, mask, source):
    """x with its elements where mask holds taken from source's in order (mask broadcast to x).
    A mask broadcast over x's last dims (`mask[..., None]`) selects whole rows: its running count
    is over the rows, and source is read a row at a time."""
    if mask.dtype != torch.bool or source.dtype != x.dtype or source.numel() == 0 or x.numel() == 0 or \
            not static_shapes(x, mask, source):
        return NotImplemented
    try:
        if torch.broadcast_shapes(mask.shape, x.shape) != x.shape:
            return NotImplemented
    except RuntimeError:
        return NotImplemented
    shape = [1] * (x.dim() - mask.dim()) + list(mask.shape)
    lead = max((d + 1 for d, size in enumerate(shape) if size != 1), default=0)
    row = math.prod(x.shape[lead:])
    flat = source.reshape(-1)
    if shape[:lead] == list(x.shape[:lead]) and source.numel() >= row:
        count = source.numel() // row
        rows = aten.slice.Tensor(flat, 0, 0, count * row).reshape(count, *x.shape[lead:])
        return _stored(x, mask.reshape(x.shape[:lead]), rows, False, False)
    mask = mask.expand(x.shape)  # broadcast over leading dims too: counted element by element
    return _stored(x, mask, flat, False, False)


DECOMPOSITIONS = {aten.masked_scatter.default: masked_scatter}
