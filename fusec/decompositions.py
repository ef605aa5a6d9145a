"""The one decomposition table: what AOTAutograd lowers composite ops into.

Ops are decomposed until what is left is either in fusec's primitive set
(see fusec/lowering_ops.py) or is better run by a library (attention,
convolution, matmul), which stay whole.
"""

from __future__ import annotations

import functools

import torch
from torch._decomp import core_aten_decompositions, get_decompositions

from fusec.decompositions_bessel import TABLE as BESSEL
from fusec.decompositions_elementwise import TABLE as ELEMENTWISE
from fusec.decompositions_foreach import foreach_decompositions
from fusec.decompositions_index import DECOMPOSITIONS as INDEXING
from fusec.decompositions_index import MASKED_STORES
from fusec.decompositions_masked import static_shapes
from fusec.decompositions_norm import DECOMPOSITIONS as GROUP_NORM
from fusec.decompositions_pool import DECOMPOSITIONS as POOLING
from fusec.decompositions_routing import DECOMPOSITIONS as ROUTING
from fusec.decompositions_scatter import DECOMPOSITIONS as SCATTER
from fusec.decompositions_special import TABLE as SPECIAL
from fusec.decompositions_trig import TABLE as TRIG

aten = torch.ops.aten

# Composite ops decomposed beyond torch's core ATen set, into pointwise math,
# reductions and plain matmuls that fuse (addmm's bias becomes an epilogue).
_EXTRA = [
    aten.gelu, aten.gelu_backward, aten.silu, aten.silu_backward, aten.hardtanh,
    aten.hardswish, aten.hardsigmoid, aten.leaky_relu, aten.elu, aten.softplus,
    aten.mish, aten._softmax, aten._log_softmax, aten.sigmoid_backward,
    aten.tanh_backward, aten.threshold_backward, aten.native_layer_norm,
    aten.native_layer_norm_backward, aten.var_mean, aten.var, aten.std, aten.logsumexp,
    aten._log_softmax_backward_data, aten._softmax_backward_data, aten.native_dropout,
    aten.native_dropout_backward, aten.mean,
    # BatchNorm, inference and training: a per-channel affine (and, training, per-channel
    # mean/var over N and the spatial dims) that fuses with its activation and residual add.
    aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
    aten._native_batch_norm_legit, aten.native_batch_norm, aten.native_batch_norm_backward,
    aten._batch_norm_with_update, aten._batch_norm_with_update_functional,
    aten._batch_norm_no_update, aten.batch_norm_backward,
    # Group norm's backward (its forward: decompositions_norm.py); vector norms: a sum of powers.
    aten.native_group_norm_backward, aten.linalg_vector_norm,
]

# Kept whole: torch's fused kernels beat anything decomposed from them.
_KEEP = {
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_attention_math.default,
}


def _addmm(bias, mat1, mat2, *, beta=1, alpha=1):
    # torch's own decomposition upcasts 16-bit operands on a CPU; the product must stay
    # in its dtype (a bf16 tensor-core matmul) with the bias as its epilogue.
    product = torch.ops.aten.mm(mat1, mat2) if mat1.dim() == 2 else torch.ops.aten.bmm(mat1, mat2)
    if alpha != 1:
        product = product * alpha
    return product + (bias if beta == 1 else bias * beta)


def _split_with_sizes(x, split_sizes, dim=0):
    # Slices, not torch's as_strided form: views the consuming kernels read in place.
    dim = dim % max(x.dim(), 1)
    starts = [sum(split_sizes[:i]) for i in range(len(split_sizes))]
    return [aten.slice.Tensor(x, dim, start, start + size) for start, size in zip(starts, split_sizes, strict=True)]


def _split(x, split_size, dim=0):
    length = x.shape[dim]
    sizes = [min(split_size, length - start) for start in range(0, length, split_size)] if split_size else [length]
    return _split_with_sizes(x, sizes or [0], dim)


def _static_only(decomposition):
    """`decomposition` for tensors of static shapes; with symbolic sizes (dynamic shapes) the op
    stays whole and runs through torch. Decomposed, the pooling windows' positions and the
    index wrap-around use a size as a value, which torch computes op by op beside the kernels
    (a max pool: some 45 small torch ops a call; a group norm: one more kernel than whole), and
    avg pooling's geometry needs ints."""
    @functools.wraps(decomposition)
    def guarded(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not static_shapes(*tensors) or any(isinstance(a, torch.SymInt) for a in (*args, *kwargs.values())):
            return NotImplemented
        return decomposition(*args, **kwargs)
    return guarded


def decomposition_table() -> dict:
    table = {**core_aten_decompositions(), **get_decompositions(_EXTRA), **foreach_decompositions()}
    for op in _KEEP:
        table.pop(op, None)
    table[aten.addmm.default] = _addmm
    table[aten.baddbmm.default] = _addmm
    table[aten.split_with_sizes.default] = _split_with_sizes
    table[aten.split.Tensor] = _split
    table.update({**ELEMENTWISE, **TRIG, **SPECIAL, **BESSEL, **MASKED_STORES})
    static_only = {**POOLING, **GROUP_NORM, **INDEXING, **SCATTER, **ROUTING}
    table.update({op: _static_only(fn) for op, fn in static_only.items()})
    # A constant pad is slices and concatenations with constants at any size: one kernel.
    table[aten.constant_pad_nd.default] = POOLING[aten.constant_pad_nd.default]
    return table


DECOMPOSITIONS = decomposition_table()
