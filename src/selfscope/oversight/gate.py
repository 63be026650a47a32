"""The gate, enforced in one place: ``proposed → validated → approved → applied``.

A proposal leaves that path as ``rejected`` (a failed check, or a reviewer's no) or ``stale``
(HEAD moved since it was computed or validated). Each function here checks the caller's
permission itself (defence in depth: the tools that wrap them check it too), refuses with one
line that names the check, and changes state only through the store, in one transaction with
its ledger entry.

* :func:`validate` (``propose``): the proposal's delta on a sandbox copy of HEAD, measured on the
  visible suite (the proposal's own prompts and any suites given), every sealed suite the policy
  names and every protected suite, then the policy's checks; and the self-model's check: on the
  trait prompts of the sealed suites, each trait probe's prediction must agree with the
  behaviour the change leaves (a change that blinds the self-monitor cannot pass). Sealed
  suites come back as aggregate numbers only: no prompt of theirs leaves this module.
* :func:`review` (``govern``): approve or reject a validated proposal; never by its proposer,
  never by ``investigator`` or ``agent``, only by the policy's approvers when it names any.
* :func:`apply` (``govern``): an approved proposal, validated on the current HEAD, whose delta
  file still has the bytes that were validated, becomes a new version; HEAD moves last.
* :func:`rollback` (``govern``): HEAD back to an earlier version.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from selfscope import tools
from selfscope.behaviour import Probe, Suite, fingerprint, read_suite
from selfscope.edits import proposal as proposals
from selfscope.edits.proposal import Proposal
from selfscope.edits.sandbox import SuiteReport, add_delta, sandbox, suite_report
from selfscope.edits.validate import ValidateArgs
from selfscope.errors import SelfscopeError
from selfscope.oversight import policy as policies
from selfscope.oversight.principals import NEVER_GOVERN
from selfscope.selfmodel.traits import gate_agreements
from selfscope.subject import Subject, load
from selfscope.subject import versions as versioning
from selfscope.subject.deltas import load_delta
from selfscope.subject.load import version_key
from selfscope.tools import PermissionDenied, Principal, ToolContext
from selfscope.workspace import Workspace

Status = Literal["proposed", "validated", "approved", "applied", "rejected", "stale"]


class Check(BaseModel):
    """One check of the gate: what was measured, the limit, and whether it held."""

    name: str
    passed: bool
    value: float | None = None
    limit: float | None = None
    detail: str = ""


class SealedResult(BaseModel):
    """What a proposer may learn of a sealed suite: its name, size and aggregates only."""

    name: str
    probes: int
    efficacy: float | None
    generalisation: float | None
    specificity: float | None
    perplexity_change: float | None


class GateReport(BaseModel):
    proposal: str
    version: str = Field(description="Id of the HEAD version the proposal was validated on.")
    version_label: str
    delta_sha256: str
    passed: bool
    checks: list[Check]
    visible: list[SuiteReport]
    sealed: list[SealedResult]
    protected: list[SealedResult]
    seconds: float

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _need(principal: Principal, permission: Literal["propose", "govern"], what: str) -> None:
    if not principal.holds(permission) or (
        permission == "govern" and principal.name in NEVER_GOVERN
    ):
        raise PermissionDenied(
            f"{principal.name} may not {what}: it needs the '{permission}' permission and holds "
            f"{', '.join(sorted(principal.permissions)) or 'none'}"
        )


def _proposal(workspace: Workspace, proposal_id: str) -> tuple[Proposal, dict[str, Any]]:
    proposal = proposals.load(workspace, proposal_id)
    row = workspace.store.proposal_row(proposal.id)
    if row is None:
        raise SelfscopeError(f"proposal {proposal.id} is not in the store of {workspace.root}")
    return proposal, row


def head_subject(workspace: Workspace, proposal: Proposal, principal: str) -> tuple[Subject, str]:
    """The proposal's subject loaded at its HEAD (v0 registered on first use), and its key."""
    base, _ = versioning.split_ref(proposal.subject)
    subject = load(base, workspace)
    key = versioning.subject_key(subject.root or subject.path)
    if subject.version is None:
        subject.version = versioning.ensure_root(workspace, key, base, subject.model, principal)
    return subject, key


def _label(workspace: Workspace, version_id: str) -> str:
    row = workspace.store.version_row(version_id)
    return versioning.label(row) if row else version_id[:12]


def _stale(workspace: Workspace, proposal: Proposal, principal: str, why: str) -> SelfscopeError:
    workspace.store.set_status(proposal.id, "stale", principal, {"why": why})
    return SelfscopeError(
        f"proposal {proposal.id} is stale: {why}; propose again on HEAD "
        "(or `selfscope proposals rebase ID`: its delta on HEAD, to validate again)"
    )


def policy_checks(subject: Subject, proposal: Proposal, policy: policies.Policy) -> list[Check]:
    out = []
    if proposal.parents:
        out.append(
            Check(
                name="one-delta",
                passed=False,
                detail=f"it builds on unapplied proposals {', '.join(proposal.parents)}: apply "
                "those first, then propose again on HEAD",
            )
        )
    if proposal.runtime:
        out.append(
            Check(
                name="weights-only",
                passed=False,
                detail=f"a runtime intervention at {', '.join(proposal.runtime)} cannot become a "
                "version (it is a hook, not weights)",
            )
        )
    outside = [c.parameter for c in proposal.changes if not policy.editable_parameter(c.parameter)]
    out.append(
        Check(
            name="editable",
            passed=not outside,
            detail=(
                f"{outside[0]} is outside the editable modules {policy.editable}"
                + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                if outside
                else f"every changed parameter matches {policy.editable}"
            ),
        )
    )
    worst = max(proposal.changes, key=lambda c: c.relative, default=None)
    if worst is not None:
        out.append(
            Check(
                name="max_change.per_module",
                passed=worst.relative <= policy.max_change.per_module,
                value=worst.relative,
                limit=policy.max_change.per_module,
                detail=f"largest relative change: {worst.parameter}",
            )
        )
    total_w = math.sqrt(
        sum(float(p.detach().float().norm()) ** 2 for p in subject.model.parameters())
    )
    total_d = math.sqrt(sum(c.delta_norm**2 for c in proposal.changes))
    total = total_d / total_w if total_w else 0.0
    out.append(
        Check(
            name="max_change.total",
            passed=total <= policy.max_change.total,
            value=total,
            limit=policy.max_change.total,
            detail="‖ΔW‖ / ‖W‖ over every parameter of the model",
        )
    )
    return out


def _aggregate(report: SuiteReport, n: int) -> SealedResult:
    return SealedResult(
        name=report.name,
        probes=n,
        efficacy=report.efficacy,
        generalisation=report.generalisation,
        specificity=report.specificity,
        perplexity_change=report.perplexity_change,
    )


def _moved(report: SuiteReport) -> float:
    """How far a protected suite moved: the largest change of a behaviour rate, or share of
    answers whose top-1 changed."""
    moves = [
        abs(m.rate_after - m.rate_before) for m in (report.probes, report.heldout) if m is not None
    ]
    moves += [1 - m.unchanged for m in (report.neighbours, report.facts) if m is not None]
    return max(moves, default=0.0)


def _size(suite: Suite) -> int:
    return len(suite.probes) + len(suite.heldout) + len(suite.neighbours) + len(suite.facts)


def _protected_suites(
    workspace: Workspace, key: str, policy: policies.Policy
) -> list[tuple[Suite, float]]:
    sealed = {row["name"]: row for row in workspace.store.sealed_suites(key)}
    out = []
    for item in policy.protected:
        if item.suite in sealed:
            suite = Suite.model_validate_json(sealed[item.suite]["suite"])
        else:
            suite = read_suite(item.suite)
        out.append((suite, item.margin))
    return out


def validate(
    workspace: Workspace,
    proposal_id: str,
    principal: Principal,
    suites: list[Suite] | None = None,
) -> GateReport:
    """Validate a proposal on HEAD against visible + sealed + protected suites and the policy;
    the proposal becomes ``validated`` (every check held) or ``rejected`` (the report names
    each failed check and by how much)."""
    _need(principal, "propose", "validate a proposal")
    started = time.perf_counter()
    proposal, row = _proposal(workspace, proposal_id)
    if row["status"] not in ("proposed", "validated", "stale"):
        raise SelfscopeError(
            f"proposal {proposal.id} is {row['status']}; only a proposed (or stale, re-proposed) "
            "proposal can be validated"
        )
    subject, key = head_subject(workspace, proposal, principal.name)
    head = workspace.store.version_row(str(subject.version))
    assert head is not None
    if proposal.base_sha256 != head["tensors_sha256"]:
        raise _stale(
            workspace,
            proposal,
            principal.name,
            f"it was computed on other weights than HEAD ({versioning.label(head)})",
        )
    policy = policies.current(workspace, key)
    own = [
        Probe(prompt=p, planted=proposal.behaviour.planted, normal=proposal.behaviour.normal)
        for p in proposal.behaviour.prompts
    ]
    visible = [Suite(name="visible", chat=proposal.behaviour.chat), *(suites or [])]
    sealed_rows = [
        r
        for r in workspace.store.sealed_suites(key)
        if policy.sealed == "all" or r["name"] in policy.sealed
    ]
    sealed = [Suite.model_validate_json(r["suite"]) for r in sealed_rows]
    protected = _protected_suites(workspace, key, policy)
    own_suite = Suite(name="own", chat=proposal.behaviour.chat, probes=own)
    with sandbox(subject, workspace, proposal) as model:
        seen = [suite_report(subject, model, s, own) for s in visible]
        hidden = [suite_report(subject, model, s, []) for s in sealed]
        guarded = [suite_report(subject, model, s, []) for s, _ in protected]
        agreements = gate_agreements(workspace, subject, model, sealed, [own_suite, *visible])
    checks = policy_checks(subject, proposal, policy)
    t = policy.thresholds
    efficacy = seen[0].efficacy
    checks.append(
        Check(
            name="efficacy",
            passed=efficacy is not None and efficacy >= t.efficacy,
            value=efficacy,
            limit=t.efficacy,
            detail="visible probes where the normal answer now wins",
        )
    )
    every = [*hidden, *seen]
    checks.append(
        _worst(
            "generalisation",
            [r.generalisation for r in every],
            t.generalisation,
            "held-out paraphrases fixed (worst suite)",
            "held-out paraphrases",
        )
    )
    checks.append(
        _worst(
            "specificity",
            [r.specificity for r in every],
            t.specificity,
            "neighbours and facts keeping their top-1 (worst suite)",
            "neighbours or facts",
        )
    )
    fluency = [r.perplexity_change for r in every if r.perplexity_change is not None]
    checks.append(
        Check(
            name="perplexity",
            passed=not fluency or max(fluency) <= t.perplexity,
            value=max(fluency) if fluency else None,
            limit=t.perplexity,
            detail="largest relative perplexity increase on held-out documents"
            if fluency
            else "not measured (no held-out documents in any suite)",
        )
    )
    for (suite, margin), measured in zip(protected, guarded, strict=True):
        moved = _moved(measured)
        checks.append(
            Check(
                name=f"protected:{suite.name}",
                passed=moved <= margin,
                value=moved,
                limit=margin,
                detail="largest change of its rates or answers",
            )
        )
    for suite, measured in zip(sealed, hidden, strict=True):
        if measured.efficacy is not None:  # a sealed suite with probes of its own: fixed there
            checks.append(
                Check(
                    name=f"sealed:{suite.name}",
                    passed=measured.efficacy >= t.efficacy,
                    value=measured.efficacy,
                    limit=t.efficacy,
                    detail="its probes where the normal answer now wins",
                )
            )
    for a in agreements:
        checks.append(
            Check(
                name=f"selfmodel:{a.trait}",
                passed=not a.stale and a.agreement is not None and a.agreement >= t.selfmodel,
                value=a.agreement,
                limit=t.selfmodel,
                detail="the self-model is stale: re-learn the trait before changing the model"
                if a.stale
                else f"the trait probe's prediction agrees with the behaviour left, on the "
                f"{a.prompts} trait prompts of the {a.source} suites",
            )
        )
    report = GateReport(
        proposal=proposal.id,
        version=str(head["id"]),
        version_label=versioning.label(head),
        delta_sha256=proposal.delta_sha256,
        passed=all(c.passed for c in checks),
        checks=checks,
        visible=seen,
        sealed=[_aggregate(r, _size(s)) for s, r in zip(sealed, hidden, strict=True)],
        protected=[_aggregate(r, _size(s)) for (s, _), r in zip(protected, guarded, strict=True)],
        seconds=time.perf_counter() - started,
    )
    with workspace.store.transaction():
        workspace.store.record_validation(
            proposal.id,
            ",".join(s.name for s in [*visible, *sealed]),
            report.model_dump_json(),
            version=report.version,
            passed=report.passed,
            principal=principal.name,
        )
        failed = [f"{c.name} ({_how_much(c)})" for c in report.failures()]
        workspace.store.set_status(
            proposal.id,
            "validated" if report.passed else "rejected",
            principal.name,
            {"version": report.version, "failed": failed},
        )
    return report


def _worst(name: str, values: list[float | None], limit: float, what: str, parts: str) -> Check:
    """A check on the worst suite's share (higher is better); not measured = failed."""
    found = [v for v in values if v is not None]
    return Check(
        name=name,
        passed=bool(found) and min(found) >= limit,
        value=min(found) if found else None,
        limit=limit,
        detail=what
        if found
        else f"no {parts} to measure it on: seal a suite (`selfscope suite seal`)",
    )


def _how_much(check: Check) -> str:
    if check.value is None:
        return check.detail
    return f"{check.value:.3g} vs limit {check.limit:.3g}" if check.limit is not None else ""


LISTED = ("id", "kind", "subject", "status", "proposer", "delta_norm")


def proposal_listing(workspace: Workspace) -> list[dict[str, Any]]:
    """Every proposal, oldest first: id, kind, subject, status, proposer, relative change (what
    `selfscope proposals` and `GET /api/proposals` show)."""
    return [{k: r[k] for k in LISTED} for r in workspace.store.proposal_rows()]


def proposal_record(workspace: Workspace, proposal_id: str) -> dict[str, Any]:
    """One proposal with its status, proposer, validations and reviews (`proposals show`,
    `GET /api/proposals/{id}`)."""
    import json

    from selfscope.edits import proposal as stored

    found = stored.load(workspace, proposal_id)
    row = workspace.store.proposal_row(found.id) or {}
    return {
        "proposal": found.model_dump(mode="json"),
        "status": row.get("status"),
        "proposer": row.get("proposer"),
        "validations": [json.loads(v["report"]) for v in workspace.store.validations(found.id)],
        "reviews": workspace.store.reviews(found.id),
    }


def last_validation(workspace: Workspace, proposal_id: str) -> GateReport | None:
    rows = [r for r in workspace.store.validations(proposal_id) if r.get("version")]
    return GateReport.model_validate_json(rows[-1]["report"]) if rows else None


def key_of(workspace: Workspace, source: str) -> str:
    """The version key of ``source`` (its root weights' folder), found without loading."""
    return version_key(source, workspace)


def review(
    workspace: Workspace, proposal_id: str, principal: Principal, approve: bool, note: str = ""
) -> Status:
    """Approve or reject a validated proposal; the proposal's new status."""
    _need(principal, "govern", "review proposals")
    proposal, row = _proposal(workspace, proposal_id)
    if row["proposer"] == principal.name:
        raise PermissionDenied(
            f"{principal.name} proposed {proposal.id} and may not review it (no self-approval)"
        )
    if row["status"] not in ("validated", "approved"):
        raise SelfscopeError(
            f"proposal {proposal.id} is {row['status']}; only a validated proposal can be "
            "reviewed (`selfscope proposals validate` first)"
        )
    validated = last_validation(workspace, proposal.id)
    key = key_of(workspace, proposal.subject)
    if validated is None or validated.version != workspace.store.head(key):
        raise _stale(workspace, proposal, principal.name, "HEAD moved since it was validated")
    policy = policies.current(workspace, key)
    if approve and policy.approvers and principal.name not in policy.approvers:
        raise PermissionDenied(
            f"{principal.name} is not among the policy's approvers ({', '.join(policy.approvers)})"
        )
    with workspace.store.transaction():
        workspace.store.record_review(
            proposal.id, principal.name, "approve" if approve else "reject", note
        )
        if not approve:
            workspace.store.set_status(proposal.id, "rejected", principal.name, {"note": note})
            return "rejected"
        approvers = {
            r["principal"]
            for r in workspace.store.reviews(proposal.id)
            if r["decision"] == "approve"
        }
        if len(approvers) >= policy.approvals:
            workspace.store.set_status(
                proposal.id, "approved", principal.name, {"approvers": sorted(approvers)}
            )
            return "approved"
    return "validated"


class Applied(BaseModel):
    proposal: str
    version: str
    version_label: str
    parent: str
    tensors_sha256: str
    cache: str
    seconds: float


def apply(workspace: Workspace, proposal_id: str, principal: Principal) -> Applied:
    """Apply an approved proposal validated on the current HEAD: a new version, HEAD moved."""
    _need(principal, "govern", "apply proposals")
    started = time.perf_counter()
    proposal, row = _proposal(workspace, proposal_id)
    if row["status"] != "approved":
        why = {
            "proposed": "it was never validated",
            "validated": "it is not approved yet",
            "rejected": "it was rejected",
            "applied": "it is applied already",
            "stale": "it is stale (HEAD moved)",
        }.get(row["status"], row["status"])
        raise SelfscopeError(f"proposal {proposal.id} cannot be applied: {why}")
    validated = last_validation(workspace, proposal.id)
    subject, key = head_subject(workspace, proposal, principal.name)
    head = workspace.store.version_row(str(subject.version))
    assert head is not None
    if validated is None or validated.version != head["id"]:
        raise _stale(
            workspace,
            proposal,
            principal.name,
            f"it was validated on {_label(workspace, validated.version) if validated else '-'}, "
            f"HEAD is {versioning.label(head)}",
        )
    if (
        validated.delta_sha256 != row["delta_sha256"]
        or proposal.delta_sha256 != row["delta_sha256"]
    ):
        raise SelfscopeError(
            f"proposal {proposal.id}'s delta is not the one validated (its record was altered); "
            "refusing to apply"
        )
    delta = load_delta(workspace, str(row["delta_sha256"]))  # refuses a changed file
    add_delta(subject.model, delta)
    tensors = fingerprint(subject.model)
    number = max(r["number"] for r in workspace.store.versions(key)) + 1
    new = {
        "id": versioning.version_id(str(head["id"]), str(row["delta_sha256"]), tensors),
        "subject": key,
        "source": head["source"],
        "number": number,
        "parent": head["id"],
        "proposal_id": proposal.id,
        "delta_sha256": row["delta_sha256"],
        "tensors_sha256": tensors,
        "files_sha256": "",
        "principal": principal.name,
        "created_at": time.time(),
    }
    root = subject.root or subject.path
    versioning.drop_cache(workspace, new)  # never trust a folder already there: write our own
    cache = versioning.write_cache(workspace, root, new, subject.model)
    new["files_sha256"] = versioning.hash_and_stamp(workspace, cache, str(new["id"]), None)
    with workspace.store.transaction():  # BEGIN IMMEDIATE: one writer at a time
        won = workspace.store.head(key) == head["id"]
        if won:
            workspace.store.add_version(new, principal.name, move_head=True)
            workspace.store.set_status(
                proposal.id, "applied", principal.name, {"version": new["id"], "tensors": tensors}
            )
    if not won:  # another apply moved HEAD between our check and our write
        raise _stale(workspace, proposal, principal.name, "HEAD moved while it was being applied")
    return Applied(
        proposal=proposal.id,
        version=str(new["id"]),
        version_label=f"v{number}",
        parent=str(head["id"]),
        tensors_sha256=tensors,
        cache=str(cache),
        seconds=time.perf_counter() - started,
    )


def rollback(
    workspace: Workspace, source: str, to: str | None, principal: Principal
) -> dict[str, Any]:
    """Move HEAD of ``source`` to version ``to`` (default: HEAD's parent)."""
    _need(principal, "govern", "roll back")
    key = key_of(workspace, source)
    if not workspace.store.versions(key):
        raise SelfscopeError(f"{source} has no versions; nothing to roll back")
    head = workspace.store.version_row(str(workspace.store.head(key)))
    assert head is not None
    if to is None:
        if not head["parent"]:
            raise SelfscopeError(f"HEAD of {source} is v0, the root; there is nothing before it")
        target = workspace.store.version_row(str(head["parent"]))
    else:
        target = versioning.find(workspace, key, to)
    assert target is not None
    workspace.store.move_head(key, str(target["id"]), principal.name, "rollback")
    return {"from": versioning.label(head), "to": versioning.label(target), "id": target["id"]}


# the gate's tools (the doors call these; each also checks the principal itself) -------------
class GateValidateArgs(ValidateArgs):
    """The proposal and any extra visible suites (sealed and protected ones come from the
    store and the policy, never from the caller)."""


@tools.tool("gate.validate", GateValidateArgs, GateReport, permission="propose")
def validate_tool(ctx: ToolContext, args: GateValidateArgs) -> GateReport:
    """Validate a proposal through the gate: its delta on a sandbox copy of HEAD, measured on
    the visible suite (its own prompts and any given), the subject's sealed suites (only
    aggregate numbers come back) and the policy's protected suites, then the policy's checks
    (editable modules, change budget, thresholds). Passing makes it 'validated', failing
    'rejected' with each failed check named and by how much."""
    extra = [*args.suites, *(read_suite(f) for f in args.suite_files)]
    return validate(ctx.workspace, args.proposal, ctx.principal, extra)


class ReviewArgs(BaseModel):
    proposal: str = Field(min_length=6, description="The proposal id (or a unique prefix).")
    approve: bool = Field(description="True to approve, False to reject.")
    note: str = Field(default="", description="Why, in a sentence (kept in the ledger).")


class Reviewed(BaseModel):
    proposal: str
    reviewer: str
    status: str = Field(description="The proposal's status after this review.")


@tools.tool("gate.review", ReviewArgs, Reviewed, permission="govern")
def review_tool(ctx: ToolContext, args: ReviewArgs) -> Reviewed:
    """Approve or reject a validated proposal (govern; never its proposer; never the
    investigator or an agent)."""
    proposal = proposals.load(ctx.workspace, args.proposal)
    status = review(ctx.workspace, proposal.id, ctx.principal, args.approve, args.note)
    return Reviewed(proposal=proposal.id, reviewer=ctx.principal.name, status=status)


class ApplyArgs(BaseModel):
    proposal: str = Field(min_length=6, description="The proposal id (or a unique prefix).")


@tools.tool("gate.apply", ApplyArgs, Applied, permission="govern")
def apply_tool(ctx: ToolContext, args: ApplyArgs) -> Applied:
    """Apply an approved proposal that was validated on the current HEAD: a new immutable
    version (parent + the delta + the tensors' SHA-256), then HEAD moves to it."""
    return apply(ctx.workspace, args.proposal, ctx.principal)


class RollbackArgs(BaseModel):
    model: str = Field(min_length=1, description="The subject, as any source `load` accepts.")
    to: str | None = Field(
        default=None, description="A version (v2, or an id prefix); default: HEAD's parent."
    )


class RolledBack(BaseModel):
    model: str
    moved_from: str
    moved_to: str
    version: str


@tools.tool("gate.rollback", RollbackArgs, RolledBack, permission="govern")
def rollback_tool(ctx: ToolContext, args: RollbackArgs) -> RolledBack:
    """Move a subject's HEAD back to an earlier version (nothing is deleted)."""
    moved = rollback(ctx.workspace, args.model, args.to, ctx.principal)
    return RolledBack(
        model=args.model, moved_from=moved["from"], moved_to=moved["to"], version=moved["id"]
    )


class RebaseArgs(BaseModel):
    proposal: str = Field(min_length=6, description="A stale proposal's id (or a prefix).")


@tools.tool("gate.rebase", RebaseArgs, Proposal, permission="propose")
def rebase_tool(ctx: ToolContext, args: RebaseArgs) -> Proposal:
    """Carry a stale proposal's delta onto the current HEAD as a new proposal (status
    'proposed'; validate it again: the same change on other weights may no longer fix, or may
    break, what it did before)."""
    return rebase(ctx, args.proposal)


def rebase(ctx: ToolContext, proposal_id: str) -> Proposal:
    from dataclasses import replace

    started = time.perf_counter()
    workspace = ctx.workspace
    old, row = _proposal(workspace, proposal_id)
    subject, _ = head_subject(workspace, old, ctx.principal.name)
    head = workspace.store.version_row(str(subject.version))
    assert head is not None
    if old.base_sha256 == head["tensors_sha256"]:
        raise SelfscopeError(
            f"proposal {old.id} was computed on HEAD ({versioning.label(head)}) already; "
            "nothing to rebase"
        )
    if row["status"] in ("applied", "rejected"):
        raise SelfscopeError(f"proposal {old.id} is {row['status']}; it cannot be rebased")
    if old.parents or old.runtime:
        raise SelfscopeError(
            f"proposal {old.id} builds on other proposals or holds a runtime intervention; "
            "propose again on HEAD"
        )
    delta = load_delta(workspace, old.delta_sha256)
    return proposals.make(
        replace(ctx, _subject=subject),
        cited=[],
        kind=old.kind,
        behaviour=old.behaviour,
        parameters={**old.parameters, "rebased_from": old.id},
        delta=delta,
        rationale=f"{old.rationale} (rebased from {old.id} onto {versioning.label(head)})",
        evidence=old.evidence,
        started=started,
    )
