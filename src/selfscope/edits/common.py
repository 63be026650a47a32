"""What every ``propose`` tool shares: its arguments, the model it computes on, and checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope.behaviour import Behaviour, fingerprint
from selfscope.edits import proposal as proposals
from selfscope.edits.proposal import Proposal
from selfscope.edits.sandbox import sandbox
from selfscope.errors import SelfscopeError
from selfscope.subject.adapters import resolve
from selfscope.tools import ToolContext


class ProposeArgs(Behaviour):
    """The behaviour to change (``normal`` is the completion wanted instead) and where the edit
    starts from."""

    parents: list[str] = Field(
        default_factory=list,
        description="Proposals already applied (in order) to the copy this edit is computed on: "
        "sequential edits.",
    )
    rationale: str = Field("", description="Why this edit; kept with the proposal.")
    evidence: list[str] = Field(
        default_factory=list,
        description="Ids of earlier recorded tool calls this proposal rests on (each must exist "
        "in the workspace's store); kept in the proposal's evidence.",
    )


class ProposalResult(BaseModel):
    proposal: Proposal


@contextmanager
def working_model(subject: Any, workspace: Any, parents: list[str]) -> Iterator[nn.Module]:
    """The model an edit is computed on: the subject's own (read only) or, with ``parents``, a
    sandbox copy with those proposals applied."""
    if not parents:
        yield subject.model
        return
    last = proposals.load(workspace, parents[-1])
    for pid in parents:
        if proposals.load(workspace, pid).subject != subject.source:
            raise SelfscopeError(f"parent proposal {pid} was made on another model")
    with sandbox(subject, workspace, last) as model:
        yield model


def begin(ctx: ToolContext, args: ProposeArgs) -> list[str]:
    """Checks every propose tool makes before any work: the cited calls exist (on this model)
    and the parent proposals exist. Returns the parents' full ids."""
    proposals.cited_evidence(ctx.workspace, args.evidence, ctx.subject.source)
    return parent_chain(ctx.workspace, args.parents)


def parent_chain(workspace: Any, parents: list[str]) -> list[str]:
    """The full ids of ``parents``, each checked to exist."""
    return [proposals.load(workspace, p).id for p in parents]


def base_sha(subject: Any, workspace: Any, parents: list[str]) -> str:
    """The fingerprint a proposal records: the subject's (parents were made on it)."""
    if parents:
        return proposals.load(workspace, parents[0]).base_sha256
    return fingerprint(subject.model)


def check_layer(subject: Any, layer: int) -> None:
    if not 0 <= layer < subject.n_layers:
        raise SelfscopeError(
            f"layer {layer} is out of range: {subject.source} has blocks 0..{subject.n_layers - 1}"
        )


def mlp_output(model: nn.Module, layer: int) -> tuple[str, nn.Module]:
    """The dense MLP output matrix of block ``layer``: (parameter name, module)."""
    try:
        site = resolve(model, f"blocks.{layer}.mlp.neurons")
    except SelfscopeError as error:
        raise SelfscopeError(
            f"this edit needs a dense MLP's output matrix (down_proj); block {layer} has none "
            f"(a mixture-of-experts model: use rank_one with matrix 'attention_value' or "
            f"'embedding', reweight_experts, revert_delta or steer)"
        ) from error
    return f"{site.module}.weight", model.get_submodule(site.module)


def as_weight(module: nn.Module, delta: Tensor) -> Tensor:
    """A ``[d_out, d_in]`` change in the layout of ``module``'s weight (GPT-2's Conv1D stores
    ``[d_in, d_out]``)."""
    return delta if isinstance(module, nn.Linear) else delta.T.contiguous()


def weight_matrix(module: nn.Module) -> Tensor:
    """``module``'s weight as ``[d_out, d_in]``."""
    w: Tensor = module.weight  # type: ignore[assignment]
    return w if isinstance(module, nn.Linear) else w.T
