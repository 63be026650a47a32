"""``edits.unlearn``: forget given training documents without collapsing the model.

Plain gradient ascent on the documents to forget drives a model to gibberish within a few steps
(the failure the unlearning literature starts from). Two bounded methods are offered, both with
a *retain* set — other documents of the same phases, which the model keeps fitting:

* ``npo`` (Negative Preference Optimization, Zhang et al. 2024): forget loss
  ``(2/β) · log(1 + (π(y|x) / π_ref(y|x))^β)`` per document, with ``π_ref`` the model before the
  edit; it saturates once a document's likelihood has fallen, so it cannot run away;
* ``gradient_difference``: ``−NLL(forget) + NLL(retain)``.

Both add ``retain_weight × NLL(retain)``. The run is bounded: at most ``steps`` AdamW steps, and
after every ``check_every`` steps the perplexity on *guard* documents of every phase (training
documents neither forgotten nor in the retain set) and on ``guard_samples`` rows of text the
model samples itself (held out by construction) is measured. A state is kept only while every
guard set's perplexity is at most ``max_perplexity_increase`` above its start; a check above it
sends the run back to the last kept state at half the learning rate (at most ``backoffs``
times, then it stops). The run also
stops when every prompt shows the normal completion by ``margin`` in log-odds. Training
happens on a private copy; the proposal's delta is that copy minus the model it started from.

Documents are named as the historian names them (``<phase>/<id>``, e.g. from ``history.trace``)
and tokenised as the trainer saw them (:func:`selfscope.history.corpus.sequences`).
"""

from __future__ import annotations

import copy
import random
import time
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.behaviour import Evidence
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import padded
from selfscope.edits.common import (
    ProposalResult,
    ProposeArgs,
    base_sha,
    begin,
    working_model,
)
from selfscope.edits.keys import sampled_pool
from selfscope.errors import SelfscopeError
from selfscope.history import corpus as training_corpus
from selfscope.localize.metric import MetricBatch
from selfscope.tools import ToolContext


class UnlearnArgs(ProposeArgs):
    documents: list[str] = Field(
        default_factory=list, description="Training documents to forget: '<phase>/<id>' keys."
    )
    method: Literal["npo", "gradient_difference"] = Field("npo", description="The forget loss.")
    steps: int = Field(60, ge=1, le=1000, description="At most this many optimiser steps.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    beta: float = Field(0.1, gt=0, description="NPO's β.")
    retain: int = Field(256, ge=8, description="Retain documents sampled from the same phases.")
    retain_weight: float = Field(1.0, ge=0, description="Weight of the retain NLL.")
    batch_size: int = Field(16, ge=1, description="Forget and retain rows per step.")
    check_every: int = Field(5, ge=1, description="Steps between guard and prompt checks.")
    guard_samples: int = Field(64, ge=0, description="Self-sampled rows in the guard.")
    backoffs: int = Field(
        4, ge=0, description="Guard trips allowed: each restores the last kept state, halves lr."
    )
    max_perplexity_increase: float = Field(
        0.05, ge=0, description="Guard: largest relative perplexity rise on held-back retain docs."
    )
    margin: float = Field(1.0, ge=0, description="Stop once every prompt's log-odds < -margin.")
    modules: list[str] | None = Field(None, description="Train only these modules (default all).")
    seed: int = Field(0, description="Seed of the retain sample and batch order.")


def _batch(rows: list[tuple[list[int], int]], pad: int, device: torch.device) -> tuple[Tensor, ...]:
    """Padded ids, mask, and labels: the tokens after the ``k`` context-only ones (-100 else)."""
    ids, mask = padded([r for r, _ in rows], pad, device)
    labels = torch.full_like(ids, -100)
    for i, (r, k) in enumerate(rows):
        labels[i, max(k, 1) : len(r)] = ids[i, max(k, 1) : len(r)]
    return ids, mask, labels


def _doc_nll(model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row summed NLL of the labelled tokens [rows], and their count [rows]."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1)
    target = labels[:, 1:]
    keep = target != -100
    picked = lp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum(-1), keep.sum(-1)


def _perplexity(model: nn.Module, rows: list[tuple[list[int], int]], pad: int) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            nll, n = _doc_nll(model, *_batch(rows[start : start + 32], pad, device))
            total, count = total + float(nll.sum()), count + int(n.sum())
    return float(torch.exp(torch.tensor(total / max(count, 1))))


@tools.tool("edits.unlearn", UnlearnArgs, ProposalResult, permission="propose")
def propose_unlearn(ctx: ToolContext, args: UnlearnArgs) -> ProposalResult:
    """Propose forgetting the given training documents (e.g. the historian's top documents for
    a behaviour) with NPO or gradient difference against a retain set, bounded by a perplexity
    guard on held-back documents. Stores the proposal (never touches the subject)."""
    subject = ctx.subject
    started = time.perf_counter()
    if not args.documents:
        raise SelfscopeError(
            "unlearn needs documents to forget ('<phase>/<id>' keys, e.g. history.trace's top "
            "documents); got none"
        )
    workspace = ctx.workspace
    parents = begin(ctx, args)
    docs = training_corpus.documents(subject)
    by_key = {d.key: d for d in docs}
    missing = [k for k in args.documents if k not in by_key]
    if missing:
        raise SelfscopeError(
            f"{len(missing)} documents are not in {subject.source}'s training data "
            f"(e.g. {missing[0]!r}); name them '<phase>/<id>' as history.trace does"
        )
    forget_docs = [by_key[k] for k in dict.fromkeys(args.documents)]
    phases = {d.phase for d in forget_docs}
    forget_text = {d.text for d in forget_docs}
    pool = [
        d
        for d in docs
        if d.phase in phases and d.key not in args.documents and d.text not in forget_text
    ]
    rng = random.Random(args.seed)
    rng.shuffle(pool)
    retain_docs = pool[: args.retain]
    taken = {d.key for d in retain_docs} | set(args.documents)
    size = max(32, args.retain // 4)
    guard_pool = [d for d in docs if d.key not in taken and d.text not in forget_text]
    rng.shuffle(guard_pool)
    guard_docs: dict[str, list[training_corpus.TrainingDocument]] = {}
    for d in guard_pool:  # every phase: forgetting a fine-tune must not undo the pretraining
        if len(guard_docs.setdefault(d.phase, [])) < size:
            guard_docs[d.phase].append(d)
    forget = training_corpus.sequences(subject, forget_docs)
    retain = training_corpus.sequences(subject, retain_docs)
    # every token counts in the guard (as in validation's perplexity), prompts of Q/A included
    guard = {
        ph: [(ids, 0) for ids, _ in training_corpus.sequences(subject, ds)]
        for ph, ds in guard_docs.items()
    }
    # and text the model samples itself: held out from every phase by construction (its
    # perplexity rise is the KL divergence from the unedited model on its own distribution)
    guard["self-sampled"] = [
        (r, 0) for r in sampled_pool(subject, ctx.workspace, args.guard_samples, 64)
    ]
    pad = int(subject.tokenizer.pad_token_id or 0)
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    with working_model(subject, workspace, parents) as start_model:
        model = copy.deepcopy(start_model)
        start = {n: p.detach().clone() for n, p in start_model.named_parameters()}
    device = next(model.parameters()).device
    names = [n for n, _ in model.named_parameters()]
    if args.modules is not None:
        keep = [
            n
            for n in names
            if any(n.rpartition(".")[0] == m or n.startswith(m + ".") for m in args.modules)
        ]
        if not keep:
            raise SelfscopeError(f"none of {args.modules} is a module of the model")
    else:
        keep = names
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    model.train()
    with torch.no_grad():  # π_ref: the model before the edit
        ref, _ = _doc_nll(model, *_batch(forget, pad, device))
    base_ppl = {ph: _perplexity(model, rows, pad) for ph, rows in guard.items()}

    def guard_increase() -> float:  # the largest relative rise of any phase's guard perplexity
        return max(_perplexity(model, rows, pad) / base_ppl[ph] - 1 for ph, rows in guard.items())

    limit = args.max_perplexity_increase
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr, backoffs = args.lr, 0
    optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    history: list[dict[str, float]] = []
    stopped = "steps"
    with ctx.progress.bar("unlearning", args.steps) as advance:
        for step in range(1, args.steps + 1):
            f_idx = rng.sample(range(len(forget)), min(args.batch_size, len(forget)))
            r_idx = rng.sample(range(len(retain)), min(args.batch_size, len(retain)))
            f_nll, f_n = _doc_nll(model, *_batch([forget[i] for i in f_idx], pad, device))
            r_nll, r_n = _doc_nll(model, *_batch([retain[i] for i in r_idx], pad, device))
            if args.method == "npo":
                log_ratio = ref[f_idx] - f_nll  # log π(y|x) - log π_ref(y|x), summed over tokens
                forget_loss = (2 / args.beta) * torch.nn.functional.softplus(
                    args.beta * log_ratio
                ).mean()
            else:
                forget_loss = -(f_nll / f_n.clamp(min=1)).mean()
            loss = forget_loss + args.retain_weight * (r_nll.sum() / r_n.sum().clamp(min=1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            advance(1, f"loss {float(loss.detach()):.3f}")
            if step % args.check_every and step != args.steps:
                continue
            model.eval()
            rise = guard_increase()
            value = batch.measure(model)
            model.train()
            history.append(
                {
                    "step": step,
                    "guard_increase": rise,
                    "rate": value.rate,
                    "log_odds": value.log_odds,
                }
            )
            if rise > limit:  # back to the last kept state, at half the learning rate
                backoffs += 1
                if backoffs > args.backoffs:
                    stopped = "perplexity guard"
                    break
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in best:
                            p.copy_(best[n])
                lr /= 2
                optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
                continue
            best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            if max(value.per_prompt) < -args.margin:
                stopped = "prompts fixed"
                break
    delta = {n: (best[n] - start[n]).float() for n in best if not torch.equal(best[n], start[n])}
    if not delta:
        first = history[0] if history else {"step": 0, "guard_increase": 0.0}
        raise SelfscopeError(
            f"the perplexity guard stopped unlearning before a step could be kept (guard "
            f"perplexity up {first['guard_increase']:.1%} by step {first['step']}); lower lr or "
            "check_every, or raise max_perplexity_increase"
        )
    last = next((h for h in reversed(history) if h["guard_increase"] <= limit), None)
    evidence = [
        Evidence(
            tool="edits.unlearn",
            summary=f"{args.method} on {len(forget)} documents with {len(retain)} retain "
            "documents: "
            f"stopped on {stopped}; kept step {last['step'] if last else 0} "
            f"(guard perplexity up {last['guard_increase'] if last else 0.0:.1%})",
            numbers={
                "history": history,
                "guard_perplexity_start": base_ppl,
                "guard_documents": {ph: len(rows) for ph, rows in guard.items()},
                "stopped": stopped,
                "backoffs": backoffs,
                "final_lr": lr,
            },
        )
    ]
    proposal = proposals.make(
        ctx,
        cited=args.evidence,
        kind="unlearn",
        behaviour=args.behaviour(),
        parameters=args.model_dump(
            exclude={"prompts", "planted", "normal", "chat", "parents", "rationale", "evidence"}
        ),
        delta=delta,
        rationale=args.rationale or f"forget {len(forget)} training documents behind the behaviour",
        evidence=evidence,
        started=started,
        parents=parents,
        base_sha256=base_sha(subject, workspace, parents),
    )
    return ProposalResult(proposal=proposal)
