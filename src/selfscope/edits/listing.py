"""``edits.list``: the proposals stored in the workspace, oldest first (no model is loaded)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from selfscope.edits import proposal as proposals
from selfscope.edits.proposal import Proposal
from selfscope.tools import ToolContext, tool


class ListArgs(BaseModel):
    subject: str | None = Field(
        None, description="Only proposals made on this model source (default: all)."
    )


class ProposalList(BaseModel):
    proposals: list[Proposal] = Field(description="Stored proposals, oldest first.")


@tool("edits.list", ListArgs, ProposalList)
def list_proposals(ctx: ToolContext, args: ListArgs) -> ProposalList:
    """Every proposal stored in this workspace (kind, model, changed modules, relative change,
    evidence with call ids), oldest first; optionally only those made on one model."""
    rows = proposals.listed(ctx.workspace)
    if args.subject is not None:
        rows = [p for p in rows if p.subject == args.subject]
    return ProposalList(proposals=rows)
