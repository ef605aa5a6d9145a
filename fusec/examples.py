"""Bundled example models: each builder returns (model, example_args)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class PointwiseBlock(nn.Module):
    """Bias, GELU, gated residual and scaling: a chain of pointwise ops that is one kernel."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(width) * 0.1)
        self.gate = nn.Parameter(torch.randn(width) * 0.1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(x + self.bias)
        return residual + torch.sigmoid(self.gate) * h * 0.5


class MLPBlock(nn.Module):
    """Linear -> GELU -> Linear with a residual: matmuls with pointwise epilogues."""

    def __init__(self, width: int = 128, hidden: int = 512) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class TransformerBlock(nn.Module):
    """Pre-norm attention and MLP, as in GPT-2."""

    def __init__(self, width: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, 4 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return self.mlp(self.ln2(x))


class InceptionBlock(nn.Module):
    """Four independent branches over one input, concatenated: a wide DAG."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(channels, channels, 1)
        self.b3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.b5 = nn.Conv2d(channels, channels, 5, padding=2)
        self.pool = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.b1(x))
        b = torch.relu(self.b3(x)) * 0.5
        c = torch.sigmoid(self.b5(x))
        d = torch.relu(self.pool(torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)))
        return torch.cat([a, b, c, d], dim=1)


class NormBlock(nn.Module):
    """Residual add + LayerNorm, RMSNorm, softmax: normalization-heavy work."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = self.ln(x + residual)
        rms = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale
        return torch.softmax(rms, dim=-1)


def _pointwise() -> tuple[nn.Module, tuple]:
    return PointwiseBlock(256), (torch.randn(64, 256), torch.randn(64, 256))


def _mlp() -> tuple[nn.Module, tuple]:
    return MLPBlock(128, 512), (torch.randn(4, 16, 128),)


def _transformer() -> tuple[nn.Module, tuple]:
    return TransformerBlock(128, 4), (torch.randn(2, 16, 128),)


def _inception() -> tuple[nn.Module, tuple]:
    return InceptionBlock(16), (torch.randn(1, 16, 8, 8),)


def _norm() -> tuple[nn.Module, tuple]:
    return NormBlock(256), (torch.randn(8, 256), torch.randn(8, 256))


EXAMPLES: dict[str, tuple[str, Callable[[], tuple[nn.Module, tuple[Any, ...]]]]] = {
    "pointwise": ("bias + GELU + gated residual: one fused kernel", _pointwise),
    "mlp": ("Linear -> GELU -> Linear + residual", _mlp),
    "transformer": ("pre-norm attention + MLP block (GPT-2 style)", _transformer),
    "inception": ("four parallel conv branches, concatenated", _inception),
    "norm": ("residual + LayerNorm, RMSNorm, softmax", _norm),
}


def build(name: str) -> tuple[nn.Module, tuple[Any, ...]]:
    if name not in EXAMPLES:
        raise KeyError(f"no example named {name!r}; choose one of: {', '.join(EXAMPLES)}")
    torch.manual_seed(0)
    model, args = EXAMPLES[name][1]()
    return model.eval(), args
