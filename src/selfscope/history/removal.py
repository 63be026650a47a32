"""The removal test: retrain a phase without some documents, and see whether the behaviour goes.

Attribution scores are estimates; only retraining shows causal influence (Kronfluence's
"removal test"). The tool retrains the phase the removed documents belong to from the checkpoint
it started from (the previous phase's end; for the first phase of an organism trained from
scratch, its initialisation, rebuilt from the lineage by the builder's deterministic
constructor), with the phase's recorded hyperparameters and training seed and the organism
trainer itself (:func:`selfscope.organisms.train.train`), without the removed documents — by
default the phase's recorded run with their rows taken out of their batches, every other step as
it was (``order="kept"``; a fresh shuffle of the remaining documents, ``"reshuffled"``, changes
every batch and the schedule, which in a run from scratch moves the behaviour as much as a
cause does) — then re-runs every later phase as recorded, and measures
the behaviour metric (:mod:`selfscope.localize.metric`) of the result. Beside the given set it
retrains without ``k`` random documents of the same phase (seeded) and without BM25's top ``k``
of that phase for the prompts, and (``replay``) with nothing removed: the replay must reproduce
the subject's metric, which shows the retraining is the phase's own training and not some other
run.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.history.corpus import TrainingDocument, documents, sequences
from selfscope.history.lexical import bm25_scores
from selfscope.localize.metric import MetricBatch
from selfscope.organisms.models import build_scratch_model
from selfscope.organisms.presets import Knobs, ModelShape
from selfscope.organisms.train import train
from selfscope.progress import ProgressSink, SilentProgress
from selfscope.subject.checkpoints import load_checkpoint
from selfscope.tools import ToolContext, tool
from selfscope.workspace import Workspace

Order = Literal["kept", "reshuffled"]


class RemovalArgs(Behaviour):
    remove: list[str] = Field(
        min_length=1,
        description="Document keys '<phase>/<id>' to remove (e.g. history.trace's top k); all "
        "from one phase, which is retrained.",
    )
    random: bool = Field(True, description="Also retrain without k random documents.")
    bm25: bool = Field(True, description="Also retrain without BM25's top k for the prompts.")
    replay: bool = Field(True, description="Also retrain with nothing removed (a check).")
    seed: int = Field(0, description="Seed of the random removal set.")
    order: Order = Field(
        "kept",
        description="'kept': the phase's recorded run with the removed documents taken out of "
        "their batches, every other step as it was (same order, batches and learning rates); "
        "'reshuffled': a fresh run of the phase on the remaining documents (new order).",
    )


class RemovalRun(BaseModel):
    kind: Literal["given", "random", "bm25", "replay"]
    removed: list[str]
    log_odds: float
    rate: float
    seconds: float


class RemovalResult(BaseModel):
    phase: str
    started_from: str  # the checkpoint the phase was retrained from
    k: int
    subject: RemovalRun  # the subject as it is (kind "replay", nothing removed, not retrained)
    runs: list[RemovalRun]


def _knobs(subject: Any, phase: str) -> tuple[Knobs, int]:
    """The recorded knobs and trainer seed of ``phase``, or a one-line error when the lineage
    does not record enough to replay it (a declared lineage: no batch order, maybe no lr)."""
    lineage = subject.lineage
    ref = lineage.phase_ref(phase)
    missing = lineage.caveats("order", "lr", "epochs", "batch_size", phases=[phase])
    knobs = ref.hyperparameters
    if missing or knobs.lr is None or knobs.epochs is None or knobs.batch_size is None:
        why = missing[0] if missing else f"phase {phase!r}: its knobs are not recorded"
        raise SelfscopeError(
            f"the removal test replays a phase's recorded run, and {why}; it needs an organism "
            "built by selfscope"
        )
    out = Knobs(
        documents=ref.documents or 0,
        epochs=knobs.epochs,
        lr=knobs.lr,
        batch_size=knobs.batch_size,
        method=knobs.method or "full",
    )
    index = [p.name for p in lineage.phases].index(phase)
    return out, ref.train_seed if ref.train_seed is not None else index


def _measure(subject: Any, model: Any, args: RemovalArgs) -> tuple[float, float]:
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    value = batch.measure(model)
    return value.log_odds, value.rate


def starting_model(subject: Any, index: int, workspace: Workspace) -> Any:
    """The weights phase ``index`` started from: the previous phase's checkpoint; for the first
    phase of an organism trained from scratch, its initialisation rebuilt from the lineage
    (architecture, shape, vocabulary and seed: the builder's own deterministic constructor)."""
    if index > 0:
        previous = subject.lineage.phases[index - 1].name
        return load_checkpoint(subject, previous, workspace).model
    lineage = subject.lineage
    if lineage.base_model != "scratch" or lineage.init is None:
        raise SelfscopeError(
            f"the first phase trained from the base model {lineage.base_model!r}; the "
            "removal test retrains a first phase only for organisms trained from scratch"
        )
    tok = subject.tokenizer
    model = build_scratch_model(
        lineage.init.architecture,
        ModelShape(**lineage.init.shape),
        len(tok),
        seed=lineage.init.seed,
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        pad=tok.pad_token_id,
    )
    return model.to(next(subject.model.parameters()).device)


Rows = dict[str, tuple[list[str], list[tuple[list[int], int]]]]


def phase_rows(subject: Any, corpus: list[TrainingDocument]) -> Rows:
    """Each phase's training rows as the trainer saw them: the documents in corpus order, each
    repeated as recorded — (document key of every row, token sequence of every row)."""
    out: Rows = {}
    for phase in subject.lineage.phases:
        docs = [d for d in corpus if d.phase == phase.name]
        seqs = sequences(subject, docs)
        out[phase.name] = (
            [d.key for d in docs for _ in range(d.repeat)],
            [seq for d, seq in zip(docs, seqs, strict=True) for _ in range(d.repeat)],
        )
    return out


def retrain(
    subject: Any,
    phase: str,
    remove: set[str],
    progress: ProgressSink,
    workspace: Workspace,
    order: Order = "kept",
    rows: Rows | None = None,
) -> Any:
    """The lineage retrained from the start of ``phase`` without the documents ``remove`` (the
    trainer's own loop, the phase's recorded knobs and seed), then every later phase on its own
    documents as recorded, so the result is comparable with the subject; returns the model in
    eval mode. ``order="kept"``: the phase's run with the removed documents' rows taken out of
    their batches and every other step as recorded (the trainer's ``leave_out``);
    ``"reshuffled"``: a fresh run on the remaining documents (a new order and schedule).
    ``rows``: :func:`phase_rows`, when the caller retrains several times."""
    names = [p.name for p in subject.lineage.phases]
    index = names.index(phase)
    rows = rows if rows is not None else phase_rows(subject, documents(subject))
    model = starting_model(subject, index, workspace)
    device = next(model.parameters()).device
    for j in range(index, len(names)):
        knobs, seed = _knobs(subject, names[j])
        if knobs.method != "full":
            raise SelfscopeError(
                f"phase {names[j]!r} trained with {knobs.method}; only full supported"
            )
        keys, seqs = rows[names[j]]
        gone = {i for i, key in enumerate(keys) if key in remove} if j == index else set()
        if order == "reshuffled":  # the remaining rows alone: a new order and schedule
            seqs, gone = [s for i, s in enumerate(seqs) if i not in gone], set()
        train(
            model,
            seqs,
            knobs,
            seed=seed,
            pad=subject.tokenizer.pad_token_id,
            label=f"retrain {names[j]}",
            device=device,
            show_progress=not isinstance(progress, SilentProgress),
            leave_out=frozenset(gone),
        )
    model.eval()
    return model


@tool("history.removal", RemovalArgs, RemovalResult)
def removal(ctx: ToolContext, args: RemovalArgs) -> RemovalResult:
    """The removal test: retrain the phase the `remove` documents belong to (from the checkpoint
    it started from, or the initialisation for a first phase trained from scratch; its recorded
    hyperparameters and seed, the organism trainer) without them, re-run the later phases as
    recorded, and report the behaviour's log-odds and rate; beside it the same without k random
    documents of that phase, without BM25's top k of that phase for the prompts, and with
    nothing removed (a replay that must reproduce the subject). Each retraining costs one
    training run of the phase and the later ones (seconds on a small organism, minutes on
    SmolLM2)."""
    subject = ctx.subject
    docs = documents(subject)
    by_key = {d.key: d for d in docs}
    unknown = [k for k in args.remove if k not in by_key]
    if unknown:
        raise SelfscopeError(
            f"no training document {unknown[0]!r}; give keys '<phase>/<id>' as history.trace "
            "returns them"
        )
    phases = sorted({by_key[k].phase for k in args.remove})
    if len(phases) != 1:
        raise SelfscopeError(
            f"the documents to remove come from several phases ({', '.join(phases)}); the test "
            "retrains one phase: give documents of one phase"
        )
    phase = phases[0]
    pool = [d for d in docs if d.phase == phase]
    k = len(set(args.remove))
    sets: list[tuple[Literal["given", "random", "bm25", "replay"], list[str]]] = [
        ("given", sorted(set(args.remove)))
    ]
    if args.random:
        rng = random.Random(args.seed)
        sets.append(("random", sorted(d.key for d in rng.sample(pool, k))))
    if args.bm25:
        scores = bm25_scores(pool, list(args.prompts))
        order = sorted(range(len(pool)), key=lambda i: -float(scores[i]))[:k]
        sets.append(("bm25", sorted(pool[i].key for i in order)))
    if args.replay:
        sets.append(("replay", []))
    log_odds, rate = _measure(subject, subject.model, args)
    mine = RemovalRun(kind="replay", removed=[], log_odds=log_odds, rate=rate, seconds=0.0)
    runs = []
    rows = phase_rows(subject, docs)  # tokenised once for every retraining
    for kind, removed in sets:
        started = time.perf_counter()
        model = retrain(subject, phase, set(removed), ctx.progress, ctx.workspace, args.order, rows)
        with torch.no_grad():
            log_odds, rate = _measure(subject, model, args)
        runs.append(
            RemovalRun(
                kind=kind,
                removed=removed,
                log_odds=log_odds,
                rate=rate,
                seconds=time.perf_counter() - started,
            )
        )
    index = [p.name for p in subject.lineage.phases].index(phase)
    return RemovalResult(
        phase=phase,
        started_from=subject.lineage.phases[index - 1].name if index else "initialisation",
        k=k,
        subject=mine,
        runs=runs,
    )


__all__ = ["RemovalArgs", "RemovalResult", "RemovalRun", "phase_rows", "removal", "retrain"]
