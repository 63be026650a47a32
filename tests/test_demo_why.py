"""The demo says why a proposal misses the bar: which parts, and the proposer's own last word."""

from __future__ import annotations

from selfscope.behaviour import Evidence
from selfscope.demo import misses, why
from selfscope.edits.proposal import Proposal
from selfscope.edits.sandbox import ValidationReport


def test_a_missing_proposal_says_which_part_and_why() -> None:
    fine = ValidationReport.model_construct(
        efficacy=1.0, generalisation=0.95, specificity=0.99, perplexity_change=0.001
    )
    stuck = ValidationReport.model_construct(
        efficacy=0.0, generalisation=None, specificity=0.99, perplexity_change=0.04
    )
    proposal = Proposal.model_construct(
        call_id="c1-aa",
        rationale="unlearn the documents",
        evidence=[
            Evidence(tool="history.trace", call_id="c0-bb", summary="cited trace"),
            Evidence(tool="edits.unlearn", call_id="c1-aa", summary="stopped on perplexity guard"),
        ],
    )
    assert misses(fine) == [] and why(proposal, fine) is None
    assert misses(stuck) == ["efficacy 0.00 < 0.95", "perplexity change +4.0% > +2%"]
    assert why(proposal, stuck) == (
        "misses efficacy 0.00 < 0.95, perplexity change +4.0% > +2%; "
        "the proposer: stopped on perplexity guard"
    )
