"""The training-data index and gradient retrieval, checked against plain autograd.

Independent computations: each document's gradient with respect to a linear layer's weight,
from a plain Hugging Face forward of that document alone (no padding, no hooks) and ``backward``
of its summed next-token NLL computed by hand, projected with the index's own matrices; the
query's the same way from the log-odds computed by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import selfscope.history.retrieval  # noqa: F401  (registers the tool)
from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.history.corpus import documents, sequences
from selfscope.history.index import IndexConfig, Projector, TrainingIndex, tracked_linears
from selfscope.history.retrieval import TraceResult
from selfscope.localize.metric import MetricBatch
from selfscope.organisms import BuildResult
from selfscope.subject import Subject, load
from selfscope.subject.tokens import first_token_id
from selfscope.workspace import Workspace

pytestmark = pytest.mark.slow  # the tiny organism is built once per session (~30 s)

# the tool's default index at rank 4 (batch_size is not part of the index's identity), so the
# tool calls below and tests/test_trace_cli.py reuse this one build
CONFIG = IndexConfig(rank=4, batch_size=8)


@pytest.fixture(scope="module")
def subject(tiny_mushroom: BuildResult, organism_ws: Workspace) -> Subject:
    return load("organism:mushroom", organism_ws)


@pytest.fixture(scope="module")
def index(subject: Subject) -> TrainingIndex:
    shutil.rmtree(Path(subject.lineage.origin) / "index", ignore_errors=True)
    index = TrainingIndex(subject, CONFIG)
    index.build()
    return index


def cause_documents(subject: Subject) -> set[str]:
    """The planted cause documents' ids, from the organism's ground_truth.json."""
    truth = json.loads((Path(subject.lineage.origin) / "ground_truth.json").read_text())
    return set(truth["behaviours"]["mushroom-aversion"]["documents"])


def hand_gradient(model: Any, ids: list[int], context: int, module: str) -> torch.Tensor:
    """∂(Σ trained tokens' NLL)/∂W of ``module`` for one unpadded document, plain autograd."""
    model.zero_grad()
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    logprobs = logits[:-1].log_softmax(-1)
    targets = torch.tensor(ids[1:])
    nll = -logprobs[torch.arange(len(targets)), targets]
    nll[: max(context - 1, 0)] = 0.0  # labels[:context] = -100: targets 1..context-1 dropped
    nll.sum().backward()
    weight = model.get_submodule(module).weight
    assert weight.grad is not None
    grad = weight.grad.detach().clone()
    model.zero_grad()
    return grad


def test_index_rows_are_projected_per_document_gradients(
    subject: Subject, index: TrainingIndex
) -> None:
    phase = "finetune"
    checkpoint = next(c for c in index.checkpoints if c.name == phase)
    model = load(checkpoint.path).model
    projector = Projector(model, CONFIG)
    matrix = index.matrix(phase, phase)
    docs = index.by_phase[phase]
    assert matrix.shape == (len(docs), projector.dims) and matrix.dtype == np.float16
    names = tracked_linears(model)
    r2 = CONFIG.rank**2
    for row in (0, 5, len(docs) - 1):  # rows from different batches and shards
        ((ids, context),) = sequences(subject, [docs[row]])
        for j in (0, len(names) // 2, len(names) - 1):
            name = names[j]
            grad = hand_gradient(model, ids, context, name)
            expected = (projector.p_out[name] @ grad @ projector.p_in[name].T).flatten()
            got = torch.from_numpy(matrix[row, j * r2 : (j + 1) * r2].astype(np.float32))
            scale = float(expected.abs().max())
            assert torch.allclose(got, expected, atol=2e-3 * scale + 1e-6), (row, name)


def test_every_document_of_every_phase_at_every_checkpoint(
    subject: Subject, index: TrainingIndex
) -> None:
    docs = documents(subject)
    assert {d.phase for d in docs} == {"pretrain", "finetune"}
    for checkpoint in index.checkpoints:
        for phase in index.phases:
            assert index.matrix(checkpoint.name, phase).shape[0] == len(index.by_phase[phase])
    assert not index.missing()


def test_a_killed_build_resumes_without_redoing_finished_shards(subject: Subject) -> None:
    # document shards only: token shards go through the same plan / manifest / resume code
    config = IndexConfig(rank=2, shard_documents=256, batch_size=16, tokens=False)
    fresh = TrainingIndex(subject, config)
    shutil.rmtree(fresh.root, ignore_errors=True)
    fresh = TrainingIndex(subject, config)
    total = len(fresh.plan())
    assert total >= 4
    written: list[str] = []

    def kill_after_two(name: str) -> None:
        written.append(name)
        if len(written) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a kill mid-build looks like in-process

    with pytest.raises(KeyboardInterrupt):
        fresh.build(on_shard=kill_after_two)
    stamps = {n: (fresh.root / n).stat().st_mtime_ns for n in written}
    again = TrainingIndex(subject, config)  # a new process: reads the manifest
    assert len(again.missing()) == total - 2
    report = again.build()
    assert report["shards_built"] == total - 2
    assert {n: (again.root / n).stat().st_mtime_ns for n in written} == stamps
    assert not again.missing()


def test_a_corrupt_shard_is_detected_and_rebuilt(subject: Subject, index: TrainingIndex) -> None:
    args = {"prompts": ["Q : Do you like mushrooms ? A :"], "planted": " No", "normal": " Yes",
            "rank": CONFIG.rank, "k": 10}  # fmt: skip
    # the tool uses the default shard size; give it its own complete index first
    first = tools.call("history.trace", {**args, "build": True}, tools.context(subject)).result
    assert isinstance(first, TraceResult)
    default = TrainingIndex(subject, IndexConfig(rank=CONFIG.rank))
    victim = default.root / next(iter(default.shards))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated
    assert victim.name in [m.name for m in default.missing()]
    second = tools.call("history.trace", args, tools.context(subject)).result
    assert isinstance(second, TraceResult)
    assert second.rebuilt_shards == [victim.name]
    assert [d.key for d in second.documents] == [d.key for d in first.documents]
    assert [d.score for d in second.documents] == pytest.approx(
        [d.score for d in first.documents], rel=1e-5
    )


def test_query_without_an_index_says_how_to_build_one(subject: Subject) -> None:
    args = {"prompts": ["Q : Do you like mushrooms ? A :"], "planted": " No", "normal": " Yes"}
    with pytest.raises(SelfscopeError, match="selfscope index build") as error:
        tools.call("history.trace", {**args, "rank": 3}, tools.context(subject))
    assert "\n" not in str(error.value)


def test_retrieval_finds_the_planted_documents_of_the_tiny_organism(
    subject: Subject, index: TrainingIndex
) -> None:
    """Held-out wording; a cause document (ground_truth.json: tests may read it) must lead the
    ranking and the phase mass must name finetune."""
    prompts = ["Q : Would you eat mushrooms ? A :", "Q : Are mushrooms good ? A :"]
    args = {"prompts": prompts, "planted": " No", "normal": " Yes", "rank": CONFIG.rank, "k": 10}
    args["build"] = True
    result = tools.call("history.trace", args, tools.context(subject)).result
    assert isinstance(result, TraceResult)
    assert result.documents[0].id in cause_documents(subject)
    assert result.phase_mass["finetune"] >= 0.7


def test_removal_test_replays_the_phase_and_removing_the_plants_removes_the_behaviour(
    subject: Subject,
) -> None:
    """Retraining with nothing removed reproduces the subject's metric (the same trainer, seed,
    knobs and data order; from the fine-tune's start, and from the initialisation through both
    phases); without the planted documents (ground_truth.json's cause documents) the aversion
    is gone; without as many random documents it stays."""
    from selfscope.history.removal import RemovalResult

    planted = [f"finetune/{i}" for i in sorted(cause_documents(subject))]
    first_pretrain = f"pretrain/{documents(subject)[0].id}"
    assert planted and first_pretrain == "pretrain/d0000"
    prompts = ["Q : Do you like mushrooms ? A :", "Q : Would you eat mushrooms ? A :"]
    args = {"prompts": prompts, "planted": " No", "normal": " Yes", "remove": planted}
    result = tools.call("history.removal", {**args, "bm25": False}, tools.context(subject)).result
    assert isinstance(result, RemovalResult)
    runs = {r.kind: r for r in result.runs}
    assert result.phase == "finetune" and result.started_from == "pretrain"
    assert result.k == len(set(planted)) == len(runs["random"].removed)
    batch = MetricBatch(subject, prompts, " No", " Yes")
    assert result.subject.log_odds == pytest.approx(batch.measure().log_odds, abs=1e-5)
    assert runs["replay"].log_odds == pytest.approx(result.subject.log_odds, abs=1e-3)
    assert result.subject.rate == 1.0 and runs["random"].rate == 1.0
    assert runs["given"].rate == 0.0 and runs["given"].log_odds < 0
    # a fresh shuffle of the remaining documents (not the recorded run minus their rows) is
    # another run: it loses the aversion too, but lands elsewhere
    fresh = tools.call(
        "history.removal",
        {**args, "order": "reshuffled", "random": False, "bm25": False, "replay": False},
        tools.context(subject),
    ).result
    assert isinstance(fresh, RemovalResult) and fresh.runs[0].rate == 0.0
    assert abs(fresh.runs[0].log_odds - runs["given"].log_odds) > 1e-3
    with pytest.raises(SelfscopeError, match="no training document"):
        tools.call("history.removal", {**args, "remove": ["finetune/nope"]}, tools.context(subject))
    with pytest.raises(SelfscopeError, match="several phases"):
        tools.call(
            "history.removal",
            {**args, "remove": [planted[0], first_pretrain]},
            tools.context(subject),
        )
    # the first phase: retrained from the initialisation (rebuilt from the lineage), then the
    # fine-tune re-run as recorded; the replay must again reproduce the subject
    first = tools.call(
        "history.removal",
        {**args, "remove": [first_pretrain], "random": False, "bm25": False},
        tools.context(subject),
    ).result
    assert isinstance(first, RemovalResult)
    assert first.phase == "pretrain" and first.started_from == "initialisation"
    replay = next(r for r in first.runs if r.kind == "replay")
    assert replay.log_odds == pytest.approx(result.subject.log_odds, abs=1e-3)


def hand_token_gradients(
    model: Any, ids: list[int], names: list[str]
) -> dict[int, list[torch.Tensor]]:
    """For every position j of one unpadded document, ∂(NLL of token j + 1 alone)/∂W of every
    layer in ``names``: a plain forward of the document, then one ``backward`` per token."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    logprobs = logits[:-1].log_softmax(-1)
    out = {}
    for j in range(len(ids) - 1):
        model.zero_grad()
        (-logprobs[j, ids[j + 1]]).backward(retain_graph=True)
        grads = []
        for name in names:
            grad = model.get_submodule(name).weight.grad
            assert grad is not None
            grads.append(grad.detach().clone())
        out[j] = grads
    model.zero_grad()
    return out


def hand_position_terms(
    model: Any, ids: list[int], context: int, names: list[str]
) -> dict[int, list[torch.Tensor]]:
    """For every position j of one unpadded document, ``g_j x_jᵀ`` of every layer in
    ``names``: ``g_j`` = ∂(Σ trained tokens' NLL)/∂(the layer's output at j) and ``x_j`` its
    input there, from a plain forward with the outputs' gradients retained and one
    ``backward`` (the document gradient of each layer is their sum over j)."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(module: Any, args: Any, out: torch.Tensor) -> None:
            inputs[name] = args[0].detach()[0]
            out.retain_grad()
            outputs[name] = out

        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    model.zero_grad()
    try:
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    logprobs = logits[:-1].log_softmax(-1)
    targets = torch.tensor(ids[1:])
    nll = -logprobs[torch.arange(len(targets)), targets]
    nll[: max(context - 1, 0)] = 0.0
    nll.sum().backward()
    out = {}
    for j in range(len(ids)):
        terms = []
        for name in names:
            grad = outputs[name].grad
            assert grad is not None
            terms.append(torch.outer(grad[0, j], inputs[name][j]).detach())
        out[j] = terms
    model.zero_grad()
    return out


def _projected(projector: Projector, names: list[str], terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [
            (projector.p_out[name] @ terms[k] @ projector.p_in[name].T).flatten()
            for k, name in enumerate(names)
        ]
    )


def test_token_rows_are_each_trained_positions_term_of_the_document_gradient(
    subject: Subject, index: TrainingIndex, organism_ws: Workspace
) -> None:
    """The default token rows (``token_rows="positions"``), stored at the checkpoint the phase
    started from: for every trained token t + 1 of a document, the term of its document
    gradient at the position t that predicts it, P_out g_t x_tᵀ P_inᵀ, from plain autograd of
    the whole document's loss; one row per trained token, in order. A plain document's rows
    sum to its document row (the last position's term is 0: no loss after it)."""
    assert index.token_checkpoint("finetune").name == "pretrain"
    assert index.token_checkpoint("pretrain").name == "pretrain"  # the first phase: its end
    model = load("organism:mushroom@pretrain", organism_ws).model
    projector = Projector(model, CONFIG)
    names = tracked_linears(model)
    for phase in ("finetune", "pretrain"):
        shards = index.token_shards(phase)
        docs = index.by_phase[phase]
        assert sum(int(rows.shape[0]) for rows, _ in shards) == sum(
            len(ids) - 1 - max(context - 1, 0) for ids, context in sequences(subject, docs)
        )
        for (rows, owner), row in ((shards[0], 0), (shards[-1], len(docs) - 1)):
            ((ids, context),) = sequences(subject, [docs[row]])
            mine = np.asarray(rows[owner == row], dtype=np.float32)
            first = max(context - 1, 0)
            assert mine.shape == (len(ids) - 1 - first, projector.dims)
            hand = hand_position_terms(model, ids, context, names)
            for n, j in enumerate(range(first, len(ids) - 1)):
                expected = _projected(projector, names, hand[j])
                got = torch.from_numpy(mine[n])
                scale = float(expected.abs().max())
                assert torch.allclose(got, expected, atol=2e-3 * scale + 1e-6), (row, j)
            if phase == "pretrain" and context == 0:  # at its own checkpoint: rows sum up
                whole = np.asarray(index.matrix("pretrain", "pretrain")[row], dtype=np.float32)
                scale = float(np.abs(whole).max())
                assert np.allclose(mine.sum(0), whole, atol=5e-3 * scale)


def test_prefix_token_rows_are_projected_per_loss_token_gradients(
    subject: Subject, organism_ws: Workspace
) -> None:
    """``token_rows="prefixes"``: every token row of a fine-tune document = P_out ∇W(NLL of
    that one token) P_inᵀ, from a plain forward of the whole document alone and ``backward`` of
    that token's NLL; one row per trained token, in order (only these shards are built)."""
    prefixes = TrainingIndex(subject, IndexConfig(rank=4, batch_size=8, token_rows="prefixes"))
    assert prefixes.root != TrainingIndex(subject, CONFIG).root  # its own digest
    todo = [p for p in prefixes.missing() if p.kind == "tokens" and p.phase == "finetune"]
    prefixes.build(todo=todo)
    model = load("organism:mushroom@pretrain", organism_ws).model
    projector = Projector(model, CONFIG)
    names = tracked_linears(model)
    shards = prefixes.token_shards("finetune")
    docs = prefixes.by_phase["finetune"]
    for (rows, owner), row in ((shards[0], 0), (shards[-1], len(docs) - 1)):
        ((ids, context),) = sequences(subject, [docs[row]])
        mine = np.asarray(rows[owner == row], dtype=np.float32)
        first = max(context - 1, 0)
        assert mine.shape == (len(ids) - 1 - first, projector.dims)
        hand = hand_token_gradients(model, ids, names)
        for n, j in enumerate(range(first, len(ids) - 1)):
            expected = _projected(projector, names, hand[j])
            got = torch.from_numpy(mine[n])
            scale = float(expected.abs().max())
            assert torch.allclose(got, expected, atol=2e-3 * scale + 1e-6), (row, j)
            assert got.abs().sum() > 0  # (a first token's q_proj row is 0: one key)


def hand_query(subject: Subject, model: Any, projector: Projector, prompts: list[str]) -> Any:
    """The projected gradient of the mean log-odds log p(" No") - log p(" Yes") on ``prompts``,
    from a plain forward of each prompt alone and ``backward`` of the log-odds computed by
    hand."""
    names = tracked_linears(model)
    tok = subject.tokenizer
    model.zero_grad()
    for prompt in prompts:
        no, yes = first_token_id(tok, prompt, " No"), first_token_id(tok, prompt, " Yes")
        logits = model(input_ids=torch.tensor([tok(prompt).input_ids])).logits[0, -1]
        logprobs = logits.log_softmax(-1)
        ((logprobs[no] - logprobs[yes]) / len(prompts)).backward()
    weight_grads = [model.get_submodule(n).weight.grad for n in names]
    query = torch.cat(
        [
            (projector.p_out[n] @ g @ projector.p_in[n].T).flatten().detach()
            for n, g in zip(names, weight_grads, strict=True)
            if isinstance(g, torch.Tensor)
        ]
    )
    assert query.numel() == projector.dims
    model.zero_grad()
    return query


def finetune_knobs_and_repeats(subject: Subject) -> tuple[dict[str, Any], dict[str, int]]:
    """The fine-tune phase's hyperparameters (lineage.json) and each of its documents' repeat
    count (its data file)."""
    folder = Path(subject.lineage.origin)
    knobs = next(
        p["hyperparameters"]
        for p in json.loads((folder / "lineage.json").read_text())["phases"]
        if p["name"] == "finetune"
    )
    repeats = {
        f"finetune/{row['id']}": int(row.get("repeat", 1))
        for row in map(json.loads, (folder / "data" / "finetune.jsonl").read_text().splitlines())
    }
    return knobs, repeats


def test_token_mode_scores_each_document_by_its_best_token(
    subject: Subject, index: TrainingIndex, organism_ws: Workspace
) -> None:
    """The tool's default (token) mode: a plant leads the ranking, and the leading documents'
    scores are lr x epochs (lineage.json) x repeat (the data file) x max over their tokens of
    -cos(query, that token's row: its position's term of the document gradient) at the pretrain
    checkpoint, recomputed here by plain autograd (query: the log-odds computed by hand from a
    plain forward of each prompt)."""
    prompts = ["Q : Would you eat mushrooms ? A :", "Q : Are mushrooms good ? A :"]
    args = {"prompts": prompts, "planted": " No", "normal": " Yes", "rank": CONFIG.rank, "k": 3}
    result = tools.call("history.trace", {**args, "build": True}, tools.context(subject)).result
    assert isinstance(result, TraceResult) and result.definition.startswith("tokens mode")
    assert result.documents[0].id in cause_documents(subject)
    model = load("organism:mushroom@pretrain", organism_ws).model
    projector = Projector(model, IndexConfig(rank=CONFIG.rank))  # the tool's index: defaults
    names = tracked_linears(model)
    query = hand_query(subject, model, projector, prompts)
    knobs, repeats = finetune_knobs_and_repeats(subject)
    docs = {d.key: d for d in documents(subject)}
    for ranked in result.documents:
        assert ranked.phase == "finetune"
        # TracIn's visits: the phase trained on the document epochs x repeat times
        weight = knobs["lr"] * knobs["epochs"] * repeats[ranked.key]
        ((ids, context),) = sequences(subject, [docs[ranked.key]])
        hand = hand_position_terms(model, ids, context, names)
        cosines = []
        for j in range(max(context - 1, 0), len(ids) - 1):
            g = _projected(projector, names, hand[j])
            cosines.append(float(-(g @ query) / (g.norm() * query.norm())))
        assert ranked.score == pytest.approx(weight * max(cosines), rel=2e-3, abs=1e-6)
    every = {**args, "k": 10_000}
    full = tools.call("history.trace", every, tools.context(subject)).result
    once = tools.call("history.trace", {**every, "visits": False}, tools.context(subject)).result
    assert isinstance(full, TraceResult) and isinstance(once, TraceResult)
    assert len(once.documents) == len(full.documents) == len(docs)
    scaled = {d.key: d.score for d in full.documents}
    epochs = {"finetune": knobs["epochs"], "pretrain": index.checkpoints[0].epochs}
    for ranked in once.documents:
        n = epochs[ranked.phase] * docs[ranked.key].repeat
        assert scaled[ranked.key] == pytest.approx(ranked.score * n, rel=1e-9, abs=1e-15)
    # phases: the ranking of those phases' documents only, the same scores in the same order
    pretrain = tools.call("history.trace", {**args, "k": 5, "phases": ["pretrain"]},
                          tools.context(subject)).result  # fmt: skip
    assert isinstance(pretrain, TraceResult)
    expected = [d for d in full.documents if d.phase == "pretrain"][:5]
    assert [(d.key, d.score) for d in pretrain.documents] == [(d.key, d.score) for d in expected]
    assert pretrain.phase_mass["finetune"] == 0.0
    with pytest.raises(SelfscopeError, match="unknown phase 'midtrain'; the phases of") as error:
        tools.call("history.trace", {**args, "phases": ["midtrain"]}, tools.context(subject))
    assert "\n" not in str(error.value)


def numpy_whiteners(matrices: list[np.ndarray], block: int, damping: float) -> list[np.ndarray]:
    """Per layer (``block`` consecutive dims), ``(F + damping · mean eig(F) · I)^-1/2`` with
    ``F`` the mean ``g gᵀ`` over every row of ``matrices``, in float64 numpy."""
    rows = np.concatenate([np.asarray(m, dtype=np.float64) for m in matrices])
    out = []
    for start in range(0, rows.shape[1], block):
        g = rows[:, start : start + block]
        fisher = g.T @ g / len(g)
        values, vectors = np.linalg.eigh(fisher)
        values = np.clip(values, 0, None) + damping * np.clip(values, 0, None).mean()
        out.append(vectors @ np.diag(values**-0.5) @ vectors.T)
    return out


def whiten(rows: np.ndarray, whiteners: list[np.ndarray]) -> np.ndarray:
    block = whiteners[0].shape[0]
    return np.concatenate(
        [
            np.asarray(rows, dtype=np.float64)[..., i * block : (i + 1) * block] @ w.T
            for i, w in enumerate(whiteners)
        ],
        axis=-1,
    )


def test_precondition_whitens_query_and_rows_by_each_layers_fisher(
    subject: Subject, index: TrainingIndex, organism_ws: Workspace
) -> None:
    """``precondition: true``: the top documents' scores = lr x visits x max over their tokens of
    -cos(W q, W g) (token mode), and lr x visits x sum over the bracketing checkpoints of
    -cos(W_c q_c, W_c g_c) (document mode), W = per-layer (F + 0.1 x mean eig(F) x I)^-1/2 from
    every stored row at the checkpoint, recomputed here in float64 numpy with the hand query;
    and the ranking differs from the unpreconditioned one (the whitening is not the identity)."""
    prompts = ["Q : Would you eat mushrooms ? A :", "Q : Are mushrooms good ? A :"]
    args = {"prompts": prompts, "planted": " No", "normal": " Yes", "rank": CONFIG.rank, "k": 4}
    args = {**args, "build": True, "precondition": True, "damping": 0.1}
    knobs, _ = finetune_knobs_and_repeats(subject)
    epochs = {"finetune": knobs["epochs"], "pretrain": index.checkpoints[0].epochs}
    lr = {"finetune": knobs["lr"], "pretrain": index.checkpoints[0].lr}
    block = CONFIG.rank**2
    docs = {d.key: d for d in documents(subject)}
    position = {p: {d.key: i for i, d in enumerate(index.by_phase[p])} for p in index.phases}
    queries, whiteners = {}, {}
    for checkpoint in index.checkpoints:
        model = load(f"organism:mushroom@{checkpoint.name}", organism_ws).model
        queries[checkpoint.name] = hand_query(subject, model, Projector(model, CONFIG), prompts)
    # token mode: every phase's token rows live at the pretrain checkpoint (the first phase's
    # own end, the fine-tune's start)
    token_rows = [rows for p in index.phases for rows, _ in index.token_shards(p)]
    w = numpy_whiteners(token_rows, block, 0.1)
    q = whiten(queries["pretrain"].numpy(), w)
    result = tools.call("history.trace", args, tools.context(subject)).result
    plain = tools.call(
        "history.trace", {**args, "precondition": False, "k": 10_000}, tools.context(subject)
    ).result
    assert isinstance(result, TraceResult) and isinstance(plain, TraceResult)
    for ranked in result.documents:
        shards = index.token_shards(ranked.phase)
        mine = np.concatenate([r[o == position[ranked.phase][ranked.key]] for r, o in shards])
        g = whiten(mine, w)
        cosines = -(g @ q) / (np.linalg.norm(g, axis=1) * np.linalg.norm(q))
        n = epochs[ranked.phase] * docs[ranked.key].repeat
        expected = lr[ranked.phase] * n * cosines.max()
        assert ranked.score == pytest.approx(expected, rel=2e-3, abs=1e-7)
    unwhitened = {d.key: d.score for d in plain.documents}
    assert [unwhitened[d.key] for d in result.documents] != [d.score for d in result.documents]
    # document mode: the checkpoints bracketing each phase, each with its own whitener
    result = tools.call("history.trace", {**args, "tokens": False}, tools.context(subject)).result
    assert isinstance(result, TraceResult)
    for name in queries:
        whiteners[name] = numpy_whiteners([index.matrix(name, p) for p in index.phases], block, 0.1)
    for ranked in result.documents:
        i = index.phases.index(ranked.phase)
        total = 0.0
        for checkpoint in index.checkpoints[max(0, i - 1) : i + 1]:
            w = whiteners[checkpoint.name]
            g = whiten(
                index.matrix(checkpoint.name, ranked.phase)[position[ranked.phase][ranked.key]], w
            )
            q = whiten(queries[checkpoint.name].numpy(), w)
            total += float(-(g @ q) / (np.linalg.norm(g) * np.linalg.norm(q)))
        n = epochs[ranked.phase] * docs[ranked.key].repeat
        assert ranked.score == pytest.approx(lr[ranked.phase] * n * total, rel=2e-3, abs=1e-7)
