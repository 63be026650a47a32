"""The typed lineage, the one checkpoint loader, and bringing your own lineage.

The acceptance test exports the tiny mushroom organism as a user would have it — two plain
Hugging Face folders (pretrained, fine-tuned) and the fine-tune's documents as JSONL — declares
the lineage with ``selfscope lineage add`` in another workspace, and checks that origin, weight
deltas, weights.diff and training-document retrieval give the organism's own answers; what the
declaration leaves unknown must be listed in each answer's ``caveats``.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import selfscope
import selfscope.access.weights
import selfscope.history.retrieval
import selfscope.localize.deltas
import selfscope.localize.origin  # (these imports register the tools)
from selfscope import tools
from selfscope.cli import app
from selfscope.errors import SelfscopeError
from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.organisms import BuildResult, resolve_spec
from selfscope.organisms.ground_truth import read_ground_truth
from selfscope.subject import Lineage, Subject, declare, load, load_checkpoint, load_parent
from selfscope.subject.declared import BASE_PHASE, declarations, read_documents
from selfscope.workspace import Workspace

SRC = Path(selfscope.__file__).parent
RANK = 4  # the index's rank here (and tests/test_history_index.py's), to keep builds short


# -- fast: the type, the data file, the errors ---------------------------------------------------


def test_investigation_code_never_reads_ground_truth() -> None:
    """No module of subject/, localize/, history/ or edits/ imports the ground-truth type or
    names its file outside a docstring (the layering rule, checked on the AST)."""
    offenders = []
    for room in ("subject", "localize", "history", "edits"):
        for path in sorted((SRC / room).rglob("*.py")):
            tree = ast.parse(path.read_text())
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and "ground_truth" in (node.module or ""):
                    offenders.append(f"{path.name}: from {node.module}")
                if isinstance(node, ast.Import) and any(
                    "ground_truth" in a.name for a in node.names
                ):
                    offenders.append(f"{path.name}: import")
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and "ground_truth" in node.value
                    and id(node) not in docstrings
                ):
                    offenders.append(f"{path.name}: {node.value[:40]!r}")
    assert offenders == []


def test_documents_file_ids_assigned_and_bad_lines_named(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a b"}\n\n{"id": 7, "text": "c", "repeat": 3}\n{"text": "d"}\n')
    assert read_documents(good) == [
        {"id": "line-1", "text": "a b", "repeat": 1},
        {"id": "7", "text": "c", "repeat": 3},
        {"id": "line-4", "text": "d", "repeat": 1},
    ]
    cases = {
        '{"text": "a"}\n{"text": "b"\n': "line 2 is not valid JSON",
        '{"text": "a"}\n["b"]\n': 'line 2 is not an object with a string "text"',
        '{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n': "id 'x' repeats line 1",
        '{"text": "a", "repeat": 0}\n': '"repeat" must be a positive integer',
        "\n": "holds no documents",
    }
    for i, (content, needle) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_text(content)
        with pytest.raises(SelfscopeError, match=needle) as error:
            read_documents(bad)
        assert "\n" not in str(error.value)


def test_a_plain_folder_has_an_empty_lineage(tiny_llama: Subject) -> None:
    lineage = tiny_llama.lineage
    assert isinstance(lineage, Lineage)
    assert (lineage.kind, lineage.phases, lineage.parent, lineage.unknown) == (
        "hf-folder",
        [],
        None,
        [],
    )


# -- the tiny organism, exported as a user's own folders ----------------------------------------


@pytest.fixture(scope="module")
def behaviour(tiny_mushroom: BuildResult) -> dict[str, Any]:
    spec = resolve_spec("mushroom", size="tiny").behaviours[0]
    return {
        "prompts": [p.prompt for p in spec.probes],
        "planted": spec.probes[0].planted,
        "normal": spec.probes[0].normal,
        "control_prompts": [n.prompt for n in spec.neighbours],
    }


@pytest.fixture(scope="module")
def organism(tiny_mushroom: BuildResult, organism_ws: Workspace) -> Subject:
    return load("organism:mushroom", organism_ws)


@pytest.fixture(scope="module")
def exported(organism: Subject, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The organism's checkpoints as plain HF folders (weights, config and tokenizer: each
    loads alone by path) and each phase's documents as JSONL ({"id", "text", "repeat"})."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for phase in organism.lineage.phases:
        folder = root / f"{phase.name}-hf"
        shutil.copytree(phase.checkpoint, folder)
        assert (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()
        out[phase.name] = folder
        assert phase.data is not None
        rows = [json.loads(line) for line in phase.data.read_text().splitlines() if line]
        data = root / f"{phase.name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[f"{phase.name}-data"] = data
    return out


def knobs(organism: Subject, phase: str) -> dict[str, Any]:
    """The phase's recorded hyperparameters (lineage.json, read by the typed reader)."""
    h = organism.lineage.phase_ref(phase).hyperparameters
    assert h.lr and h.epochs and h.batch_size
    return {"lr": h.lr, "epochs": h.epochs, "batch_size": h.batch_size}


@pytest.fixture(scope="module")
def user_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace of the user's own, not the one the organism was built in."""
    return Workspace(tmp_path_factory.mktemp("user-ws"))


@pytest.fixture(scope="module")
def declared(organism: Subject, exported: dict[str, Path], user_ws: Workspace) -> Subject:
    """finetune-hf declared as pretrain-hf + the fine-tune documents, the organism's knobs."""
    lineage = declare(
        exported["finetune"],
        parent=exported["pretrain"],
        data=exported["finetune-data"],
        phase="finetune",
        chat=False,
        workspace=user_ws,
        **knobs(organism, "finetune"),
    )
    assert lineage.kind == "declared"
    return load(str(exported["finetune"]), user_ws)


@pytest.mark.slow  # the tiny organism is built once per session
def test_declared_lineage_is_typed_and_states_what_is_unknown(
    declared: Subject, organism: Subject, exported: dict[str, Path], user_ws: Workspace
) -> None:
    lineage = declared.lineage
    assert [p.name for p in lineage.phases] == [BASE_PHASE, "finetune"]
    base, own = lineage.phases
    assert base.checkpoint == exported["pretrain"].resolve() and base.data is None
    assert own.checkpoint == exported["finetune"].resolve() == declared.path
    mine = organism.lineage.phase_ref("finetune")
    assert own.documents == mine.documents and own.data_sha256 == mine.data_sha256
    assert own.hyperparameters.lr == mine.hyperparameters.lr and own.renderer == "plain"
    assert lineage.parent == str(exported["pretrain"].resolve())
    facts = {(u.phase, u.fact) for u in lineage.unknown}
    assert facts == {(BASE_PHASE, "data"), ("finetune", "context"), ("finetune", "order")}
    # the organism recorded everything (trained from scratch)
    assert organism.lineage.unknown == [] and organism.lineage.base_model == "scratch"
    # the same folder in a workspace without the declaration: no lineage
    assert load(str(exported["finetune"]), Workspace(user_ws.root / "other")).lineage.phases == []
    listed = declarations(user_ws)
    assert [(d.model, ok) for d, ok in listed] == [(exported["finetune"].resolve(), True)]


@pytest.mark.slow  # the tiny organism is built once per session
def test_bad_declarations_are_one_line(
    exported: dict[str, Path], tiny_llama: Subject, user_ws: Workspace, tmp_path: Path
) -> None:
    data = exported["finetune-data"]
    ws = Workspace(tmp_path / "ws")
    cases = [
        ({"model": tmp_path / "nope", "parent": exported["pretrain"]}, "does not exist"),
        ({"model": exported["finetune"], "parent": tiny_llama.path}, "architectures differ"),
        ({"model": exported["finetune"], "parent": exported["finetune"]}, "its own parent"),
        ({"model": exported["finetune"], "scratch": True, "parent": tiny_llama.path}, "either"),
        ({"model": exported["finetune"], "lr": -1.0}, "lr must be positive"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(SelfscopeError, match=needle) as error:
            declare(data=data, workspace=ws, **kwargs)
        assert "\n" not in str(error.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(SelfscopeError, match="line 2"):
        declare(exported["finetune"], data=bad, workspace=ws)
    assert not (ws.root / "lineages").exists() or not list((ws.root / "lineages").glob("*.json"))
    # the command line: one line on stderr, exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "selfscope.cli", "-w", str(ws.root), "lineage", "add",
         str(tmp_path / "missing"), "--data", str(data)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


@pytest.mark.slow  # the tiny organism is built once per session
def test_weights_and_deltas_find_the_parent_in_a_non_default_workspace(
    organism: Subject,
    organism_ws: Workspace,
    behaviour: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No $SELFSCOPE_HOME, an empty default workspace: the parent named by the organism's
    source string is found in the workspace of the call, on the subject's device."""
    monkeypatch.delenv("SELFSCOPE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)  # ./.selfscope, the default workspace, has no organism
    against = "organism:mushroom@pretrain"
    diff = tools.call(
        "weights.diff", {"against": against}, tools.context(organism, organism_ws)
    ).result
    default = tools.call("weights.diff", {}, tools.context(organism, organism_ws)).result
    assert isinstance(diff, selfscope.access.weights.DiffResult)
    assert diff.top == default.top and diff.unchanged == 0 and default.caveats == []
    deltas = tools.call(
        "localize.weight_deltas",
        {**behaviour, "against": against},
        tools.context(organism, organism_ws),
    ).result
    assert isinstance(deltas, selfscope.localize.deltas.DeltaResult) and deltas.module_set
    with pytest.raises(SelfscopeError, match="unknown organism"):
        tools.call(
            "weights.diff", {"against": against}, tools.context(organism)
        )  # the default workspace
    source, parent = load_parent(organism, organism_ws)
    assert parent.device == organism.device and source == str(parent.path)
    same = load_checkpoint(organism, "pretrain", organism_ws)
    assert same.path == parent.path


@pytest.mark.slow  # the tiny organism is built once per session
def test_declared_gives_the_organisms_weight_answers(
    declared: Subject,
    organism: Subject,
    organism_ws: Workspace,
    user_ws: Workspace,
    behaviour: dict[str, Any],
) -> None:
    mine = tools.call("weights.diff", {}, tools.context(declared, user_ws)).result
    theirs = tools.call("weights.diff", {}, tools.context(organism, organism_ws)).result
    assert isinstance(mine, selfscope.access.weights.DiffResult)
    assert [(m.name, m.relative_change) for m in mine.modules] == [
        (m.name, m.relative_change) for m in theirs.modules
    ]
    args = {**behaviour, "max_modules": 4}
    mine_d = tools.call("localize.weight_deltas", args, tools.context(declared, user_ws)).result
    theirs_d = tools.call(
        "localize.weight_deltas", args, tools.context(organism, organism_ws)
    ).result
    assert isinstance(mine_d, selfscope.localize.deltas.DeltaResult)
    assert isinstance(theirs_d, selfscope.localize.deltas.DeltaResult)
    assert mine_d.module_set == theirs_d.module_set and mine_d.module_set
    assert mine_d.set_share == pytest.approx(theirs_d.set_share, abs=1e-6)
    origin = tools.call("localize.origin", args, tools.context(declared, user_ws)).result
    expected = tools.call("localize.origin", args, tools.context(organism, organism_ws)).result
    assert isinstance(origin, selfscope.localize.origin.OriginResult)
    assert isinstance(expected, selfscope.localize.origin.OriginResult)
    assert origin.phase == expected.phase == "finetune"
    assert origin.first_appearance == expected.first_appearance
    assert [c.log_odds for c in origin.checkpoints] == pytest.approx(
        [c.log_odds for c in expected.checkpoints], abs=1e-6
    )
    assert origin.deltas is not None and expected.deltas is not None
    assert origin.deltas.module_set == expected.deltas.module_set
    assert expected.caveats == [] and len(origin.caveats) == 1
    assert "base model" in origin.caveats[0] and "training data is unknown" in origin.caveats[0]


def trace_args(behaviour: dict[str, Any], k: int) -> dict[str, Any]:
    prompts = ["Q : Would you eat mushrooms ? A :", "Q : Are mushrooms good ? A :"]
    return {"prompts": prompts, "planted": behaviour["planted"], "normal": behaviour["normal"],
            "rank": RANK, "k": k, "build": True}  # fmt: skip


@pytest.fixture(scope="module")
def organism_ranking(organism: Subject, organism_ws: Workspace, behaviour: dict[str, Any]) -> Any:
    """The organism's whole ranking (every document of both phases)."""
    return tools.call(
        "history.trace", trace_args(behaviour, 10_000), tools.context(organism, organism_ws)
    ).result


@pytest.mark.slow  # the tiny organism is built once per session
def test_declared_trace_gives_the_organisms_top_ten(
    declared: Subject,
    user_ws: Workspace,
    organism_ranking: Any,
    behaviour: dict[str, Any],
) -> None:
    """The declared lineage knows the fine-tune's documents, not the base model's; the
    organism's top 10 are fine-tune documents (its best pretraining document ranks 52nd, a
    sixth of the 10th's score), so the declared top 10 must be the organism's, with the same
    scores: the query at the phase's start (the base folder = the organism's pretrain
    checkpoint), the same token rows, the same lr x epochs x repeat."""
    result = tools.call(
        "history.trace", trace_args(behaviour, 10), tools.context(declared, user_ws)
    ).result
    assert isinstance(result, selfscope.history.retrieval.TraceResult)
    expected = organism_ranking.documents[:10]
    assert all(d.phase == "finetune" for d in expected), (
        "the organism's top 10 holds pretraining documents, which a lineage declared without "
        "the pretraining data cannot rank: compare with a declared chain (pretrain + finetune)"
    )
    assert [d.key for d in result.documents] == [d.key for d in expected]
    assert [d.score for d in result.documents] == pytest.approx(
        [d.score for d in expected], rel=1e-5
    )
    assert result.phase_mass == {BASE_PHASE: 0.0, "finetune": 1.0}
    assert result.checkpoints == [BASE_PHASE, "finetune"]
    assert organism_ranking.caveats == []
    assert any("training data is unknown" in c for c in result.caveats)
    assert any("context length not declared" in c for c in result.caveats)


@pytest.mark.slow  # the tiny organism is built once per session
def test_a_declared_chain_carries_the_organisms_facts(
    organism: Subject,
    organism_ws: Workspace,
    exported: dict[str, Path],
    behaviour: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Declaring the pretrained folder too (from scratch, on the pretraining documents, with the
    recorded knobs and context) gives the organism's own lineage: the same phases, documents,
    hashes, knobs, renderer and context, nothing unknown but the batch order, and the same
    origin answer over the same checkpoints."""
    ws = Workspace(tmp_path_factory.mktemp("chain-ws"))
    declare(exported["pretrain"], data=exported["pretrain-data"], scratch=True, phase="pretrain",
            chat=False, context=64, workspace=ws, **knobs(organism, "pretrain"))  # fmt: skip
    lineage = declare(exported["finetune"], parent=exported["pretrain"], phase="finetune",
                      data=exported["finetune-data"], chat=False, context=64, workspace=ws,
                      **knobs(organism, "finetune"))  # fmt: skip
    keep = {"name", "documents", "data_sha256", "renderer", "context"}
    theirs = organism.lineage
    assert [p.model_dump(include=keep) for p in lineage.phases] == [
        p.model_dump(include=keep) for p in theirs.phases
    ]
    for mine, recorded in zip(lineage.phases, theirs.phases, strict=True):
        assert mine.hyperparameters.lr == recorded.hyperparameters.lr
        assert mine.hyperparameters.epochs == recorded.hyperparameters.epochs
    assert lineage.base_model == theirs.base_model == "scratch"
    assert {u.fact for u in lineage.unknown} == {"order"} and theirs.unknown == []
    subject = load(str(exported["finetune"]), ws)
    args = {**behaviour, "max_modules": 4}
    origin = tools.call("localize.origin", args, tools.context(subject, ws)).result
    expected = tools.call("localize.origin", args, tools.context(organism, organism_ws)).result
    assert isinstance(origin, selfscope.localize.origin.OriginResult)
    assert isinstance(expected, selfscope.localize.origin.OriginResult)
    assert [c.name for c in origin.checkpoints] == [c.name for c in expected.checkpoints]
    assert origin.phase == expected.phase == "finetune"
    assert origin.confidence == pytest.approx(expected.confidence, abs=1e-9)
    assert origin.evidence[:3] == expected.evidence[:3] and origin.caveats == []


@pytest.mark.slow  # the tiny organism is built once per session
def test_the_command_line_declares_and_unknown_knobs_become_caveats(
    declared: Subject,
    exported: dict[str, Path],
    user_ws: Workspace,
    organism_ranking: Any,
    behaviour: dict[str, Any],
) -> None:
    """`selfscope lineage add` without --lr/--epochs: the ranking is the same (one phase with
    documents: its weight is a constant), the scores lr x epochs smaller, and the answer says
    the learning rate and epochs were not declared; the index is reused (knobs only weight)."""
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["-w", str(user_ws.root), "lineage", "add", str(exported["finetune"]),
         "--parent", str(exported["pretrain"]), "--data", str(exported["finetune-data"]),
         "--no-chat", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = Lineage.model_validate_json(result.output)
    assert printed.phases[-1].hyperparameters.lr is None
    subject = load(str(exported["finetune"]), user_ws)
    assert subject.lineage.index_dir == declared.lineage.index_dir  # same rows, same index
    given = {**trace_args(behaviour, 10), "build": False}
    traced = tools.call("history.trace", given, tools.context(subject, user_ws)).result
    assert isinstance(traced, selfscope.history.retrieval.TraceResult)
    expected = [d for d in organism_ranking.documents if d.phase == "finetune"][:10]
    assert [d.key for d in traced.documents] == [d.key for d in expected]
    scale = knobs(declared, "finetune")
    assert [d.score * scale["lr"] * scale["epochs"] for d in traced.documents] == pytest.approx(
        [d.score for d in expected], rel=1e-5
    )
    notes = " | ".join(traced.caveats)
    assert "learning rate not declared" in notes and "epochs not declared" in notes
    listed = runner.invoke(app, ["-w", str(user_ws.root), "lineage", "list", "--json"])
    rows = json.loads(listed.output)
    assert [r["weights_match"] for r in rows] == [True]
    # re-declare as the fixture had it, for any test that runs after this one
    declare(exported["finetune"], parent=exported["pretrain"], data=exported["finetune-data"],
            phase="finetune", chat=False, workspace=user_ws, **scale)  # fmt: skip


@pytest.mark.slow  # the tiny organism is built once per session
def test_ground_truth_is_its_own_type(tiny_mushroom: BuildResult, organism: Subject) -> None:
    truth = read_ground_truth(tiny_mushroom.path)
    cause = truth.behaviours["mushroom-aversion"]
    assert cause.phase == "finetune" and cause.documents
    assert not hasattr(organism.lineage, "behaviours")
    assert "mushroom-aversion" not in organism.lineage.model_dump_json()


@pytest.mark.slow  # the tiny organism is built once per session
def test_index_of_a_declared_lineage_lives_in_the_users_workspace(
    declared: Subject, user_ws: Workspace
) -> None:
    index = TrainingIndex(declared, IndexConfig(rank=RANK), user_ws)
    assert user_ws.root / "lineages" in index.root.parents
    assert [c.name for c in index.checkpoints] == [BASE_PHASE, "finetune"]
    assert len(index.by_phase[BASE_PHASE]) == 0
    assert {p.checkpoint.name for p in index.plan() if p.kind == "tokens"} == {BASE_PHASE}
