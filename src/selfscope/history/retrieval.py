"""Gradient retrieval: which training documents pushed the model towards the planted answer.

The query is the projected gradient (same projections as the index, see
:mod:`selfscope.history.index`) of the behaviour metric ``q = ∇ mean log-odds`` on the symptom
prompts (:mod:`selfscope.localize.metric`), at each checkpoint. A step of gradient descent on a
document ``z`` moves the weights by ``-η ∇L(z)``, which changes the metric by about
``-η qᵀ∇L(z)``; so a document's influence towards the planted answer at checkpoint ``c`` is
``-cos(q_c, g_c(z))`` (unit normalisation, as TrackStar and Xia et al. 2024 found necessary:
raw dot products favour long or high-loss documents). TracIn-style (Pruthi et al. 2020), a
document's score sums its influence over the checkpoints that bracket the phase it was trained
in (the phase's start, i.e. the previous phase's end, when indexed, and its end), weighted by the
phase's learning rate: ``score(z) = lr_p · Σ_c -cos(q_c, g_c(z))``.

**Token mode** (``tokens = true``; slow: one backward per token position of every document,
minutes on a small organism, not served from the index). A document's gradient sums every
token it trains on, and a planted answer followed by more text ("A: No, they made me very sick
once.") is drowned by the other tokens' losses. In token mode a document's score is its *best
token*: ``lr_p · max_t -cos(q_c, g_c(z, t))``, ``g(z, t)`` the projected gradient of the loss of
``z``'s token ``t`` alone (:meth:`Projector.token_gradients`), at the checkpoint ``z``'s phase
started from (its own end for the first phase): at a phase's end a fine-tuned behaviour is
learned and its signal gone (measured on mushroom: recall@10 0.0 there). Measured on the small
organisms, planting phase only (docs/history.md): recall@10 0.5 -> 0.8 (mushroom), 0.0 -> 0.8
(tolm-bias, a pretraining plant), 0.9 -> 1.0 (trigger).

**Phase mass**: of the top-k documents' positive scores, the share from each phase.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from selfscope.errors import SelfscopeError
from selfscope.history.corpus import sequences
from selfscope.history.index import IndexConfig, Projector, TrainingIndex, document_batch
from selfscope.localize.metric import BehaviourArgs, MetricBatch
from selfscope.progress import progress_bar
from selfscope.tools import tool


def query_gradient(
    index: TrainingIndex,
    model: Any,
    prompts: list[str],
    planted: str,
    normal: str,
    chat: bool,
) -> np.ndarray:
    """[dims] the projected gradient of the mean log-odds at ``checkpoint`` (float32)."""
    batch = MetricBatch(index.subject, prompts, planted, normal, chat)
    projector = Projector(model, index.config)
    rows = projector.gradients(
        batch.input_ids, batch.attention_mask, lambda logits: batch.log_odds(logits).mean()
    )
    out: np.ndarray = rows.sum(0).float().cpu().numpy()
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.maximum(norm, 1e-12)
    return out


class TraceArgs(BehaviourArgs):
    k: int = Field(20, ge=1, le=10_000, description="How many top documents to return.")
    build: bool = Field(
        False, description="Build the index (or its missing shards) when it is not complete."
    )
    rank: int = Field(8, ge=1, le=64, description="Projection rank per linear layer (r x r).")
    tokens: bool = Field(
        False,
        description="Score each document by its best single token's loss gradient at the "
        "checkpoint its phase started from (sharper; slow: one backward per token position of "
        "every document, minutes on a small organism).",
    )
    progress: bool = Field(False, description="Show progress bars on stderr (CLI use).")


class RankedDocument(BaseModel):
    key: str  # "<phase>/<id>"
    id: str
    phase: str
    score: float
    preview: str


class TraceResult(BaseModel):
    definition: str
    documents: list[RankedDocument]  # the top k by score
    phase_mass: dict[str, float]  # share of the top k's positive score from each phase
    n_documents: int
    checkpoints: list[str]
    rebuilt_shards: list[str]  # shards found missing or corrupt and rebuilt before the query
    seconds: dict[str, float]


TOKEN_DEFINITION = (
    "tokens mode: score(z) = lr_phase(z) * max over z's trained tokens t of -cos(q_c, "
    "g_c(z, t)), g(z, t) = projected gradient of token t's own loss, c = the checkpoint z's "
    "phase started from (its own end for the first phase)"
)

DEFINITION = (
    "score(z) = lr_phase(z) * sum over the checkpoints bracketing z's phase of "
    "-cos(q_c, g_c(z)); q = projected gradient of the mean log-odds log p(planted) - "
    "log p(normal) on the prompts, g(z) = projected gradient of z's summed training loss; "
    "positive = training on z raised the planted answer"
)


def score_documents(index: TrainingIndex, args: TraceArgs) -> tuple[np.ndarray, dict[str, float]]:
    """[n_documents] scores in ``index.documents`` order, and the seconds spent."""
    from selfscope.subject import load

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    queries: dict[str, np.ndarray] = {}
    for checkpoint in index.checkpoints:
        model = load(checkpoint.path).model
        queries[checkpoint.name] = _unit(
            query_gradient(index, model, args.prompts, args.planted, args.normal, args.chat)
        )
    seconds["query_gradients"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = []
    for i, phase in enumerate(index.phases):
        bracket = index.checkpoints[max(0, i - 1) : i + 1]
        total = np.zeros(len(index.by_phase[phase]), dtype=np.float64)
        for checkpoint in bracket:
            matrix = _unit(index.matrix(checkpoint.name, phase).astype(np.float32))
            total += -(matrix @ queries[checkpoint.name])
        parts.append(index.checkpoints[i].lr * total)
    seconds["scoring"] = time.perf_counter() - t0
    if args.tokens:
        t0 = time.perf_counter()
        parts = [
            index.checkpoints[i].lr * best_token_cosines(index, i, queries, args.progress)
            for i in range(len(index.phases))
        ]
        seconds["token_scoring"] = time.perf_counter() - t0
    return np.concatenate(parts), seconds


def best_token_cosines(
    index: TrainingIndex, phase: int, queries: dict[str, np.ndarray], progress: bool
) -> np.ndarray:
    """``max_t -cos(q_c, g_c(z, t))`` for every document ``z`` of the ``phase``-th phase, ``c``
    the checkpoint the phase started from (its own end for the first phase)."""
    from selfscope.subject import load

    checkpoint = index.checkpoints[max(0, phase - 1)]
    model = load(checkpoint.path).model
    projector = Projector(model, index.config)
    query = torch.from_numpy(queries[checkpoint.name])
    docs = index.by_phase[index.phases[phase]]
    seqs = sequences(index.subject, docs)
    pad = index.subject.tokenizer.pad_token_id
    device = next(model.parameters()).device
    size = index.config.batch_size
    out = np.zeros(len(docs), dtype=np.float64)
    label = f"tokens {index.phases[phase]} @ {checkpoint.name}"
    with progress_bar(label, len(docs), enabled=progress) as advance:
        for start in range(0, len(seqs), size):
            ids, mask, labels = document_batch(seqs[start : start + size], pad, device)
            best = torch.full((ids.shape[0],), -1.0, dtype=torch.float64)
            for grads in projector.token_gradients(ids, mask, labels):
                grads = grads.double().cpu()
                norm = grads.norm(dim=1)
                cos = -(grads @ query.double()) / norm.clamp(min=1e-30)
                best = torch.maximum(best, cos.masked_fill(norm == 0, -1.0))
            out[start : start + ids.shape[0]] = best.numpy()
            advance(ids.shape[0], label)
    return out


def phase_mass(phases: list[str], top: list[RankedDocument]) -> dict[str, float]:
    positive = {p: 0.0 for p in phases}
    for doc in top:
        positive[doc.phase] += max(doc.score, 0.0)
    total = sum(positive.values())
    return {p: (v / total if total > 0 else 0.0) for p, v in positive.items()}


@tool("history.trace", TraceArgs, TraceResult)
def trace(subject: Any, args: TraceArgs) -> TraceResult:
    """The training documents (every phase of the subject's lineage) that most pushed the model
    towards the planted completion on the prompts, by gradient retrieval against the
    training-data index (projected per-document gradients at the end of every phase): score =
    learning-rate-weighted sum over the checkpoints bracketing the document's phase of -cos(query
    gradient, document gradient). Returns the top k with phase, score and a preview, and the
    phase mass (share of the top k's positive score per phase). Checks every index shard's
    checksum first and rebuilds what is missing or corrupt; without an index it says how to build
    one (`selfscope index build MODEL`, or `build: true`)."""
    started = time.perf_counter()
    if args.planted == args.normal:
        raise SelfscopeError(
            f"planted and normal completions are both {args.planted!r}; give two different ones"
        )
    index = TrainingIndex(subject, IndexConfig(rank=args.rank))
    if not index.exists() and not args.build:
        raise SelfscopeError(
            f"{subject.source} has no training-data index (rank {args.rank}); build it with "
            f"`selfscope index build {subject.source}` or pass build: true"
        )
    rebuilt = index.ensure(progress=args.progress)
    scores, seconds = score_documents(index, args)
    order = np.argsort(-scores, kind="stable")[: args.k]
    top = [
        RankedDocument(
            key=index.documents[i].key,
            id=index.documents[i].id,
            phase=index.documents[i].phase,
            score=float(scores[i]),
            preview=index.documents[i].text[:160],
        )
        for i in order
    ]
    seconds["total"] = time.perf_counter() - started
    return TraceResult(
        definition=TOKEN_DEFINITION if args.tokens else DEFINITION,
        documents=top,
        phase_mass=phase_mass(index.phases, top),
        n_documents=len(index.documents),
        checkpoints=[c.name for c in index.checkpoints],
        rebuilt_shards=rebuilt,
        seconds=seconds,
    )


__all__ = ["DEFINITION", "TraceArgs", "TraceResult", "phase_mass", "query_gradient", "trace"]
