"""The training workloads measured only by `fusec bench --memory`: a CNN with BatchNorm and GPT-2."""

from __future__ import annotations

import torch
from torch import nn

from fusec.bench.workloads import Case, Workload


def _conv_bn(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    c = p["channels"]
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                          nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
    x = torch.randn(p["batch"], 3, p["height"], p["height"], device=device, dtype=dtype)
    return Case(model.to(device=device, dtype=dtype), (x,))


class _LanguageModelLoss(nn.Module):
    """A causal language model's training loss on a batch of token ids (the ids are their own labels)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, labels=ids).loss


def _gpt2(p: dict[str, int], device: torch.device, dtype: torch.dtype) -> Case:
    # Imported here: transformers is the optional `models` extra (measure() says when it is missing).
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=p["layers"], n_embd=p["width"], n_head=4, n_positions=p["tokens"],
                        vocab_size=p["vocab"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = _LanguageModelLoss(GPT2LMHeadModel(config)).to(device=device, dtype=dtype)
    ids = torch.randint(0, p["vocab"], (p["batch"], p["tokens"]), device=device)
    return Case(model, (ids,))


CONV_BN = Workload("conv_bn_train", "two Conv2d + BatchNorm2d + ReLU layers, forward + backward", _conv_bn,
                   {"tiny": {"batch": 2, "channels": 16, "height": 16},
                    "quick": {"batch": 32, "channels": 64, "height": 56},
                    "full": {"batch": 64, "channels": 128, "height": 56}})

# Hugging Face GPT-2 at a tiny config, random weights, dropout off: the language-model loss, forward + backward.
GPT2 = Workload("gpt2_train", "Hugging Face GPT-2 (tiny config) language-model loss, forward + backward", _gpt2,
                {"tiny": {"layers": 2, "width": 128, "vocab": 1024, "batch": 4, "tokens": 64},
                 "quick": {"layers": 4, "width": 512, "vocab": 8192, "batch": 8, "tokens": 512},
                 "full": {"layers": 12, "width": 768, "vocab": 50257, "batch": 8, "tokens": 1024}})

MEMORY_ONLY = {w.name: w for w in (CONV_BN, GPT2)}
