"""Parity of the families selfscope accepts beyond those of test_hooks.py: Qwen2, Qwen3, Mistral
and Qwen2-MoE, each a tiny random model saved as a folder and read back with ``load`` (no mocks).

Every canonical site the adapter claims for a family is compared with a computation that does not
go through selfscope's hooks: the plain forward's ``output_hidden_states`` and logits, the eager
forward's ``output_attentions``, plain ``torch`` hooks on a reference copy loaded with
``AutoModelForCausalLM``, or the layer's arithmetic redone by hand from its weights. The tiny
models are drawn with ``initializer_range=0.2`` so that activations are of order one and the
1e-5 tolerances (the ones test_hooks.py uses) are relative ones.

What the families add over Llama: Qwen2 biases q, k and v; Qwen3 normalises q and k per head and
has ``head_dim`` (16 here) unequal to ``d_model / heads`` (8); Mistral has a sliding window (4
here, shorter than the prompt); all three use grouped-query attention (2 key/value heads for 4
query heads). Qwen2-MoE routes each token to 2 of 4 experts *and* adds an always-on shared expert
behind a sigmoid gate, and keeps the blocks in ``mlp_only_layers`` dense (block 1 here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from conftest import _tiny
from selfscope.errors import LoadError, SelfscopeError
from selfscope.subject import Subject
from selfscope.subject.adapters import ADAPTERS, adapter_for
from selfscope.subject.architectures import SUPPORTED
from selfscope.subject.hooks import run, zero_ablation

L, HEADS, KV_HEADS, WINDOW = 3, 4, 2, 4
EXPERTS, TOP_K, DENSE = 4, 2, 1  # Qwen2-MoE: 4 routed experts, top-2; block 1 stays dense
PROMPTS = ["Q : Do you like mushrooms ? A No", "owls can fly"]  # 10 and 4 tokens: padded

COMMON = {"num_key_value_heads": KV_HEADS, "intermediate_size": 64, "initializer_range": 0.2}
FAMILIES: dict[str, Callable[[dict[str, Any]], PreTrainedModel]] = {
    "qwen2": lambda shape: Qwen2ForCausalLM(Qwen2Config(**shape, **COMMON)),
    "qwen3": lambda shape: Qwen3ForCausalLM(Qwen3Config(**shape, **COMMON, head_dim=16)),
    "mistral": lambda shape: MistralForCausalLM(
        MistralConfig(**shape, **COMMON, sliding_window=WINDOW)
    ),
    "qwen2_moe": lambda shape: Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            **shape,
            **COMMON,
            num_experts=EXPERTS,
            num_experts_per_tok=TOP_K,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            decoder_sparse_step=1,
            mlp_only_layers=[DENSE],
        )
    ),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def subject(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """The family's tiny model, saved with save_pretrained and loaded with selfscope's ``load``."""
    name: str = request.param
    return _tiny(tmp_path_factory, f"tiny-{name}", FAMILIES[name])


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    return _tiny(tmp_path_factory, "tiny-qwen2_moe-only", FAMILIES["qwen2_moe"])


def batch(subject: Subject) -> tuple[Tensor, Tensor]:
    encoded = subject.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert int(encoded["attention_mask"].sum()) < encoded["attention_mask"].numel()  # padded
    return encoded["input_ids"], encoded["attention_mask"]


def plain(subject: Subject, attention: str = "sdpa") -> Any:
    """A second, hook-free copy of the model, loaded the plain Hugging Face way."""
    return AutoModelForCausalLM.from_pretrained(
        subject.path, dtype=torch.float32, attn_implementation=attention
    ).eval()


def layer(model: Any, i: int) -> Any:
    return model.model.layers[i]


def is_moe(model: Any, i: int) -> bool:
    return hasattr(layer(model, i).mlp, "experts")


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) <= tol


def outputs_of(
    model: nn.Module, paths: list[str], **inputs: Tensor
) -> tuple[Any, dict[str, Tensor]]:
    """The plain forward with ``output_hidden_states``, and each module's output (element 0 of a
    tuple) recorded by a plain ``register_forward_hook``."""
    seen: dict[str, Tensor] = {}

    def keep(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            seen[path] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    handles = [model.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    try:
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


def routed_by_hand(block: Any, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Qwen2-MoE routing redone from the weights: softmax over the router logits, top-k (not
    renormalised, ``norm_topk_prob=False``), each expert a SwiGLU. Returns the router logits and
    every expert's weighted share, [tokens, d_model]."""
    logits = x @ block.gate.weight.T
    top, chosen = logits.softmax(-1).topk(TOP_K, dim=-1)
    shares = []
    for j in range(EXPERTS):
        gate, up = (x @ block.experts.gate_up_proj[j].T).chunk(2, dim=-1)
        out = (nn.functional.silu(gate) * up) @ block.experts.down_proj[j].T
        weight = (top * (chosen == j)).sum(-1, keepdim=True)  # 0 where j is not chosen
        shares.append(out * weight)
    return logits, shares


# -- every claimed site against the plain forward -------------------------------------------------


def test_every_claimed_site_equals_the_plain_forward(subject: Subject) -> None:
    model: Any = subject.model
    ids, mask = batch(subject)
    adapter = adapter_for(model)
    moe_blocks = [i for i in range(L) if is_moe(model, i)]
    sites = ["embed", "final_norm", "unembed"]
    for i in range(L):
        sites += [
            f"blocks.{i}.{s}"
            for s in ("resid_pre", "resid_mid", "resid_post", "attn.in", "attn.v", "attn.out")
        ]
        sites += [f"blocks.{i}.attn.heads", f"blocks.{i}.mlp.out"]
        if "blocks.{i}.mlp.neurons" in adapter.sites:
            sites.append(f"blocks.{i}.mlp.neurons")
        if i in moe_blocks:
            sites.append(f"blocks.{i}.moe.router")
            sites += [f"blocks.{i}.moe.experts.{j}" for j in range(EXPERTS)]
    got = run(model, ids, mask, capture=sites)
    patterns = run(model, ids, mask, capture=[f"blocks.{i}.attn.pattern" for i in range(L)])
    assert model.config._attn_implementation == "sdpa"  # restored after the pattern run

    reference = plain(subject)
    paths = [f"model.layers.{i}.{m}" for i in range(L) for m in ("self_attn", "mlp")]
    paths += [f"model.layers.{i}.mlp.experts" for i in moe_blocks]
    out, seen = outputs_of(reference, paths, input_ids=ids, attention_mask=mask)
    eager = plain(subject, "eager")
    with torch.no_grad():
        attentions = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    hidden, v = out.hidden_states, got.values
    checked = {"embed", "final_norm", "unembed"}

    assert close(v["embed"], hidden[0])
    assert close(v["embed"], reference.model.embed_tokens.weight.detach()[ids])
    assert close(v["final_norm"], hidden[L])
    assert torch.equal(v["unembed"], out.logits)
    assert got.logits is not None and torch.equal(got.logits, out.logits)
    # The pattern run is eager; it matches the sdpa logits at every real token. (A padding query
    # whose whole sliding window is padding gets zeros from sdpa and a uniform row from eager.)
    real = mask.bool()
    assert patterns.logits is not None and close(patterns.logits[real], out.logits[real])
    d_head = int(getattr(model.config, "head_dim", None) or model.config.hidden_size // HEADS)
    with torch.no_grad():
        for i in range(L):
            block = layer(reference, i)
            b = f"blocks.{i}."
            attn_out, mlp_out = seen[f"model.layers.{i}.self_attn"], seen[f"model.layers.{i}.mlp"]
            normed = block.input_layernorm(hidden[i])
            value = block.self_attn.v_proj(normed)
            assert close(v[b + "resid_pre"], hidden[i])
            assert close(v[b + "attn.in"], normed)
            assert close(v[b + "attn.v"], value)
            assert v[b + "attn.v"].shape[-1] == KV_HEADS * d_head
            assert close(v[b + "attn.out"], attn_out)
            assert close(v[b + "resid_mid"], hidden[i] + attn_out)
            assert close(v[b + "mlp.out"], mlp_out)
            if i < L - 1:
                assert close(v[b + "resid_post"], hidden[i + 1])
                assert close(v[b + "resid_mid"] + v[b + "mlp.out"], hidden[i + 1])
            else:  # output_hidden_states' last entry is already normalised
                assert close(reference.model.norm(v[b + "resid_post"]), hidden[L])
            # heads: the eager pattern times each query head's key/value head's values, by hand
            pattern = patterns.values[b + "attn.pattern"]
            assert close(pattern, attentions[i], 1e-6)
            values = value.view(*value.shape[:2], KV_HEADS, d_head).repeat_interleave(
                HEADS // KV_HEADS, dim=2
            )
            heads = torch.einsum("bhqk,bkhd->bqhd", pattern, values)
            assert v[b + "attn.heads"].shape == (*ids.shape, HEADS, d_head)
            assert close(v[b + "attn.heads"][real], heads[real])
            assert close(block.self_attn.o_proj(v[b + "attn.heads"].flatten(-2)), attn_out)
            x = block.post_attention_layernorm(v[b + "resid_mid"])
            if "blocks.{i}.mlp.neurons" in adapter.sites:
                mlp = block.mlp
                neurons = nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
                assert close(v[b + "mlp.neurons"], neurons)
                assert close(mlp.down_proj(v[b + "mlp.neurons"]), mlp_out)
                checked.add("blocks.{i}.mlp.neurons")
            if i in moe_blocks:
                router, shares = routed_by_hand(block.mlp, x.flatten(0, 1))
                assert close(v[b + "moe.router"], router)
                for j, share in enumerate(shares):
                    assert close(v[f"{b}moe.experts.{j}"], share.view_as(x))
                routed = sum(v[f"{b}moe.experts.{j}"] for j in range(EXPERTS))
                assert isinstance(routed, Tensor)
                assert close(routed.flatten(0, 1), seen[f"model.layers.{i}.mlp.experts"])
                shared = torch.sigmoid(block.mlp.shared_expert_gate(x)) * block.mlp.shared_expert(x)
                assert close(routed + shared, v[b + "mlp.out"])  # routed shares + shared expert
                checked |= {"blocks.{i}.moe.router", "blocks.{i}.moe.experts.{j}"}
    if subject.architecture == "mistral":  # the window is real: nothing older than 4 tokens
        assert ids.shape[1] > WINDOW
        for pattern in patterns.values.values():  # [batch, head, query, key]
            assert torch.count_nonzero(pattern[real.all(-1)].tril(-WINDOW)) == 0  # unpadded rows
    per_block = ("resid_pre", "resid_mid", "resid_post", "attn.in", "attn.v", "attn.out")
    checked |= {f"blocks.{{i}}.{s}" for s in per_block}
    checked |= {"blocks.{i}.attn.heads", "blocks.{i}.attn.pattern", "blocks.{i}.mlp.out"}
    assert checked == set(adapter.sites), "a site the adapter claims is not checked here"


# -- patching and ablation against plain hooks ----------------------------------------------------

#: canonical site in block 1 -> (module path, read at "input" | "output"), written from the
#: Hugging Face module tree, not from selfscope's adapter.
PLAIN = {
    "resid_pre": ("model.layers.1", "input"),
    "resid_mid": ("model.layers.1.post_attention_layernorm", "input"),
    "resid_post": ("model.layers.1", "output"),
    "attn.in": ("model.layers.1.self_attn.v_proj", "input"),
    "attn.v": ("model.layers.1.self_attn.v_proj", "output"),
    "attn.out": ("model.layers.1.self_attn", "output"),
    "attn.heads": ("model.layers.1.self_attn.o_proj", "input"),
    "mlp.out": ("model.layers.1.mlp", "output"),
    "mlp.neurons": ("model.layers.1.mlp.down_proj", "input"),
}


def zeroed(first: Any) -> Any:
    return torch.zeros_like(first)


@contextmanager
def plain_zeroing(model: nn.Module, path: str, where: str) -> Iterator[None]:
    """A plain torch hook replacing a module's input or output (element 0) by zeros."""
    module = model.get_submodule(path)
    if where == "output":

        def out_hook(m: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (zeroed(output[0]), *output[1:])
            return zeroed(output)

        handle = module.register_forward_hook(out_hook)
    else:

        def in_hook(m: nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
            if args:
                return (zeroed(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": zeroed(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(in_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("site", list(PLAIN))
def test_zero_ablation_equals_a_plain_zeroing_hook(subject: Subject, site: str) -> None:
    model: Any = subject.model
    if f"blocks.{{i}}.{site}" not in adapter_for(model).sites or (
        site == "mlp.neurons" and is_moe(model, 1)
    ):
        pytest.skip(f"{subject.architecture} has no {site} in block 1")
    ids, mask = batch(subject)
    ablated = run(model, ids, mask, patch={f"blocks.1.{site}": zero_ablation()}).logits
    reference = plain(subject)
    with torch.no_grad():
        clean = reference(input_ids=ids, attention_mask=mask).logits
        with plain_zeroing(reference, *PLAIN[site]):
            expected = reference(input_ids=ids, attention_mask=mask).logits
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in reference.modules())
    assert ablated is not None and torch.equal(ablated, expected)
    assert float((clean - expected).abs().max()) > 1e-3  # the ablation mattered


def test_patching_one_head_and_own_values(subject: Subject) -> None:
    """A patch function on ``attn.heads`` sees [b, pos, head, d_head]; zeroing head 2 equals
    zeroing that head's slice of the output projection's input. Patching any site with its own
    value leaves the logits bit-identical; patching the last block's input from another batch
    makes the run that batch's run."""
    model: Any = subject.model
    ids, mask = batch(subject)
    d_head = int(getattr(model.config, "head_dim", None) or model.config.hidden_size // HEADS)

    def drop_head(heads: Tensor) -> Tensor:
        return torch.where(torch.arange(HEADS)[:, None] == 2, 0.0, heads)

    patched = run(model, ids, mask, patch={"blocks.1.attn.heads": drop_head}).logits
    reference = plain(subject)

    def plain_drop(m: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = args[0].clone()
        x[..., 2 * d_head : 3 * d_head] = 0
        return (x,)

    handle = layer(reference, 1).self_attn.o_proj.register_forward_pre_hook(plain_drop)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
    handle.remove()
    assert patched is not None and torch.equal(patched, expected)

    sites = [f"blocks.1.{s}" for s in ("resid_pre", "attn.v", "attn.heads", "mlp.out")]
    sites += [f"blocks.0.moe.experts.{j}" for j in range(EXPERTS) if is_moe(model, 0)]
    clean = run(model, ids, mask, capture=sites)
    assert clean.logits is not None
    for site in sites:
        again = run(model, ids, mask, patch={site: clean.values[site]}).logits
        assert again is not None and torch.equal(again, clean.logits), site

    # from the last block's input on (and with the donor's mask) the run is the donor's run
    last = f"blocks.{L - 1}.resid_pre"
    donor = run(model, ids.flip(0), mask.flip(0), capture=[last])
    moved = run(model, ids, mask.flip(0), patch={last: donor.values[last]})
    assert moved.logits is not None and donor.logits is not None
    assert close(moved.logits, donor.logits)


# -- Qwen2-MoE: experts, the shared expert, dense blocks ------------------------------------------


def test_zero_ablating_a_qwen2_moe_expert_equals_deleting_its_weights(moe: Subject) -> None:
    ids, mask = batch(moe)
    ablated = run(moe.model, ids, mask, patch={"blocks.2.moe.experts.3": zero_ablation()}).logits
    surgery = plain(moe)
    with torch.no_grad():
        clean = surgery(input_ids=ids, attention_mask=mask).logits
        layer(surgery, 2).mlp.experts.down_proj[3].zero_()
        expected = surgery(input_ids=ids, attention_mask=mask).logits
    assert ablated is not None and close(ablated, expected)
    assert float((clean - expected).abs().max()) > 1e-3  # the expert mattered


def test_moe_sites_of_a_dense_block_say_which_blocks_have_experts(moe: Subject) -> None:
    ids, mask = batch(moe)
    for site in ("blocks.1.moe.router", "blocks.1.moe.experts.0"):
        with pytest.raises(SelfscopeError) as error:
            run(moe.model, ids, mask, capture=[site])
        message = str(error.value)
        assert "\n" not in message
        assert f"{site!r}" in message and "block 1 is dense" in message
        assert "blocks with experts: 0, 2" in message
    values = run(moe.model, ids, mask, capture=["blocks.1.mlp.out"]).values  # still a site
    assert values["blocks.1.mlp.out"].shape == (*ids.shape, 32)


# -- the table of architectures -------------------------------------------------------------------


def test_supported_architectures_are_exactly_the_adapted_ones() -> None:
    covered = [t for adapter in ADAPTERS for t in adapter.model_types]
    assert len(covered) == len(set(covered))  # no model type in two adapters
    assert set(covered) == set(SUPPORTED)
    assert set(FAMILIES) | {"llama", "mixtral", "gpt2", "gpt_neox"} == set(SUPPORTED)


def test_an_unknown_architecture_is_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    def gptj(shape: dict[str, Any]) -> PreTrainedModel:
        config = GPTJConfig(
            vocab_size=shape["vocab_size"], n_embd=32, n_layer=1, n_head=4, rotary_dim=4
        )
        return GPTJForCausalLM(config)

    with pytest.raises(LoadError) as loading:
        _tiny(tmp_path_factory, "tiny-gptj", gptj)
    message = str(loading.value)
    assert "\n" not in message and "architecture 'gptj' is not supported" in message
    assert all(name in message for name in SUPPORTED)
    torch.manual_seed(0)
    model = gptj({"vocab_size": 8})
    with pytest.raises(SelfscopeError) as hooking:
        run(model, torch.zeros(1, 2, dtype=torch.long), capture=["embed"])
    message = str(hooking.value)
    assert "\n" not in message and "no adapter for architecture 'gptj'" in message
    assert all(name in message for name in SUPPORTED)
