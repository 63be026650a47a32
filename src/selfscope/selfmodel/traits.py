"""The self-model: what the model knows about its own traits, kept as measurements.

A :class:`Trait` is a behaviour the investigation diagnosed (its prompts, the completion it gives
and the one wanted), its cause (phase, modules, components, documents, with the calls that
measured them), a probe that predicts from internal activations whether it will fire
(:mod:`.probe`), its strength on every version it was measured on, and a status:

* ``active`` — measured firing on HEAD, and the probe predicts it;
* ``fixed`` — measured not firing on HEAD, and the probe predicts that too;
* ``stale`` — the probe and the measurement disagree: the self-model no longer describes the
  model (re-learn the trait: ``selfmodel.learn``).

It is stored per subject in ``<workspace>/selfmodel/<key>.json`` (atomic writes) and every
change is a ledger entry (``selfmodel.learn``, ``selfmodel.check``) with the file's SHA-256.
Callers never hand in a probe or a strength: :func:`learn` and :func:`check` compute them.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from selfscope import atomic
from selfscope.behaviour import Behaviour, Suite
from selfscope.errors import SelfscopeError
from selfscope.history.corpus import documents
from selfscope.selfmodel.probe import ProbeWeights, fit, near_misses, read, reverted
from selfscope.subject import Subject, load
from selfscope.subject import versions as versioning
from selfscope.tools import ToolContext, tool
from selfscope.workspace import Workspace

Status = Literal["active", "fixed", "stale"]
#: a probe's prediction counts as "fires" above this probability
THRESHOLD = 0.5
#: how far the cause's modules are moved back for the probe's counterfactual training states
COUNTERFACTUAL = (0.5, 1.0)


class Cause(BaseModel):
    """What the investigation measured as the trait's cause (empty where nothing was found)."""

    phase: str | None = None
    modules: list[str] = Field(default_factory=list)
    removed_share: float | None = None
    components: list[str] = Field(default_factory=list)
    documents: list[str] = Field(default_factory=list)
    documents_confirmed: bool = Field(
        default=False, description="The removal test confirmed the documents."
    )


class Strength(BaseModel):
    """The trait measured on one version: the behaviour and the probe's prediction."""

    version: str | None
    label: str
    log_odds: float
    rate: float = Field(description="Share of the trait's prompts where it fires (measured).")
    predicted: float = Field(description="Share where the probe predicts it fires.")
    agreement: float = Field(description="Share where prediction and measurement agree.")
    measured_at: float


class Example(BaseModel):
    """One training prompt of the probe and its measured label."""

    prompt: str
    model: str = Field(
        description="subject, reference, or the subject with the cause's "
        "modules moved part of the way back ('reverted 0.5')"
    )
    log_odds: float
    fires: bool


class Trait(BaseModel):
    name: str
    description: str
    behaviour: Behaviour
    heldout: list[str] = Field(default_factory=list, description="Paraphrases it was measured on.")
    reference: str | None = Field(
        None, description="The cause-free checkpoint the labels are measured against."
    )
    probe: ProbeWeights
    examples: list[Example]
    cause: Cause
    evidence: list[str] = Field(default_factory=list, description="Ids of the measuring calls.")
    investigation: str | None = None
    strength: list[Strength] = Field(default_factory=list)
    status: Status = "active"
    note: str = ""
    learned_by: str
    learned_at: float

    def prompts(self) -> list[str]:
        return [*self.behaviour.prompts, *self.heldout]


class SelfModel(BaseModel):
    subject: str
    traits: list[Trait] = Field(default_factory=list)

    def get(self, name: str) -> Trait:
        for t in self.traits:
            if t.name == name:
                return t
        names = ", ".join(t.name for t in self.traits) or "none yet"
        raise SelfscopeError(f"no trait {name!r} in the self-model; its traits: {names}")


# -- storage -------------------------------------------------------------------------------------
def path_of(workspace: Workspace, key: str) -> Path:
    return workspace.root / "selfmodel" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def key_of(subject: Subject) -> str:
    return versioning.subject_key(subject.root or subject.path)


def read_model(workspace: Workspace, key: str) -> SelfModel:
    path = path_of(workspace, key)
    if not path.exists():
        return SelfModel(subject=key)
    try:
        return SelfModel.model_validate_json(path.read_text())
    except ValueError:
        raise SelfscopeError(
            f"the self-model file {path} is not valid; restore it from the ledger's history or "
            "delete it and re-learn its traits"
        ) from None


def _save(workspace: Workspace, model: SelfModel, action: str, principal: str, note: Any) -> None:
    text = model.model_dump_json(indent=1)
    atomic.write_text(path_of(workspace, model.subject), text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    workspace.store.append(action, principal, model.subject, {"sha256": digest, **note})


# -- measurement ---------------------------------------------------------------------------------
def reference_of(subject: Subject, phase: str | None) -> str | None:
    """The checkpoint before ``phase``; for a first phase, the model it started from when the
    lineage names a loadable one (not ``scratch``); else None."""
    lineage = subject.lineage
    names = [p.name for p in lineage.phases]
    if phase is None or phase not in names:
        return None
    i = names.index(phase)
    if i > 0:
        return str(lineage.phases[i - 1].checkpoint)
    base = lineage.base_model
    return base if base and base != "scratch" else None


def version_label(workspace: Workspace, subject: Subject) -> str:
    row = workspace.store.version_row(subject.version) if subject.version else None
    return versioning.label(row) if row else "v0"


def measure(subject: Subject, model: Any, trait: Trait, prompts: list[str]) -> dict[str, Any]:
    """The trait on ``prompts`` of ``model``: log-odds, measured firing (planted wins) and the
    probe's predicted probability, per prompt."""
    b = trait.behaviour
    seen = read(subject, model, prompts, b.planted, b.normal, b.chat)
    predicted = trait.probe.predict(seen.residuals[:, trait.probe.layer])
    return {"log_odds": seen.log_odds, "fires": seen.fires(), "predicted": predicted}


def strength_of(workspace: Workspace, subject: Subject, trait: Trait) -> Strength:
    m = measure(subject, subject.model, trait, trait.prompts())
    said = m["predicted"] > THRESHOLD
    return Strength(
        version=subject.version,
        label=version_label(workspace, subject),
        log_odds=float(m["log_odds"].mean()),
        rate=float(m["fires"].float().mean()),
        predicted=float(said.float().mean()),
        agreement=float((said == m["fires"]).float().mean()),
        measured_at=time.time(),
    )


def status_of(s: Strength) -> tuple[Status, str]:
    firing, said = s.rate >= 0.5, s.predicted >= 0.5
    if firing != said:
        return "stale", (
            f"on {s.label} the probe predicts it {'fires' if said else 'does not fire'} "
            f"({s.predicted:.0%} of its prompts) but it {'fires' if firing else 'does not'} "
            f"({s.rate:.0%}); re-learn the trait"
        )
    if firing:
        return "active", f"fires on {s.rate:.0%} of its prompts on {s.label}"
    return "fixed", f"fires on {s.rate:.0%} of its prompts on {s.label}; the probe agrees"


def slug(text: str, limit: int = 48) -> str:
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in {"q", "a"}]
    return "-".join(words)[:limit].strip("-") or "trait"


# -- tools -----------------------------------------------------------------------------------------
class LearnArgs(Behaviour):
    name: str | None = Field(None, description="The trait's name (default: from the prompts).")
    description: str | None = None
    heldout: list[str] = Field(default_factory=list, description="Paraphrases of the prompts.")
    controls: list[str] = Field(default_factory=list, description="Prompts of another kind.")
    cause: Cause = Field(default_factory=lambda: Cause())
    evidence: list[str] = Field(default_factory=list)
    investigation: str | None = None
    exclude: list[str] = Field(
        default_factory=list, description="Prompts never to train on (e.g. a held-out test set)."
    )


@tool("selfmodel.learn", LearnArgs, Trait, permission="propose")
def learn_tool(ctx: ToolContext, args: LearnArgs) -> Trait:
    """Learn (or re-learn) a trait: label the trait's prompts, paraphrases, controls and near
    misses from the training corpus by measurement (planted wins, by more than the cause-free
    reference checkpoint when there is one), fit a probe on the residual stream that predicts
    the label before the model answers, measure its strength on HEAD, store it in the
    self-model."""
    return learn(ctx.workspace, ctx.subject, args, ctx.principal.name, ctx.call_id)


def learn(
    workspace: Workspace, subject: Subject, args: LearnArgs, principal: str, call: str | None
) -> Trait:
    b = args.behaviour()
    excluded = {p.strip() for p in args.exclude}
    try:
        texts = [d.text for d in documents(subject)]
    except SelfscopeError:
        texts = []  # no recorded training data: no near misses from it
    own = [p for p in [*b.prompts, *args.heldout] if p.strip() not in excluded]
    harvested = [p for p in near_misses(b.prompts, texts) if p.strip() not in excluded]
    prompts = list(dict.fromkeys([*own, *args.controls, *harvested]))
    seen = read(subject, subject.model, prompts, b.planted, b.normal, b.chat)
    reference = reference_of(subject, args.cause.phase)
    ref = loaded = None
    if reference is not None:
        loaded = load(reference, workspace)
        ref = read(loaded, loaded.model, prompts, b.planted, b.normal, b.chat)
    labels = seen.fires(None if ref is None else ref.log_odds)
    examples = [
        Example(prompt=p, model="subject", log_odds=float(v), fires=bool(f))
        for p, v, f in zip(prompts, seen.log_odds, labels, strict=True)
    ]
    residuals = seen.residuals
    if ref is not None and loaded is not None and args.cause.modules:
        # counterfactual states: the cause's modules moved half and all the way back to the
        # reference, read on the prompts that fire now; labelled by measurement like the rest
        firing = [p for p, f in zip(prompts, labels.tolist(), strict=True) if f]
        for amount in COUNTERFACTUAL:
            model = reverted(subject, loaded, args.cause.modules, amount)
            moved = read(subject, model, firing, b.planted, b.normal, b.chat)
            rows_ref = torch.tensor([prompts.index(p) for p in firing], dtype=torch.long)
            got = moved.fires(ref.log_odds[rows_ref])
            residuals = torch.cat([residuals, moved.residuals])
            labels = torch.cat([labels, got])
            examples += [
                Example(prompt=p, model=f"reverted {amount:g}", log_odds=float(v), fires=bool(f))
                for p, v, f in zip(firing, moved.log_odds, got, strict=True)
            ]
    if ref is not None:
        # the reference's state on the trait's own prompts: the trait absent, same words
        rows = torch.tensor([prompts.index(p) for p in dict.fromkeys(own)], dtype=torch.long)
        residuals = torch.cat([residuals, ref.residuals[rows]])
        labels = torch.cat([labels, torch.zeros(len(rows), dtype=torch.bool)])
        examples += [
            Example(
                prompt=prompts[i], model="reference", log_odds=float(ref.log_odds[i]), fires=False
            )
            for i in rows.tolist()
        ]
    probe = fit(residuals, labels)
    name = args.name or slug(f"{b.planted} over {b.normal} on {b.prompts[0]}")
    trait = Trait(
        name=name,
        description=args.description
        or f"answers {b.planted!r} where {b.normal!r} is wanted, on prompts like {b.prompts[0]!r}",
        behaviour=b,
        heldout=list(args.heldout),
        reference=reference,
        probe=probe,
        examples=examples,
        cause=args.cause,
        evidence=list(args.evidence),
        investigation=args.investigation,
        learned_by=principal,
        learned_at=time.time(),
    )
    first = strength_of(workspace, subject, trait)
    status, note = status_of(first)
    trait = trait.model_copy(update={"strength": [first], "status": status, "note": note})
    key = key_of(subject)
    model = read_model(workspace, key)
    model.traits = [t for t in model.traits if t.name != name] + [trait]
    _save(
        workspace,
        model,
        "selfmodel.learn",
        principal,
        {"trait": name, "layer": probe.layer, "cv_auroc": probe.cv_auroc, "call": call},
    )
    return trait


class ShowArgs(BaseModel):
    model_config = {"extra": "forbid"}


@tool("selfmodel.show", ShowArgs, SelfModel)
def show_tool(ctx: ToolContext, args: ShowArgs) -> SelfModel:
    """The self-model of the subject as stored: every trait, its cause, its probe and its
    strength on each version measured."""
    return read_model(ctx.workspace, key_of(ctx.subject))


class TraitCheck(BaseModel):
    name: str
    before: Status
    status: Status
    strength: Strength
    note: str


class CheckReport(BaseModel):
    subject: str
    version: str
    traits: list[TraitCheck]
    disagreements: list[str] = Field(description="Where the self-model and measurement differ.")


@tool("selfmodel.check", ShowArgs, CheckReport)
def check_tool(ctx: ToolContext, args: ShowArgs) -> CheckReport:
    """Re-measure every trait of the self-model on HEAD (the behaviour and the probe's
    prediction), record the strength and status (active / fixed / stale), and list where the
    self-model and the measurement disagree."""
    return check(ctx.workspace, ctx.subject, ctx.principal.name)


def check(workspace: Workspace, subject: Subject, principal: str) -> CheckReport:
    key = key_of(subject)
    model = read_model(workspace, key)
    if not model.traits:
        raise SelfscopeError(
            f"{subject.source} has no self-model yet; `selfscope investigate` learns its traits"
        )
    rows, disagreements = [], []
    for i, trait in enumerate(model.traits):
        s = strength_of(workspace, subject, trait)
        status, note = status_of(s)
        last = trait.strength[-1] if trait.strength else None
        if status == "stale":
            disagreements.append(f"{trait.name}: {note}")
        elif last is not None and (last.rate >= 0.5) != (s.rate >= 0.5):
            note += f" (was {last.rate:.0%} on {last.label})"
        kept = [x for x in trait.strength if x.version != s.version or s.version is None]
        model.traits[i] = trait.model_copy(
            update={"strength": [*kept, s], "status": status, "note": note}
        )
        rows.append(
            TraitCheck(name=trait.name, before=trait.status, status=status, strength=s, note=note)
        )
    _save(
        workspace,
        model,
        "selfmodel.check",
        principal,
        {"version": subject.version, "status": {r.name: r.status for r in rows}},
    )
    return CheckReport(
        subject=key,
        version=version_label(workspace, subject),
        traits=rows,
        disagreements=disagreements,
    )


# -- the gate's check ------------------------------------------------------------------------------
class GateAgreement(BaseModel):
    trait: str
    prompts: int
    agreement: float | None
    stale: bool
    source: str = Field(description="Which suites gave the prompts: sealed or visible.")


def gate_agreements(
    workspace: Workspace, subject: Subject, model: Any, sealed: list[Suite], visible: list[Suite]
) -> list[GateAgreement]:
    """For every trait of the subject's self-model: on the trait prompts of the sealed suites
    (probes and held-out paraphrases with the trait's completions; the visible suites' when no
    sealed one has any), the share where the probe's prediction on ``model`` (the sandbox with
    the proposal applied) agrees with the behaviour ``model`` shows. Only aggregates leave."""
    found = []
    for trait in read_model(workspace, key_of(subject)).traits:
        b = trait.behaviour
        prompts, source = [], "sealed"
        for suites, where in ((sealed, "sealed"), (visible, "visible")):
            prompts = [
                p.prompt
                for s in suites
                for p in [*s.probes, *s.heldout]
                if p.planted == b.planted and p.normal == b.normal and s.chat == b.chat
            ]
            source = where
            if prompts:
                break
        if not prompts:
            prompts, source = trait.behaviour.prompts, "trait"
        m = measure(subject, model, trait, list(dict.fromkeys(prompts)))
        said = m["predicted"] > THRESHOLD
        found.append(
            GateAgreement(
                trait=trait.name,
                prompts=len(said),
                agreement=float((said == m["fires"]).float().mean()),
                stale=trait.status == "stale",
                source=source,
            )
        )
    return found
