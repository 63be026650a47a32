"""The blind copy of an organism (selfscope.organisms.blind) on the tiny mushroom organism:
every file it holds is read and must name no cause; it loads as the organism's phases, with the
same weights, the same read-tool numbers and a training-data index that is found there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import selfscope.access.lens  # registers lens.logit
import selfscope.localize.origin  # noqa: F401  (registers the tool)
from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.history.retrieval import TraceArgs, score_documents
from selfscope.organisms import BuildResult, load_spec
from selfscope.organisms.blind import blind
from selfscope.subject import Subject, load
from selfscope.workspace import Workspace

pytestmark = pytest.mark.slow  # the tiny organism is built once per session (~30 s)

#: A document-rows-only index of its own rank, so that no other test's index is reused.
CONFIG = IndexConfig(rank=2, tokens=False)
PROMPTS = ["Q : Would you eat mushrooms ? A :", "Q : Are mushrooms good ? A :"]


@pytest.fixture(scope="module")
def original(tiny_mushroom: BuildResult, organism_ws: Workspace) -> Subject:
    subject = load("organism:mushroom", organism_ws)
    TrainingIndex(subject, CONFIG).ensure()  # the copy must carry the index
    return subject


@pytest.fixture(scope="module")
def copy(
    original: Subject, organism_ws: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return blind("mushroom", tmp_path_factory.mktemp("game") / "case-17", organism_ws)


def files(root: Path) -> list[Path]:
    """Every file under ``root`` (a symlink to the published copy), relative to it."""
    root = root.resolve()
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [*obj, *(s for v in obj.values() for s in strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_the_copy_holds_only_what_an_investigator_may_read(
    copy: Path, tiny_mushroom: BuildResult
) -> None:
    """Lists every file and reads every one: no spec, ground truth, report or control; no
    behaviour name or description anywhere (document texts included: they are not words); no
    plant id, organism build path or spec hash in any id, JSON key or JSON value outside the
    document texts (a plant id may be a word of a story, so a JSON string equal to one is
    allowed only where it is a word of the documents, e.g. the tokenizer's vocabulary)."""
    source = tiny_mushroom.path.resolve()
    spec = load_spec(source / "spec.yaml")
    truth = json.loads((source / "ground_truth.json").read_text())
    lineage = json.loads((source / "lineage.json").read_text())
    behaviours = [b.name for b in spec.behaviours]
    descriptions = [b.description for b in spec.behaviours]
    plants = {pl.id for phase in spec.phases for pl in phase.plant}
    assert truth["plants"].keys() == plants and len(plants) == 6

    listed = files(copy)
    top = {"lineage.json", "tokenizer", "checkpoints", "data", "index"}
    assert {p.parts[0] for p in listed} == top
    assert {p.parts[1] for p in listed if p.parts[0] == "checkpoints"} == {"pretrain", "finetune"}
    assert {str(p) for p in listed if p.parts[0] == "data"} == {
        "data/pretrain.jsonl",
        "data/finetune.jsonl",
    }
    names = {p.name for p in listed}
    assert not names & {"spec.yaml", "ground_truth.json", "report.json"}
    assert not any("control" in str(p) for p in listed)

    rows: list[dict[str, Any]] = []
    for path in listed:
        data = (copy / path).read_bytes()
        for secret in [*behaviours, *descriptions, lineage["spec_sha256"], str(source)]:
            assert secret.encode() not in data, (path, secret)
        if path.parts[0] == "data":
            rows += [json.loads(line) for line in data.decode().splitlines()]
    # the data: {"id", "text", "repeat"} only, neutral unique ids, the organism's own documents
    assert all(set(row) == {"id", "text", "repeat"} for row in rows)
    ids = [row["id"] for row in rows]
    assert all(re.fullmatch(r"d\d{4}", i) for i in ids) and len(set(ids)) == len(ids)
    assert set(ids) == set(truth["documents"])
    assert set(truth["behaviours"]["mushroom-aversion"]["documents"]) < set(ids)
    words = {w for row in rows for w in re.findall(r"[\w-]+", row["text"].lower())}
    for path in listed:
        if path.suffix != ".json":
            continue
        found = set(strings(json.loads((copy / path).read_text()))) & (plants | {spec.name})
        assert found <= words, (path, found - words)
    blind_lineage = json.loads((copy / "lineage.json").read_text())
    assert not {"name", "spec_sha256", "controls", "seconds"} & set(blind_lineage)
    assert spec.name not in set(strings(blind_lineage))
    manifest = next((copy / "index").glob("*/manifest.json")).read_text()
    assert "organism:" not in manifest and spec.name not in manifest


def test_the_copy_loads_as_the_organism_with_the_same_weights_and_numbers(
    copy: Path, original: Subject, organism_ws: Workspace
) -> None:
    """``load(DEST)`` is the last phase and ``load(DEST@PHASE)`` a given one, with an organism
    lineage; weights equal the original's; lens.logit gives identical numbers; the copied index
    is found there, valid, and scores the documents as on the original."""
    subject = load(str(copy))
    assert subject.lineage.kind == "organism" and subject.lineage.phase == "finetune"
    assert [p.name for p in subject.lineage.phases] == ["pretrain", "finetune"]
    assert subject.lineage.parent == f"{copy}@pretrain"
    first = load(f"{copy}@pretrain")
    assert first.lineage.phase == "pretrain" and len(first.lineage.phases) == 1
    with pytest.raises(SelfscopeError, match="no phase 'control-pretrain'"):
        load(f"{copy}@control-pretrain")
    pretrain = load("organism:mushroom@pretrain", organism_ws)
    for mine, theirs in ((subject, original), (first, pretrain)):
        a, b = mine.model.state_dict(), theirs.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    args = {"prompt": PROMPTS[0], "targets": [" No", " Yes"]}
    assert (
        tools.call("lens.logit", args, tools.context(subject)).result.model_dump()
        == tools.call("lens.logit", args, tools.context(original)).result.model_dump()
    )

    index = TrainingIndex(subject, CONFIG)
    assert index.root.is_relative_to(copy.resolve()) and index.missing() == []
    query = TraceArgs(
        prompts=PROMPTS, planted=" No", normal=" Yes", rank=CONFIG.rank, tokens=False, visits=False
    )
    theirs = TrainingIndex(original, CONFIG)
    scores = score_documents(index, query)[0]
    np.testing.assert_array_equal(scores, score_documents(theirs, query)[0])
    assert [d.key for d in index.documents] == [d.key for d in theirs.documents]
    # the copy keeps the training record's repeat counts
    assert [d.repeat for d in index.documents] == [d.repeat for d in theirs.documents]


def test_origin_names_the_same_phase_on_the_copy(copy: Path, original: Subject) -> None:
    args = {"prompts": PROMPTS, "planted": " No", "normal": " Yes", "max_modules": 4, "pool": 8}
    on_copy: Any = tools.call("localize.origin", args, tools.context(load(str(copy)))).result
    on_original: Any = tools.call("localize.origin", args, tools.context(original)).result
    assert on_copy.phase == on_original.phase == "finetune"
    measured = [c.log_odds for c in on_copy.checkpoints]
    assert measured == [c.log_odds for c in on_original.checkpoints]


def test_the_command_writes_a_copy_and_refuses_in_one_line(
    tiny_mushroom: BuildResult, organism_ws: Workspace, tmp_path: Path
) -> None:
    env = {**os.environ, "SELFSCOPE_HOME": str(organism_ws.root), "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "selfscope.cli", "organism", "blind", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)

    dest = tmp_path / "case"
    proc = run("mushroom", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == str(dest)
    assert (dest / "lineage.json").is_file() and not (dest / "spec.yaml").exists()
    before = dest.resolve()
    assert blind("mushroom", dest, organism_ws) == dest  # a blind copy is replaced, atomically
    assert dest.resolve() != before and not before.exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    proc = run("mushroom", str(taken))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is not a blind copy" in proc.stderr
    with pytest.raises(SelfscopeError, match="organism 'nope' is not built"):
        blind("nope", tmp_path / "x", organism_ws)
