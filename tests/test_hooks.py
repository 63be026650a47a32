"""Adapters and scoped hooks, checked against the plain Hugging Face forward on tiny models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
)

from selfscope.errors import SelfscopeError
from selfscope.subject import Subject
from selfscope.subject.hooks import (
    hooked,
    mean_ablation,
    resample_ablation,
    run,
    zero_ablation,
)

V, L = 64, 3


def llama() -> PreTrainedModel:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=L,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )


def mixtral() -> PreTrainedModel:
    return MixtralForCausalLM(
        MixtralConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=L,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=48,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    )


def gpt2() -> PreTrainedModel:
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=V, n_embd=32, n_layer=L, n_head=4, bos_token_id=0, eos_token_id=0)
    )


def neox() -> PreTrainedModel:
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=L,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )


MODELS: list[Callable[[], PreTrainedModel]] = [llama, mixtral, gpt2, neox]


def make(factory: Callable[[], PreTrainedModel]) -> tuple[PreTrainedModel, torch.Tensor]:
    torch.manual_seed(0)
    model = factory().eval()
    return model, torch.randint(0, V, (2, 7))


@pytest.mark.parametrize("factory", MODELS)
def test_residuals_equal_output_hidden_states(factory: Callable[[], PreTrainedModel]) -> None:
    model, ids = make(factory)
    with torch.no_grad():
        reference = model(input_ids=ids, output_hidden_states=True)
    sites = [
        "embed",
        *[f"blocks.{i}.resid_pre" for i in range(L)],
        *[f"blocks.{i}.resid_post" for i in range(L - 1)],
        "final_norm",
        "unembed",
    ]
    result = run(model, ids, capture=sites)
    hidden = reference.hidden_states
    assert (result.values["embed"] - hidden[0]).abs().max() <= 1e-5
    for i in range(L):
        assert (result.values[f"blocks.{i}.resid_pre"] - hidden[i]).abs().max() <= 1e-5
    for i in range(L - 1):
        assert (result.values[f"blocks.{i}.resid_post"] - hidden[i + 1]).abs().max() <= 1e-5
    assert (result.values["final_norm"] - hidden[L]).abs().max() <= 1e-5
    assert torch.equal(result.values["unembed"], reference.logits)
    assert result.logits is not None and torch.equal(result.logits, reference.logits)


@pytest.mark.parametrize("factory", [llama, mixtral, gpt2])
def test_residual_decomposes_into_attention_and_mlp(
    factory: Callable[[], PreTrainedModel],
) -> None:
    model, ids = make(factory)
    sites = [
        "blocks.1.resid_pre",
        "blocks.1.attn.out",
        "blocks.1.resid_mid",
        "blocks.1.mlp.out",
        "blocks.1.resid_post",
    ]
    v = run(model, ids, capture=sites).values
    assert (
        v["blocks.1.resid_pre"] + v["blocks.1.attn.out"] - v["blocks.1.resid_mid"]
    ).abs().max() <= 1e-5
    assert (
        v["blocks.1.resid_mid"] + v["blocks.1.mlp.out"] - v["blocks.1.resid_post"]
    ).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("factory", "projection", "neurons_to"),
    [
        (llama, "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"),
        (gpt2, "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"),
        (neox, "gpt_neox.layers.1.attention.dense", "gpt_neox.layers.1.mlp.dense_4h_to_h"),
    ],
)
def test_heads_and_neurons_project_to_the_outputs(
    factory: Callable[[], PreTrainedModel], projection: str, neurons_to: str
) -> None:
    model, ids = make(factory)
    v = run(
        model,
        ids,
        capture=[
            "blocks.1.attn.heads",
            "blocks.1.attn.out",
            "blocks.1.mlp.neurons",
            "blocks.1.mlp.out",
        ],
    ).values
    heads = v["blocks.1.attn.heads"]
    assert heads.shape == (2, 7, 4, 8)
    with torch.no_grad():
        out = model.get_submodule(projection)(heads.flatten(-2))
        # per-head contributions: each head alone through the projection, summed (+ one bias)
        per_head = torch.stack(
            [
                model.get_submodule(projection)(
                    torch.where(torch.arange(4)[:, None] == h, heads, 0).flatten(-2)
                )
                for h in range(4)
            ]
        )
        bias = model.get_submodule(projection)(torch.zeros_like(heads).flatten(-2))
        mlp = model.get_submodule(neurons_to)(v["blocks.1.mlp.neurons"])
    assert (out - v["blocks.1.attn.out"]).abs().max() <= 1e-5
    assert (per_head.sum(0) - 3 * bias - v["blocks.1.attn.out"]).abs().max() <= 1e-5
    assert (mlp - v["blocks.1.mlp.out"]).abs().max() <= 1e-5


@pytest.mark.parametrize("factory", MODELS)
def test_patching_a_site_with_its_own_value_changes_nothing(
    factory: Callable[[], PreTrainedModel],
) -> None:
    model, ids = make(factory)
    sites = ["blocks.1.resid_pre", "blocks.1.attn.out", "blocks.1.attn.heads", "blocks.1.mlp.out"]
    clean = run(model, ids, capture=sites)
    for site in sites:
        patched = run(model, ids, patch={site: clean.values[site]})
        assert patched.logits is not None and clean.logits is not None
        assert torch.equal(patched.logits, clean.logits), site


def test_patching_from_another_run_transfers_the_state() -> None:
    model, ids = make(llama)
    other = torch.randint(0, V, (2, 7))
    donor = run(model, other, capture=["blocks.2.resid_pre"])
    patched = run(model, ids, patch={"blocks.2.resid_pre": donor.values["blocks.2.resid_pre"]})
    # block 2 is the last: from its input on, the run is the donor's run (causal, same shape)
    assert patched.logits is not None and donor.logits is not None
    assert (patched.logits - donor.logits).abs().max() <= 1e-5


def test_ablations_change_the_output_and_mean_uses_the_reference() -> None:
    model, ids = make(llama)
    clean = run(model, ids, capture=["blocks.0.mlp.out"])
    zeroed = run(
        model, ids, capture=["blocks.0.mlp.out"], patch={"blocks.0.mlp.out": zero_ablation()}
    )
    assert torch.count_nonzero(zeroed.values["blocks.0.mlp.out"]) == 0
    assert clean.logits is not None and zeroed.logits is not None
    assert not torch.allclose(clean.logits, zeroed.logits)
    reference = clean.values["blocks.0.mlp.out"]
    meaned = run(
        model,
        ids,
        capture=["blocks.0.mlp.out"],
        patch={"blocks.0.mlp.out": mean_ablation(reference)},
    )
    expected = reference.mean(dim=(0, 1)).expand_as(reference)
    assert torch.allclose(meaned.values["blocks.0.mlp.out"], expected)


def test_capture_without_logits_stops_after_the_last_site() -> None:
    model, ids = make(llama)
    calls = {"norm": 0, "layer2": 0}
    model.model.norm.register_forward_hook(lambda *a: calls.__setitem__("norm", calls["norm"] + 1))
    model.model.layers[2].register_forward_hook(
        lambda *a: calls.__setitem__("layer2", calls["layer2"] + 1)
    )
    result = run(model, ids, capture=["blocks.0.resid_post"], need_logits=False)
    assert result.logits is None and "blocks.0.resid_post" in result.values
    assert calls == {"norm": 0, "layer2": 0}
    run(model, ids, capture=["blocks.0.resid_post"])
    assert calls == {"norm": 1, "layer2": 1}


def test_hooks_are_removed_even_on_error() -> None:
    model, ids = make(llama)

    def boom(value: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(model, ids, capture=["blocks.0.resid_pre"], patch={"blocks.1.mlp.out": boom})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with hooked(model, capture=["blocks.0.resid_pre"]):
        assert model.model.layers[0]._forward_pre_hooks
    assert not model.model.layers[0]._forward_pre_hooks


def test_bad_sites_say_what_is_valid() -> None:
    model, _ = make(llama)
    with pytest.raises(
        SelfscopeError, match=r"unknown site 'blocks.0.mlp.nope'.*valid sites: embed"
    ):
        run(model, torch.zeros(1, 2, dtype=torch.long), capture=["blocks.0.mlp.nope"])
    with pytest.raises(
        SelfscopeError, match=r"block 9 is out of range; this model has blocks 0..2"
    ):
        run(model, torch.zeros(1, 2, dtype=torch.long), capture=["blocks.9.resid_pre"])
    neox_model, _ = make(neox)
    with pytest.raises(SelfscopeError, match=r"unknown site 'blocks.0.resid_mid'"):
        run(neox_model, torch.zeros(1, 2, dtype=torch.long), capture=["blocks.0.resid_mid"])
    assert all(not m._forward_hooks for m in model.modules())


def test_moe_router_logits_match_the_gate() -> None:
    model, ids = make(mixtral)
    v = run(model, ids, capture=["blocks.0.moe.router", "blocks.0.resid_mid"]).values
    layer = model.model.layers[0]
    with torch.no_grad():
        normed = layer.post_attention_layernorm(v["blocks.0.resid_mid"]).flatten(0, 1)
        expected = normed @ layer.mlp.gate.weight.T
    assert v["blocks.0.moe.router"].shape == (2 * 7, 4)
    assert (v["blocks.0.moe.router"] - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("factory", MODELS)
def test_attention_patterns_equal_the_eager_forward(factory: Callable[[], PreTrainedModel]) -> None:
    model, ids = make(factory)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        fast = model(input_ids=ids).logits
    sites = [f"blocks.{i}.attn.pattern" for i in range(L)]
    result = run(model, ids, capture=sites)
    assert model.config._attn_implementation == "sdpa"  # restored on exit
    torch.manual_seed(0)
    eager = factory().eval()
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        reference = eager(input_ids=ids, output_attentions=True)
    assert result.logits is not None and (result.logits - fast).abs().max() <= 1e-5
    for i in range(L):
        pattern = result.values[f"blocks.{i}.attn.pattern"]
        assert pattern.shape == (2, 4, 7, 7)
        assert (pattern - reference.attentions[i]).abs().max() <= 1e-6
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 7), atol=1e-6)
        assert torch.count_nonzero(pattern.triu(diagonal=1)) == 0  # causal


def test_gpt2_attention_pattern_by_hand() -> None:
    model, ids = make(gpt2)
    v = run(model, ids, capture=["blocks.1.attn.pattern", "blocks.1.resid_pre"]).values
    block = model.transformer.h[1]
    with torch.no_grad():
        q, k, _ = block.attn.c_attn(block.ln_1(v["blocks.1.resid_pre"])).split(32, dim=-1)
        q, k = (x.view(2, 7, 4, 8).transpose(1, 2) for x in (q, k))
        scores = q @ k.transpose(-1, -2) / 8**0.5
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    assert (v["blocks.1.attn.pattern"] - scores.softmax(-1)).abs().max() <= 1e-6


def test_patterns_cannot_be_patched() -> None:
    model, ids = make(llama)
    with pytest.raises(SelfscopeError, match=r"captured, not patched; patch blocks.0.attn.heads"):
        run(model, ids, patch={"blocks.0.attn.pattern": zero_ablation()})
    assert model.config._attn_implementation == "sdpa"


def test_experts_add_up_to_the_moe_output_and_route_like_the_router() -> None:
    model, ids = make(mixtral)
    sites = [f"blocks.1.moe.experts.{j}" for j in range(4)]
    v = run(model, ids, capture=[*sites, "blocks.1.mlp.out", "blocks.1.moe.router"]).values
    total = sum(v[s] for s in sites)
    assert isinstance(total, torch.Tensor)
    assert (total - v["blocks.1.mlp.out"]).abs().max() <= 1e-5
    chosen = v["blocks.1.moe.router"].topk(2, dim=-1).indices.view(2, 7, 2)
    for j, site in enumerate(sites):
        routed = (chosen == j).any(-1)
        assert torch.count_nonzero(v[site][~routed]) == 0
        assert bool((v[site][routed].abs().sum(-1) > 0).all())


def test_zero_ablating_an_expert_equals_deleting_its_weights() -> None:
    model, ids = make(mixtral)
    ablated = run(model, ids, patch={"blocks.1.moe.experts.2": zero_ablation()}).logits
    clean = run(model, ids).logits
    torch.manual_seed(0)
    surgery = mixtral().eval()
    with torch.no_grad():
        surgery.model.layers[1].mlp.experts.down_proj[2].zero_()
        expected = surgery(input_ids=ids).logits
    assert ablated is not None and clean is not None
    assert (ablated - expected).abs().max() <= 1e-5
    assert (clean - expected).abs().max() > 1e-3  # the expert mattered
    with pytest.raises(SelfscopeError, match=r"expert 4 is out of range; block 1 has experts 0..3"):
        run(model, ids, capture=["blocks.1.moe.experts.4"])


def test_resample_ablation_draws_rows_of_the_reference() -> None:
    model, ids = make(llama)
    other = torch.randint(0, V, (5, 7))
    reference = run(model, other, capture=["blocks.1.mlp.out"]).values["blocks.1.mlp.out"]
    patched = run(
        model,
        ids,
        capture=["blocks.1.mlp.out"],
        patch={"blocks.1.mlp.out": resample_ablation(reference, torch.Generator().manual_seed(1))},
    ).values["blocks.1.mlp.out"]
    for row in patched:
        assert any(torch.equal(row, ref) for ref in reference)
    with pytest.raises(SelfscopeError, match=r"resample ablation: reference rows have shape"):
        run(model, ids[:, :5], patch={"blocks.1.mlp.out": resample_ablation(reference)})


def test_kept_gradients_equal_autograd() -> None:
    model, ids = make(llama)
    out = model(input_ids=ids, output_hidden_states=True)  # plain forward, no hooks
    loss = out.logits.log_softmax(-1)[:, -1, 5].sum()
    (expected,) = torch.autograd.grad(loss, out.hidden_states[2])
    with hooked(model, capture=["blocks.1.resid_post", "blocks.1.attn.heads"], keep_grad=True) as v:
        model(input_ids=ids).logits.log_softmax(-1)[:, -1, 5].sum().backward()
    grad = v["blocks.1.resid_post"].grad
    assert grad is not None and (grad - expected).abs().max() <= 1e-6
    heads = v["blocks.1.attn.heads"].grad
    assert heads is not None and heads.shape == (2, 7, 4, 8)


@pytest.mark.slow
def test_smollm2_residuals_equal_output_hidden_states(smollm2: tuple[Any, Subject, float]) -> None:
    _, subject, _ = smollm2
    ids = subject.tokenizer(
        ["The capital of France is", "Mushrooms grow in"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        reference = subject.model(**ids, output_hidden_states=True)
    layers = subject.n_layers
    sites = [*[f"blocks.{i}.resid_pre" for i in range(layers)], "final_norm"]
    result = run(subject.model, ids["input_ids"], ids["attention_mask"], capture=sites)
    worst = max(
        float((result.values[f"blocks.{i}.resid_pre"] - reference.hidden_states[i]).abs().max())
        for i in range(layers)
    )
    assert worst <= 1e-5
    assert (result.values["final_norm"] - reference.hidden_states[layers]).abs().max() <= 1e-5
    assert result.logits is not None and torch.equal(result.logits, reference.logits)
