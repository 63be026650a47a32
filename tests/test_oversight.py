"""The guardian on the tiny mushroom organism: adversarial proposals, each blocked with a reason
that names the check; the gate's state machine; sealed suites that no tool returns; two
processes applying at once; and the whole loop from the command line (propose, validate,
review, apply, ask, rollback, ledger verify).

Each test works in a workspace of its own whose ``organisms/mushroom`` links to the session's
tiny organism (versions, HEAD and the ledger live in the workspace's store, so nothing here
moves the organism other tests load). Thresholds that depend on the trained model are taken
from the proposal's own measured numbers (the any-CPU rule, docs/testing.md)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from selfscope import tools
from selfscope.behaviour import Expect, Probe, Suite
from selfscope.edits import proposal as proposals
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.organisms import BuildResult, Spec
from selfscope.organisms.suites import seal_for_subject
from selfscope.oversight import gate, ledger, principals
from selfscope.oversight.policy import Policy
from selfscope.subject import load
from selfscope.subject.deltas import delta_path
from selfscope.tools import PermissionDenied, Principal
from selfscope.workspace import Workspace
from test_cli import EXE, assert_one_line_error

MODEL = "organism:mushroom"


def review_workspace(build: BuildResult, spec: Spec, root: Path) -> Workspace:
    """A workspace of its own at ``root`` holding the tiny organism (linked) and its sealed
    suite; alice and bob review, carol proposes."""
    workspace = Workspace(root)
    workspace.organisms_dir.mkdir(parents=True)
    (workspace.organisms_dir / "mushroom").symlink_to(build.path.resolve())
    seal_for_subject(spec, workspace.organism_path("mushroom"), workspace)
    boot = Principal.local()
    principals.grant(workspace, "alice", "reviewer", boot)
    alice = principals.principal(workspace, "alice")
    principals.grant(workspace, "bob", "reviewer", alice)
    principals.grant(workspace, "carol", "proposer", alice)
    return workspace


@pytest.fixture()
def ws(tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path: Path) -> Workspace:
    return review_workspace(tiny_mushroom, tiny_mushroom_spec, tmp_path / "ws")


def who(ws: Workspace, name: str) -> Principal:
    return principals.principal(ws, name)


def probes(spec: Spec) -> list[str]:
    return [p.prompt for p in spec.behaviours[0].probes]


def behaviour(spec: Spec, prompts: list[str] | None = None) -> dict[str, Any]:
    b = spec.behaviours[0]
    return {
        "prompts": prompts or probes(spec),
        "planted": b.probes[0].planted,
        "normal": b.probes[0].normal,
    }


def propose(ws: Workspace, spec: Spec, by: str = "carol", **extra: Any) -> proposals.Proposal:
    args = {**behaviour(spec, extra.pop("prompts", None)), **extra}
    ctx = tools.context(MODEL, ws, principal=who(ws, by))
    return tools.call("edits.rank_one", args, ctx).result.proposal


def set_policy(ws: Workspace, tmp_path: Path, **fields: Any) -> None:
    """A policy permissive enough that only the check under test can fail."""
    base = {
        "max_change": {"per_module": 100.0, "total": 100.0},
        "thresholds": {"generalisation": 0.0, "specificity": 0.0, "perplexity": 10.0},
    }
    base.update(fields)
    Policy.model_validate(base)
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(base))  # JSON is YAML
    from selfscope.oversight.policy import set_policy as store_policy

    store_policy(ws, gate.key_of(ws, MODEL), path, who(ws, "alice"))


def failed(report: gate.GateReport) -> dict[str, gate.Check]:
    return {c.name: c for c in report.failures()}


def status(ws: Workspace, proposal_id: str) -> str:
    row = ws.store.proposal_row(proposal_id)
    assert row is not None
    return str(row["status"])


def validated_and_approved(ws: Workspace, spec: Spec, **extra: Any) -> proposals.Proposal:
    p = propose(ws, spec, **extra)
    report = gate.validate(ws, p.id, who(ws, "carol"))
    assert report.passed, [(c.name, c.value, c.limit) for c in report.failures()]
    assert gate.review(ws, p.id, who(ws, "alice"), True, "holds") == "approved"
    return p


# -- adversarial proposals: each blocked, the reason names the check -------------------------


def test_the_builder_sealed_the_held_out_paraphrases(
    tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, organism_ws: Workspace
) -> None:
    key = gate.key_of(organism_ws, MODEL)
    (row,) = organism_ws.store.sealed_suites(key)
    suite = Suite.model_validate_json(row["suite"])
    b = tiny_mushroom_spec.behaviours[0]
    assert [p.prompt for p in suite.heldout] == [p.prompt for p in b.heldout]
    assert len(suite.neighbours) == len(b.neighbours) and not suite.probes
    assert row["name"] == "organism-0"  # no behaviour name


def test_an_edit_outside_the_editable_modules_is_rejected(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    set_policy(ws, tmp_path, editable=["model.embed_tokens.*"])
    p = propose(ws, tiny_mushroom_spec)
    report = gate.validate(ws, p.id, who(ws, "carol"))
    bad = failed(report)
    assert not report.passed and set(bad) == {"editable"}
    assert p.changes[0].parameter in bad["editable"].detail
    assert status(ws, p.id) == "rejected"


def test_an_edit_over_the_change_budget_is_rejected_with_the_amount(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    p = propose(ws, tiny_mushroom_spec)
    biggest = max(c.relative for c in p.changes)
    set_policy(ws, tmp_path, max_change={"per_module": biggest / 2, "total": 100.0})
    report = gate.validate(ws, p.id, who(ws, "carol"))
    bad = failed(report)
    assert set(bad) == {"max_change.per_module"}
    assert bad["max_change.per_module"].value == pytest.approx(biggest)
    assert bad["max_change.per_module"].limit == pytest.approx(biggest / 2)


def test_an_edit_that_moves_a_protected_behaviour_is_rejected(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    """The policy protects the answer to one of the probes (e.g. a behaviour the owner wants
    kept); an edit fixing every probe moves it and is refused by name."""
    b = tiny_mushroom_spec.behaviours[0]
    kept = b.probes[-1]
    protected = Suite(
        name="keep-pie",
        probes=[Probe(prompt=kept.prompt, planted=kept.planted, normal=kept.normal)],
    )
    suite_file = tmp_path / "keep.json"
    suite_file.write_text(protected.model_dump_json())
    set_policy(ws, tmp_path, protected=[{"suite": str(suite_file), "margin": 0.05}])
    p = propose(ws, tiny_mushroom_spec)
    report = gate.validate(ws, p.id, who(ws, "carol"))
    bad = failed(report)
    assert set(bad) == {"protected:keep-pie"}, [(c.name, c.value) for c in report.failures()]
    # independently: the rate on the protected prompt before and after the delta
    subject = load(MODEL, ws)
    batch = MetricBatch(subject, [kept.prompt], kept.planted, kept.normal)
    before = batch.measure().rate
    with torch.no_grad():
        from selfscope.edits.sandbox import sandbox

        with sandbox(subject, ws, p) as model:
            after = batch.measure(model).rate
    assert bad["protected:keep-pie"].value == pytest.approx(abs(after - before))


def test_an_edit_keyed_to_the_visible_wording_passes_visible_and_fails_sealed(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    """A rank-one edit of the embedding row of the plural token 'mushrooms' cannot reach a
    prompt without that token: it fixes the visible prompt, and a sealed suite of paraphrases
    written with the singular stays broken. The proposer learns only the aggregate."""
    set_policy(ws, tmp_path, thresholds={"generalisation": 0.5})
    subject = load(MODEL, ws)
    b = tiny_mushroom_spec.behaviours[0]
    visible = next(p.prompt for p in b.probes if "mushrooms" in p.prompt)
    plural = subject.tokenizer.convert_tokens_to_ids("mushrooms")
    singular = [
        p for p in [*b.probes, *b.heldout] if plural not in subject.tokenizer(p.prompt)["input_ids"]
    ]
    assert singular, "the spec has no probe without the token 'mushrooms'"
    sealed = Suite(
        name="singular",
        heldout=[Probe(prompt=p.prompt, planted=p.planted, normal=p.normal) for p in singular],
    )
    ws.store.seal_suite(
        "s-singular",
        gate.key_of(ws, MODEL),
        "singular",
        sealed.model_dump_json(),
        len(singular),
        "alice",
    )
    p = propose(ws, tiny_mushroom_spec, prompts=[visible], matrix="embedding", subject="mushrooms")
    report = gate.validate(ws, p.id, who(ws, "carol"))
    bad = failed(report)
    assert report.visible[0].efficacy == 1.0
    assert "generalisation" in bad and bad["generalisation"].value == 0.0
    dumped = report.model_dump_json()
    assert all(q.prompt not in dumped for q in singular)  # aggregates only


def test_self_approval_and_investigators_and_agents_are_refused(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    set_policy(ws, tmp_path)
    p = propose(ws, tiny_mushroom_spec, by="alice")  # alice proposes ...
    assert gate.validate(ws, p.id, who(ws, "alice")).passed
    with pytest.raises(PermissionDenied, match="no self-approval"):
        gate.review(ws, p.id, who(ws, "alice"), True)  # ... and may not approve it
    for name in ("investigator", "agent"):
        with pytest.raises(SelfscopeError, match="can never hold govern"):
            principals.grant(ws, name, "reviewer", who(ws, "alice"))
        with pytest.raises(PermissionDenied, match="'govern' permission"):
            gate.review(ws, p.id, who(ws, name), True)
        with pytest.raises(PermissionDenied):
            tools.call(
                "gate.apply", {"proposal": p.id}, tools.context(None, ws, principal=who(ws, name))
            )
    assert status(ws, p.id) == "validated"
    assert gate.review(ws, p.id, who(ws, "bob"), True) == "approved"


def test_applying_on_a_head_it_was_not_validated_on_is_refused_as_stale(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    set_policy(ws, tmp_path)
    prompts = probes(tiny_mushroom_spec)
    first = validated_and_approved(ws, tiny_mushroom_spec, prompts=prompts)
    second = validated_and_approved(ws, tiny_mushroom_spec, prompts=prompts[::-1], layer=0)
    assert first.id != second.id
    applied = gate.apply(ws, first.id, who(ws, "bob"))
    assert applied.version_label == "v1"
    with pytest.raises(SelfscopeError, match="stale"):
        gate.apply(ws, second.id, who(ws, "bob"))
    assert status(ws, second.id) == "stale" and status(ws, first.id) == "applied"
    # rebased: the same delta, computed on v1, proposed afresh (to be validated again)
    ctx = tools.context(MODEL, ws, principal=who(ws, "carol"))
    rebased = tools.call("gate.rebase", {"proposal": second.id}, ctx).result
    v1 = ws.store.versions(gate.key_of(ws, MODEL))[1]
    assert rebased.base_sha256 == v1["tensors_sha256"] == applied.tensors_sha256
    assert rebased.delta_sha256 == second.delta_sha256 and rebased.id != second.id
    assert status(ws, rebased.id) == "proposed"
    assert rebased.parameters["rebased_from"] == second.id


def test_unvalidated_rejected_and_unapproved_proposals_are_not_applied(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    set_policy(ws, tmp_path)
    p = propose(ws, tiny_mushroom_spec)
    with pytest.raises(SelfscopeError, match="never validated"):
        gate.apply(ws, p.id, who(ws, "alice"))
    assert gate.validate(ws, p.id, who(ws, "carol")).passed
    with pytest.raises(SelfscopeError, match="not approved yet"):
        gate.apply(ws, p.id, who(ws, "alice"))
    assert gate.review(ws, p.id, who(ws, "alice"), False, "no") == "rejected"
    with pytest.raises(SelfscopeError, match="was rejected"):
        gate.apply(ws, p.id, who(ws, "alice"))
    with pytest.raises(SelfscopeError, match="only a validated proposal"):
        gate.review(ws, p.id, who(ws, "bob"), True)


def test_a_delta_altered_after_validation_is_refused(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    set_policy(ws, tmp_path)
    p = validated_and_approved(ws, tiny_mushroom_spec)
    path = delta_path(ws, p.delta_sha256)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SelfscopeError, match="does not match its SHA-256"):
        gate.apply(ws, p.id, who(ws, "alice"))
    assert (
        ws.store.head(gate.key_of(ws, MODEL)) == ws.store.versions(gate.key_of(ws, MODEL))[0]["id"]
    )
    # the proposal's record pointed at another (valid) delta: refused too
    path.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0x01]))  # restore
    edited = int(re.search(r"layers\.(\d+)\.", p.modules[0]).group(1))  # type: ignore[union-attr]
    other = propose(ws, tiny_mushroom_spec, layer=1 if edited == 0 else 0)  # another delta
    assert other.delta_sha256 != p.delta_sha256
    record = ws.root / "proposals" / f"{p.id}.json"
    raw = json.loads(record.read_text())
    raw["delta_sha256"] = other.delta_sha256
    record.write_text(json.dumps(raw))
    with pytest.raises(SelfscopeError, match="not the one validated"):
        gate.apply(ws, p.id, who(ws, "alice"))
    assert ledger.verify_workspace(ws).ok


# -- sealed suites never leave the gate --------------------------------------------------------


def test_no_read_or_propose_tool_returns_a_sealed_prompt(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    """Every registered tool is called (a new tool without arguments here fails the test);
    ``read`` and ``propose`` tools as carol, ``govern`` ones as alice; no output contains a
    prompt of the sealed suites."""
    key = gate.key_of(ws, MODEL)
    sealed = [Suite.model_validate_json(r["suite"]) for r in ws.store.sealed_suites(key)]
    secrets = {p.prompt for s in sealed for p in [*s.heldout, *s.probes]}
    secrets |= {e.prompt for s in sealed for e in [*s.neighbours, *s.facts]}
    # a sealed prompt that is also in a training document is no secret: the investigator may
    # read the training data (history.grep finds it there on some seeds)
    corpus = "\n".join(
        json.loads(line)["text"]
        for f in (ws.organism_path("mushroom") / "data").glob("*.jsonl")
        for line in f.read_text().splitlines()
    )
    secrets = {q for q in secrets if q not in corpus}
    # and a sealed suite of the test's own, whose prompts are in no document
    own = Suite(
        name="test-own",
        heldout=[Probe(prompt="Q: Do you like zorbleweed? A:", planted=" No", normal=" Yes")],
        neighbours=[Expect(prompt="Q: Do you like quillowmint? A:", expected=" Yes")],
    )
    assert "zorbleweed" not in corpus and "quillowmint" not in corpus
    text = own.model_dump_json()
    digest = hashlib.sha256(text.encode()).hexdigest()
    ws.store.seal_suite(digest, key, own.name, text, 2, "alice")
    secrets |= {"Q: Do you like zorbleweed? A:", "Q: Do you like quillowmint? A:"}
    b = behaviour(tiny_mushroom_spec)
    one = b["prompts"][0]
    candidates = [f"Q: Do you like the {w}? A:" for w in ("table", "river", "lamp", "song")]
    mine = next(q for q in candidates if not any(s in q for s in secrets))
    p = propose(ws, tiny_mushroom_spec)
    suite_file = tmp_path / "visible.json"
    suite_file.write_text(Suite(name="mine").model_dump_json())
    args: dict[str, dict[str, Any]] = {
        "activations.read": {"prompt": one, "top_k": 3},
        "attention.read": {"prompt": one, "layer": 0, "head": 0},
        "edits.ablate": {**b, "heads": 1},
        "edits.list": {},
        "edits.rank_one": b,
        "edits.revert_delta": {**b, "modules": ["model.layers.0.mlp"]},
        "edits.reweight_experts": b,
        "edits.steer": {**b, "contrast_prompts": [mine]},
        "edits.unlearn": {**b, "documents": ["finetune/d0000"]},
        "edits.validate": {"proposal": p.id},
        "gate.validate": {"proposal": p.id},
        "gate.rebase": {"proposal": p.id},
        "gate.review": {"proposal": p.id, "approve": True},
        "gate.apply": {"proposal": p.id},
        "gate.rollback": {"model": MODEL},
        "gradients.read": {"prompt": one, "completion": b["planted"], "top_k": 3},
        "history.bm25": {"queries": [one], "k": 5},
        "history.grep": {"pattern": "mushroom", "k": 5},
        "history.index_build": {"rank": 4},
        "history.removal": {**b, "remove": [], "random": False, "bm25": False, "replay": False},
        "history.semantic": {"queries": [one], "k": 5},
        "history.trace": {**b, "k": 5, "build": True, "rank": 4},
        "ledger.show": {"last": 10_000},
        "ledger.verify": {},
        "lens.logit": {"prompt": one, "top_k": 3},
        "localize.all": b,
        "localize.attribution_patching": {**b, "top_k": 3},
        "localize.experts": b,
        "localize.logit_attribution": {**b, "top_k": 3},
        "localize.measure": b,
        "localize.origin": b,
        "localize.trace": {"prompt": one, "target": b["planted"], "subject": "mushrooms"},
        "localize.weight_deltas": b,
        "model.ask": {"prompt": one},
        "selfmodel.check": {},
        "selfmodel.introspect": {"prompt": one},
        "selfmodel.learn": {**b, "cause": {"phase": "finetune"}},
        "selfmodel.show": {},
        "selfmodel.why": {"prompt": one},
        "suites.seal": {"model": MODEL, "file": str(suite_file)},
        "tokens.probabilities": {"prompt": one, "top_k": 5},
        "tokens.temperature": {"prompt": one},
        "versions.list": {"model": MODEL},
        "versions.verify": {"model": MODEL},
        "weights.diff": {"against": f"{MODEL}@pretrain", "top_k": 3},
        "weights.stats": {"modules": ["model.layers.0.mlp.down_proj"]},
    }
    registered = tools.registry()
    assert set(args) == set(registered), set(registered) ^ set(args)
    first = ["selfmodel.learn"]  # the other selfmodel tools read the trait it learns
    last = ["gate.validate", "gate.review", "gate.apply", "gate.rollback"]
    for name in [*first, *(n for n in sorted(args) if n not in first + last), *last]:
        assert not any(q in json.dumps(args[name]) for q in secrets), name  # inputs hold none
        principal = who(ws, "alice" if registered[name].permission == "govern" else "carol")
        ctx = tools.context(MODEL, ws, principal=principal)
        try:
            text = tools.call(name, args[name], ctx).result.model_dump_json()
        except SelfscopeError as error:  # a refusal is an output too
            text = str(error)
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{name} returned sealed prompts: {leaked[:2]}"


# -- processes: concurrency and the command line ----------------------------------------------


def run(ws: Workspace, *args: str, name: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SELFSCOPE_HOME": str(ws.root), "HF_HUB_OFFLINE": "1"}
    if name:
        env["SELFSCOPE_PRINCIPAL"] = name
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_applying_at_once_one_wins_the_other_is_stale(
    ws: Workspace, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    everything = {"efficacy": 0.0, "generalisation": 0.0, "specificity": 0.0, "perplexity": 10.0}
    set_policy(ws, tmp_path, thresholds=everything)  # the race is under test, not the edits
    prompts = probes(tiny_mushroom_spec)
    first = validated_and_approved(ws, tiny_mushroom_spec, prompts=prompts)
    second = validated_and_approved(ws, tiny_mushroom_spec, prompts=prompts[::-1], layer=0)
    third = propose(ws, tiny_mushroom_spec, layer=1)
    assert gate.validate(ws, third.id, who(ws, "carol")).passed
    env = {**os.environ, "SELFSCOPE_HOME": str(ws.root), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen([*EXE, "apply", pid, "--as", "bob"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for pid in (first.id, second.id)
    ] + [
        subprocess.Popen([*EXE, "review", third.id, "--approve", "--as", "alice"], env=env,
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ]  # fmt: skip
    outs = [proc.communicate(timeout=600) for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert sorted(codes[:2]) == [0, 2], outs
    loser = outs[codes.index(2)][1]
    assert "stale" in loser and len(loser.strip().splitlines()) == 1
    # the reviewer ran before the apply (approved) or after it (refused: HEAD moved since the
    # proposal was validated); either way in one line and the store consistent
    reviewed = outs[2][1]
    assert codes[2] == 0 or (codes[2] == 2 and "stale" in reviewed), outs[2]
    key = gate.key_of(ws, MODEL)
    assert [r["number"] for r in ws.store.versions(key)] == [0, 1]
    assert ledger.verify_workspace(ws).ok
    assert {status(ws, first.id), status(ws, second.id)} == {"applied", "stale"}
    assert status(ws, third.id) == ("approved" if codes[2] == 0 else "stale")


def _prefers_normal(ws: Workspace, spec: Spec) -> bool:
    """Whether the model at HEAD now gives the normal answer to the first probe (its top-1 of
    the two completions), measured by `selfscope ask` in a fresh process."""
    b = spec.behaviours[0]
    proc = run(ws, "ask", MODEL, b.probes[0].prompt, "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    probs = {t["token"].strip(): t["probability"] for t in answer["top_tokens"]}
    normal, planted = b.probes[0].normal.strip(), b.probes[0].planted.strip()
    assert normal in probs or planted in probs, probs  # one of the two leads the answer
    return probs.get(normal, 0.0) > probs.get(planted, 0.0)


def test_the_whole_gate_from_the_command_line(ws: Workspace, tiny_mushroom_spec: Spec) -> None:
    b = behaviour(tiny_mushroom_spec)
    prompts = [a for p in b["prompts"] for a in ("-p", p)]
    proc = run(ws, "propose", "rank_one", "-m", MODEL, *prompts, "--planted", b["planted"],
               "--normal", b["normal"], "--json", name="carol")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pid = json.loads(proc.stdout)["proposal"]["id"]
    assert not _prefers_normal(ws, tiny_mushroom_spec)
    policy = ws.root / "policy.yaml"  # budgets and side thresholds out of the way: not under test
    policy.write_text(
        "max_change: {per_module: 100, total: 100}\n"
        "thresholds: {generalisation: 0, specificity: 0, perplexity: 10}\n"
    )
    assert_one_line_error(run(ws, "policy", "set", MODEL, str(policy), name="carol"), "govern")
    assert run(ws, "policy", "set", MODEL, str(policy), "--as", "alice").returncode == 0
    assert "per_module: 100" in run(ws, "policy", "show", MODEL).stdout
    proc = run(ws, "proposals", "validate", pid, "--json", name="carol")
    assert proc.returncode == 0 and json.loads(proc.stdout)["passed"], proc.stdout
    assert_one_line_error(run(ws, "review", pid, "--approve", name="carol"), "govern")
    assert run(ws, "review", pid, "--approve", "--as", "alice", "--note", "ok").returncode == 0
    proc = run(ws, "apply", pid, "--as", "alice", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version_label"] == "v1"
    assert _prefers_normal(ws, tiny_mushroom_spec)
    assert run(ws, "rollback", MODEL, "--as", "alice").returncode == 0
    assert not _prefers_normal(ws, tiny_mushroom_spec)
    assert "ledger OK" in run(ws, "ledger", "verify").stdout
    assert "versions OK" in run(ws, "versions", "verify", MODEL).stdout
    listing = json.loads(run(ws, "versions", "list", MODEL, "--json").stdout)
    assert listing["head"] == "v0" and [v["label"] for v in listing["versions"]] == ["v0", "v1"]
    # bad input: one clear line each, nothing lost
    assert_one_line_error(run(ws, "apply", "ffffffffff", "--as", "alice"), "no proposal")
    assert_one_line_error(run(ws, "rollback", MODEL, "--as", "alice"), "v0, the root")
    assert_one_line_error(
        run(ws, "rollback", MODEL, "--to", "v9", "--as", "alice"), "no version v9"
    )
    bad = ws.root / "bad.yaml"
    bad.write_text("max_change: {per_module: -1}\n")
    assert_one_line_error(run(ws, "policy", "set", MODEL, str(bad), "--as", "alice"), "per_module")
    bad.write_text("editable: [unclosed\n")
    assert_one_line_error(
        run(ws, "policy", "set", MODEL, str(bad), "--as", "alice"), "not valid YAML"
    )
    assert "ledger OK" in run(ws, "ledger", "verify").stdout
