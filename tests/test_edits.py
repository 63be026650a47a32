"""The surgeon (selfscope.edits): every proposal kind on tiny real models, every reported number
checked against an independent computation (a plain Hugging Face forward of a model folder with
the delta added, hooked ablations, the router's own logits), and the subject never written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from selfscope import tools
from selfscope.behaviour import Expect, Probe, Suite
from selfscope.edits import proposal as proposals
from selfscope.edits.rank_one import update_direction
from selfscope.edits.sandbox import ValidationReport, add_delta, sandbox
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.organisms import BuildResult, Spec
from selfscope.organisms.suites import suite_for
from selfscope.subject import Subject, load
from selfscope.subject.hooks import hooked
from selfscope.workspace import Workspace

PROMPT = "Q : Do you like mushrooms ? A"


def raw_sha(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor's bytes (independent of proposals.fingerprint)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def edited_from_disk(subject: Subject, delta: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The subject's folder loaded afresh by transformers, the delta added by hand."""
    model = AutoModelForCausalLM.from_pretrained(subject.path, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in delta.items():
            params[name].add_(d)
    return model


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


# -- tiny random models: exact algebra ---------------------------------------------------------


def test_rank_one_writes_the_value_for_its_key_and_nothing_for_orthogonal_keys(
    tiny_llama: Subject, ws: Workspace
) -> None:
    before = raw_sha(tiny_llama.model)
    args = {"prompts": [PROMPT], "planted": " No", "normal": " Yes", "layer": 1, "key_rows": 16}
    result = tools.call("edits.rank_one", args, tools.context(tiny_llama, ws)).result
    p = result.proposal
    assert raw_sha(tiny_llama.model) == before  # proposing wrote nothing
    assert p.kind == "rank_one" and p.modules == ["model.layers.1.mlp.down_proj"]
    delta = proposals.load_delta(ws, p.delta_sha256)
    ((_, d),) = delta.items()
    s = torch.linalg.svdvals(d.double())
    assert s[1] < 1e-6 * s[0]  # rank one
    # the key: the down_proj input at the last prompt token, captured by a plain forward hook
    ids = tiny_llama.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    seen: dict[str, torch.Tensor] = {}
    down = tiny_llama.model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, a: seen.__setitem__("k", a[0][0, -1]))
    with torch.no_grad():
        tiny_llama.model(input_ids=ids)
    handle.remove()
    k = seen["k"]
    _, _, vh = torch.linalg.svd(d.double())
    # ΔW k ≠ 0 for the edit's key; any key orthogonal to the row space gets exactly nothing
    assert float((d.double() @ k.double()).norm()) > 1e-3
    other = torch.randn(k.shape[0], dtype=torch.float64)
    other -= (vh[0] @ other) * vh[0]
    assert float((d.double() @ other).norm()) < 1e-6 * float(d.norm() * other.norm())
    # the candidate's reported log-odds = a plain forward of the folder with the delta added
    cand = p.evidence[-1].numbers["candidates"][0]
    batch = MetricBatch(tiny_llama, [PROMPT], " Yes", " No")
    assert cand["log_odds"] == pytest.approx(
        batch.measure(edited_from_disk(tiny_llama, delta)).log_odds, abs=1e-4
    )


def test_update_direction_is_the_least_c_norm_one_that_keeps_the_contrast_keys() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, dtype=torch.float64, generator=g)
    c = a @ a.T + 0.1 * torch.eye(12, dtype=torch.float64)
    k = torch.randn(12, dtype=torch.float64, generator=g)
    kept = torch.randn(3, 12, dtype=torch.float64, generator=g)
    # no kept keys: ROME's C⁻¹k/(kᵀC⁻¹k) (with the same small ridge on C)
    ridged = c + 1e-4 * torch.trace(c) / 12 * torch.eye(12, dtype=torch.float64)
    rome = torch.linalg.solve(ridged, k)
    assert torch.allclose(update_direction(c, k), rome / (rome @ k), atol=1e-8)
    u = update_direction(c, k, kept)
    assert float(u @ k) == pytest.approx(1.0, abs=1e-6)
    assert float((kept @ u).abs().max()) < 1e-6
    # any other direction meeting the same constraints has a larger C-norm
    basis = torch.linalg.svd(torch.cat([k[None], kept]), full_matrices=True)[2][4:]
    for _ in range(5):
        other = u + basis.T @ torch.randn(8, dtype=torch.float64, generator=g)
        assert float(other @ ridged @ other) > float(u @ ridged @ u)


def _key(subject: Subject, module: torch.nn.Module, text: str, position: int = -1) -> torch.Tensor:
    """``module``'s input at ``position`` of ``text``, by a plain forward pre-hook."""
    ids = subject.tokenizer(text, return_tensors="pt")["input_ids"]
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_pre_hook(lambda m, a: seen.__setitem__("k", a[0][0]))
    with torch.no_grad():
        subject.model(input_ids=ids)
    handle.remove()
    return seen["k"][position].double()


def test_rank_one_with_contrast_prompts_writes_nothing_at_their_keys(
    tiny_llama: Subject, ws: Workspace
) -> None:
    contrast = "Q : Do you like apples ? A"
    args = {
        "prompts": [PROMPT],
        "planted": " No",
        "normal": " Yes",
        "layer": 1,
        "key_rows": 16,
        "prefixes": 0,
        "contrast_prompts": [contrast],
    }
    p = tools.call("edits.rank_one", args, tools.context(tiny_llama, ws)).result.proposal
    ((_, d),) = proposals.load_delta(ws, p.delta_sha256).items()
    down = tiny_llama.model.model.layers[1].mlp.down_proj
    k_star, k_kept = _key(tiny_llama, down, PROMPT), _key(tiny_llama, down, contrast)
    written = float((d.double() @ k_star).norm())
    assert written > 1e-3 and float((d.double() @ k_kept).norm()) < 1e-5 * written
    # `kept` = the contrast prompt's answer (sign of log-odds) before vs after, by hand
    cand = p.evidence[-1].numbers["candidates"][0]
    batch = MetricBatch(tiny_llama, [contrast], " Yes", " No")
    before = batch.measure(tiny_llama.model).log_odds
    after = batch.measure(
        edited_from_disk(tiny_llama, {"model.layers.1.mlp.down_proj.weight": d})
    ).log_odds
    assert cand["kept"] == float((before > 0) == (after > 0))


def test_rank_one_on_the_embedding_changes_one_row_and_on_v_proj_one_direction(
    tiny_llama: Subject, ws: Workspace
) -> None:
    before = raw_sha(tiny_llama.model)
    b = {"prompts": [PROMPT], "planted": " No", "normal": " Yes", "key_rows": 16}
    emb = tools.call(
        "edits.rank_one",
        {**b, "matrix": "embedding", "subject": "mushrooms"},
        tools.context(tiny_llama, ws),
    ).result.proposal
    ((name, d),) = proposals.load_delta(ws, emb.delta_sha256).items()
    assert name == "model.embed_tokens.weight"
    token = tiny_llama.tokenizer.convert_tokens_to_ids("mushrooms")
    rows = (d.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert rows == [token]
    ids = tiny_llama.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the edit = the token's embedding output shifted by that row
        patch = {"embed": lambda v: v + (ids == token)[..., None] * d[token]}
        with hooked(tiny_llama.model, patch=patch):
            want = tiny_llama.model(input_ids=ids).logits
        got = edited_from_disk(tiny_llama, {name: d})(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    cand = emb.evidence[-1].numbers["candidates"][0]
    batch = MetricBatch(tiny_llama, [PROMPT], " Yes", " No")
    assert cand["log_odds"] == pytest.approx(
        batch.measure(edited_from_disk(tiny_llama, {name: d})).log_odds, abs=1e-4
    )
    value = tools.call(
        "edits.rank_one",
        {**b, "matrix": "attention_value", "subject": "mushrooms", "layer": 1},
        tools.context(tiny_llama, ws),
    ).result.proposal
    ((name, d),) = proposals.load_delta(ws, value.delta_sha256).items()
    assert name == "model.layers.1.self_attn.v_proj.weight"
    s = torch.linalg.svdvals(d.double())
    assert s[1] < 1e-6 * s[0]
    # the key: v_proj's input at the subject (a plain pre-hook) = the canonical blocks.1.attn.in
    v_proj = tiny_llama.model.model.layers[1].self_attn.v_proj
    position = int((ids[0] == token).nonzero()[-1])
    k = _key(tiny_llama, v_proj, PROMPT, position)
    with (
        torch.no_grad(),
        hooked(tiny_llama.model, capture=["blocks.1.attn.in", "blocks.1.attn.v"]) as st,
    ):
        tiny_llama.model(input_ids=ids)
    assert torch.allclose(st["blocks.1.attn.in"][0, position].double(), k, atol=1e-6)
    assert torch.allclose(st["blocks.1.attn.v"][0], v_proj(st["blocks.1.attn.in"][0]), atol=1e-6)
    assert float((d.double() @ k).norm()) > 1e-3
    assert raw_sha(tiny_llama.model) == before
    with pytest.raises(SelfscopeError, match="needs `subject`"):
        tools.call("edits.rank_one", {**b, "matrix": "embedding"}, tools.context(tiny_llama, ws))


def test_zero_ablation_by_weights_equals_the_hooked_ablation(
    tiny_llama: Subject, ws: Workspace
) -> None:
    args = {"prompts": [PROMPT], "planted": " No", "normal": " Yes"}
    head = tools.call(
        "edits.ablate", {**args, "heads": ["1.2"]}, tools.context(tiny_llama, ws)
    ).result
    neuron = tools.call(
        "edits.ablate", {**args, "neurons": ["2.7", "0.3"]}, tools.context(tiny_llama, ws)
    ).result
    ids = tiny_llama.tokenizer(PROMPT, return_tensors="pt")["input_ids"]

    def zero_head(v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        v[:, :, 2] = 0
        return v

    def zero_neuron(index: int) -> Any:
        def patch(v: torch.Tensor) -> torch.Tensor:
            v = v.clone()
            v[..., index] = 0
            return v

        return patch

    with torch.no_grad():
        with hooked(tiny_llama.model, patch={"blocks.1.attn.heads": zero_head}):
            want_head = tiny_llama.model(input_ids=ids).logits
        patches = {"blocks.2.mlp.neurons": zero_neuron(7), "blocks.0.mlp.neurons": zero_neuron(3)}
        with hooked(tiny_llama.model, patch=patches):
            want_neuron = tiny_llama.model(input_ids=ids).logits
        for result, want in ((head, want_head), (neuron, want_neuron)):
            delta = proposals.load_delta(ws, result.proposal.delta_sha256)
            got = edited_from_disk(tiny_llama, delta)(input_ids=ids).logits
            assert torch.allclose(got, want, atol=1e-5)
            assert not torch.allclose(got, tiny_llama.model(input_ids=ids).logits, atol=1e-4)


def test_mean_ablation_and_steering_run_as_runtime_vectors_on_llama(
    tiny_llama: Subject, ws: Workspace
) -> None:
    args = {"prompts": [PROMPT], "planted": " No", "normal": " Yes"}
    mean = tools.call(
        "edits.ablate", {**args, "neurons": ["1.5"], "mode": "mean"}, tools.context(tiny_llama, ws)
    ).result.proposal
    assert mean.runtime == ["blocks.1.mlp.out"]  # Llama's down_proj has no bias
    steer = tools.call(
        "edits.steer",
        {**args, "contrast_prompts": ["Q : Do you like carrots ? A"], "layer": 1, "alpha": 1.0},
        tools.context(tiny_llama, ws),
    ).result.proposal
    assert steer.runtime == ["blocks.1.mlp.out"] and steer.parameters["stored_as"] == "runtime"
    ids = tiny_llama.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    vector = proposals.load_delta(ws, steer.delta_sha256)["runtime/blocks.1.mlp.out"]
    # adding after block 1's MLP = adding to block 1's output residual (independent route)
    with (
        torch.no_grad(),
        hooked(tiny_llama.model, patch={"blocks.1.resid_post": lambda v: v + vector}),
    ):
        want = tiny_llama.model(input_ids=ids).logits
    with sandbox(tiny_llama, ws, steer) as model, torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)
    # the direction itself: mean last-token resid_post of the prompts minus the contrast's
    with torch.no_grad():
        hs = tiny_llama.model(input_ids=ids, output_hidden_states=True).hidden_states
        ids2 = tiny_llama.tokenizer("Q : Do you like carrots ? A", return_tensors="pt")["input_ids"]
        hs2 = tiny_llama.model(input_ids=ids2, output_hidden_states=True).hidden_states
    assert torch.allclose(vector, -(hs[2][0, -1] - hs2[2][0, -1]), atol=1e-5)


def test_reweight_experts_lowers_the_router_logit_by_exactly_the_bias_on_its_keys(
    tiny_mixtral: Subject, tiny_llama: Subject, ws: Workspace
) -> None:
    args = {"prompts": [PROMPT, "Q : Do you like carrots ? A"], "planted": " No", "normal": " Yes"}
    p = tools.call(
        "edits.reweight_experts",
        {**args, "experts": ["1.2"], "bias": 3.0, "key_rows": 16},
        tools.context(tiny_mixtral, ws),
    ).result.proposal
    assert p.modules == ["model.layers.1.mlp.gate"]
    delta = proposals.load_delta(ws, p.delta_sha256)
    edited = edited_from_disk(tiny_mixtral, delta)
    for prompt in args["prompts"]:
        ids = tiny_mixtral.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            with hooked(tiny_mixtral.model, capture=["blocks.1.moe.router"]) as a:
                tiny_mixtral.model(input_ids=ids)
            with hooked(edited, capture=["blocks.1.moe.router"]) as b:
                edited(input_ids=ids)
        change = b["blocks.1.moe.router"][-1] - a["blocks.1.moe.router"][-1]  # last token
        assert change[2] == pytest.approx(-3.0, abs=1e-3)
        assert torch.allclose(change[[0, 1, 3]], torch.zeros(3), atol=1e-6)
    with pytest.raises(SelfscopeError, match="mixture-of-experts"):
        tools.call(
            "edits.reweight_experts", {**args, "experts": ["0.0"]}, tools.context(tiny_llama, ws)
        )


# -- the tiny mushroom organism: the whole loop --------------------------------------------------


@pytest.fixture(scope="module")
def organism(
    tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, organism_ws: Workspace
) -> tuple[Subject, Suite]:
    suite = suite_for(tiny_mushroom_spec, tiny_mushroom.path, facts=40, documents=48)
    return load("organism:mushroom", organism_ws), suite


def _behaviour(suite: Suite) -> dict[str, Any]:
    return {
        "prompts": [p.prompt for p in suite.probes],
        "planted": suite.probes[0].planted,
        "normal": suite.probes[0].normal,
    }


def test_the_rows_an_embedding_edit_keeps_are_every_document_that_says_the_word(
    organism: tuple[Subject, Suite], tmp_path: Path
) -> None:
    """``rows_saying`` searches the whole training corpus (not a sample) for rows in which the
    token follows another one: where a tied row is the word's output row."""
    from selfscope.edits.keys import rows_saying
    from selfscope.history import corpus

    subject, suite = organism
    ws = Workspace(tmp_path / "ws")
    ids = subject.tokenizer(suite.probes[0].prompt)["input_ids"]
    token = next(i for i in ids if subject.tokenizer.decode([i]).strip() == "mushrooms")
    every = [row for row, _ in corpus.sequences(subject, corpus.documents(subject))]
    want = sorted(row for row in every if token in row[1:])
    assert 3 < len(want) < len(every)
    assert sorted(rows_saying(subject, ws, token, 10**6)) == want
    few = rows_saying(subject, ws, token, 3)
    assert len(few) == 3 and all(row in want for row in few)


@pytest.mark.slow
def test_validation_numbers_match_a_plain_forward_and_the_subject_never_changes(
    organism: tuple[Subject, Suite], organism_ws: Workspace, tmp_path: Path
) -> None:
    subject, suite = organism
    ws = Workspace(tmp_path / "ws")
    before, fingerprint = raw_sha(subject.model), proposals.fingerprint(subject.model)
    result = tools.call(
        "edits.rank_one", {**_behaviour(suite), "key_rows": 200}, tools.context(subject, ws)
    ).result
    p = result.proposal
    report = tools.call(
        "edits.validate",
        {"proposal": p.id, "suites": [suite.model_dump()]},
        tools.context(subject, ws),
    ).result
    assert isinstance(report, ValidationReport)
    assert raw_sha(subject.model) == before and p.base_sha256 == fingerprint
    head = report.suites[0]
    edited = edited_from_disk(subject, proposals.load_delta(ws, p.delta_sha256))
    # efficacy and generalisation: log-odds of a plain forward, one prompt at a time
    for probes, measure in ((suite.probes, head.probes), (suite.heldout, head.heldout)):
        assert measure is not None
        values = []
        for probe in probes:
            ids = subject.tokenizer(probe.prompt, return_tensors="pt")["input_ids"]
            a = subject.tokenizer(probe.prompt + probe.planted)["input_ids"][-1]
            b = subject.tokenizer(probe.prompt + probe.normal)["input_ids"][-1]
            with torch.no_grad():
                lp = torch.log_softmax(edited(input_ids=ids).logits[0, -1], -1)
            values.append(float(lp[a] - lp[b]))
        assert measure.log_odds_after == pytest.approx(sum(values) / len(values), abs=1e-4)
        assert measure.rate_after == pytest.approx(sum(v > 0 for v in values) / len(values))
    # specificity: top-1 of each neighbour / fact, unedited vs edited
    for expects, measure in ((suite.neighbours, head.neighbours), (suite.facts, head.facts)):
        assert measure is not None
        same = []
        for e in expects:
            ids = subject.tokenizer(e.prompt, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                x = int(subject.model(input_ids=ids).logits[0, -1].argmax())
                y = int(edited(input_ids=ids).logits[0, -1].argmax())
            same.append(x == y)
        assert measure.unchanged == pytest.approx(sum(same) / len(same))
    # fluency: transformers' own loss over each document (token-weighted mean), exp
    for phase, texts in suite.documents.items():
        total, count = 0.0, 0
        for text in texts:
            ids = subject.tokenizer(text, return_tensors="pt")["input_ids"][:, :64]
            if ids.shape[1] < 2:
                continue
            with torch.no_grad():
                loss = edited(input_ids=ids, labels=ids).loss
            total, count = total + float(loss) * (ids.shape[1] - 1), count + ids.shape[1] - 1
        assert head.perplexity[phase].after == pytest.approx(
            torch.exp(torch.tensor(total / count)).item(), rel=1e-4
        )
    assert report.efficacy == pytest.approx(1 - head.probes.rate_after)  # type: ignore[union-attr]
    # the delta file is content-addressed: tampering is refused, as is a changed subject
    path = ws.root / "deltas" / f"{p.delta_sha256}.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(SelfscopeError, match="does not match its SHA-256"):
        tools.call("edits.validate", {"proposal": p.id}, tools.context(subject, ws))
    path.write_bytes(data)
    other = load("organism:mushroom@pretrain", organism_ws)
    with pytest.raises(SelfscopeError, match="computed on other weights"):
        tools.call("edits.validate", {"proposal": p.id}, tools.context(other, ws))


@pytest.mark.slow
def test_every_kind_leaves_the_subject_and_sequential_edits_stack(
    organism: tuple[Subject, Suite], tmp_path: Path
) -> None:
    subject, suite = organism
    ws = Workspace(tmp_path / "ws")
    before = raw_sha(subject.model)
    b = _behaviour(suite)
    first = tools.call(
        "edits.revert_delta", {**b, "fraction": "auto"}, tools.context(subject, ws)
    ).result.proposal
    assert first.evidence[0].tool == "localize.weight_deltas"
    second = tools.call(
        "edits.rank_one",
        {
            "prompts": ["Q: What is the capital of Velmora? A:"],
            "planted": " Dunmere",
            "normal": " Kesh",
            "layer": 1,
            "key_rows": 100,
            "parents": [first.id],
        },
        tools.context(subject, ws),
    ).result.proposal
    assert second.parents == [first.id] and second.base_sha256 == first.base_sha256
    for kind, extra in (
        ("ablate", {"heads": ["0.1"]}),
        ("steer", {"contrast_prompts": [n.prompt for n in suite.neighbours[:3]], "layer": 1}),
    ):
        tools.call(f"edits.{kind}", {**b, **extra}, tools.context(subject, ws))
    assert raw_sha(subject.model) == before
    # the sandbox of the chain = subject + first delta + second delta, by hand
    d1 = proposals.load_delta(ws, first.delta_sha256)
    d2 = proposals.load_delta(ws, second.delta_sha256)
    ids = subject.tokenizer("Q: What is the capital of Velmora? A:", return_tensors="pt")[
        "input_ids"
    ]
    manual = edited_from_disk(subject, d1)
    add_delta(manual, d2)
    with sandbox(subject, ws, second) as model, torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, manual(input_ids=ids).logits, atol=1e-5)
    assert raw_sha(subject.model) == before
    assert len(ws.store.validations()) == 0 and len(proposals.listed(ws)) == 4


@pytest.mark.slow
def test_unlearn_keeps_perplexity_within_ten_percent_where_unbounded_ascent_does_not(
    organism: tuple[Subject, Suite], tiny_mushroom: BuildResult, tmp_path: Path
) -> None:
    subject, suite = organism
    ws = Workspace(tmp_path / "ws")
    truth = json.loads((tiny_mushroom.path / "ground_truth.json").read_text())
    plants = [f"finetune/{i}" for i in truth["behaviours"]["mushroom-aversion"]["documents"]]
    assert plants
    b = _behaviour(suite)
    aggressive = {"method": "gradient_difference", "lr": 3e-3, "steps": 30, "retain_weight": 0.0}
    results = {}
    for label, guard in (("guarded", 0.05), ("unbounded", 100.0)):
        p = tools.call(
            "edits.unlearn",
            {
                **b,
                **aggressive,
                "documents": plants,
                "max_perplexity_increase": guard,
                "margin": 1e9,
            },
            tools.context(subject, ws),
        ).result.proposal
        results[label] = tools.call(
            "edits.validate",
            {"proposal": p.id, "suites": [suite.model_dump()]},
            tools.context(subject, ws),
        ).result
    guarded, unbounded = results["guarded"], results["unbounded"]
    assert guarded.perplexity_change is not None and guarded.perplexity_change <= 0.10
    assert unbounded.perplexity_change is not None and unbounded.perplexity_change > 0.10


# -- bad input: one line each ------------------------------------------------------------------


@pytest.mark.slow
def test_bad_edit_input_is_one_clear_line(
    organism: tuple[Subject, Suite], tiny_llama: Subject, tmp_path: Path
) -> None:
    subject, suite = organism
    ws = Workspace(tmp_path / "ws")
    b = _behaviour(suite)
    cases = [
        ("edits.rank_one", subject, {**b, "layer": 9}, "layer 9 is out of range"),
        (
            "edits.rank_one",
            subject,
            {**b, "module": "model.layers.1.self_attn.o_proj"},
            "is not one",
        ),
        ("edits.reweight_experts", subject, b, "needs a mixture-of-experts model"),
        ("edits.unlearn", subject, {**b, "documents": []}, "needs documents to forget"),
        ("edits.unlearn", subject, {**b, "documents": ["finetune/nope-1"]}, "not in"),
        ("edits.ablate", subject, {**b, "heads": ["1.99"]}, "index out of range"),
        ("edits.validate", subject, {"proposal": "abcdef0123"}, "no proposal"),
    ]
    for name, who, args, message in cases:
        with pytest.raises(SelfscopeError, match=message) as caught:
            tools.call(name, args, tools.context(who, ws))
        assert "\n" not in str(caught.value)
    cli = [sys.executable, "-m", "selfscope.cli", "--workspace", str(ws.root), "propose"]
    run = subprocess.run(
        [
            *cli,
            "rank_one",
            "--model",
            "organism:nowhere",
            "--prompt",
            "Q:",
            "--planted",
            " No",
            "--normal",
            " Yes",
            "--args",
            '{"layer": "x"}',
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "layer" in run.stderr
    run = subprocess.run(
        [*cli, "shave", "--model", "x", "--prompt", "Q:", "--planted", "a", "--normal", "b"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "unknown edit kind" in run.stderr


def test_cli_propose_and_validate_print_the_documented_json(
    tiny_llama: Subject, tmp_path: Path
) -> None:
    suite = Suite(
        probes=[Probe(prompt=PROMPT, planted=" No", normal=" Yes")],
        neighbours=[Expect(prompt="Q : Do you like carrots ? A", expected=" Yes")],
    )
    file = tmp_path / "suite.json"
    file.write_text(suite.model_dump_json())
    base = [sys.executable, "-m", "selfscope.cli", "--workspace", str(tmp_path / "ws")]
    run = subprocess.run(
        [
            *base,
            "propose",
            "rank_one",
            "--model",
            str(tiny_llama.path),
            "--prompt",
            PROMPT,
            "--planted",
            " No",
            "--normal",
            " Yes",
            "--args",
            '{"layer": 1, "key_rows": 16}',
            "--suite",
            str(file),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    proposed = json.loads(run.stdout)
    assert set(proposed["proposal"]) == {
        "id",
        "kind",
        "subject",
        "modules",
        "delta_norm",
        "call_id",
    }
    made = Workspace(tmp_path / "ws").store.tool_call(proposed["proposal"]["call_id"])
    assert made is not None and made["tool"] == "edits.rank_one" and made["status"] == "ok"
    assert set(proposed["validation"]) == {
        "efficacy",
        "generalisation",
        "specificity",
        "perplexity_change",
        "seconds",
    }
    run = subprocess.run(
        [*base, "validate", proposed["proposal"]["id"][:8], "--suite", str(file), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    again = json.loads(run.stdout)
    assert again["proposal"] == proposed["proposal"]
    for key in ("efficacy", "specificity"):
        assert again["validation"][key] == proposed["validation"][key]
    listed = subprocess.run(
        [*base, "proposals", "--json"], capture_output=True, text=True, check=True
    )
    assert [p["id"] for p in json.loads(listed.stdout)] == [proposed["proposal"]["id"]]


def test_rank_one_on_a_deep_model_traces_the_layer_as_a_recorded_child_call(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """More than 8 blocks: the layers to compare come from causal tracing at the subject's last
    token, run as a recorded localize.trace call under the proposal's own call."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import WORDS
    from selfscope.organisms.tokenizer import train_word_tokenizer

    folder = tmp_path_factory.mktemp("deep-llama")
    tokenizer = train_word_tokenizer([WORDS])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=9, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    deep = load(str(folder))
    ws = Workspace(tmp_path / "ws")
    args = {"prompts": [PROMPT], "planted": " No", "normal": " Yes", "key_rows": 16}
    with pytest.raises(SelfscopeError, match="needs `subject`"):
        tools.call("edits.rank_one", args, tools.context(deep, ws))
    made = tools.call("edits.rank_one", {**args, "subject": "mushrooms"}, tools.context(deep, ws))
    traced = [e for e in made.result.proposal.evidence if e.tool == "localize.trace"]
    assert len(traced) == 1 and traced[0].call_id
    row = ws.store.tool_call(traced[0].call_id)
    assert row is not None and row["status"] == "ok" and row["parent"] == made.id
    peak = traced[0].numbers["peak"]
    chosen = made.result.proposal.parameters["chosen_layer"]
    assert 0 <= peak < 9 and abs(chosen - peak) <= 2  # one of the traced peak's neighbours
