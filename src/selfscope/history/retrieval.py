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
phase's learning rate and by how many times the phase trained on ``z`` (``visits``, on by
default): TracIn sums over every step that used ``z``, and a document the phase saw ``repeat``
times in each of its ``epochs`` had that many steps — the removal test removes all of them.
``score(z) = lr_p · n(z) · Σ_c -cos(q_c, g_c(z))``, ``n(z) = epochs_p · repeat(z)`` (``1`` with
``visits = false``); ``repeat`` is the training corpus's own record of duplicates
(``data/<phase>.jsonl``), as a deduplicating count over a real corpus would give.

**Token mode** (``tokens = true``, the default). A document's gradient sums every token it
trains on, and a planted answer followed by more text ("A: No, they made me very sick once.") is
drowned by the other tokens' losses. In token mode a document's score is its *best token*:
``lr_p · n(z) · max_t -cos(q_c, g_c(z, t))``, ``g(z, t)`` the projected gradient of the loss of
``z``'s token ``t`` alone (the index's token rows), at the checkpoint ``z``'s phase started from
(its own end for the first phase): at a phase's end a fine-tuned behaviour is learned and its
signal gone (measured on mushroom: recall@10 0.0 there). ``tokens = false`` gives the document
cosine above.
Measured on every catalog organism: docs/history.md and docs/benchmarks.md § history.

**Preconditioner** (``precondition = true``): the block-diagonal empirical Fisher of the
projected gradients, one ``r² × r²`` block per linear layer, ``F_l`` = mean ``g_l g_lᵀ`` over every
index row at the checkpoint (token rows in token mode, document rows otherwise), damped by
``damping`` × its mean eigenvalue; scores use ``-cos(W q, W g)``, ``W_l = (F_l + λ_l I)^-1/2``
(K-FAC's per-layer blocks, in the projected space).

**Phase mass**: of the top-k documents' positive scores, the share from each phase.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.history.index import IndexConfig, Projector, TrainingIndex
from selfscope.history.lexical import phases_field
from selfscope.localize.metric import MetricBatch
from selfscope.subject.checkpoints import load_checkpoint
from selfscope.tools import ToolContext, tool


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


class TraceArgs(Behaviour):
    k: int = Field(20, ge=1, le=10_000, description="How many top documents to return.")
    build: bool = Field(
        False, description="Build the index (or its missing shards) when it is not complete."
    )
    rank: int = Field(8, ge=1, le=64, description="Projection rank per linear layer (r x r).")
    seed: int = Field(0, ge=0, description="Seed of the index's random projections.")
    tokens: bool = Field(
        True,
        description="Score each document by its best single trained token's loss gradient at "
        "the checkpoint its phase started from (the index's token rows); false: by the whole "
        "document's gradient at the checkpoints bracketing its phase.",
    )
    token_rows: Literal["positions", "prefixes"] = Field(
        "positions",
        description="Which index's token rows: 'positions' (each trained token's position's "
        "term of the document gradient, from the document pass) or 'prefixes' (each token's "
        "own loss through its prefix: exact, ~T/2 document passes to build).",
    )
    visits: bool = Field(
        True,
        description="Weight each document by how many times its phase trained on it (epochs x "
        "its repeat count), as TracIn sums over every step that used it; false: once.",
    )
    precondition: bool = Field(
        False,
        description="Whiten query and document gradients by a block-diagonal empirical Fisher "
        "before the cosine: per linear layer, the second moment F of the index's rows at the "
        "checkpoint (token rows in token mode, document rows otherwise, every phase's), "
        "damped, score -cos(W q, W g) with W = (F + damping x mean eigenvalue x I)^-1/2 (a "
        "K-FAC-style correction in the projected space; costs one more pass over the rows).",
    )
    damping: float = Field(
        0.1, gt=0, le=1e6, description="Preconditioner damping, times F's mean eigenvalue."
    )
    phases: list[str] | None = phases_field()


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
    caveats: list[str] = Field(
        default_factory=list,
        description="What the subject's lineage does not record that the scores relied on "
        "(a phase's data, learning rate, epochs, renderer, context length, what it started "
        "from), each with the assumption made; empty for an organism trained from scratch.",
    )


TOKEN_DEFINITION = (
    "tokens mode: score(z) = lr_phase(z) * n(z) * max over z's trained tokens t of -cos(q_c, "
    "g_c(z, t)), g(z, t) = projected gradient of token t's own loss, c = the checkpoint z's "
    "phase started from (its own end for the first phase); n(z) = epochs of z's phase x z's "
    "repeat count (1 with visits false)"
)

DEFINITION = (
    "score(z) = lr_phase(z) * n(z) * sum over the checkpoints bracketing z's phase of "
    "-cos(q_c, g_c(z)); q = projected gradient of the mean log-odds log p(planted) - "
    "log p(normal) on the prompts, g(z) = projected gradient of z's summed training loss; "
    "positive = training on z raised the planted answer; n(z) = epochs of z's phase x z's "
    "repeat count (1 with visits false)"
)


def score_documents(index: TrainingIndex, args: TraceArgs) -> tuple[np.ndarray, dict[str, float]]:
    """[n_documents] scores in ``index.documents`` order, and the seconds spent."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    queries: dict[str, np.ndarray] = {}
    # token mode reads each phase at the checkpoint it started from only
    needed = {index.token_checkpoint(p).name for p in index.phases} if args.tokens else None
    for checkpoint in index.checkpoints:
        if needed is not None and checkpoint.name not in needed:
            continue
        model = load_checkpoint(index.subject, checkpoint.name, index.workspace).model
        queries[checkpoint.name] = _unit(
            query_gradient(index, model, args.prompts, args.planted, args.normal, args.chat)
        )
    seconds["query_gradients"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    whiten: dict[str, Tensor] = {}
    if args.precondition:
        block = index.config.rank**2
        for name in queries:
            if args.tokens:
                rows = [r for p in index.phases if index.token_checkpoint(p).name == name
                        for r, _ in index.token_shards(p)]  # fmt: skip
            else:
                rows = [index.matrix(name, p) for p in index.phases]
            whiten[name] = whitener(rows, block, args.damping)
            queries[name] = _unit(
                apply_whitener(torch.from_numpy(queries[name]), whiten[name]).numpy()
            )
        seconds["preconditioner"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = []
    for i, phase in enumerate(index.phases):
        end = index.checkpoints[i]  # the phase's own end: its knobs
        weight = end.lr * visits(index.by_phase[phase], end.epochs, args.visits)
        if args.tokens:
            name = index.token_checkpoint(phase).name
            parts.append(weight * best_token_cosines(index, phase, queries[name], whiten.get(name)))
            continue
        bracket = index.checkpoints[max(0, i - 1) : i + 1]
        total = np.zeros(len(index.by_phase[phase]), dtype=np.float64)
        for checkpoint in bracket:
            matrix = torch.from_numpy(index.matrix(checkpoint.name, phase).astype(np.float32))
            if checkpoint.name in whiten:
                matrix = apply_whitener(matrix, whiten[checkpoint.name])
            total += -(_unit(matrix.numpy()) @ queries[checkpoint.name])
        parts.append(weight * total)
    seconds["scoring"] = time.perf_counter() - t0
    return np.concatenate(parts), seconds


_STEP = 1 << 15  # rows per float32 block when streaming the index


def whitener(matrices: list[np.ndarray], block: int, damping: float) -> Tensor:
    """[layers, block, block] ``(F_l + λ_l I)^-1/2`` for each linear layer ``l`` (its ``block``
    consecutive dims of a row): ``F_l`` the mean of ``g_l g_lᵀ`` over every row of
    ``matrices``, ``λ_l`` = ``damping`` × ``F_l``'s mean eigenvalue."""
    dims = int(matrices[0].shape[1])
    layers = dims // block
    second = torch.zeros(layers, block, block, dtype=torch.float64)
    n = 0
    for rows in matrices:
        for i in range(0, rows.shape[0], _STEP):
            x = torch.from_numpy(np.array(rows[i : i + _STEP])).float().view(-1, layers, block)
            second += torch.einsum("nli,nlj->lij", x, x).double()
            n += x.shape[0]
    second /= max(n, 1)
    values, vectors = torch.linalg.eigh(second)
    values = values.clamp(min=0)
    damped = values + damping * values.mean(dim=1, keepdim=True).clamp(min=1e-30)
    out: Tensor = ((vectors * damped.rsqrt().unsqueeze(1)) @ vectors.transpose(1, 2)).float()
    return out


def apply_whitener(rows: Tensor, whiten: Tensor) -> Tensor:
    """``rows`` [n, dims] (or [dims]) with each layer's block multiplied by its whitener."""
    layers, block, _ = whiten.shape
    shaped = rows.float().reshape(-1, layers, block)
    out: Tensor = torch.einsum("nli,lji->nlj", shaped, whiten).reshape(rows.shape)
    return out


def visits(docs: list[Any], epochs: int, count: bool) -> np.ndarray:
    """How many times a phase of ``epochs`` epochs trained on each of its ``docs``: epochs x the
    document's repeat count (ones when ``count`` is false)."""
    if not count:
        return np.ones(len(docs))
    return np.array([epochs * d.repeat for d in docs], dtype=np.float64)


def best_token_cosines(
    index: TrainingIndex, phase: str, query: np.ndarray, whiten: Tensor | None = None
) -> np.ndarray:
    """``max_t -cos(q, g(z, t))`` over the trained tokens ``t`` of every document ``z`` of
    ``phase``, from the index's token rows (``query``: the unit query gradient at the checkpoint
    the phase started from; already whitened when ``whiten`` is given, which is then applied to
    every row first). A document that trains on no token has no gradient: score 0."""
    best = torch.full((len(index.by_phase[phase]),), -torch.inf, dtype=torch.float64)
    q = torch.from_numpy(query.astype(np.float32))
    for rows, owner in index.token_shards(phase):
        for i in range(0, rows.shape[0], _STEP):
            # torch's float16 -> float32 conversion and matmul are ~4x numpy's here
            block = torch.from_numpy(np.array(rows[i : i + _STEP])).float()
            if whiten is not None:
                block = apply_whitener(block, whiten)
            norm = block.norm(dim=1)
            cos = (-(block @ q) / norm.clamp(min=1e-30)).masked_fill(norm == 0, -1.0)
            index_ = torch.from_numpy(owner[i : i + _STEP])
            best.scatter_reduce_(0, index_, cos.double(), reduce="amax")
    best[torch.isinf(best)] = 0.0
    out: np.ndarray = best.numpy()
    return out


def phase_mass(phases: list[str], top: list[RankedDocument]) -> dict[str, float]:
    positive = {p: 0.0 for p in phases}
    for doc in top:
        positive[doc.phase] += max(doc.score, 0.0)
    total = sum(positive.values())
    return {p: (v / total if total > 0 else 0.0) for p, v in positive.items()}


@tool("history.trace", TraceArgs, TraceResult)
def trace(ctx: ToolContext, args: TraceArgs) -> TraceResult:
    """The training documents (every phase of the subject's lineage) that most pushed the model
    towards the planted completion on the prompts, by gradient retrieval against the
    training-data index: by default (tokens) score = the phase's learning rate x max over the
    document's trained tokens of -cos(query gradient, that token's loss gradient) at the
    checkpoint its phase started from; with tokens false, the learning-rate-weighted sum over the
    checkpoints bracketing the document's phase of -cos(query gradient, document gradient).
    precondition true whitens both by each layer's empirical Fisher of the index rows first.
    Returns the top k (of `phases` only, when given) with phase, score and a preview, and the
    phase mass (share of the top k's positive score per phase). Checks every index shard's
    checksum first and rebuilds what is missing or corrupt; without an index it says how to
    build one (`selfscope index build MODEL`, or `build: true`)."""
    subject = ctx.subject
    started = time.perf_counter()
    config = IndexConfig(rank=args.rank, seed=args.seed, token_rows=args.token_rows)
    index = TrainingIndex(subject, config, ctx.workspace)
    if not index.exists() and not args.build:
        raise SelfscopeError(
            f"{subject.source} has no training-data index (rank {args.rank}, seed {args.seed}); "
            f"build it with "
            f"`selfscope index build {subject.source}` or pass build: true"
        )
    unknown = [p for p in args.phases or [] if p not in index.phases]
    if unknown:
        raise SelfscopeError(
            f"unknown phase {unknown[0]!r}; the phases of {subject.source} are "
            f"{', '.join(index.phases)}"
        )
    rebuilt = index.ensure(progress=ctx.progress, scope="tokens" if args.tokens else "all")
    scores, seconds = score_documents(index, args)
    order = np.argsort(-scores, kind="stable")
    if args.phases is not None:
        wanted = set(args.phases)
        order = order[[index.documents[i].phase in wanted for i in order]]
    order = order[: args.k]
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
        caveats=subject.lineage.caveats("start", "data", "lr", "epochs", "renderer", "context"),
    )


__all__ = ["DEFINITION", "TraceArgs", "TraceResult", "phase_mass", "query_gradient", "trace"]
