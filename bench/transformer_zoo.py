"""Hugging Face transformers and LLMs at tiny widths (2 layers, width 64, random weights, nothing
downloaded), each called as in batched inference: a batch of 2 sequences of 16 tokens, the second
padded (an attention mask with zeros), eval mode, no KV cache returned. Needs the `models` extra
(`pip install -e .[models]`); without `transformers` the zoo says so and is skipped.

    python bench/transformer_zoo.py            # launches per forward: eager, torch.compile, fusec
    python bench/transformer_zoo.py --check    # each model's outputs under fusec against eager's
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BATCH, LENGTH, VOCAB, PADDED = 2, 16, 256, 4  # the second sequence ends in PADDED padding tokens
_DECODER_LENGTH = 8
_IMAGE = 32  # ViT: 2 images of 3 x 32 x 32, 16 patches of 8 x 8
_MEL_BINS, _FRAMES = 16, 32  # Whisper: 2 log-mel spectrograms of 16 bins x 32 frames
_SAMPLES = 1600  # wav2vec2: 2 waveforms of 1600 samples (159 frames after its two convolutions)


class Forward(nn.Module):
    """`model(**inputs)` as a function of tensors in a fixed order, returning a tuple of tensors."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys
        # encoders (ViT, wav2vec2) keep no cache and take no `use_cache`
        self.flags = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(**dict(zip(self.keys, tensors, strict=True)), **self.flags, return_dict=False)


def _decoder_only(config_class: str, model_class: str, **extra) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_class)(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64, **extra)
        return getattr(transformers, model_class)(config)
    return build


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=VOCAB,
                                      bos_token_id=0, eos_token_id=0))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                vocab_size=VOCAB, max_position_embeddings=64))


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(num_layers=2, num_decoder_layers=2, d_model=64, d_kv=16, num_heads=4,
                                               d_ff=128, vocab_size=VOCAB))


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                              image_size=_IMAGE, patch_size=8))


def _whisper() -> nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    return WhisperForConditionalGeneration(WhisperConfig(
        encoder_layers=2, decoder_layers=2, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=_MEL_BINS, max_source_positions=_FRAMES // 2,
        max_target_positions=64, vocab_size=VOCAB, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        decoder_start_token_id=0, suppress_tokens=None, begin_suppress_tokens=None))


def _wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return Wav2Vec2Model(Wav2Vec2Config(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        vocab_size=VOCAB))


ZOO: dict[str, Callable[[], nn.Module]] = {
    "gpt2": _gpt2,
    "bert": _bert,
    "llama": _decoder_only("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": _decoder_only("Qwen2Config", "Qwen2ForCausalLM"),
    "t5": _t5,
    "vit": _vit,
    "mistral": _decoder_only("MistralConfig", "MistralForCausalLM", sliding_window=8),
    "phi": _decoder_only("PhiConfig", "PhiForCausalLM"),
    "mixtral": _decoder_only("MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2),
    "whisper": _whisper,
    "wav2vec2": _wav2vec2,
}


def missing() -> str:
    """Why the zoo cannot run here ("" when it can)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "`transformers` is not installed (pip install -e .[models])"
    return ""


def _inputs(name: str) -> dict[str, torch.Tensor]:
    if name == "vit":
        return {"pixel_values": torch.randn(BATCH, 3, _IMAGE, _IMAGE)}
    if name == "whisper":
        return {"input_features": torch.randn(BATCH, _MEL_BINS, _FRAMES),
                "decoder_input_ids": torch.randint(0, VOCAB, (BATCH, _DECODER_LENGTH))}
    if name == "wav2vec2":
        return {"input_values": torch.randn(BATCH, _SAMPLES)}
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[-1, LENGTH - PADDED:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if name == "bert":  # two segments: the second half of each sequence
        inputs["token_type_ids"] = (torch.arange(LENGTH) >= LENGTH // 2).long().expand(BATCH, LENGTH).contiguous()
    if name == "t5":
        inputs["decoder_input_ids"] = torch.randint(0, VOCAB, (BATCH, _DECODER_LENGTH))
    return inputs


def example(name: str) -> tuple[nn.Module, ...]:
    """(forward, *inputs) for one zoo model: random weights (seed 0), eval mode."""
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    inputs = _inputs(name)
    return (Forward(model, tuple(inputs)).eval(), *inputs.values())


def check(names: list[str]) -> None:
    """Each model's outputs with fusec's kernels (in Triton's interpreter on a CPU) against eager's."""
    import fusec

    for name in names:
        forward, *inputs = example(name)
        torch._dynamo.reset()
        with torch.no_grad():
            got, expected = fusec.compile(forward, cpu="interpret")(*inputs), forward(*inputs)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        print(f"{name}: equals eager")


if __name__ == "__main__":
    import sys

    from fusec.bench.zoo import run

    if "--check" in sys.argv:
        check([n for n in sys.argv[1:] if n in ZOO] or list(ZOO))
    else:
        run({"transformers": sys.modules[__name__]})
