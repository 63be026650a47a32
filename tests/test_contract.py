"""The tool contract: permissions enforced in ``call()``, every call recorded with an id, and
evidence that cites recorded calls (tiny random Llama; no training)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.progress import RecordingProgress
from selfscope.subject import Subject
from selfscope.workspace import Workspace

PROMPT = "Q : Do you like mushrooms ? A"
BEHAVIOUR = {"prompts": [PROMPT], "planted": " No", "normal": " Yes"}


def test_a_reader_calling_a_propose_tool_gets_one_line_and_the_refusal_is_recorded(
    tiny_llama: Subject, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path)
    ctx = tools.context(str(tiny_llama.path), ws, principal=tools.READER)
    with pytest.raises(tools.PermissionDenied) as caught:
        tools.call("edits.ablate", {**BEHAVIOUR, "heads": ["1.2"]}, ctx)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "reader may not call edits.ablate: it needs the 'propose' permission and reader holds read"
    )
    assert not ctx.has_subject  # refused before the model was even loaded
    (row,) = ws.store.tool_calls()
    assert row["tool"] == "edits.ablate" and row["status"] == "denied"
    assert row["principal"] == "reader" and row["permission"] == "propose" and row["call_id"]
    assert row["error"] == message
    # the same reader may read; an agent may propose
    assert tools.call("lens.logit", {"prompt": PROMPT}, ctx).result.layers
    agent = tools.context(tiny_llama, ws, principal=tools.AGENT)
    made = tools.call("edits.ablate", {**BEHAVIOUR, "heads": ["1.2"]}, agent)
    assert made.result.proposal.call_id == made.id
    # nobody holds 'govern' by default, not even the person at the CLI
    assert not tools.Principal.local().holds("govern") and not tools.AGENT.holds("govern")
    with pytest.raises(SelfscopeError, match="unknown permission 'root'"):
        tools.Principal.of("x", "root")  # type: ignore[arg-type]


def test_every_call_is_recorded_with_its_id_status_and_result_digest(
    tiny_llama: Subject, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path)
    sink = RecordingProgress()
    ctx = tools.context(tiny_llama, ws, principal=tools.AGENT, progress=sink)
    done = tools.call("lens.logit", {"prompt": PROMPT, "targets": [" No"]}, ctx)
    row = ws.store.tool_call(done.id)
    assert row is not None and row["status"] == "ok" and row["tool"] == "lens.logit"
    assert (
        row["result_sha256"] == hashlib.sha256(done.result.model_dump_json().encode()).hexdigest()
    )
    assert row["subject"] == tiny_llama.source and row["subject_path"] == str(tiny_llama.path)
    assert row["principal"] == "agent" and row["parent"] is None and row["seconds"] > 0
    with pytest.raises(SelfscopeError, match="position 9 is outside"):
        tools.call("lens.logit", {"prompt": PROMPT, "position": 9}, ctx)
    with pytest.raises(SelfscopeError, match="top_k: Input should be"):
        tools.call("lens.logit", {"prompt": PROMPT, "top_k": 10_000}, ctx)
    rows = ws.store.tool_calls()
    assert [r["status"] for r in rows] == ["ok", "error", "invalid"]
    assert "position 9 is outside" in rows[1]["error"] and "top_k" in rows[2]["error"]
    assert len({r["call_id"] for r in rows}) == 3
    # a composite tool's steps are recorded calls whose parent is the composite call
    report = tools.call("localize.all", {**BEHAVIOUR, "top_k": 3}, ctx)
    steps = report.result.calls
    assert set(steps) == {"attribution"}  # no lineage, no trace subject, dense: skipped
    assert set(report.result.skipped) == {"origin", "weight_deltas", "trace", "experts"}
    for call_id in steps.values():
        inner = ws.store.tool_call(call_id)
        assert inner is not None and inner["parent"] == report.id and inner["status"] == "ok"
        assert inner["principal"] == "agent"
    assert "localize.attribution_patching" in sink.events  # progress went to the sink


def test_a_proposals_evidence_cites_calls_that_exist(tiny_llama: Subject, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ctx = tools.context(tiny_llama, ws, principal=tools.AGENT)
    looked = tools.call("lens.logit", {"prompt": PROMPT, "targets": [" No", " Yes"]}, ctx)
    made = tools.call("edits.ablate", {**BEHAVIOUR, "heads": ["1.2"], "evidence": [looked.id]}, ctx)
    proposal = made.result.proposal
    assert proposal.call_id == made.id
    cited = [e for e in proposal.evidence if e.call_id == looked.id]
    assert len(cited) == 1 and cited[0].tool == "lens.logit"
    assert cited[0].args["prompt"] == PROMPT
    for evidence in proposal.evidence:  # every citation is a recorded, successful call
        row = ws.store.tool_call(evidence.call_id)
        assert row is not None and row["status"] == "ok"
        own = evidence.call_id == made.id  # measured inside the proposing call itself
        assert row["tool"] == ("edits.ablate" if own else evidence.tool)
    # citing a call that does not exist, or one made on another model: one line, no proposal
    before = len(list((ws.root / "proposals").glob("*.json")))
    with pytest.raises(SelfscopeError, match=r"cites call 'c0-none', which is not recorded"):
        tools.call("edits.ablate", {**BEHAVIOUR, "heads": ["1.2"], "evidence": ["c0-none"]}, ctx)
    other = tools.context("some/other/model", ws)
    other_row = tools.new_call_id()
    ws.store.record_call_start(other_row, "lens.logit", "{}", "some/other/model", "x", "read", None)
    ws.store.record_call_end(other_row, "ok", "0" * 64, 0.1, None)
    with pytest.raises(SelfscopeError, match=r"made on some/other/model, not on"):
        tools.call("edits.ablate", {**BEHAVIOUR, "heads": ["1.2"], "evidence": [other_row]}, ctx)
    assert len(list((ws.root / "proposals").glob("*.json"))) == before
    assert other.source == "some/other/model" and not other.has_subject
