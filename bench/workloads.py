"""The benchmark suite's workloads: each builds its inputs at a size tier and knows its memory traffic.

A workload is what the three systems (eager, torch.compile, fusec) each
compile and time. Memory-bound workloads also give their unique bytes: every
input read once plus every output written once, from a formula over the
sizes, so an achieved bandwidth can be set against the device's limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusec.examples import InceptionBlock, TransformerBlock

# Size tiers: `tiny` keeps Triton's CPU interpreter and Inductor's C++ compile
# short (--quick on CPU); `quick` is large enough on a GPU to be past its L2
# cache; `full` is the size of a real model layer.
TIERS = ("tiny", "quick", "full")


def tier_for(device: str, quick: bool) -> str:
    if not quick:
        return "full"
    return "quick" if device == "cuda" else "tiny"


@dataclass(frozen=True)
class Case:
    """One workload built at one size on one device.

    fn: what each system compiles (a function or an nn.Module).
    args: its inputs; a step that mutates them (the optimizer) is compared on them after the call.
    grad_outputs: set for forward+backward workloads: the gradient flowing into fn's outputs.
    unique_bytes: bytes a perfect kernel must move (memory-bound workloads only).
    check: replaces comparison against eager where the result is random (dropout).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    grad_outputs: tuple[torch.Tensor, ...] | None = None
    unique_bytes: int | None = None
    check: Callable[[tuple[Any, ...], tuple[torch.Tensor, ...]], float] | None = None


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build: Callable[[dict[str, int], torch.device, torch.dtype], Case]
    sizes: dict[str, dict[str, int]]  # tier -> the size parameters `build` takes

    def case(self, tier: str, device: torch.device, dtype: torch.dtype) -> Case:
        return self.build(self.sizes[tier], device, dtype)


def _rows_cols(tiny: tuple[int, int], quick: tuple[int, int], full: tuple[int, int]) -> dict[str, dict[str, int]]:
    return {tier: {"rows": r, "cols": c} for tier, (r, c) in zip(TIERS, (tiny, quick, full), strict=True)}


ROW_SIZES = _rows_cols((64, 256), (4096, 4096), (16384, 8192))


def _randn(device: torch.device, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype)


# --- memory-bound kernels ---------------------------------------------------------------------------------------

def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + bias)


def _bias_gelu(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    m, n = p["rows"], p["cols"]
    args = (_randn(device, dtype, m, n), _randn(device, dtype, n))
    return Case(bias_gelu, args, unique_bytes=(2 * m * n + n) * dtype.itemsize)  # x, bias in; y out


DROPOUT_P = 0.1


def bias_dropout_residual(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return residual + F.dropout(x + bias, p=DROPOUT_P, training=True)


def dropout_error(args: tuple[Any, ...], outputs: tuple[torch.Tensor, ...]) -> float:
    """Each element must be either the residual (dropped) or residual + (x + bias) / (1 - p) (kept).

    The mask is random and differs between systems, so the output is checked
    against both legal values instead of against eager's.
    """
    x, bias, residual = (a.float() for a in args)
    out = outputs[0].float()
    dropped = (out - residual).abs()
    kept = (out - residual - (x + bias) / (1 - DROPOUT_P)).abs()
    return torch.minimum(dropped, kept).max().item()


def _bias_dropout_residual(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    m, n = p["rows"], p["cols"]
    args = (_randn(device, dtype, m, n), _randn(device, dtype, n), _randn(device, dtype, m, n))
    # x, bias, residual in; y out. The mask is generated in place, never read.
    return Case(bias_dropout_residual, args, unique_bytes=(3 * m * n + n) * dtype.itemsize, check=dropout_error)


def transpose_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y + torch.sigmoid(x.t())


def _transpose_add(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    m, n = p["rows"], p["cols"]
    args = (_randn(device, dtype, n, m), _randn(device, dtype, m, n))
    return Case(transpose_add, args, unique_bytes=3 * m * n * dtype.itemsize)  # x (read transposed), y in; out


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=-1)


def _row_op(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Case]:
    def build(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
        m, n = p["rows"], p["cols"]
        return Case(fn, (_randn(device, dtype, m, n),), unique_bytes=2 * m * n * dtype.itemsize)  # x in, y out
    return build


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias)


def _layer_norm(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    m, n = p["rows"], p["cols"]
    args = (_randn(device, dtype, m, n), _randn(device, dtype, n), _randn(device, dtype, n))
    return Case(layer_norm, args, unique_bytes=(2 * m * n + 2 * n) * dtype.itemsize)  # x, w, b in; y out


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def _rms_norm(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    m, n = p["rows"], p["cols"]
    args = (_randn(device, dtype, m, n), _randn(device, dtype, n))
    return Case(rms_norm, args, unique_bytes=(2 * m * n + n) * dtype.itemsize)  # x, w in; y out


def residual_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-norm transformer's residual stream: the sum is kept for the next block, and normalized."""
    h = x + residual
    return h, F.layer_norm(h, h.shape[-1:], weight, bias)


def _residual_layer_norm(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    m, n = p["rows"], p["cols"]
    args = (_randn(device, dtype, m, n), _randn(device, dtype, m, n), _randn(device, dtype, n),
            _randn(device, dtype, n))
    # x, residual, w, b in; h and y out.
    return Case(residual_layer_norm, args, unique_bytes=(4 * m * n + 2 * n) * dtype.itemsize)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)


def _cross_entropy(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    n, v = p["rows"], p["vocab"]
    target = torch.randint(0, v, (n,), device=device)
    # logits and int64 targets in; one scalar loss out.
    traffic = n * v * dtype.itemsize + n * target.itemsize + dtype.itemsize
    return Case(cross_entropy, (_randn(device, dtype, n, v), target), unique_bytes=traffic)


ADAM_LR, ADAM_BETAS, ADAM_EPS, ADAM_STEP = 1e-3, (0.9, 0.999), 1e-8, 10


def adam_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
              exp_avg_sqs: list[torch.Tensor]) -> None:
    """One Adam update, in place, over every parameter tensor (torch.optim.Adam's arithmetic, step fixed)."""
    b1, b2 = ADAM_BETAS
    step_size = ADAM_LR / (1 - b1**ADAM_STEP)
    bias_correction2_sqrt = math.sqrt(1 - b2**ADAM_STEP)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS), value=-step_size)


def adam_shapes(count: int, width: int) -> list[tuple[int, ...]]:
    """A model's mix of parameter shapes: square and wide weights with their biases."""
    cycle = [(width, width), (width,), (4 * width, width), (4 * width,), (width, 4 * width)]
    return [cycle[i % len(cycle)] for i in range(count)]


def _adam(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    shapes = adam_shapes(p["tensors"], p["width"])
    state = tuple([_randn(device, dtype, *s) for s in shapes] for _ in range(3))
    exp_avg_sqs = [_randn(device, dtype, *s).abs() for s in shapes]
    numel = sum(math.prod(s) for s in shapes)
    # param, grad, exp_avg, exp_avg_sq read; param, exp_avg, exp_avg_sq written.
    return Case(adam_step, (*state, exp_avg_sqs), unique_bytes=7 * numel * dtype.itemsize)


# --- matmul-bound and model blocks -------------------------------------------------------------------------------

class LinearGelu(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.up(x))


class SwiGLU(nn.Module):
    """LLaMA's MLP: silu(x W1) * (x W3), projected back by W2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    """QKV projection, causal scaled-dot-product attention, output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(x).split(c, dim=-1))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(att.transpose(1, 2).reshape(b, t, c))


class MLPHeads(nn.Module):
    """Independent small MLP heads over one input (multi-task outputs): many tiny parallel matmuls."""

    def __init__(self, count: int, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out))
                                   for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


def _module(make: Callable[[dict[str, int]], nn.Module], input_shape: Callable[[dict[str, int]], tuple[int, ...]],
            backward: bool = False) -> Callable[..., Case]:
    def build(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
        model = make(p).to(device=device, dtype=dtype)
        x = _randn(device, dtype, *input_shape(p))
        if not backward:
            return Case(model.eval(), (x,))
        x.requires_grad_(True)
        with torch.no_grad():
            out = model(x)
        return Case(model.train(), (x,), grad_outputs=(torch.randn_like(out),))
    return build


def _tokens(p: dict[str, int]) -> tuple[int, ...]:
    return (p["batch"], p["seq"], p["width"])


def _transformer(p: dict[str, int]) -> nn.Module:
    return TransformerBlock(p["width"], p["heads"])


_TRANSFORMER_SIZES = {
    "tiny": {"batch": 1, "seq": 16, "width": 64, "heads": 4},
    "quick": {"batch": 8, "seq": 1024, "width": 1024, "heads": 16},
    "full": {"batch": 16, "seq": 2048, "width": 2048, "heads": 16},
}

_W: list[Workload] = [
    Workload("bias_gelu", "x + bias, then GELU", _bias_gelu, ROW_SIZES),
    Workload("bias_dropout_residual", "residual + dropout(x + bias), p=0.1", _bias_dropout_residual, ROW_SIZES),
    Workload("transpose_add", "y + sigmoid(x.t()): one input read across its rows", _transpose_add, ROW_SIZES),
    Workload("softmax", "softmax over the last dim", _row_op(softmax), ROW_SIZES),
    Workload("log_softmax", "log_softmax over the last dim", _row_op(log_softmax), ROW_SIZES),
    Workload("layer_norm", "LayerNorm with weight and bias", _layer_norm, ROW_SIZES),
    Workload("rms_norm", "RMSNorm (LLaMA)", _rms_norm, ROW_SIZES),
    Workload("residual_layer_norm", "h = x + residual; LayerNorm(h); both out", _residual_layer_norm, ROW_SIZES),
    Workload("cross_entropy", "cross-entropy loss over a 50,257-token vocabulary", _cross_entropy,
             {"tiny": {"rows": 4, "vocab": 50257}, "quick": {"rows": 4096, "vocab": 50257},
              "full": {"rows": 8192, "vocab": 50257}}),
    Workload("linear_gelu", "Linear (with bias) then GELU", _module(
        lambda p: LinearGelu(p["width"], p["hidden"]), lambda p: (p["rows"], p["width"])),
        {"tiny": {"rows": 32, "width": 64, "hidden": 128}, "quick": {"rows": 4096, "width": 4096, "hidden": 4096},
         "full": {"rows": 8192, "width": 4096, "hidden": 16384}}),
    Workload("swiglu_mlp", "SwiGLU MLP: W2(silu(x W1) * x W3)", _module(
        lambda p: SwiGLU(p["width"], p["hidden"]), lambda p: (p["rows"], p["width"])),
        {"tiny": {"rows": 32, "width": 64, "hidden": 128}, "quick": {"rows": 4096, "width": 2048, "hidden": 5632},
         "full": {"rows": 8192, "width": 4096, "hidden": 11008}}),
    Workload("attention", "QKV projection, causal SDPA, output projection", _module(
        lambda p: Attention(p["width"], p["heads"]), _tokens), _TRANSFORMER_SIZES),
    Workload("transformer_block", "pre-norm attention + MLP block, forward", _module(_transformer, _tokens),
             _TRANSFORMER_SIZES),
    Workload("transformer_block_train", "pre-norm attention + MLP block, forward + backward",
             _module(_transformer, _tokens, backward=True), _TRANSFORMER_SIZES),
    Workload("adam", "Adam update over many parameter tensors, in place", _adam,
             {"tiny": {"tensors": 10, "width": 32}, "quick": {"tensors": 16, "width": 1024},
              "full": {"tensors": 200, "width": 1024}}),
    Workload("inception", "four parallel conv branches, concatenated, batch 1", _module(
        lambda p: InceptionBlock(p["channels"]), lambda p: (1, p["channels"], p["height"], p["height"])),
        {"tiny": {"channels": 8, "height": 8}, "quick": {"channels": 64, "height": 28},
         "full": {"channels": 192, "height": 28}}),
    Workload("mlp_heads", "parallel small MLP heads, batch 1", _module(
        lambda p: MLPHeads(p["heads"], p["width"], p["hidden"], p["out"]), lambda p: (1, p["width"])),
        {"tiny": {"heads": 4, "width": 64, "hidden": 64, "out": 16},
         "quick": {"heads": 8, "width": 256, "hidden": 256, "out": 32},
         "full": {"heads": 16, "width": 512, "hidden": 512, "out": 64}}),
]

WORKLOADS: dict[str, Workload] = {w.name: w for w in _W}
