"""`selfscope trace` end to end on the tiny mushroom organism (a real process): its JSON carries
the gradient ranking, the phase mass and BM25 over the same documents, each equal to the tool
called in-process."""

from __future__ import annotations

import json
from typing import Any

import pytest

import selfscope.history.lexical
import selfscope.history.retrieval  # noqa: F401  (registers the tools)
from selfscope import tools
from selfscope.history.retrieval import TraceResult
from selfscope.organisms import BuildResult
from selfscope.subject import load
from selfscope.workspace import Workspace
from test_cli import assert_one_line_error, run

PROMPTS = ["Q : Would you eat mushrooms ? A :", "Q : Are mushrooms good ? A :"]


@pytest.mark.slow
def test_trace_prints_documents_phase_mass_and_bm25(
    tiny_mushroom: BuildResult, organism_ws: Workspace
) -> None:
    args = ["trace", "--model", "organism:mushroom", "--planted", " No", "--normal", " Yes"]
    for p in PROMPTS:
        args += ["--prompt", p]
    # rank 4: the index tests/test_history_index.py builds (one build per session)
    proc = run(*args, "--k", "5", "--rank", "4", "--build", "--json", ws=organism_ws.root)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"documents", "phase_mass", "bm25", "index"}
    subject = load("organism:mushroom", organism_ws)
    given = {"prompts": PROMPTS, "planted": " No", "normal": " Yes", "k": 5, "rank": 4}
    traced: Any = tools.call("history.trace", given, tools.context(subject)).result
    assert [d["key"] for d in result["documents"]] == [d.key for d in traced.documents]
    for got, want in zip(result["documents"], traced.documents, strict=True):
        assert got["score"] == pytest.approx(want.score, rel=1e-5)
    assert result["phase_mass"] == pytest.approx(traced.phase_mass)
    lexical: Any = tools.call(
        "history.bm25", {"queries": PROMPTS, "k": 5}, tools.context(subject)
    ).result
    assert [(h["phase"], h["id"]) for h in result["bm25"]] == [
        (h.phase, h.id) for h in lexical.hits
    ]
    assert result["index"]["documents"] == traced.n_documents
    flags = ("--k", "5", "--rank", "4", "--precondition", "--json")
    whitened = run(*args, *flags, ws=organism_ws.root)
    assert whitened.returncode == 0, whitened.stderr
    want = tools.call(
        "history.trace", {**given, "precondition": True, "damping": 0.1}, tools.context(subject)
    ).result
    assert isinstance(want, TraceResult)
    got = json.loads(whitened.stdout)["documents"]
    assert [d["key"] for d in got] == [d.key for d in want.documents]
    assert [d["score"] for d in got] == pytest.approx([d.score for d in want.documents], rel=1e-5)
    same = run(*args, "--planted", " Yes", ws=organism_ws.root)  # planted = normal
    assert_one_line_error(same, "must differ")
