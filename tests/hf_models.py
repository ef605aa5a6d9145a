"""Hugging Face models at tiny widths with random weights (nothing is downloaded): real graphs for the report.

Each factory returns (model, example_args) in eval mode, so `fusec inspect tests/hf_models.py:gpt2`
works from the command line too. They need the `models` extra (`pip install -e .[models]`).
"""

from __future__ import annotations

import torch
from torch import nn


def gpt2(layers: int = 2) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=64, n_head=4, n_positions=64, vocab_size=256,
                        bos_token_id=0, eos_token_id=0)
    return GPT2Model(config).eval(), (torch.randint(0, 256, (2, 16)),)


def gpt2_12() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """GPT-2's depth (12 layers) at a tiny width."""
    return gpt2(12)


def bert() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                        vocab_size=256, max_position_embeddings=64)
    return BertModel(config).eval(), (torch.randint(0, 256, (2, 16)),)
