"""Group norm decomposed in the [N, groups, channels per group, H*W] shape, where each
group's statistics are a row reduction over the last two dims and the per-channel
affine stays inside the same rows: one kernel, like layer norm (torch's own
decomposition goes through as_strided, which runs in torch)."""

from __future__ import annotations

import torch

from fusec.decompositions_pool import laid_out_like

aten = torch.ops.aten


def native_group_norm(x, weight, bias, n: int, c: int, hxw: int, groups: int, eps: float):
    if x.numel() != n * c * hxw or c % groups or not x.dtype.is_floating_point or n * c * hxw == 0:
        return NotImplemented  # torch's own checks and messages
    rows = x.reshape(n, groups, c // groups, hxw)
    # 16-bit inputs: fusec's kernels compute in float32, as eager's group norm does.
    var, mean = torch.var_mean(rows, dim=(2, 3), correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    y = (rows - mean) * rstd
    if weight is not None:
        y = y * weight.reshape(1, groups, c // groups, 1)
    if bias is not None:
        y = y + bias.reshape(1, groups, c // groups, 1)
    out = laid_out_like(y.to(x.dtype).reshape(x.shape), x)
    return out, mean.reshape(n, groups).to(x.dtype), rstd.reshape(n, groups).to(x.dtype)


DECOMPOSITIONS = {aten.native_group_norm.default: native_group_norm}
