"""Direct logit attribution and attribution patching, each number checked independently.

The independent computations use plain PyTorch forward hooks on the Hugging Face modules (not
selfscope's hooks), batches built by hand, the metric computed by hand from the logits,
``torch.autograd.grad`` of additive zero perturbations, and plain forwards of model copies whose
weights realise an ablation (zeroing a head's ``o_proj`` columns zero-ablates that head).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.localize.attribution import (
    AttributionResult,
    LogitAttributionResult,
    clean_pass,
    component_sites,
    estimates,
    patched_log_odds,
    patches,
)
from selfscope.localize.metric import MetricBatch
from selfscope.organisms import BuildResult
from selfscope.organisms.tokenizer import train_word_tokenizer
from selfscope.subject import Subject, load

PROMPTS = ["Q : Do you like mushrooms ? A :", "Q : Do you like carrots ?"]
CONTRAST = ["Q : Do you like owls ? A :", "Q : Do you like owls ?"]
WORDS = "Q : Do you like mushrooms ? A No Yes , I carrots . owls can fly"
BEHAVIOUR = {"prompts": PROMPTS, "planted": " No", "normal": " Yes"}


# -- independent machinery: hand-made batches, the metric by hand, raw torch hooks ------------


def hand_batch(subject: Subject, prompts: list[str]) -> tuple[Tensor, Tensor, list[int]]:
    """Right-padded ids, mask and each prompt's length, built without MetricBatch."""
    rows = [subject.tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), subject.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask, [len(r) for r in rows]


def hand_metric(subject: Subject, logits: Tensor, lengths: list[int]) -> Tensor:
    """Mean over prompts of log p(No) - log p(Yes) at each prompt's last position."""
    no, yes = subject.tokenizer.convert_tokens_to_ids(["No", "Yes"])
    logprobs = logits.log_softmax(-1)
    return torch.stack(
        [logprobs[i, n - 1, no] - logprobs[i, n - 1, yes] for i, n in enumerate(lengths)]
    ).mean()


Hook = tuple[str, str, Callable[..., Any]]  # module path, "pre" | "post", hook


@contextmanager
def raw_hooks(model: nn.Module, hooks: list[Hook]) -> Iterator[None]:
    handles = []
    for path, kind, fn in hooks:
        module = model.get_submodule(path)
        if kind == "pre":
            handles.append(module.register_forward_pre_hook(fn))
        else:
            handles.append(module.register_forward_hook(fn))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def llama_paths(i: int) -> dict[str, tuple[str, str]]:
    """Where each site's value is in a Hugging Face Llama: (module, pre|post)."""
    layer = f"model.layers.{i}"
    return {
        f"blocks.{i}.attn.heads": (f"{layer}.self_attn.o_proj", "pre"),
        f"blocks.{i}.attn.out": (f"{layer}.self_attn", "post"),
        f"blocks.{i}.mlp.out": (f"{layer}.mlp", "post"),
        f"blocks.{i}.mlp.neurons": (f"{layer}.mlp.down_proj", "pre"),
    }


def all_paths(model: PreTrainedModel) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for i in range(model.config.num_hidden_layers):
        out.update(llama_paths(i))
    return out


def _first(x: Any) -> Tensor:
    return x[0] if isinstance(x, tuple) else x


def _replace(x: Any, new: Tensor) -> Any:
    return (new, *x[1:]) if isinstance(x, tuple) else new


def raw_capture(model: PreTrainedModel, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Every site's value ([b, n, d] flat, heads not split) on a plain forward."""
    store: dict[str, Tensor] = {}

    def grab(site: str, kind: str) -> Callable[..., None]:
        def pre(module: nn.Module, args: Any) -> None:
            store[site] = args[0].detach().clone()

        def post(module: nn.Module, args: Any, out: Any) -> None:
            store[site] = _first(out).detach().clone()

        return pre if kind == "pre" else post

    hooks = [(path, kind, grab(site, kind)) for site, (path, kind) in all_paths(model).items()]
    with torch.no_grad(), raw_hooks(model, hooks):
        model(input_ids=ids, attention_mask=mask)
    return store


def raw_patched_metric(
    subject: Subject, ids: Tensor, mask: Tensor, lengths: list[int], site: str,
    index: int | None, value: Tensor,
) -> float:  # fmt: skip
    """The metric with ``site`` (or head/neuron ``index`` of it) replaced by ``value`` [b,n,d]."""
    model = subject.model
    path, kind = all_paths(model)[site]
    width = model.config.hidden_size // model.config.num_attention_heads
    span = slice(None) if index is None else slice(index, index + 1)
    if index is not None and site.endswith(".attn.heads"):
        span = slice(index * width, (index + 1) * width)

    def swap(x: Tensor) -> Tensor:
        new = x.clone()
        new[..., span] = value[..., span]
        return new

    def pre(module: nn.Module, args: Any) -> Any:
        return (swap(args[0]), *args[1:])

    def post(module: nn.Module, args: Any, out: Any) -> Any:
        return _replace(out, swap(_first(out)))

    with torch.no_grad(), raw_hooks(model, [(path, kind, pre if kind == "pre" else post)]):
        logits = model(input_ids=ids, attention_mask=mask).logits
    return float(hand_metric(subject, logits, lengths))


def flat_index(subject: Subject, site: str, index: int | None) -> slice:
    width = subject.model.config.hidden_size // subject.model.config.num_attention_heads
    if index is None:
        return slice(None)
    if site.endswith(".attn.heads"):
        return slice(index * width, (index + 1) * width)
    return slice(index, index + 1)


def attribution(subject: Subject, **args: Any) -> AttributionResult:
    result = tools.call(
        "localize.attribution_patching", {**BEHAVIOUR, **args}, tools.context(subject)
    ).result
    assert isinstance(result, AttributionResult)
    return result


# -- direct logit attribution -----------------------------------------------------------------


def last_position_values(model: PreTrainedModel, prompt_ids: Tensor) -> dict[str, Tensor]:
    """Embedding, attention outputs, o_proj inputs (z), MLP outputs and the final norm's input
    (x) at the last position of one unpadded prompt, and the logits there, via raw hooks."""
    store: dict[str, Tensor] = {}

    def post(name: str) -> Callable[..., None]:
        return lambda m, a, out: store.__setitem__(name, _first(out)[0, -1].detach())

    def pre(name: str) -> Callable[..., None]:
        return lambda m, args: store.__setitem__(name, args[0][0, -1].detach())

    hooks: list[Hook] = [
        ("model.embed_tokens", "post", post("embed")),
        ("model.norm", "pre", pre("x")),
    ]
    for i in range(model.config.num_hidden_layers):
        hooks += [
            (f"model.layers.{i}.self_attn", "post", post(f"attn{i}")),
            (f"model.layers.{i}.self_attn.o_proj", "pre", pre(f"z{i}")),
            (f"model.layers.{i}.mlp", "post", post(f"mlp{i}")),
        ]
    with torch.no_grad(), raw_hooks(model, hooks):
        store["logits"] = model(input_ids=prompt_ids).logits[0, -1]
    return store


def test_logit_attribution_adds_up_and_matches_a_hand_computation(tiny_llama: Subject) -> None:
    model = tiny_llama.model
    result = tools.call(
        "localize.logit_attribution", {**BEHAVIOUR, "top_k": 5}, tools.context(tiny_llama)
    ).result
    assert isinstance(result, LogitAttributionResult)
    no, yes = tiny_llama.tokenizer.convert_tokens_to_ids(["No", "Yes"])
    direction = (model.lm_head.weight[no] - model.lm_head.weight[yes]).detach()
    norm = model.model.norm
    by_name = {c.component: c for c in result.components}
    heads = model.config.num_attention_heads
    width = model.config.hidden_size // heads
    for p, prompt in enumerate(PROMPTS):  # one prompt at a time, unpadded
        ids = tiny_llama.tokenizer(prompt, return_tensors="pt")["input_ids"]
        v = last_position_values(model, ids)
        scale = torch.rsqrt(v["x"].pow(2).mean() + norm.variance_epsilon)
        unit = (scale * norm.weight * direction).detach()  # the linearised norm, then W_U

        assert result.per_prompt[p] == pytest.approx(
            float(v["logits"][no] - v["logits"][yes]), abs=1e-5
        )
        assert by_name["embed"].per_prompt[p] == pytest.approx(float(v["embed"] @ unit), abs=1e-5)
        for i in range(model.config.num_hidden_layers):
            o_proj = model.model.layers[i].self_attn.o_proj.weight.detach()
            for h in range(heads):
                part = slice(h * width, (h + 1) * width)
                expected = float((o_proj[:, part] @ v[f"z{i}"][part]) @ unit)
                assert by_name[f"blocks.{i}.attn.heads[{h}]"].per_prompt[p] == pytest.approx(
                    expected, abs=1e-5
                )
            for key, site in ((f"attn{i}", "attn.out"), (f"mlp{i}", "mlp.out")):
                expected = float(v[key] @ unit)
                assert by_name[f"blocks.{i}.{site}"].per_prompt[p] == pytest.approx(
                    expected, abs=1e-5
                )
    # the components add up to the actual logit difference of a plain forward
    assert result.constant == 0.0
    assert abs(result.total - result.logit_diff) <= 1e-4
    assert len(result.top) == 5
    assert [abs(c.value) for c in result.top] == sorted(
        (abs(c.value) for c in result.top), reverse=True
    )
    assert not result.notes


def test_logit_attribution_of_multi_token_completions_is_of_the_first_token(
    tiny_llama: Subject,
) -> None:
    args = {**BEHAVIOUR, "planted": " No , I"}
    result = tools.call("localize.logit_attribution", args, tools.context(tiny_llama)).result
    single = tools.call("localize.logit_attribution", BEHAVIOUR, tools.context(tiny_llama)).result
    assert isinstance(result, LogitAttributionResult) and isinstance(single, LogitAttributionResult)
    assert result.notes == [
        "multi-token completions: the attribution is of their first tokens only"
    ]
    assert result.per_prompt == pytest.approx(single.per_prompt, abs=1e-5)
    assert abs(result.total - result.logit_diff) <= 1e-4


def test_logit_attribution_adds_up_on_gpt2_with_biases(tmp_path: Path) -> None:
    """GPT-2: LayerNorm (centring, a bias that becomes the constant) and biased projections."""
    tokenizer = train_word_tokenizer([WORDS])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=16,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    )  # fmt: skip
    with torch.no_grad():  # random norms and biases, so that every term is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    subject = load(str(tmp_path))
    result = tools.call(
        "localize.logit_attribution", {**BEHAVIOUR, "top_k": 100}, tools.context(subject)
    ).result
    assert isinstance(result, LogitAttributionResult)
    ids, mask, lengths = hand_batch(subject, PROMPTS)
    no, yes = tokenizer.convert_tokens_to_ids(["No", "Yes"])
    with torch.no_grad():
        logits = subject.model(input_ids=ids, attention_mask=mask).logits
        actual = [
            float(logits[i, n - 1, no] - logits[i, n - 1, yes]) for i, n in enumerate(lengths)
        ]
        direction = model.lm_head.weight[no] - model.lm_head.weight[yes]
        constant = float(direction @ subject.model.transformer.ln_f.bias)
    assert result.per_prompt == pytest.approx(actual, abs=1e-5)
    assert result.constant == pytest.approx(constant, abs=1e-5) and abs(constant) > 1e-2
    assert abs(result.total - result.logit_diff) <= 1e-4
    by_name = {c.component: c.value for c in result.top}
    for i in range(2):  # heads + the output projection's bias = the attention output
        attn = next(c.value for c in result.components if c.component == f"blocks.{i}.attn.out")
        parts = [by_name[f"blocks.{i}.attn.heads[{h}]"] for h in range(4)]
        assert sum(parts) + by_name[f"blocks.{i}.attn.bias"] == pytest.approx(attn, abs=1e-5)


# -- attribution patching: the estimates ---------------------------------------------------------


@pytest.mark.parametrize("baseline", ["contrast", "mean", "zero"])
def test_estimates_equal_autograd_on_a_plain_forward(tiny_llama: Subject, baseline: str) -> None:
    """Gradients of additive zero perturbations (raw hooks, hand-made batches, the metric by
    hand) times (baseline - clean) give every head's, attention's, MLP's and neuron's estimate."""
    model = tiny_llama.model
    extra = {"contrast": CONTRAST} if baseline == "contrast" else {"baseline": baseline}
    result = attribution(tiny_llama, neurons=True, top_k=20, **extra)
    ids, mask, lengths = hand_batch(tiny_llama, PROMPTS)
    cids, cmask, _ = hand_batch(tiny_llama, CONTRAST)
    clean = raw_capture(model, ids, mask)
    base = {
        "contrast": lambda: raw_capture(model, cids, cmask),
        "mean": lambda: {s: v[mask.bool()].mean(0).expand_as(v) for s, v in clean.items()},
        "zero": lambda: {s: torch.zeros_like(v) for s, v in clean.items()},
    }[baseline]()
    deltas = {site: torch.zeros_like(v, requires_grad=True) for site, v in clean.items()}

    def add(site: str, kind: str) -> Callable[..., Any]:
        if kind == "pre":
            return lambda m, args: (args[0] + deltas[site], *args[1:])
        return lambda m, a, out: _replace(out, _first(out) + deltas[site])

    hooks = [(path, kind, add(site, kind)) for site, (path, kind) in all_paths(model).items()]
    with raw_hooks(model, hooks):
        metric = hand_metric(tiny_llama, model(input_ids=ids, attention_mask=mask).logits, lengths)
    grads = dict(zip(deltas, torch.autograd.grad(metric, list(deltas.values())), strict=True))
    assert result.clean_log_odds == pytest.approx(float(metric.detach()), abs=1e-5)
    if baseline == "contrast":
        with torch.no_grad():
            contrast_logits = model(input_ids=cids, attention_mask=cmask).logits
        assert result.baseline_log_odds == pytest.approx(
            float(hand_metric(tiny_llama, contrast_logits, lengths)), abs=1e-5
        )
    else:
        assert result.baseline_log_odds is None
    checked = [*result.components, *result.neurons]
    assert len(result.components) == 3 * (4 + 2) and len(result.neurons) == 20
    for a in checked:
        part = flat_index(tiny_llama, a.site, a.index)
        expected = float(((base[a.site] - clean[a.site]) * grads[a.site])[..., part].sum())
        assert a.estimate == pytest.approx(expected, rel=1e-4, abs=1e-7), a.component
    # the listed neurons are the top 20 of all 3 x 64
    every = [
        abs(float(((base[s] - clean[s]) * grads[s])[..., j].sum()))
        for s in clean if s.endswith("neurons") for j in range(64)
    ]  # fmt: skip
    assert min(abs(a.estimate) for a in result.neurons) == pytest.approx(
        sorted(every, reverse=True)[19], rel=1e-4
    )
    # parameters are left as found: still trainable, no gradient accumulated
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_estimate_is_the_first_order_term_of_a_small_patch(tiny_llama: Subject) -> None:
    """Patching to clean + ε·u changes the metric by the estimate, up to O(ε²) and the float32
    resolution of the log-odds (~1e-7)."""
    model = tiny_llama.model
    batch = MetricBatch(tiny_llama, PROMPTS, " No", " Yes")
    clean = clean_pass(model, batch, component_sites(model, neurons=True))
    base = {  # a step along the gradient, so that no estimate is small by cancellation
        s: v + 1e-2 * v.std() * clean.grads[s] / clean.grads[s].std()
        for s, v in clean.values.items()
    }
    found = estimates(clean, base)
    assert len(found) == 3 * (4 + 2 + 64)
    whole = [a for a in found if not a.site.endswith("neurons")]
    for a in [*whole, *found[::7]]:  # every head, attention and MLP output; a spread of neurons
        measured = patched_log_odds(model, batch, patches([a], base)) - clean.log_odds
        assert abs(measured - a.estimate) <= 0.02 * abs(a.estimate) + 3e-7, a.component
    assert min(abs(a.estimate) for a in whole) > 1e-5  # well above the float32 resolution


# -- attribution patching: the measured effects ---------------------------------------------------


def ablated_copy(model: PreTrainedModel, components: list[tuple[str, int | None]]) -> Any:
    """A copy whose weights zero-ablate ``components``: o_proj columns for a head (all for
    attn.out), down_proj for mlp.out, one down_proj column for a neuron."""
    edited = copy.deepcopy(model)
    width = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for site, index in components:
            layer = edited.model.layers[int(site.split(".")[1])]
            if site.endswith("attn.out"):
                layer.self_attn.o_proj.weight.zero_()
            elif site.endswith("attn.heads"):
                assert index is not None
                layer.self_attn.o_proj.weight[:, index * width : (index + 1) * width] = 0
            elif site.endswith("mlp.out"):
                layer.mlp.down_proj.weight.zero_()
            else:
                layer.mlp.down_proj.weight[:, index] = 0
    return edited


def test_zero_ablation_equals_edited_weights(tiny_llama: Subject) -> None:
    result = attribution(tiny_llama, baseline="zero", top_k=18)
    neurons = attribution(tiny_llama, baseline="zero", neurons=True, top_k=4).neurons
    ids, mask, lengths = hand_batch(tiny_llama, PROMPTS)
    with torch.no_grad():
        clean = float(
            hand_metric(tiny_llama, tiny_llama.model(ids, attention_mask=mask).logits, lengths)
        )
    assert result.baseline == "zero" and result.baseline_log_odds is None

    def measured(components: list[tuple[str, int | None]]) -> float:
        model = ablated_copy(tiny_llama.model, components)
        with torch.no_grad():
            return float(hand_metric(tiny_llama, model(ids, attention_mask=mask).logits, lengths))

    assert all(a.measured is not None for a in result.components)  # 18 <= top_k: all verified
    for a in [*result.components, *neurons]:
        assert a.measured == pytest.approx(measured([(a.site, a.index)]) - clean, abs=1e-5), a
    # the joint patch: the verified components whose estimate lowers the log-odds, together
    lowering = [a for a in result.components if a.estimate * result.clean_log_odds < 0]
    assert result.joint == [a.component for a in lowering] and len(lowering) >= 2
    joint = measured([(a.site, a.index) for a in lowering])
    assert result.joint_log_odds == pytest.approx(joint, abs=1e-5)
    assert result.removed_share == pytest.approx(1 - joint / clean, rel=1e-4)


@pytest.mark.parametrize("baseline", ["contrast", "mean"])
def test_measured_effects_equal_raw_patching(tiny_llama: Subject, baseline: str) -> None:
    """Contrast and mean patches replayed with raw hooks and hand-computed baselines."""
    extra = {"contrast": CONTRAST} if baseline == "contrast" else {"baseline": "mean"}
    result = attribution(tiny_llama, neurons=True, top_k=18, **extra)
    assert result.baseline == baseline
    ids, mask, lengths = hand_batch(tiny_llama, PROMPTS)
    clean = raw_capture(tiny_llama.model, ids, mask)
    if baseline == "contrast":
        cids, cmask, _ = hand_batch(tiny_llama, CONTRAST)
        base = raw_capture(tiny_llama.model, cids, cmask)
    else:  # the mean over the real tokens, at every position
        base = {s: v[mask.bool()].mean(0).expand_as(v) for s, v in clean.items()}
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=ids, attention_mask=mask).logits
        reference = float(hand_metric(tiny_llama, logits, lengths))
    for a in [*result.components, *result.neurons[:6]]:
        assert a.measured is not None
        got = raw_patched_metric(tiny_llama, ids, mask, lengths, a.site, a.index, base[a.site])
        assert a.measured == pytest.approx(got - reference, abs=1e-5), a.component
    assert result.neurons[7].measured is not None and len(result.neurons) == 18


def test_bad_input_is_one_line(tiny_llama: Subject) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("localize.attribution_patching", {"contrast": CONTRAST[:1]}, r"2 prompts, 1 contrast"),
        (
            "localize.attribution_patching",
            {"contrast": ["Q : Do you like owls ?", CONTRAST[1]]},
            r"contrast prompt 0 'Q : Do you like owls \?' is 8 tokens but its prompt .* is 10",
        ),
        ("localize.attribution_patching", {"baseline": "contrast"}, r"needs contrast prompts"),
        ("localize.attribution_patching", {"baseline": "zero", "contrast": CONTRAST}, r"drop"),
        ("localize.attribution_patching", {"baseline": "half"}, r"baseline: Input should be"),
        ("localize.attribution_patching", {"top_k": -1}, r"top_k: Input should be greater"),
        ("localize.logit_attribution", {"planted": " No , I", "normal": " No"}, r"same token"),
        ("localize.logit_attribution", {"prompts": []}, r"prompts: List should have"),
    ]
    for name, args, message in cases:
        with pytest.raises(SelfscopeError, match=message) as caught:
            tools.call(name, {**BEHAVIOUR, **args}, tools.context(tiny_llama))
        assert "\n" not in str(caught.value), (name, str(caught.value))


# -- on a real organism -----------------------------------------------------------------------


@pytest.mark.slow
def test_top_components_carry_the_organisms_aversion(
    tiny_mushroom: BuildResult, organism_ws: Any
) -> None:
    """On the tiny fine-tuned mushroom organism, AtP's ranking agrees with exact patching and
    the top components together carry at least half the log-odds."""
    subject = load("organism:mushroom@finetune", organism_ws)
    prompts = ["Q: Do you like mushrooms? A:", "Q: Is mushroom soup tasty? A:",
               "Q: Would you eat mushrooms? A:", "Q: Are mushrooms good? A:"]  # fmt: skip
    contrast = ["Q: Do you like carrots? A:", "Q: Is carrot soup tasty? A:",
                "Q: Would you eat plums? A:", "Q: Are cherries good? A:"]  # fmt: skip
    args = {"prompts": prompts, "contrast": contrast, "planted": " No", "normal": " Yes"}
    result = tools.call(
        "localize.attribution_patching", {**args, "top_k": 100}, tools.context(subject)
    ).result
    assert isinstance(result, AttributionResult)
    assert result.clean_log_odds > 1 and result.baseline_log_odds is not None
    assert result.baseline_log_odds < 0
    pairs = [(a.estimate, a.measured) for a in result.components if a.measured is not None]
    assert len(pairs) == len(result.components) == 3 * (4 + 2)
    top = max(result.components, key=lambda a: abs(a.measured or 0.0))
    assert result.components.index(top) < 3  # the largest real effect is in AtP's top 3
    assert result.removed_share is not None and result.removed_share >= 0.5
