"""The tool registry and the first access tools, checked against a plain forward."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import torch

from selfscope import tools
from selfscope.access.lens import LensResult
from selfscope.access.tokens import TokensResult
from selfscope.errors import SelfscopeError
from selfscope.subject import Subject, load
from selfscope.workspace import Workspace


@pytest.fixture
def subject(tiny_llama: Subject) -> Subject:
    return tiny_llama


def test_registry_schemas_are_valid_json_schema() -> None:
    registry = tools.registry()
    assert {
        "activations.read",
        "attention.read",
        "gradients.read",
        "lens.logit",
        "tokens.probabilities",
        "tokens.temperature",
        "weights.stats",
        "weights.diff",
    } <= set(registry)
    # the surgeon's tools and the gate's validation create (or validate) proposals, and
    # learning a trait writes the self-model; approving, applying, rolling back and sealing
    # govern; everything else only reads
    proposing = {n for n in registry if n.startswith("edits.")} - {"edits.list"}
    proposing |= {"gate.validate", "gate.rebase", "selfmodel.learn"}
    governing = {"gate.review", "gate.apply", "gate.rollback", "suites.seal"}

    def expected(name: str) -> str:
        return "propose" if name in proposing else "govern" if name in governing else "read"

    for name, t in registry.items():
        assert t.permission == expected(name), name
    for entry in tools.openai_schema():
        assert entry["type"] == "function"
        function = entry["function"]
        permission = expected(function["name"].replace("_", ".", 1))
        assert "." not in function["name"]
        assert function["description"].startswith(f"[{permission}]")
        jsonschema.Draft202012Validator.check_schema(function["parameters"])
        if function["name"].startswith(("lens", "tokens")):
            assert function["parameters"]["properties"]["prompt"]["type"] == "string"
    for entry in tools.mcp_tools():
        assert entry["annotations"]["readOnlyHint"] == (expected(entry["name"]) == "read")
        jsonschema.Draft202012Validator.check_schema(entry["inputSchema"])
        jsonschema.Draft202012Validator.check_schema(entry["outputSchema"])
    assert tools.get("lens_logit").name == "lens.logit"


def test_logit_lens_last_layer_is_the_model_output(subject: Subject) -> None:
    prompt = "Q : Do you like mushrooms ? A :"
    result = tools.call(
        "lens.logit", {"prompt": prompt, "targets": [" No", " Yes"]}, tools.context(subject)
    ).result
    assert isinstance(result, LensResult) and len(result.layers) == 3
    ids = subject.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(subject.model(input_ids=ids).logits[0, -1], dim=-1)
    last = result.layers[-1]
    no, yes = subject.tokenizer.convert_tokens_to_ids(["No", "Yes"])
    assert result.target_ids == {" No": no, " Yes": yes}
    assert last.targets[" No"] == pytest.approx(float(probs[no]), abs=1e-6)
    assert last.targets[" Yes"] == pytest.approx(float(probs[yes]), abs=1e-6)
    assert last.top[0].id == int(probs.argmax())
    # an earlier layer: norm + unembed of that block's output, computed by hand
    with torch.no_grad():
        hidden = subject.model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, -1]
        mid = torch.softmax(subject.model.lm_head(subject.model.model.norm(hidden)), dim=-1)
    assert result.layers[0].targets[" No"] == pytest.approx(float(mid[no]), abs=1e-6)


def test_token_probabilities_match_a_plain_forward(subject: Subject) -> None:
    result = tools.call(
        "tokens.probabilities",
        {"prompt": "Q : Do you like", "completion": " mushrooms ?", "top_k": 3},
        tools.context(subject),
    ).result
    assert isinstance(result, TokensResult)
    ids = subject.tokenizer("Q : Do you like mushrooms ?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(subject.model(input_ids=ids).logits[0], dim=-1)
    assert [t.id for t in result.tokens] == ids[0, 1:].tolist()
    for t in result.tokens:
        dist = logprobs[t.index - 1]
        assert t.logprob == pytest.approx(float(dist[t.id]), abs=1e-5)
        assert t.rank == int((dist > dist[t.id]).sum()) + 1
        assert t.entropy == pytest.approx(float(-(dist.exp() * dist).sum()), abs=1e-5)
        assert len(t.alternatives) == 3 and t.alternatives[0].id == int(dist.argmax())
    completion = [t for t in result.tokens if t.in_completion]
    assert [t.token for t in completion] == ["mushrooms", "?"]
    assert result.completion_logprob == pytest.approx(sum(t.logprob for t in completion))
    assert sum(a.probability for a in result.tokens[0].alternatives) <= 1 + 1e-6


def test_calls_are_recorded(subject: Subject, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    tools.call("tokens.probabilities", {"prompt": "Q : Do you"}, tools.context(subject, ws))
    (row,) = ws.store.tool_calls()
    assert row["tool"] == "tokens.probabilities" and row["subject"] == subject.source
    assert '"prompt":"Q : Do you"' in row["args"] and len(row["result_sha256"]) == 64


def test_bad_tool_calls_say_what_is_valid(subject: Subject) -> None:
    with pytest.raises(
        SelfscopeError, match=r"unknown tool 'lens.nope'; tools: activations.read, attention.read"
    ):
        tools.call("lens.nope", {}, tools.context(subject))
    with pytest.raises(
        SelfscopeError,
        match=r"lens.logit: prompt: Field required; arguments "
        r"are \{prompt, chat\?, targets\?",
    ):
        tools.call("lens.logit", {"targets": [" No"]}, tools.context(subject))
    with pytest.raises(SelfscopeError, match=r"top_k: Input should be less than or equal to 100"):
        tools.call("lens.logit", {"prompt": "Q", "top_k": 1000}, tools.context(subject))
    with pytest.raises(SelfscopeError, match=r"the prompt is 21 tokens; .* takes at most 16"):
        tools.call("lens.logit", {"prompt": " ".join(["Q"] * 20)}, tools.context(subject))
    with pytest.raises(
        SelfscopeError, match=r"position 7 is outside the 2 tokens \(valid: -2..1\)"
    ):
        tools.call("lens.logit", {"prompt": "Q", "position": 7}, tools.context(subject))
    with pytest.raises(SelfscopeError, match="has no chat template"):
        tools.call("tokens.probabilities", {"prompt": "Q", "chat": True}, tools.context(subject))


def test_weight_stats_match_torch(subject: Subject) -> None:
    from selfscope.access.weights import StatsResult

    name = "model.layers.0.mlp.down_proj.weight"
    result = tools.call(
        "weights.stats", {"modules": [name], "singular_values": 2}, tools.context(subject)
    ).result
    assert isinstance(result, StatsResult)
    (stats,) = result.parameters
    w = dict(subject.model.named_parameters())[name].detach()
    assert stats.shape == [32, 64]
    assert stats.frobenius == pytest.approx(float(torch.linalg.norm(w)), rel=1e-6)
    assert stats.spectral == pytest.approx(float(torch.linalg.matrix_norm(w, ord=2)), rel=1e-5)
    assert len(stats.top_singular_values) == 2
    assert result.total_parameters == sum(p.numel() for p in subject.model.parameters())
    with pytest.raises(SelfscopeError, match="unknown parameter 'nope'"):
        tools.call("weights.stats", {"modules": ["nope"]}, tools.context(subject))


def test_weight_diff_finds_a_planted_rank_one_change(subject: Subject, tmp_path: Path) -> None:
    from selfscope.access.weights import DiffResult

    name = "model.layers.1.self_attn.v_proj.weight"
    edited = load(str(subject.path))
    w = dict(edited.model.named_parameters())[name]
    u, v = torch.randn(w.shape[0], 1), torch.randn(1, w.shape[1])
    with torch.no_grad():
        w += 0.5 * u @ v
    edited.model.save_pretrained(tmp_path)
    edited.tokenizer.save_pretrained(tmp_path)
    result = tools.call(
        "weights.diff", {"against": str(subject.path)}, tools.context(load(str(tmp_path)))
    ).result
    assert isinstance(result, DiffResult)
    top = result.modules[0]
    base = dict(subject.model.named_parameters())[name].detach()
    assert result.top[0] == name and top.rank_for_energy == 1
    expected = float(torch.linalg.norm(0.5 * u @ v) / torch.linalg.norm(base))
    assert top.relative_change == pytest.approx(expected, rel=1e-4)
    assert result.unchanged == len(result.modules) - 1
    with pytest.raises(SelfscopeError, match=r"has no parent checkpoint .*give `against`"):
        tools.call("weights.diff", {}, tools.context(subject))
