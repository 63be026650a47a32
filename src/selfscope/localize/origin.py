"""Phase origin: in which training phase a behaviour arose, and whose weight changes carry it.

A lineage (an organism's, or one declared for a user's own fine-tune) lists its checkpoints in
training order (after the base model, when the first phase started from one). The behaviour's
mean log-odds ``L`` and rate (:mod:`selfscope.localize.metric`) are measured at every checkpoint
``c_0 .. c_n`` (``c_n`` is the subject), and the verdict combines three measured things:

1. **First appearance.** The behaviour is *present* at a checkpoint when its rate is at least
   ``present_rate`` (default 0.5) and its log-odds above ``present_log_odds`` (default 0). It
   first appears at the earliest checkpoint from which on it is present at *every* checkpoint
   (a behaviour that comes and goes counts from its last return). The subject must show it.
2. **Phase shares.** With ``B`` the log-odds just before the first appearance (0, indifference,
   when the first appearance is a phase trained from scratch: random weights carry no
   behaviour), phase ``j`` from the first appearance on added ``share_j = (L_j - L_{j-1}) /
   (L_n - B)`` of the subject's behaviour; the shares sum to 1. This *is* weight-delta patching
   at the granularity of whole phases: reverting all of phase ``j``'s weight changes at once
   is loading the checkpoint before it. A later phase whose share is about 0 or negative left
   the behaviour alone: reverting all of its changes keeps the behaviour.
3. **Weight deltas per module.** When the named phase has a checkpoint before it,
   :mod:`selfscope.localize.deltas` patches that phase's weight changes module by module and
   finds a small set whose revert removes ``target`` of what the phase added: *which* of the
   phase's changes carry it.

**Verdict.** The first-appearance phase when its share is at least ``dominance`` (default 0.5);
otherwise the later phase with the largest share, if that reaches ``dominance`` (the behaviour
showed weakly first, and that phase's training made it); otherwise ``"diffuse"`` (it grew over
several phases). ``"base"`` means the base model already showed it before any phase.

**Confidence** (in [0, 1]) is the weaker of: ``share`` — the named phase's share (clamped);
``step`` — the lowest rate from the named phase on minus the rate just before it (0 before a
phase trained from scratch). For ``"diffuse"`` it is 1 minus the largest phase share.
**Localization** is reported beside it, not folded in: the module set's joint revert share /
``target``, capped at 1 (``None`` when the phase has no checkpoint before it). A low value
means no set of modules found removes the target share (a full fine-tune moves every weight;
when forward selection stops at ``max_modules``, prefixes of the integrated-gradient ranking are
searched, see :mod:`selfscope.localize.deltas`), which says nothing against the phase. Ground
truth is never read: only the checkpoints named in the lineage and the prompts given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, Field
from torch import nn

from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.localize.deltas import DeltaArgs, DeltaResult, Granularity, patch_deltas
from selfscope.localize.metric import MetricBatch
from selfscope.subject.checkpoints import load_version
from selfscope.tools import ToolContext, tool


class OriginArgs(Behaviour):
    present_rate: float = Field(
        0.5, ge=0, le=1, description="Rate at or above which a checkpoint shows the behaviour."
    )
    present_log_odds: float = Field(
        0.0, ge=0, description="Mean log-odds above which a checkpoint shows the behaviour."
    )
    dominance: float = Field(
        0.5, gt=0, le=1, description="Share of the behaviour a phase must add to be named."
    )
    target: float = Field(
        0.8, gt=0, le=1, description="Share the weight-delta module set must remove."
    )
    max_modules: int = Field(
        16, ge=1, le=1000, description="Largest module set forward selection tries."
    )
    pool: int = Field(40, ge=1, le=10_000, description="Modules the set is chosen from.")
    ig_steps: int = Field(8, ge=0, le=256, description="Integrated-gradient steps (0: none).")
    spread: bool = Field(
        True, description="Search integrated-gradient prefixes when no small set suffices."
    )
    granularity: Granularity = Field("module", description="'module' or 'block'.")
    control_prompts: list[str] = Field(
        default_factory=list,
        description="Prompts whose next-token prediction should not change (collateral check).",
    )


class CheckpointMeasure(BaseModel):
    name: str  # a phase name, or "base" for the model the first phase started from
    source: str  # loadable with selfscope.subject.load
    log_odds: float
    rate: float
    present: bool
    share: float | None  # share of the subject's behaviour this phase added (from first appearance)


class OriginResult(BaseModel):
    phase: str  # a phase name, "base", or "diffuse"
    confidence: float
    confidence_parts: dict[str, float]
    localization: float | None  # module set's joint revert share / target, capped at 1
    evidence: list[str]
    first_appearance: str
    checkpoints: list[CheckpointMeasure]
    deltas: DeltaResult | None  # the named phase against the checkpoint before it
    rule: str
    seconds: dict[str, float]
    caveats: list[str] = Field(
        default_factory=list,
        description="What the subject's lineage does not record that this verdict relied on "
        "(what a phase started from, a base model's own training data); empty for an organism "
        "trained from scratch.",
    )


@dataclass(frozen=True)
class _Checkpoint:
    name: str
    source: str
    scratch: bool  # trained from random weights (nothing before it)


def lineage_checkpoints(subject: Any) -> list[_Checkpoint]:
    """The checkpoints that produced the subject, in order (a base model first, if any)."""
    lineage = subject.lineage
    if not lineage.phases:
        raise SelfscopeError(
            f"{subject.source} has no training phases in its lineage, so there is no phase to "
            "name; localize.origin needs an organism (organism:NAME[@PHASE]) or a declared "
            "lineage (`selfscope lineage add MODEL --parent BASE --data train.jsonl`); for a "
            "model with a known parent use localize.weight_deltas with `against`"
        )
    scratch = lineage.base_model == "scratch"
    root = None if scratch else lineage.base_model
    names = {p.name for p in lineage.phases}
    out = []
    if root:
        out.append(_Checkpoint("base" if "base" not in names else "base-model", root, False))
    for i, phase in enumerate(lineage.phases):
        out.append(_Checkpoint(phase.name, str(phase.checkpoint), i == 0 and scratch))
    return out


def _fmt_share(x: float) -> str:
    return f"{x:.0%}"


def _verdict(
    measures: list[CheckpointMeasure], first: int, dominance: float
) -> tuple[int | None, list[float] | None]:
    """The named checkpoint index (None = diffuse) and the per-phase shares from ``first`` on."""
    before = 0.0 if first == 0 else measures[first - 1].log_odds
    total = measures[-1].log_odds - before
    if total <= 1e-9:
        return first, None
    levels = [before] + [m.log_odds for m in measures[first:]]
    shares = [(b - a) / total for a, b in pairwise(levels)]
    if shares[0] >= dominance:
        return first, shares
    best = max(range(len(shares)), key=lambda j: shares[j])
    if shares[best] >= dominance:
        return first + best, shares
    return None, shares


@tool("localize.origin", OriginArgs, OriginResult)
def origin(ctx: ToolContext, args: OriginArgs) -> OriginResult:
    """In which training phase did this behaviour arise? Measures the behaviour (mean log-odds
    log p(planted) - log p(normal), rate) at every checkpoint of the subject's lineage, finds
    where it first appears and stays (rate >= present_rate and log-odds > present_log_odds),
    each phase's share of the subject's log-odds, and patches the named phase's weight changes
    module by module (localize.weight_deltas) to find the modules that carry it. Returns
    {phase: NAME | "base" | "diffuse", confidence (the weaker of the phase's share and its rate
    step), localization (module-set share / target), evidence (measured statements),
    per-checkpoint numbers, the weight-delta result, caveats: what the lineage does not
    record}. Needs a lineage with phases (an organism, or one declared with `selfscope lineage
    add`); never reads ground truth."""
    subject = ctx.subject
    started = time.perf_counter()
    checkpoints = lineage_checkpoints(subject)
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    vocab = int(subject.model.config.vocab_size)
    seconds: dict[str, float] = {}

    workspace = ctx.workspace

    def model_of(c: _Checkpoint) -> nn.Module:
        if c is checkpoints[-1]:
            model: nn.Module = subject.model
            return model
        model = load_version(c.source, workspace, subject.device).model
        if int(getattr(model.config, "vocab_size", -1)) != vocab:
            raise SelfscopeError(
                f"checkpoint {c.name} ({c.source}) has another vocabulary than {subject.source}; "
                "origin needs checkpoints that share the tokenizer"
            )
        return model

    t0 = time.perf_counter()
    measures = []
    for c in checkpoints:
        value = batch.measure(model_of(c))
        present = value.rate >= args.present_rate and value.log_odds > args.present_log_odds
        measures.append(
            CheckpointMeasure(
                name=c.name,
                source=c.source,
                log_odds=value.log_odds,
                rate=value.rate,
                present=present,
                share=None,
            )
        )
    seconds["checkpoints"] = time.perf_counter() - t0
    last = measures[-1]
    rule = (
        f"present = rate >= {args.present_rate} and log-odds > {args.present_log_odds}; "
        f"a phase is named when it added >= {args.dominance:.0%} of the subject's log-odds "
        "above the level before the first appearance"
    )
    if not last.present:
        raise SelfscopeError(
            f"{subject.source} does not show the behaviour on these prompts (rate "
            f"{last.rate:.2f}, log-odds {last.log_odds:.2f}; {rule.split(';')[0]}); give prompts "
            "and completions it shows"
        )
    first = len(measures) - 1
    while first > 0 and measures[first - 1].present:
        first -= 1
    named, shares = _verdict(measures, first, args.dominance)
    if shares is not None:
        for j, s in enumerate(shares):
            measures[first + j].share = s

    evidence = [
        f"{m.name}: log-odds {m.log_odds:.2f}, rate {m.rate:.2f} "
        f"({'present' if m.present else 'absent'})"
        for m in measures
    ]
    before = measures[first - 1] if first > 0 else None
    appear = measures[first].name
    if before is None:
        origin_note = (
            "trained from scratch: random weights carry no behaviour"
            if checkpoints[first].scratch
            else "the first checkpoint in the lineage"
        )
        evidence.append(f"first present at {appear} ({origin_note}) and at every later checkpoint")
    else:
        evidence.append(
            f"first present at {appear} (absent at {before.name} just before it) and at every "
            "later checkpoint"
        )
    level = before.log_odds if before is not None else 0.0
    for j, m in enumerate(measures[first:], start=first):
        if m.share is None:
            continue
        prev = measures[j - 1].log_odds if j > first else level
        if j == first:
            evidence.append(
                f"{m.name} added {_fmt_share(m.share)} of the subject's log-odds above the level "
                f"before it ({prev:.2f} -> {m.log_odds:.2f})"
            )
        else:
            carried = "do not carry" if m.share < args.dominance else "carry"
            evidence.append(
                f"{m.name} changed the log-odds by {m.log_odds - prev:+.2f} ({_fmt_share(m.share)}"
                f" of the behaviour): its weight changes {carried} it (reverting all of them = "
                f"{measures[j - 1].name}: log-odds {prev:.2f}, rate {measures[j - 1].rate:.2f})"
            )
    if shares is None:
        evidence.append(
            "the log-odds did not rise from the level before the first appearance; phase shares "
            "are undefined"
        )

    deltas: DeltaResult | None = None
    localization: float | None = None
    parts: dict[str, float] = {}
    if named is None:
        assert shares is not None
        top = max(shares)
        phase = "diffuse"
        confidence = max(0.0, min(1.0, 1.0 - top))
        parts["largest_share"] = top
        evidence.append(
            f"no phase added {args.dominance:.0%} of it (largest share {_fmt_share(top)}): it "
            "grew over several phases"
        )
    else:
        phase = measures[named].name
        share = measures[named].share
        parts["share"] = 0.0 if share is None else max(0.0, min(1.0, share))
        rate_before = measures[named - 1].rate if named > 0 else 0.0
        parts["step"] = max(0.0, min(m.rate for m in measures[named:]) - rate_before)
        if named > first:
            evidence.append(
                f"it first showed at {appear}, but {phase} added most of it "
                f"({_fmt_share(share or 0.0)})"
            )
        if named == 0:
            evidence.append(
                f"{phase} has no checkpoint before it: its weight changes cannot be patched "
                "module by module"
            )
        else:
            t0 = time.perf_counter()
            parent = checkpoints[named - 1]
            shared = set(DeltaArgs.model_fields) & set(OriginArgs.model_fields)
            delta_args = DeltaArgs(
                **args.model_dump(include=shared), against=parent.source, top_k=20
            )
            load_s = time.perf_counter()
            parent_model = model_of(parent)
            model = model_of(checkpoints[named])
            deltas = patch_deltas(
                subject,
                model,
                parent_model,
                parent.source,
                delta_args,
                {"parent_load": time.perf_counter() - load_s},
                ctx.progress,
            )
            seconds["weight_deltas"] = time.perf_counter() - t0
            evidence.extend(_delta_evidence(deltas, phase, parent.name, args.target))
            joint = deltas.set_share if deltas.set_share is not None else 0.0
            localization = max(0.0, min(1.0, joint / args.target))
        confidence = min(parts.values())
    seconds["total"] = time.perf_counter() - started
    return OriginResult(
        phase=phase,
        confidence=confidence,
        confidence_parts=parts,
        localization=localization,
        evidence=evidence,
        first_appearance=appear,
        checkpoints=measures,
        deltas=deltas,
        rule=rule,
        seconds=seconds,
        caveats=subject.lineage.caveats("start", "data"),
    )


def _delta_evidence(d: DeltaResult, phase: str, parent: str, target: float) -> list[str]:
    out = []
    if d.set_share is None or d.set_revert is None:
        return [d.note or f"{phase}'s weight changes did not add the behaviour"]
    best = max((m.revert_share or 0.0 for m in d.modules), default=0.0)
    names = ", ".join(d.module_set)
    verb = "removes" if d.reached else "removes only"
    how = (
        "found by forward selection"
        if d.search == "greedy"
        else "the top modules by integrated-gradient share; no small set found by forward "
        "selection reached the target"
    )
    out.append(
        f"reverting {phase}'s weight changes (to {parent}) in {len(d.module_set)} of "
        f"{d.n_modules} modules ({names}) {verb} {_fmt_share(d.set_share)} of what {phase} "
        f"added (log-odds {d.subject.log_odds:.2f} -> {d.set_revert.log_odds:.2f}, rate "
        f"{d.subject.rate:.2f} -> {d.set_revert.rate:.2f}; target {_fmt_share(target)}); the best "
        f"single module removes {_fmt_share(best)} (set: {how})"
    )
    if d.control is not None:
        kept = round(d.control.agreement * d.control.prompts)
        out.append(
            f"with that set reverted, {kept} of {d.control.prompts} control prompts keep their "
            "top-1 next token"
        )
    sp = d.specific
    if sp is not None:
        out.append(
            f"without the {len(sp.dropped)} modules whose changes most support the control "
            f"prompts' predictions, the {len(sp.modules)} left keep every control prompt's top-1 "
            f"and remove {_fmt_share(sp.share or 0.0)} of what {phase} added "
            f"({_fmt_share(sp.log_odds_share)} of the log-odds; log-odds "
            f"{d.subject.log_odds:.2f} -> {sp.revert.log_odds:.2f}, rate {sp.revert.rate:.2f})"
        )
    ds = d.directions
    if ds is not None:
        verb = "removes" if ds.reached else "removes only"
        held = (
            f"; {round(ds.control.agreement * ds.control.prompts)} of {ds.control.prompts} "
            "control prompts keep their top-1"
            if ds.control is not None
            else ""
        )
        out.append(
            f"at the finer unit of rank-one directions of the changes (SVD of each module's "
            f"delta), reverting {ds.n_directions} of {ds.units} directions in "
            f"{len(ds.per_parameter)} parameters {verb} {_fmt_share(ds.share)} of what {phase} "
            f"added ({_fmt_share(ds.log_odds_share)} of the log-odds; log-odds "
            f"{d.subject.log_odds:.2f} -> {ds.revert.log_odds:.2f}, rate {ds.revert.rate:.2f})"
            f"{held}"
        )
    return out
