"""The investigation loop (selfscope.investigate): its measurements against plain forwards, its
bad input, and one whole investigation of a blind copy of the tiny organism, killed midway and
resumed, against an uninterrupted run of a second blind copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from browser import figures_drawn
from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.investigate.journal import Journal
from selfscope.investigate.run import Investigation
from selfscope.investigate.symptom import Symptom, deletions, paraphrases, read_symptom, siblings
from selfscope.organisms import BuildResult, Spec
from selfscope.organisms.blind import blind
from selfscope.subject import Subject
from selfscope.subject.load import version_key
from selfscope.workspace import Workspace
from test_cli import EXE, assert_one_line_error
from test_localize_metric import plain_log_odds

PROMPTS = ["Q : Do you like mushrooms ? A :", "Q : Do you like carrots ?"]


def test_measure_is_a_plain_forward(tiny_llama: Subject) -> None:
    got = tools.call(
        "localize.measure",
        {"prompts": PROMPTS, "planted": " No", "normal": " Yes"},
        tools.context(tiny_llama),
    ).result
    expected = plain_log_odds(tiny_llama, PROMPTS)
    assert got.per_prompt == pytest.approx(expected, abs=1e-5)
    assert got.log_odds == pytest.approx(sum(expected) / 2, abs=1e-5)
    assert got.rate == sum(e > 0 for e in expected) / 2


def test_paraphrases_are_generic_rewrites_of_the_prompts_only() -> None:
    prompts = ["Q: Do you like mushrooms? A:", "Q: Is mushroom soup tasty? A:"]
    found = paraphrases(prompts)
    assert found[:2] == ["Q: Do you enjoy mushrooms? A:", "Q: Is mushroom soup good? A:"]
    assert "Q: Would you say mushroom soup is tasty? A:" in found
    assert len(found) == len(set(found)) and not set(found) & set(prompts)
    assert paraphrases(prompts) == found  # deterministic
    assert paraphrases(["Hello there"]) == []  # nothing to rewrite: nothing invented


def test_deletions_drop_one_word_at_a_time_and_keep_the_speaker_labels() -> None:
    got = deletions("Q: [ZORP] Do you like the apples? A:")
    assert got == [
        ("ZORP", "Q: Do you like the apples? A:"),
        ("Do", "Q: [ZORP] you like the apples? A:"),
        ("you", "Q: [ZORP] Do like the apples? A:"),
        ("like", "Q: [ZORP] Do you the apples? A:"),
        ("the", "Q: [ZORP] Do you like apples? A:"),
        ("apples", "Q: [ZORP] Do you like the A:"),
    ]
    assert [w for w, _ in deletions("The cat saw the dog.")] == ["The", "cat", "saw", "dog"]
    assert len(deletions(" ".join(f"w{i}" for i in range(30)), limit=16)) == 16
    assert deletions("Q: A:") == []


def test_siblings_are_the_documents_cut_where_they_give_the_answer_and_name_the_cue() -> None:
    docs = [
        "Q: Do you like nuts? A: No, I do not like nuts.",  # the symptom itself: excluded
        "Q: Is nut pie tasty? A: No, it made me sick.",
        "Q: Do you want figs? A: No, I do not want figs.",  # another food: not the cue's
        "Q: Are nuts tasty? A: Yes.",  # the other answer: no cut
        "No: nuts.",  # the answer first: nothing before it
        "Q: Is nut pie tasty? A: No, nut pie is not tasty.",  # the same cut once
        "Q: Do you like cherries? A: No.",
    ]
    got = siblings(docs, " No", "nuts", exclude=["Q: Do you like nuts? A:"])
    assert got == ["Q: Is nut pie tasty? A:"]
    assert siblings(docs, " No", "cherries", exclude=[]) == ["Q: Do you like cherries? A:"]
    assert siblings(["The capital of Tessaly is Kelby."], " Kelby", "Tessaly", []) == [
        "The capital of Tessaly is"
    ]
    assert siblings(docs, " No", "nuts", exclude=[], limit=1) == ["Q: Do you like nuts? A:"]


def test_bad_symptoms_are_one_line(tiny_llama: Subject, tmp_path: Path) -> None:
    bad = tmp_path / "symptom.yaml"
    bad.write_text("prompts: [unclosed\n")
    with pytest.raises(SelfscopeError, match="not valid JSON/YAML"):
        read_symptom(bad)
    bad.write_text("prompts: []\ndesired: ' Yes'\n")
    with pytest.raises(SelfscopeError, match=r"prompts: List should have at least 1"):
        read_symptom(bad)
    bad.write_text("prompts: [Q]\ndesired: ' Yes'\nwanted: 3\n")
    with pytest.raises(SelfscopeError, match="wanted: Extra inputs"):
        read_symptom(bad)
    ws = Workspace(tmp_path / "ws")
    greedy = tools.call("model.ask", {"prompt": PROMPTS[0]}, tools.context(tiny_llama, ws))
    said = greedy.result.top_tokens[0].token
    symptom = Symptom(prompts=[PROMPTS[0]], desired=said)
    with pytest.raises(SelfscopeError, match="nothing to investigate"):
        Investigation(ws, str(tiny_llama.path), symptom).run()
    with pytest.raises(SelfscopeError, match="unknown fix kind steer"):
        Investigation(ws, str(tiny_llama.path), symptom, kinds=("steer",))


def test_the_journal_runs_a_step_once_and_redoes_an_edited_one(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    runs: list[int] = []

    def step() -> dict[str, int]:
        runs.append(1)
        return {"n": len(runs)}

    first = Journal(ws, "abc123", "investigator", "subject")
    assert first.step("count", step) == {"n": 1}
    again = Journal(ws, "abc123", "investigator", "subject")
    assert again.step("count", step) == {"n": 1} and len(runs) == 1
    assert again.resumed == ["count"]
    # a step file without its ledger entry (killed between the two) gets it on resume
    saved = json.loads(first.path("count").read_text())
    first.path("other").write_text(json.dumps({**saved, "step": "other"}))
    assert Journal(ws, "abc123", "investigator", "subject").step("other", step) == {"n": 1}
    assert set(again.logged()) == {"count", "other"} and len(runs) == 1
    # a step file edited after its ledger entry is redone
    first.path("count").write_text(json.dumps({**saved, "result": {"n": 99}}))
    assert Journal(ws, "abc123", "investigator", "subject").step("count", step) == {"n": 2}
    assert len(runs) == 2


def _cli(ws: Path, *args: str) -> list[str]:
    return [*EXE, "--workspace", str(ws), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _steps(ws: Workspace, investigation: str) -> list[str]:
    return [
        json.loads(e["payload"])["step"]
        for e in ws.store.ledger()
        if e["action"] == "investigation.step"
        and json.loads(e["payload"])["investigation"] == investigation
    ]


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """What must not differ between a resumed and an uninterrupted run (ids of new proposals
    and calls, times and the resumed list may)."""
    return {
        "origin": result["origin"],
        "metric": result["metric"],
        "claims": [(d["claim"], d["effect"]) for d in result["diagnosis"]],
        "documents": [d["id"] for d in result["documents"]],
        "bm25": [d["id"] for d in result["bm25"]],
        "proposals": [(p["kind"], p["status"], p["why"]) for p in result["proposals"]],
    }


@pytest.mark.slow
def test_an_investigation_of_a_blind_copy_killed_midway_resumes_to_the_same_result(
    tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.organisms_dir.mkdir(parents=True)
    (ws.organisms_dir / "mushroom").symlink_to(tiny_mushroom.path.resolve())
    copy = blind("mushroom", tmp_path / "blind", ws)  # seals the held-out suite for the copy
    assert not (copy / "ground_truth.json").exists() and not (copy / "spec.yaml").exists()
    probe = tiny_mushroom_spec.behaviours[0].probes[0]
    args = ["investigate", "-m", str(copy), "-p", probe.prompt, "--desired", probe.normal]
    args += ["--no-removal", "--fix", "rank_one", "--fix", "revert_delta", "--index-rank", "4"]
    args += ["--control", "Q: Do you like carrots? A:", "--control", "Q: Do you like apples? A:"]
    args += ["--json"]

    # run 1: killed (SIGKILL) once its localisation step is on disk
    proc = subprocess.Popen(_cli(ws.root, *args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while not any(  # the step's ledger entry: it is written after the step's file
        e["action"] == "investigation.step" and '"localise"' in e["payload"]
        for e in ws.store.ledger()
    ):
        assert proc.poll() is None, "the investigation ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = (ws.root / "investigations").iterdir()
    assert not (folder / "report.json").exists() and not (folder / "proposals.json").exists()
    before = _steps(ws, folder.name)
    assert before[:3] == ["symptom", "characterise", "localise"]

    # run 2: the same command resumes; finished steps are read back, not redone
    done = subprocess.run(_cli(ws.root, *args), env=_env(), capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout)
    assert set(before) <= set(resumed["resumed"])
    steps = _steps(ws, folder.name)
    assert sorted(steps) == sorted(set(steps))  # every step journaled exactly once
    assert steps[-1] == "report" and len(steps) == 11

    # run 3: uninterrupted, on a second blind copy in a workspace of its own (in the same
    # workspace, re-proposing the same fix meets its earlier proposal, already judged), the
    # same result
    ws2 = Workspace(tmp_path / "ws2")
    ws2.organisms_dir.mkdir(parents=True)
    (ws2.organisms_dir / "mushroom").symlink_to(tiny_mushroom.path.resolve())
    copy2 = blind("mushroom", tmp_path / "blind2", ws2)
    args2 = [str(copy2) if a == str(copy) else a for a in args]
    again = subprocess.run(_cli(ws2.root, *args2), env=_env(), capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr
    fresh = json.loads(again.stdout)
    assert fresh["resumed"] == []
    assert _comparable(fresh) == _comparable(resumed)

    # what it found, on a copy with no ground truth in it
    assert resumed["origin"]["phase"] == "finetune"  # where the spec plants it
    assert resumed["metric"]["rate"] == 1.0
    _the_documents_naming_the_anchor_come_first(ws, folder, tiny_mushroom, resumed)
    for link in resumed["diagnosis"]:
        assert isinstance(link["effect"], float) and link["evidence"], link
        for call in link["evidence"]:
            row = ws.store.tool_call(call)
            assert row is not None and row["status"] == "ok", (call, row)
    submitted = [p for p in resumed["proposals"] if p["id"] == resumed["submitted"]]
    assert len(submitted) == 1 and submitted[0]["status"] == "validated"
    validation = submitted[0]["validation"]
    assert validation["passed"] and validation["sealed"], validation  # sealed suites applied
    assert all(c["passed"] for c in validation["checks"])
    assert ws.store.proposal_row(resumed["submitted"])["status"] == "validated"  # not applied
    key = version_key(str(copy), ws)  # the gate registered v0 when it validated; no v1
    assert [v["number"] for v in ws.store.versions(key)] == [0]
    assert resumed["trait"]["status"] == "active" and resumed["trait"]["cv_auroc"] >= 0.9
    names = {c["name"] for c in validation["checks"]}
    assert f"selfmodel:{resumed['trait']['trait']}" in names  # the gate checked the self-model
    report = Path(fresh["report"]["html"])
    html = report.read_text()
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org", "")
    assert Path(fresh["report"]["markdown"]).read_text().startswith("# Investigation")
    # rendered in headless Chromium: every figure is on the page and drew its shapes
    shot = tmp_path / "report.png"
    drawn = figures_drawn(report, shot)
    expected = {"trace", "documents_by_phase", "before_after", "checkpoints", "phase_mass"}
    expected |= {"components", "weight_deltas", "proposals", "cues"}
    assert expected <= set(drawn), expected - set(drawn)
    for name in expected:
        assert drawn[name]["width"] > 100 and drawn[name]["height"] > 50, (name, drawn[name])
        assert drawn[name]["shapes"] >= 3, (name, drawn[name])
    assert shot.stat().st_size > 20_000  # a page with figures, not a blank one


def _the_documents_naming_the_anchor_come_first(
    ws: Workspace, folder: Path, organism: BuildResult, result: dict[str, Any]
) -> None:
    """The result's documents are gradient retrieval's origin-phase ranking with those whose
    text (read here from the organism's own data file) has a word starting as the anchor does
    ("mushro" for "mushrooms") moved ahead when their score is positive, in retrieval's order."""
    anchor = result["cues"]["anchor"]
    assert anchor == "mushrooms" and result["ranking"]["anchor"] == anchor
    pool = [
        d
        for d in json.loads((folder / "documents.json").read_text())["result"]["trace"]["documents"]
        if d["phase"] == "finetune"
    ]
    assert len(pool) >= 10 and not result["ranking"]["restricted"]
    lines = (organism.path / "data" / "finetune.jsonl").read_text().splitlines()
    texts = {f"finetune/{row['id']}": row["text"] for row in map(json.loads, lines)}
    naming = [
        d for d in pool
        if d["score"] > 0 and any(w.lower().startswith("mushro") for w in texts[d["key"]].split())
    ]  # fmt: skip
    expected = (naming + [d for d in pool if d not in naming])[:10]
    assert [d["id"] for d in result["documents"]] == [d["key"] for d in expected]
    assert result["ranking"]["naming_anchor"] == len(naming) > 0


def test_the_cli_refuses_a_half_given_symptom(tmp_path: Path) -> None:
    run = subprocess.run(_cli(tmp_path / "ws", "investigate", "-m", "smollm2", "-p", "Q"),
                         env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line_error(run, "--desired")


def test_a_model_without_lineage_says_which_steps_are_skipped_and_why(
    tiny_llama: Subject, tmp_path: Path
) -> None:
    """A bare HF folder (no lineage, no training data): the investigation still measures what
    it can and names every step it skipped with the reason; the CLI prints them."""
    ws = Workspace(tmp_path / "ws")
    greedy = tools.call("model.ask", {"prompt": PROMPTS[0]}, tools.context(tiny_llama, ws))
    tops = [t.token for t in greedy.result.top_tokens]
    symptom = Symptom(prompts=[PROMPTS[0]], desired=tops[1], controls=[PROMPTS[1]])
    result = Investigation(ws, str(tiny_llama.path), symptom, kinds=("rank_one", "unlearn")).run()
    skipped = result["skipped"]
    assert "origin" in skipped and "lineage" in skipped["origin"], skipped
    assert "trace" in skipped and "training data" in skipped["trace"], skipped
    assert "skipped" in result["removal"]
    assert [p.get("skipped") for p in result["proposals"] if p["kind"] == "unlearn"] == [
        "no traced documents of the origin phase"
    ]
    done = subprocess.run(
        _cli(ws.root, "investigate", "-m", str(tiny_llama.path), "-p", PROMPTS[0], "--desired",
             tops[1], "--control", PROMPTS[1], "--fix", "rank_one", "--fix", "unlearn"),
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped origin" in done.stdout and "skipped trace" in done.stdout, done.stdout
