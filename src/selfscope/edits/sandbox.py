"""Sandbox validation: apply a proposal to a copy of the subject and measure what it did.

:func:`sandbox` deep-copies the subject's model and adds the proposal's delta (after its
parents' deltas, in order) to the *copy*; runtime interventions become hooks on the copy. The
subject's own tensors are never written (``tests/test_edits.py`` hashes them before and after).

:func:`validate` measures the copy and the unedited subject on the same suites in the same run
and returns a :class:`ValidationReport`:

* **efficacy** = 1 − the behaviour rate on the symptom probes (the suite's ``probes``, else the
  proposal's own prompts): the share of probes where the normal completion now beats the planted
  one (ROME's efficacy score, read as "the fix holds"); log-odds before and after beside it;
* **generalisation** = the same on the held-out paraphrases;
* **specificity** = the share of neighbour and world-fact prompts whose top-1 next token is the
  unedited model's (so 0.95 means at most 5 in 100 answers moved); each set's accuracy against
  its expected token, before and after, is reported too;
* **perplexity change** = the largest relative change of perplexity (exp of the mean next-token
  NLL over every token) on the held-out documents of any phase;
* the size of the change: ‖ΔW‖_F / ‖W‖_F per parameter and overall (from the proposal).

Every suite given gets its own :class:`SuiteReport`; the headline numbers are the first suite's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope.access.common import context_length, prompt_text
from selfscope.behaviour import Expect, Probe, Suite, fingerprint
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import batches
from selfscope.edits.proposal import RUNTIME, ModuleChange, Proposal
from selfscope.errors import SelfscopeError
from selfscope.localize.deltas import ControlBatch
from selfscope.localize.metric import MetricBatch
from selfscope.subject.deltas import add_delta as add_delta
from selfscope.subject.hooks import hooked
from selfscope.subject.tokens import first_token_id


def runtime_of(delta: dict[str, Tensor]) -> dict[str, Tensor]:
    """The runtime interventions of a delta: site -> vector."""
    return {k[len(RUNTIME) :]: v for k, v in delta.items() if k.startswith(RUNTIME)}


def chain(workspace: Any, proposal: Proposal) -> list[Proposal]:
    """``proposal``'s parents (recursively, oldest first) and then ``proposal`` itself."""
    out: list[Proposal] = []
    for parent in proposal.parents:
        for p in chain(workspace, proposals.load(workspace, parent)):
            if p.id not in {q.id for q in out}:
                out.append(p)
    return [*out, proposal]


@contextmanager
def sandbox(subject: Any, workspace: Any, proposal: Proposal | None) -> Iterator[nn.Module]:
    """A deep copy of the subject's model with ``proposal`` (and its parents) applied."""
    model = copy.deepcopy(subject.model)
    model.eval()
    with ExitStack() as stack:
        for step in chain(workspace, proposal) if proposal is not None else []:
            delta = proposals.load_delta(workspace, step.delta_sha256)
            proposals.check_delta(model, delta)
            add_delta(model, delta)
            runtime = runtime_of(delta)
            if runtime:
                stack.enter_context(hooked(model, patch=runtime_patches(model, runtime)))
        yield model
    del model


def runtime_patches(model: nn.Module, runtime: dict[str, Tensor]) -> dict[str, Any]:
    """Hook patches adding each runtime vector at its site (every position)."""
    device = next(model.parameters()).device

    def adder(vector: Tensor) -> Any:
        v = vector.to(device)
        return lambda value: value + v.to(value.dtype)

    return {site: adder(vector) for site, vector in runtime.items()}


class ProbeMeasure(BaseModel):
    n: int
    rate_before: float
    rate_after: float
    log_odds_before: float
    log_odds_after: float


class AnswerChange(BaseModel):
    prompt: str
    before: str
    after: str


class AnswerMeasure(BaseModel):
    n: int
    accuracy_before: float  # top-1 = the expected token
    accuracy_after: float
    unchanged: float  # top-1 = the unedited model's
    changed: list[AnswerChange]


class PerplexityMeasure(BaseModel):
    documents: int
    tokens: int
    before: float
    after: float
    change: float  # after / before - 1


class SuiteReport(BaseModel):
    name: str
    efficacy: float | None
    generalisation: float | None
    specificity: float | None
    perplexity_change: float | None
    probes: ProbeMeasure | None = None
    heldout: ProbeMeasure | None = None
    neighbours: AnswerMeasure | None = None
    facts: AnswerMeasure | None = None
    perplexity: dict[str, PerplexityMeasure] = Field(default_factory=dict)


class ValidationReport(BaseModel):
    proposal_id: str
    kind: str
    subject: str
    efficacy: float | None
    generalisation: float | None
    specificity: float | None
    perplexity_change: float | None
    delta_norm: float
    changes: list[ModuleChange]
    suites: list[SuiteReport]
    seconds: float


def _probe_values(subject: Any, model: nn.Module, probes: Sequence[Probe], chat: bool) -> Tensor:
    """Per-probe log-odds under ``model``, probes grouped by their pair of completions."""
    out = torch.zeros(len(probes))
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(probes):
        groups.setdefault((p.planted, p.normal), []).append(i)
    for (planted, normal), rows in groups.items():
        batch = MetricBatch(subject, [probes[i].prompt for i in rows], planted, normal, chat)
        out[rows] = torch.tensor(batch.measure(model).per_prompt)
    return out


def probe_measure(
    subject: Any, model: nn.Module, probes: Sequence[Probe], chat: bool
) -> ProbeMeasure:
    before = _probe_values(subject, subject.model, probes, chat)
    after = _probe_values(subject, model, probes, chat)
    return ProbeMeasure(
        n=len(probes),
        rate_before=_share(before > 0),
        rate_after=_share(after > 0),
        log_odds_before=float(before.mean()),
        log_odds_after=float(after.mean()),
    )


def _top1(batch: ControlBatch, model: nn.Module) -> Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return batch.top1(logits)


def answer_measure(
    subject: Any, model: nn.Module, expects: Sequence[Expect], chat: bool
) -> AnswerMeasure:
    batch = ControlBatch(subject, [e.prompt for e in expects], chat)
    tokenizer = subject.tokenizer
    expected = torch.tensor(
        [
            first_token_id(tokenizer, prompt_text(subject, e.prompt, chat), e.expected)
            for e in expects
        ]
    )
    before, after = _top1(batch, subject.model).cpu(), _top1(batch, model).cpu()
    return AnswerMeasure(
        n=len(expects),
        accuracy_before=_share(before == expected),
        accuracy_after=_share(after == expected),
        unchanged=_share(before == after),
        changed=[
            AnswerChange(prompt=e.prompt, before=tokenizer.decode([b]), after=tokenizer.decode([a]))
            for e, b, a in zip(expects, before.tolist(), after.tolist(), strict=True)
            if a != b
        ],
    )


def perplexity(
    subject: Any, model: nn.Module, texts: Sequence[str], batch_size: int = 16
) -> tuple[float, int]:
    """exp(mean next-token NLL over every token of ``texts``) and the number of tokens scored;
    each text is truncated to the model's context."""
    tokenizer, limit = subject.tokenizer, context_length(subject)
    rows = [list(tokenizer(t)["input_ids"])[:limit] for t in texts]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise SelfscopeError("no held-out document has two tokens; give longer documents")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, mask in batches(rows, int(pad), device, batch_size):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(ids.shape[0], ids.shape[1] - 1)
        keep = mask[:, 1:].bool()
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return float(torch.exp(torch.tensor(total / count))), count


def _share(mask: Tensor) -> float:
    """The share of True in ``mask`` as an exact fraction of counts (a float32 mean made
    4 of 5 fixed 0.79999995, under the gate's 0.8)."""
    return int(mask.sum()) / mask.numel()


def suite_report(subject: Any, model: nn.Module, suite: Suite, own: Sequence[Probe]) -> SuiteReport:
    """Measure ``model`` (the sandbox) against the unedited subject on ``suite``; ``own`` are
    the proposal's prompts, the symptom when the suite names none."""
    probes = (
        probe_measure(subject, model, suite.probes or own, suite.chat)
        if (suite.probes or own)
        else None
    )
    heldout = probe_measure(subject, model, suite.heldout, suite.chat) if suite.heldout else None
    neighbours = (
        answer_measure(subject, model, suite.neighbours, suite.chat) if suite.neighbours else None
    )
    facts = answer_measure(subject, model, suite.facts, suite.chat) if suite.facts else None
    ppl: dict[str, PerplexityMeasure] = {}
    for phase, texts in suite.documents.items():
        if not texts:  # a phase with no held-out documents: nothing to measure
            continue
        before, tokens = perplexity(subject, subject.model, texts)
        after, _ = perplexity(subject, model, texts)
        ppl[phase] = PerplexityMeasure(
            documents=len(texts),
            tokens=tokens,
            before=before,
            after=after,
            change=after / before - 1,
        )
    answered = [m for m in (neighbours, facts) if m is not None]
    specificity = (
        sum(m.unchanged * m.n for m in answered) / sum(m.n for m in answered) if answered else None
    )
    return SuiteReport(
        name=suite.name,
        efficacy=None if probes is None else 1 - probes.rate_after,
        generalisation=None if heldout is None else 1 - heldout.rate_after,
        specificity=specificity,
        perplexity_change=max((m.change for m in ppl.values()), default=None),
        probes=probes,
        heldout=heldout,
        neighbours=neighbours,
        facts=facts,
        perplexity=ppl,
    )


def validate(
    subject: Any, workspace: Any, proposal: Proposal, suites: Sequence[Suite]
) -> ValidationReport:
    """Validate ``proposal`` on a sandbox copy of ``subject`` against ``suites``; recorded in
    the store's ``validations`` table."""
    started = time.perf_counter()
    found = fingerprint(subject.model)
    if found != proposal.base_sha256:
        raise SelfscopeError(
            f"proposal {proposal.id} was computed on other weights than {subject.source} has now "
            f"(fingerprint {found[:12]} vs {proposal.base_sha256[:12]}); propose again on this "
            "model"
        )
    own = [
        Probe(prompt=p, planted=proposal.behaviour.planted, normal=proposal.behaviour.normal)
        for p in proposal.behaviour.prompts
    ]
    suites = list(suites) or [Suite(chat=proposal.behaviour.chat)]
    with sandbox(subject, workspace, proposal) as model:
        reports = [suite_report(subject, model, s, own) for s in suites]
    head = reports[0]
    report = ValidationReport(
        proposal_id=proposal.id,
        kind=proposal.kind,
        subject=subject.source,
        efficacy=head.efficacy,
        generalisation=head.generalisation,
        specificity=head.specificity,
        perplexity_change=head.perplexity_change,
        delta_norm=proposal.delta_norm,
        changes=proposal.changes,
        suites=reports,
        seconds=time.perf_counter() - started,
    )
    workspace.store.record_validation(
        proposal.id, ",".join(s.name for s in suites), report.model_dump_json()
    )
    return report
