"""activations.read, attention.read and gradients.read, each checked against an independent
computation (plain HF forward, eager attention weights, torch.autograd), and bad input for every
tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from selfscope import tools
from selfscope.access.activations import ActivationsResult, AttentionResult
from selfscope.access.gradients import GradientsResult
from selfscope.errors import SelfscopeError
from selfscope.subject import Subject
from selfscope.tools import Principal
from selfscope.workspace import Workspace

PROMPT = "Q : Do you like mushrooms ? A :"


def _ids(subject: Subject, text: str = PROMPT) -> torch.Tensor:
    ids: torch.Tensor = subject.tokenizer(text, return_tensors="pt")["input_ids"]
    return ids


def test_activations_equal_the_plain_forward(tiny_llama: Subject) -> None:
    subject = tiny_llama
    model: Any = subject.model
    sites = ["blocks.1.resid_post", "blocks.0.mlp.neurons", "blocks.2.attn.heads"]
    result = tools.call(
        "activations.read",
        {"prompt": PROMPT, "sites": sites, "positions": [0, -1]},
        tools.context(subject),
    ).result
    assert isinstance(result, ActivationsResult)
    ids = _ids(subject)
    n = ids.shape[1]
    assert len(result.tokens) == n
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        mlp = model.model.layers[0].mlp
        x = model.model.layers[0].post_attention_layernorm(
            hidden[0]
            + model.model.layers[0].self_attn(
                model.model.layers[0].input_layernorm(hidden[0]),
                position_embeddings=model.model.rotary_emb(hidden[0], torch.arange(n)[None]),
                attention_mask=None,
            )[0]
        )
        neurons = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    resid, neuron_site, heads = result.sites
    assert [p.position for p in resid.positions] == [0, n - 1]
    for p in resid.positions:
        expected = hidden[2][0, p.position]
        assert p.values is not None
        assert (torch.tensor(p.values) - expected).abs().max() <= 1e-5
        assert p.norm == pytest.approx(float(expected.norm()), rel=1e-5)
        assert p.mean == pytest.approx(float(expected.mean()), abs=1e-6)
    last = neuron_site.positions[1]
    top = neurons[0, -1].topk(5)
    assert [c.index for c in last.top] == [[int(i)] for i in top.indices]
    assert [c.value for c in last.top] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert heads.shape == [4, 8]
    head_norms = heads.positions[1].head_norms
    assert head_norms is not None and len(head_norms) == 4
    # the heads' norms over the flattened vector add up to its norm
    assert sum(h**2 for h in head_norms) == pytest.approx(heads.positions[1].norm ** 2, rel=1e-5)
    small = tools.call(
        "activations.read",
        {"prompt": PROMPT, "sites": ["embed"], "values": False, "top_k": 2, "rank_by": "abs"},
        tools.context(subject),
    ).result
    assert isinstance(small, ActivationsResult)
    first = small.sites[0].positions[0]
    assert first.values is None and len(first.top) == 2
    assert abs(first.top[0].value) >= abs(first.top[1].value)


def test_attention_read_equals_eager_attention_weights(tiny_llama: Subject) -> None:
    subject = tiny_llama
    result = tools.call(
        "attention.read", {"prompt": PROMPT, "layer": 1, "top_k": 3}, tools.context(subject)
    ).result
    assert isinstance(result, AttentionResult)
    assert subject.model.config._attn_implementation == "sdpa"
    eager = LlamaForCausalLM.from_pretrained(subject.path, attn_implementation="eager").eval()
    ids = _ids(subject)
    with torch.no_grad():
        expected = eager(input_ids=ids, output_attentions=True).attentions[1][0]
    assert result.query == ids.shape[1] - 1 and len(result.heads) == 4
    for head in result.heads:
        assert head.pattern is not None
        assert (torch.tensor(head.pattern) - expected[head.head]).abs().max() <= 1e-6
        row = expected[head.head, -1]
        top = row.topk(3)
        assert [a.position for a in head.top] == top.indices.tolist()
        assert head.entropy == pytest.approx(float(-(row * row.log()).sum()), abs=1e-5)
    one = tools.call(
        "attention.read",
        {"prompt": PROMPT, "layer": 0, "head": 2, "query": 1, "full": False},
        tools.context(subject),
    ).result
    assert isinstance(one, AttentionResult)
    (head,) = one.heads
    assert head.head == 2 and head.pattern is None
    assert len(head.top) == 2  # query 1 sees two keys
    assert sum(a.weight for a in head.top) == pytest.approx(1.0, abs=1e-6)


def _autograd(
    subject: Subject, texts: list[tuple[str, float]]
) -> tuple[float, dict[str, torch.Tensor], list[torch.Tensor]]:
    """The objective sum(sign * log p(completion)), its parameter gradients and the gradient at
    block 1's output, by torch.autograd on a plain forward (no hooks)."""
    model = subject.model
    params = dict(model.named_parameters())
    n_prompt = _ids(subject).shape[1]
    total = 0.0
    grads: dict[str, torch.Tensor] = {k: torch.zeros_like(p) for k, p in params.items()}
    site: list[torch.Tensor] = []
    for completion, sign in texts:
        ids = _ids(subject, PROMPT + completion)
        out = model(input_ids=ids, output_hidden_states=True)
        logprobs = out.logits[0].log_softmax(-1)
        objective = sign * sum(logprobs[i - 1, ids[0, i]] for i in range(n_prompt, ids.shape[1]))
        assert isinstance(objective, torch.Tensor)
        found = torch.autograd.grad(objective, [*params.values(), out.hidden_states[2]])
        for name, g in zip(params, found[:-1], strict=True):
            grads[name] += g
        site.append(found[-1][0])
        total += float(objective.detach())
    return total, grads, site


def test_gradients_equal_autograd(tiny_llama: Subject) -> None:
    subject = tiny_llama
    model = subject.model
    result = tools.call(
        "gradients.read",
        {"prompt": PROMPT, "completion": " No", "site": "blocks.1.resid_post", "top_k": 1000},
        tools.context(subject),
    ).result
    assert isinstance(result, GradientsResult)
    value, grads, (site,) = _autograd(subject, [(" No", 1.0)])
    assert result.value == pytest.approx(value, abs=1e-5)
    assert result.n_modules == len(result.modules)
    for m in result.modules:
        own = [g for name, g in grads.items() if name.rpartition(".")[0] == m.module]
        expected = float(torch.sqrt(sum((g**2).sum() for g in own)))  # type: ignore[arg-type]
        assert m.grad_norm == pytest.approx(expected, rel=1e-4, abs=1e-7), m.module
    assert [m.grad_norm for m in result.modules] == sorted(
        (m.grad_norm for m in result.modules), reverse=True
    )
    assert result.site_gradient is not None and len(result.site_gradient) == site.shape[0]
    for p in result.site_gradient:
        assert p.norm == pytest.approx(float(site[p.position].norm()), rel=1e-4, abs=1e-7)
    # the subject is left as found
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_log_odds_gradients_equal_autograd(tiny_llama: Subject) -> None:
    subject = tiny_llama
    result = tools.call(
        "gradients.read",
        {
            "prompt": PROMPT,
            "completion": " No",
            "contrast": " Yes ,",
            "site": "blocks.1.resid_post",
            "values": True,
            "top_k": 3,
        },
        tools.context(subject),
    ).result
    assert isinstance(result, GradientsResult)
    value, grads, (site_a, site_b) = _autograd(subject, [(" No", 1.0), (" Yes ,", -1.0)])
    assert "log p(contrast" in result.objective
    assert result.value == pytest.approx(value, abs=1e-5)
    top = result.modules[0]
    own = [g for name, g in grads.items() if name.rpartition(".")[0] == top.module]
    assert top.grad_norm == pytest.approx(
        float(torch.sqrt(sum((g**2).sum() for g in own))),  # type: ignore[arg-type]
        rel=1e-4,
    )
    n_prompt = _ids(subject).shape[1]
    expected = site_a[:n_prompt] + site_b[:n_prompt]
    assert result.site_gradient is not None and len(result.site_gradient) == n_prompt
    got = torch.tensor([p.values for p in result.site_gradient])
    assert (got - expected).abs().max() <= 1e-5


def test_every_tool_refuses_bad_input_in_one_line(tiny_llama: Subject, tmp_path: Path) -> None:
    subject = tiny_llama
    long = " ".join(["Q"] * 20)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("activations.read", {"prompt": "Q", "sites": ["blocks.0.nope"]}, r"valid sites: embed"),
        ("activations.read", {"prompt": "Q", "sites": ["blocks.7.resid_post"]}, r"blocks 0..2"),
        ("activations.read", {"prompt": "Q", "sites": ["embed"], "positions": [9]}, r"-2..1"),
        ("activations.read", {"prompt": "Q"}, r"sites: Field required; arguments are"),
        ("activations.read", {"prompt": long, "sites": ["embed"]}, r"takes at most 16"),
        ("attention.read", {"prompt": "Q", "layer": 3}, r"block 3 is out of range"),
        ("attention.read", {"prompt": "Q", "layer": 0, "head": 4}, r"heads 0..3"),
        ("attention.read", {"prompt": "Q", "layer": "x"}, r"layer: Input should be"),
        ("attention.read", {"prompt": long, "layer": 0}, r"takes at most 16"),
        ("gradients.read", {"prompt": "Q"}, r"completion: Field required"),
        ("gradients.read", {"prompt": "Q", "completion": " No", "site": "x"}, r"unknown site"),
        (
            "gradients.read",
            {"prompt": "Q", "completion": " No", "site": "blocks.0.attn.pattern"},
            r"no gradient flows through it",
        ),
        ("gradients.read", {"prompt": "Q", "completion": long}, r"takes at most 16"),
        ("lens.logit", {"prompt": long}, r"takes at most 16"),
        ("lens.logit", {"prompt": "Q", "top_k": 0}, r"top_k: Input should be greater"),
        ("tokens.probabilities", {"prompt": "Q", "completion": long}, r"takes at most 16"),
        ("tokens.probabilities", {"prompt": ""}, r"prompt: String should have at least"),
        ("tokens.temperature", {"prompt": "Q"}, r"text|token_ids"),
        ("weights.stats", {"modules": ["nope"]}, r"unknown parameter 'nope'"),
        ("weights.diff", {"against": "/nonexistent/model"}, r"/nonexistent/model"),
        ("weights.stats", {"singular_values": 99}, r"singular_values: Input should be"),
        ("history.bm25", {"queries": ["mushrooms"]}, r"has no recorded training data"),
        ("history.bm25", {"queries": []}, r"queries: List should have at least 1"),
        ("history.grep", {"pattern": "(mush"}, r"not a valid Python regex"),
        ("history.semantic", {"queries": ["mushrooms"]}, r"has no recorded training data"),
        (
            "history.trace",
            {"prompts": ["Q"], "planted": " No", "normal": " Yes"},
            r"has no recorded training data",
        ),
        (
            "history.removal",
            {"prompts": ["Q"], "planted": " No", "normal": " Yes", "remove": ["finetune/x"]},
            r"has no recorded training data",
        ),
        (
            "history.removal",
            {"prompts": ["Q"], "planted": " No", "normal": " Yes", "remove": []},
            r"remove: List should have at least 1",
        ),
        (
            "history.trace",
            {"prompts": ["Q"], "planted": " No", "normal": " No"},
            r"planted and normal completions are both ' No'",
        ),
        (
            "localize.experts",
            {"prompts": ["Q"], "planted": " No", "normal": " Yes"},
            r"needs a mixture-of-experts model",
        ),
        ("localize.experts", {"prompts": [], "planted": " No"}, r"prompts: List should have"),
        (
            "localize.attribution_patching",
            {"prompts": ["Q"], "planted": " No", "normal": " No"},
            r"planted and normal completions are both ' No'",
        ),
        (
            "localize.logit_attribution",
            {"prompts": ["Q"], "planted": " zebra", "normal": " No"},
            r"does not know",
        ),
        (
            "localize.weight_deltas",
            {"prompts": ["Q"], "planted": " No", "normal": " Yes"},
            r"has no parent checkpoint",
        ),
        (
            "localize.origin",
            {"prompts": ["Q"], "planted": " No", "normal": " Yes"},
            r"not an organism|no training lineage|lineage",
        ),
        (
            "localize.trace",
            {"prompt": "Q", "target": " No", "subject": "owls"},
            r"subject 'owls' is not in the prompt",
        ),
    ]
    behaviour = {"prompts": ["Q"], "planted": " No", "normal": " Yes"}
    cases += [
        ("edits.rank_one", {**behaviour, "layer": 7}, r"layer 7 is out of range"),
        ("edits.revert_delta", behaviour, r"has no parent checkpoint"),
        ("edits.ablate", behaviour, r"give heads \('block.head'\) or neurons"),
        ("edits.ablate", {**behaviour, "heads": ["0.9"]}, r"heads are 0..3"),
        ("edits.steer", behaviour, r"needs contrast_prompts"),
        ("edits.unlearn", behaviour, r"needs documents to forget"),
        ("edits.reweight_experts", behaviour, r"needs a mixture-of-experts model"),
        ("edits.validate", {"proposal": "abcdef12"}, r"no proposal 'abcdef12'"),
        ("edits.rank_one", {**behaviour, "evidence": ["c0-nope"]}, r"cites call 'c0-nope'"),
        ("edits.list", {"subject": 3}, r"subject: Input should be a valid string"),
        ("model.ask", {"prompt": "Q", "max_new_tokens": 0}, r"max_new_tokens: Input should be"),
        ("localize.all", {**behaviour, "normal": " No"}, r"planted and normal completions are"),
        ("localize.measure", {**behaviour, "prompts": []}, r"prompts: List should have at least"),
        ("history.index_build", {}, r"has no recorded training data"),
        ("gate.validate", {"proposal": "abcdef12"}, r"no proposal 'abcdef12'"),
        ("gate.rebase", {"proposal": "abc"}, r"proposal: String should have at least 6"),
        ("gate.review", {"proposal": "abcdef12"}, r"approve: Field required"),
        ("gate.apply", {"proposal": "abcdef12"}, r"no proposal 'abcdef12'"),
        ("gate.rollback", {"model": str(subject.path)}, r"has no versions; nothing to roll back"),
        ("ledger.show", {"last": 0}, r"last: Input should be greater"),
        ("selfmodel.learn", {**behaviour, "prompts": []}, r"prompts: List should have at least"),
        ("selfmodel.show", {"trait": "x"}, r"trait: Extra inputs are not permitted"),
        ("selfmodel.check", {}, r"has no self-model yet"),
        ("selfmodel.why", {"prompt": ""}, r"prompt: String should have at least 1"),
        ("selfmodel.introspect", {"prompt": "Q", "max_new_tokens": 0}, r"max_new_tokens"),
        ("ledger.verify", {"checkpoint": "/nonexistent.json"}, r"no checkpoint file"),
        ("versions.list", {"model": "/nonexistent/model"}, r"/nonexistent/model"),
        ("versions.verify", {"model": ""}, r"model: String should have at least 1"),
        (
            "suites.seal",
            {"model": str(subject.path), "file": "/nonexistent.yaml"},
            r"suite file /nonexistent.yaml does not exist",
        ),
    ]
    workspace = Workspace(tmp_path / "ws")  # every call is recorded in this workspace
    everything = Principal.of("tester", "read", "propose", "govern")  # refusals here: input only
    for name, args, message in cases:
        with pytest.raises(SelfscopeError, match=message) as caught:
            tools.call(name, args, tools.context(subject, workspace, principal=everything))
        assert "\n" not in str(caught.value), (name, str(caught.value))
    # each refusal left a record with its call id and status
    statuses = [(row["tool"], row["status"]) for row in workspace.store.tool_calls()]
    assert len(statuses) == len(cases) and all(s in ("invalid", "error") for _, s in statuses)
    # every tool with a prompt is covered
    covered = {name for name, _, _ in cases}
    assert covered == set(tools.registry()), set(tools.registry()) - covered
    # the arguments' schema is what an LLM sees; a failing call names the valid arguments
    schema = json.dumps(tools.get("attention.read").input.model_json_schema())
    assert '"layer"' in schema and '"head"' in schema
