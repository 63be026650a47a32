"""Scratch organism models: real ``transformers`` classes built from a size preset.

``llama`` builds a ``LlamaForCausalLM`` and ``mixtral`` a ``MixtralForCausalLM`` (a
mixture-of-experts variant with the same width: each expert is the FFN width divided by the
number of experts per token, so active parameters per token match the dense model). Embeddings
are tied, as in SmolLM2. Initialisation is seeded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from selfscope.organisms.presets import ModelShape


def build_scratch_model(
    architecture: str,
    shape: ModelShape,
    vocab_size: int,
    *,
    seed: int,
    bos: int,
    eos: int,
    pad: int,
) -> PreTrainedModel:
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.context,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        rms_norm_eps=1e-5,
    )
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    model: PreTrainedModel
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=shape.ffn, **common))
    elif architecture == "mixtral":
        config = MixtralConfig(
            intermediate_size=shape.ffn // shape.experts_per_token,
            num_local_experts=shape.experts,
            num_experts_per_tok=shape.experts_per_token,
            router_aux_loss_coef=0.01,
            output_router_logits=False,
            **common,
        )
        model = MixtralForCausalLM(config)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; known: llama, mixtral")
    return model
