"""``edits.validate``: validate a stored proposal on a sandbox copy (see :mod:`.sandbox`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from selfscope import tools
from selfscope.behaviour import Suite, read_suite
from selfscope.edits import proposal as proposals
from selfscope.edits.sandbox import ValidationReport, validate
from selfscope.tools import ToolContext


class ValidateArgs(BaseModel):
    proposal: str = Field(min_length=6, description="The proposal id (or a unique prefix).")
    suites: list[Suite] = Field(default_factory=list, description="Validation suites, inline.")
    suite_files: list[str] = Field(
        default_factory=list, description="Validation suites as .json/.yaml files."
    )


@tools.tool("edits.validate", ValidateArgs, ValidationReport, permission="propose")
def validate_proposal(ctx: ToolContext, args: ValidateArgs) -> ValidationReport:
    """Apply a proposal to a sandbox copy of the model and measure efficacy (symptom probes),
    generalisation (held-out paraphrases), specificity (neighbours and world facts keep their
    top-1 answer), fluency (perplexity on each phase's held-out documents) and the size of the
    change, against the unedited model in the same run. The model's own weights never change."""
    subject = ctx.subject
    workspace = ctx.workspace
    proposal = proposals.load(workspace, args.proposal)
    suites = [*args.suites, *(read_suite(f) for f in args.suite_files)]
    return validate(subject, workspace, proposal, suites)
