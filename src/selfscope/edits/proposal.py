"""Proposals: a concrete, stored weight change that has not been applied to anything.

A :class:`Proposal` is what every ``propose`` tool returns: the kind of edit, the behaviour it
targets, its parameters, the rationale and the evidence it rests on, and the exact change. The
change is a *delta* ``ΔW`` per parameter (dense float32 tensors, only the parameters that
change), saved once as a safetensors file named by the SHA-256 of its bytes
(``<workspace>/deltas/<sha256>.safetensors``), so a delta is content-addressed: the same change
proposed twice is stored once, and a file that no longer matches its name is refused. Where the
architecture cannot hold a change as weights (a constant added to a bias-free Llama's residual
stream), the proposal carries a *runtime intervention* — a vector added at a canonical site —
stored in the same file under ``runtime/<site>`` and applied by a hook in the sandbox.

A proposal never touches the subject: the tools compute the delta from read-only weights (or on
a private copy), and :mod:`selfscope.edits.sandbox` applies it only to a deep copy. The subject's
weights are fingerprinted (``base_sha256``, the SHA-256 of every parameter's bytes in name order)
when the proposal is made; validation refuses a subject whose fingerprint differs, because the
delta was computed against other weights. ``parents`` lists proposals the delta was computed on
top of (sequential edits): the sandbox applies the parents' deltas first, in order.

Stored as ``<workspace>/proposals/<id>.json`` (atomic write) and as a row of the store's
``proposals`` table.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope import atomic
from selfscope.behaviour import Behaviour, Evidence, fingerprint
from selfscope.errors import SelfscopeError
from selfscope.subject.deltas import RUNTIME as RUNTIME
from selfscope.subject.deltas import load_delta as load_delta
from selfscope.subject.deltas import save_delta
from selfscope.tools import ToolContext

Kind = Literal["rank_one", "revert_delta", "ablate", "steer", "unlearn", "reweight_experts"]


class ModuleChange(BaseModel):
    """One changed parameter: ‖ΔW‖_F, ‖W‖_F and their ratio (the relative change)."""

    parameter: str
    delta_norm: float
    weight_norm: float
    relative: float


class Proposal(BaseModel):
    id: str
    kind: Kind
    subject: str  # the source string the delta was computed on
    subject_path: str
    base_sha256: str  # fingerprint of the subject's weights (see module docstring)
    parents: list[str] = Field(default_factory=list)  # proposals applied before this one
    behaviour: Behaviour
    parameters: dict[str, Any]
    modules: list[str]  # parameters the delta changes (runtime interventions: their sites)
    changes: list[ModuleChange]
    runtime: list[str] = Field(default_factory=list)  # sites that get a runtime vector
    runtime_norms: dict[str, float] = Field(default_factory=dict)  # ‖v‖ of each runtime vector
    delta_sha256: str
    delta_norm: float  # ‖ΔW‖_F / ‖W‖_F over all changed parameters together
    rationale: str
    evidence: list[Evidence] = Field(default_factory=list)
    call_id: str = Field(description="The recorded tool call that made this proposal.")
    seconds: float
    created_at: float


def _proposals_dir(workspace: Any) -> Path:
    return Path(workspace.root) / "proposals"


def changes_of(model: nn.Module, delta: dict[str, Tensor]) -> tuple[list[ModuleChange], float]:
    """Per-parameter relative Frobenius change, and the change of all of them together."""
    params = dict(model.named_parameters())
    out, total_delta, total_weight = [], 0.0, 0.0
    for name, d in sorted(delta.items()):
        if name.startswith(RUNTIME):
            continue
        w = params[name].detach().float()
        dn, wn = float(d.float().norm()), float(w.norm())
        total_delta, total_weight = total_delta + dn**2, total_weight + wn**2
        out.append(ModuleChange(parameter=name, delta_norm=dn, weight_norm=wn, relative=dn / wn))
    return out, (total_delta**0.5) / (total_weight**0.5) if total_weight else 0.0


def check_delta(model: nn.Module, delta: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, d in delta.items():
        if name.startswith(RUNTIME):
            continue
        if name not in params:
            raise SelfscopeError(f"the delta names {name}, which the model does not have")
        if tuple(params[name].shape) != tuple(d.shape):
            raise SelfscopeError(
                f"the delta of {name} is {list(d.shape)}, the weight {list(params[name].shape)}"
            )
        if not torch.isfinite(d).all():
            raise SelfscopeError(f"the delta of {name} is not finite; the edit diverged")


def cited_evidence(workspace: Any, call_ids: list[str], subject: str) -> list[Evidence]:
    """Evidence for recorded calls the proposer cites: each must exist in this workspace's
    store, have succeeded, and have been made on the same model."""
    out = []
    for call_id in call_ids:
        row = workspace.store.tool_call(call_id)
        if row is None:
            raise SelfscopeError(
                f"evidence cites call {call_id!r}, which is not recorded in {workspace.root}; "
                "cite the id a tool call returned"
            )
        if row["status"] != "ok":
            raise SelfscopeError(
                f"evidence cites call {call_id} ({row['tool']}), which ended {row['status']!r}"
            )
        if row["subject"] != subject:
            raise SelfscopeError(
                f"evidence cites call {call_id} ({row['tool']}) made on {row['subject']}, not "
                f"on {subject}"
            )
        out.append(
            Evidence(
                tool=row["tool"],
                call_id=call_id,
                summary=f"{row['tool']} call cited by the proposer",
                args=json.loads(row["args"]),
            )
        )
    return out


def make(
    ctx: ToolContext,
    *,
    cited: list[str],
    kind: Kind,
    behaviour: Behaviour,
    parameters: dict[str, Any],
    delta: dict[str, Tensor],
    rationale: str,
    evidence: list[Evidence],
    started: float,
    parents: list[str] | None = None,
    base_sha256: str | None = None,
) -> Proposal:
    """Store ``delta`` and a new proposal for it; the subject is only read.

    ``evidence`` is what the proposing call measured itself (an item without a call id gets
    this call's); ``cited`` are ids of earlier recorded calls the proposal rests on, checked to
    exist (:func:`cited_evidence`)."""
    workspace, subject = ctx.workspace, ctx.subject
    if ctx.call_id is None:
        raise SelfscopeError("a proposal is made inside a recorded tool call (tools.call)")
    evidence = [
        *cited_evidence(workspace, cited, subject.source),
        *(e if e.call_id else e.model_copy(update={"call_id": ctx.call_id}) for e in evidence),
    ]
    check_delta(subject.model, delta)
    sha = save_delta(workspace, delta)
    base = base_sha256 or fingerprint(subject.model)
    changes, norm = changes_of(subject.model, delta)
    runtime = sorted(k[len(RUNTIME) :] for k in delta if k.startswith(RUNTIME))
    key = json.dumps(
        [kind, base, parents or [], sha, behaviour.model_dump(), parameters], sort_keys=True
    )
    proposal = Proposal(
        id=hashlib.sha256(key.encode()).hexdigest()[:16],
        kind=kind,
        subject=subject.source,
        subject_path=str(subject.path),
        base_sha256=base,
        parents=list(parents or []),
        behaviour=behaviour,
        parameters=parameters,
        modules=sorted({c.parameter.rpartition(".")[0] for c in changes} | set(runtime)),
        changes=changes,
        runtime=runtime,
        runtime_norms={
            k[len(RUNTIME) :]: float(v.float().norm())
            for k, v in delta.items()
            if k.startswith(RUNTIME)
        },
        delta_sha256=sha,
        delta_norm=norm,
        rationale=rationale,
        evidence=evidence,
        call_id=ctx.call_id,
        seconds=time.perf_counter() - started,
        created_at=time.time(),
    )
    atomic.write_text(
        _proposals_dir(workspace) / f"{proposal.id}.json", proposal.model_dump_json(indent=2)
    )
    workspace.store.record_proposal(
        proposal.id,
        proposal.kind,
        proposal.subject,
        sha,
        norm,
        proposal.model_dump_json(),
        proposer=ctx.principal.name,
    )
    return proposal


def load(workspace: Any, proposal_id: str) -> Proposal:
    """The stored proposal ``proposal_id`` (a unique prefix of at least 6 characters works)."""
    folder = _proposals_dir(workspace)
    if len(proposal_id) < 6:
        raise SelfscopeError("give at least 6 characters of the proposal id")
    found = sorted(folder.glob(f"{proposal_id}*.json")) if folder.exists() else []
    if not found:
        raise SelfscopeError(
            f"no proposal {proposal_id!r} in {folder}; `selfscope proposals` lists them"
        )
    if len(found) > 1:
        raise SelfscopeError(f"{proposal_id!r} matches {len(found)} proposals; give more of it")
    return Proposal.model_validate_json(found[0].read_text())


def listed(workspace: Any) -> list[Proposal]:
    folder = _proposals_dir(workspace)
    if not folder.exists():
        return []
    rows = [Proposal.model_validate_json(p.read_text()) for p in folder.glob("*.json")]
    return sorted(rows, key=lambda p: p.created_at)
