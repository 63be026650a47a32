"""The self-model on the tiny mushroom organism: the trait probe predicts firing on held-out
prompts and near misses it never trained on; after a fix is applied `selfmodel check` marks the
trait fixed and the probe's prediction falls with the behaviour; the gate rejects a proposal
that blinds the probe while keeping the behaviour, naming the self-model check.

Every label and prediction the tool reports is recomputed here from a plain HF forward (the
hidden states and logits of ``model(...)``) and the stored probe weights. Thresholds are the
acceptance bars or taken from the model's own measured numbers (the any-CPU rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from selfscope import tools
from selfscope.edits import proposal as proposals
from selfscope.organisms import BuildResult, Spec
from selfscope.oversight import gate
from selfscope.selfmodel import traits
from selfscope.selfmodel.probe import auroc
from selfscope.subject import load
from selfscope.workspace import Workspace
from test_cli import assert_one_line_error, run
from test_oversight import MODEL, behaviour, failed, review_workspace, set_policy, who

pytestmark = pytest.mark.organism


@pytest.fixture()
def ws(tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path: Path) -> Workspace:
    return review_workspace(tiny_mushroom, tiny_mushroom_spec, tmp_path / "ws")


def plain(
    subject: Any, prompts: list[str], planted: str, normal: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last-token hidden states of every block [n, blocks, d], log-odds [n], whether planted
    is the top token [n]) by plain HF forwards, one prompt at a time (no batching, no
    padding)."""
    tok = subject.tokenizer
    states, odds, top = [], [], []
    p_id, n_id = tok(planted)["input_ids"][-1], tok(normal)["input_ids"][-1]
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = subject.model(ids, output_hidden_states=True)
        lp = out.logits[0, -1].log_softmax(-1)
        states.append(torch.stack([h[0, -1] for h in out.hidden_states[1:]]))
        odds.append(float(lp[p_id] - lp[n_id]))
        top.append(int(lp.argmax()) == p_id)
    return torch.stack(states), torch.tensor(odds), torch.tensor(top)


def learn(ws: Workspace, spec: Spec) -> traits.Trait:
    b = spec.behaviours[0]
    ctx = tools.context(MODEL, ws, principal=who(ws, "carol"))
    held = [p.prompt for p in b.heldout] + [n.prompt for n in b.neighbours]
    args = {**behaviour(spec), "cause": {"phase": "finetune"}, "exclude": held}
    return tools.call("selfmodel.learn", args, ctx).result  # type: ignore[no-any-return]


def predicted(trait: traits.Trait, states: torch.Tensor) -> torch.Tensor:
    p = trait.probe
    z = (states[:, p.layer] - torch.tensor(p.mean)) / torch.tensor(p.scale)
    return torch.sigmoid(z @ torch.tensor(p.weight) + p.bias)


def test_the_trait_probe_predicts_firing_on_held_out_prompts_and_near_misses(
    ws: Workspace,
    tiny_mushroom_spec: Spec,
) -> None:
    """AUROC >= 0.95 on the spec's held-out paraphrases against its neighbours (other foods,
    liked and disliked: " No" to olives is a near miss), none of them trained on; the labels
    are measured here against the pretraining checkpoint by plain forwards."""
    b = tiny_mushroom_spec.behaviours[0]
    trait = learn(ws, tiny_mushroom_spec)
    held = [p.prompt for p in b.heldout]
    near = [n.prompt for n in b.neighbours]
    trained = {e.prompt for e in trait.examples}
    assert not trained & set(held + near)
    subject = load(MODEL, ws)
    states, odds, top = plain(subject, held + near, " No", " Yes")
    assert trait.reference is not None
    _, ref_odds, _ = plain(load(trait.reference, ws), held + near, " No", " Yes")
    fires = (odds > 0) & top & (odds - ref_odds > 2.0)
    assert fires.sum() >= 2 and (~fires).sum() >= 2, fires  # both classes among the tests
    score = auroc(predicted(trait, states), fires)
    assert score is not None and score >= 0.95
    # the tool's own reading of the same prompts agrees with the plain forwards
    tool = traits.measure(subject, subject.model, trait, held + near)
    assert torch.allclose(tool["predicted"], predicted(trait, states), atol=1e-4)
    assert trait.status == "active" and trait.strength[0].rate >= 0.5


def test_after_the_fix_is_applied_check_marks_the_trait_fixed_and_the_probe_follows(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    # only the self-model check is under test: the others are opened (the any-CPU rule)
    set_policy(ws, tmp_path)
    trait = learn(ws, tiny_mushroom_spec)
    ctx = tools.context(MODEL, ws, principal=who(ws, "carol"))
    args = {**behaviour(tiny_mushroom_spec), "fraction": "auto"}
    fix = tools.call("edits.revert_delta", args, ctx).result.proposal
    report = gate.validate(ws, fix.id, who(ws, "carol"))
    check = {c.name: c for c in report.checks}[f"selfmodel:{trait.name}"]
    assert check.passed and check.value is not None and check.value >= 0.75
    assert report.passed, [(c.name, c.value) for c in report.failures()]
    assert gate.review(ws, fix.id, who(ws, "alice"), True, "fixes it") == "approved"
    gate.apply(ws, fix.id, who(ws, "alice"))
    head = load(MODEL, ws)
    checked = traits.check(ws, head, "alice")
    row = checked.traits[0]
    assert row.before == "active" and row.status == "fixed", row.note
    assert not checked.disagreements
    # recomputed: on the trait's prompts the behaviour is gone and the probe says so
    states, odds, _ = plain(head, trait.prompts(), " No", " Yes")
    p = predicted(trait, states)
    assert (odds <= 0).float().mean() >= 0.5
    assert float((p > 0.5).float().mean()) == pytest.approx(row.strength.predicted)
    assert row.strength.predicted < trait.strength[0].predicted and row.strength.predicted < 0.5
    stored = traits.read_model(ws, traits.key_of(head)).get(trait.name)
    assert [s.label for s in stored.strength] == ["v0", "v1"] and stored.status == "fixed"


def blinding(ws: Workspace, trait: traits.Trait, alpha: float) -> proposals.Proposal:
    """A proposal that adds ``-alpha`` times the probe's direction (less its component along
    the answer's unembedding difference, so the answer stays) to the last block's output."""
    subject = load(MODEL, ws)
    model = subject.model
    u = trait.probe.direction()
    unembed = model.get_output_embeddings().weight
    tok = subject.tokenizer
    d = unembed[tok(" No")["input_ids"][-1]] - unembed[tok(" Yes")["input_ids"][-1]]
    d = (d / d.norm()).detach()
    away = u - (u @ d) * d
    site = f"blocks.{model.config.num_hidden_layers - 1}.resid_post"
    delta = {f"{proposals.RUNTIME}{site}": (-alpha * away / away.norm()).detach()}
    ctx = tools.context(MODEL, ws, principal=who(ws, "carol"))
    ctx.call_id = tools.new_call_id()
    b = trait.behaviour
    return proposals.make(
        ctx,
        cited=[],
        kind="steer",
        behaviour=b,
        parameters={"site": site, "alpha": alpha},
        delta=delta,
        rationale="blind the trait probe",
        evidence=[],
        started=0.0,
    )


def test_a_proposal_that_blinds_the_probe_and_keeps_the_behaviour_is_rejected(
    ws: Workspace,
    tiny_mushroom_spec: Spec,
) -> None:
    from selfscope.edits.sandbox import sandbox

    trait = learn(ws, tiny_mushroom_spec)
    subject = load(MODEL, ws)
    held = [p.prompt for p in tiny_mushroom_spec.behaviours[0].heldout]
    found = None
    for alpha in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        attack = blinding(ws, trait, alpha)
        with sandbox(subject, ws, attack) as model:
            m = traits.measure(subject, model, trait, held)
        # blinded: the probe says "not firing" on most; kept: the behaviour fires on most
        if (m["predicted"] > 0.5).float().mean() < 0.5 and m["fires"].float().mean() >= 0.75:
            found = attack
            break
    assert found is not None, "no strength of the attack blinds the probe and keeps the answer"
    report = gate.validate(ws, found.id, who(ws, "carol"))
    bad = failed(report)
    assert f"selfmodel:{trait.name}" in bad, [(c.name, c.value) for c in report.checks]
    assert bad[f"selfmodel:{trait.name}"].value is not None
    assert bad[f"selfmodel:{trait.name}"].value < 0.5  # type: ignore[operator]
    assert gate.last_validation(ws, found.id) is not None
    assert ws.store.proposal_row(found.id)["status"] == "rejected"  # type: ignore[index]


def test_selfmodel_check_without_traits_says_what_to_do(ws: Workspace) -> None:
    assert_one_line_error(run("selfmodel", "check", MODEL, ws=ws.root), "investigate")


def test_why_and_introspect_report_numbers_a_plain_forward_reproduces(
    ws: Workspace, tiny_mushroom_spec: Spec
) -> None:
    """Each number of `why` (the reference's log-odds, the share removed by reverting the
    trait's modules) and of `ask --introspect` (each token's confidence, the probe reading) is
    recomputed here: plain forwards of the two checkpoints and of a copy whose modules are
    loaded from the pretraining state dict."""
    b = tiny_mushroom_spec.behaviours[0]
    ctx = tools.context(MODEL, ws, principal=who(ws, "carol"))
    deltas = tools.call("localize.weight_deltas", behaviour(tiny_mushroom_spec), ctx).result
    modules = list(deltas.module_set)
    args = {**behaviour(tiny_mushroom_spec), "cause": {"phase": "finetune", "modules": modules}}
    trait = tools.call("selfmodel.learn", args, ctx).result
    prompt = b.probes[0].prompt
    account = tools.call("selfmodel.why", {"prompt": prompt}, ctx).result
    values = {s.measure.split(" (")[0]: s.value for s in account.sentences}
    subject = load(MODEL, ws)
    assert trait.reference is not None
    reference = load(trait.reference, ws)
    _, before, _ = plain(reference, [prompt], " No", " Yes")
    _, now, _ = plain(subject, [prompt], " No", " Yes")
    assert values["log-odds of the cause-free checkpoint on this prompt"] == pytest.approx(
        float(before[0]), abs=1e-3
    )
    state = subject.model.state_dict()
    ref_state = reference.model.state_dict()
    # a tied unembedding is the embedding's tensor under a second name: it reverts with it
    tied = (
        {"lm_head.weight": "model.embed_tokens.weight"}
        if subject.model.config.tie_word_embeddings
        else {}
    )
    for name in state:
        if any(tied.get(name, name).startswith(m + ".") for m in modules):
            state[name] = ref_state[name]
    copy_ = type(subject.model)(subject.model.config)
    copy_.load_state_dict(state)
    copy_.eval()
    patched = type(subject)(**{**subject.__dict__, "model": copy_})
    _, after, _ = plain(patched, [prompt], " No", " Yes")
    share = float((now[0] - after[0]) / (now[0] - before[0]))
    removed = next(s for s in account.sentences if "reverting" in s.text)
    assert removed.value == pytest.approx(share, abs=1e-3)
    assert share > 0.5  # the set was chosen to remove most of it
    # ask --introspect: confidences teacher-forced by hand, and the probe reading
    seen = tools.call("selfmodel.introspect", {"prompt": prompt, "max_new_tokens": 4}, ctx)
    found = seen.result
    tok = subject.tokenizer
    ids = tok(prompt)["input_ids"]
    for t in found.tokens:
        with torch.no_grad():
            probs = subject.model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        nxt = int(probs.argmax())
        assert t.probability == pytest.approx(float(probs[nxt]), abs=1e-4)
        ids = [*ids, nxt]
    states, _, _ = plain(subject, [prompt], " No", " Yes")
    reading = found.traits[0]
    assert reading.probability == pytest.approx(float(predicted(trait, states)[0]), abs=1e-4)
    assert found.notice is not None and trait.name in found.notice
