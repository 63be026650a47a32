"""``edits.revert_delta``: undo (all or part of) a training phase's change in a few modules.

The debugger's ``localize.weight_deltas`` finds the modules whose fine-tuning change carries a
behaviour (reverting them together removes it). This edit turns that into a proposal:
``ΔW = f · (W_parent − W)`` in each of those modules, where ``f`` is the fraction reverted (1 =
back to the parent there). With ``rank`` the change is first cut to its top ``rank`` singular
directions (``ΔW_r = U_r S_r V_rᵀ`` of each matrix's training change; vectors such as norm
weights are reverted whole), which keeps more of the fine-tune. ``fraction: "auto"`` takes the
smallest of 0.25, 0.5, 0.75, 1 that fixes every prompt (measured on the prompts only, the
proposer's own evidence), else 1.

Without ``modules`` the tool runs ``localize.weight_deltas`` itself and reverts its ``specific``
set when it has one (the set that keeps the proposer's ``control_prompts``), else its
``module_set``; the call and its numbers become the proposal's evidence.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.behaviour import Evidence
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import with_weights
from selfscope.edits.common import (
    ProposalResult,
    ProposeArgs,
    base_sha,
    begin,
    working_model,
)
from selfscope.errors import SelfscopeError
from selfscope.localize.deltas import DeltaArgs, patch_deltas
from selfscope.localize.metric import MetricBatch
from selfscope.subject.checkpoints import load_parent
from selfscope.subject.lineage import parent_source
from selfscope.tools import ToolContext

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


class RevertArgs(ProposeArgs):
    modules: list[str] | None = Field(
        None, description="Modules to revert (default: the debugger's set, weight_deltas)."
    )
    against: str | None = Field(None, description="The parent source (default: the subject's).")
    fraction: float | Literal["auto"] = Field(
        1.0, description="Share of the change reverted (0..1), or 'auto'."
    )
    rank: int | None = Field(None, ge=1, description="Revert only the top singular directions.")
    control_prompts: list[str] = Field(
        default_factory=list, description="The proposer's own prompts whose answers must stay."
    )


def _params_of(model: nn.Module, modules: list[str]) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    out = []
    for m in modules:
        mine = [n for n in names if n.rpartition(".")[0] == m or n.startswith(m + ".")]
        if not mine:
            raise SelfscopeError(
                f"no module {m!r} in the model; e.g. {names[0].rpartition('.')[0]}"
            )
        out.extend(mine)
    return out


def _top(delta: Tensor, rank: int | None) -> Tensor:
    if rank is None or delta.dim() != 2 or rank >= min(delta.shape):
        return delta
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    out: Tensor = ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(delta.dtype)
    return out


@tools.tool("edits.revert_delta", RevertArgs, ProposalResult, permission="propose")
def propose_revert(ctx: ToolContext, args: RevertArgs) -> ProposalResult:
    """Propose reverting (fully, partly, or along the top singular directions) the training
    change of the modules that carry a behaviour — by default the set localize.weight_deltas
    finds. Stores the proposal (never touches the subject) and returns it."""
    subject = ctx.subject
    started = time.perf_counter()
    workspace = ctx.workspace
    parents = begin(ctx, args)
    against = args.against or parent_source(subject)
    if args.fraction != "auto" and not 0 < args.fraction <= 1:
        raise SelfscopeError(f"fraction must be in (0, 1] or 'auto', not {args.fraction}")
    parent = load_parent(subject, workspace, against=against)[1].model
    evidence: list[Evidence] = []
    modules = args.modules
    if modules is None:
        found = patch_deltas(
            subject,
            subject.model,
            parent,
            against,
            DeltaArgs.model_validate(
                {
                    "prompts": args.prompts,
                    "planted": args.planted,
                    "normal": args.normal,
                    "chat": args.chat,
                    "control_prompts": args.control_prompts,
                    "directions": "never",
                }
            ),
            {},
            ctx.progress,
        )
        modules = found.specific.modules if found.specific else found.module_set
        evidence.append(
            Evidence(
                tool="localize.weight_deltas",
                summary=f"reverting {len(found.module_set)} modules' changes removes "
                f"{found.set_share} of the phase's log-odds change"
                + (f"; the control-keeping subset has {len(modules)}" if found.specific else ""),
                args={"against": against, "control_prompts": args.control_prompts},
                numbers={
                    "module_set": found.module_set,
                    "set_share": found.set_share,
                    "specific": found.specific.modules if found.specific else None,
                },
            )
        )
    if not modules:
        raise SelfscopeError("no module to revert: the debugger found no set; give `modules`")
    theirs = dict(parent.named_parameters())
    with working_model(subject, workspace, parents) as model:
        mine = dict(model.named_parameters())
        names = _params_of(model, modules)
        full = {n: _top((theirs[n].detach() - mine[n].detach()).float(), args.rank) for n in names}
        batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
        fractions = FRACTIONS if args.fraction == "auto" else (float(args.fraction),)
        tried = {}
        chosen = fractions[-1]
        for f in fractions:
            swap = {n: mine[n].detach() + f * d for n, d in full.items()}
            value = batch.measure_with(with_weights(model, swap))
            tried[f] = {"rate": value.rate, "log_odds": value.log_odds}
            if value.rate == 0:
                chosen = f
                break
    evidence.append(
        Evidence(
            tool="edits.revert_delta",
            summary=f"reverting {chosen:g} of the change in {len(modules)} modules"
            + (f" (top {args.rank} directions)" if args.rank else "")
            + f": rate on the prompts {tried[chosen]['rate']:.2f}",
            numbers={"fractions": tried},
        )
    )
    proposal = proposals.make(
        ctx,
        cited=args.evidence,
        kind="revert_delta",
        behaviour=args.behaviour(),
        parameters={
            "modules": modules,
            "against": against,
            "fraction": chosen,
            "rank": args.rank,
        },
        delta={n: chosen * d for n, d in full.items()},
        rationale=args.rationale
        or f"the behaviour lives in the training change of {', '.join(modules[:4])}"
        + ("..." if len(modules) > 4 else ""),
        evidence=evidence,
        started=started,
        parents=parents,
        base_sha256=base_sha(subject, workspace, parents),
    )
    return ProposalResult(proposal=proposal)
