"""``selfscope propose KIND``, ``validate ID``: the surgeon (``proposals``: cli/gate.py).

The edit kinds are the registry's: every ``edits.*`` tool whose result is a proposal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from selfscope import tools
from selfscope.cli._common import (
    ChatOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    NormalOpt,
    PlantedOpt,
    PromptsOpt,
    call,
    context,
    fmt,
    json_object,
    out,
    print_json,
)
from selfscope.edits.common import ProposalResult
from selfscope.edits.proposal import Proposal
from selfscope.edits.sandbox import ValidationReport
from selfscope.errors import SelfscopeError

SuiteOpt = Annotated[
    list[Path] | None, typer.Option(help="A validation suite file, .json or .yaml (repeat).")
]


def register(app: typer.Typer) -> None:
    app.command("propose")(propose_command)
    app.command("validate")(validate_command)


def edit_kinds() -> list[str]:
    """Every registered ``edits.*`` tool that returns a proposal, by kind name."""
    return [
        t.name.removeprefix("edits.")
        for t in tools.registry().values()
        if t.name.startswith("edits.") and t.output is ProposalResult
    ]


def proposal_summary(proposal: Proposal) -> dict[str, Any]:
    return {
        "id": proposal.id,
        "kind": proposal.kind,
        "subject": proposal.subject,
        "modules": proposal.modules,
        "delta_norm": proposal.delta_norm,
        "call_id": proposal.call_id,
    }


def validation_summary(report: ValidationReport) -> dict[str, Any]:
    return {
        "efficacy": report.efficacy,
        "generalisation": report.generalisation,
        "specificity": report.specificity,
        "perplexity_change": report.perplexity_change,
        "seconds": report.seconds,
    }


def print_validation(report: ValidationReport) -> None:
    out.print(
        f"efficacy {fmt(report.efficacy)}  generalisation {fmt(report.generalisation)}  "
        f"specificity {fmt(report.specificity)}  perplexity change "
        f"{fmt(report.perplexity_change)}  change {report.delta_norm:.4f}  "
        f"({report.seconds:.1f} s)"
    )
    for suite in report.suites:
        for part in (suite.neighbours, suite.facts):
            for change in part.changed if part else []:
                out.print(
                    f"[dim]{suite.name}: {change.prompt!r} {change.before!r} -> {change.after!r}[/]"
                )


def propose_command(
    kind: Annotated[str, typer.Argument(help="An edit kind (e.g. rank_one; see `tool list`).")],
    model: ModelOpt,
    prompt: PromptsOpt,
    planted: PlantedOpt,
    normal: NormalOpt,
    chat: ChatOpt = False,
    args: Annotated[
        str, typer.Option("--args", help="The kind's other arguments as a JSON object.")
    ] = "{}",
    suite: SuiteOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Propose a targeted edit (stored, never applied); with --suite, validate it on a copy."""
    from selfscope.behaviour import read_suite

    kinds = edit_kinds()
    if kind not in kinds:
        raise SelfscopeError(f"unknown edit kind {kind!r}; kinds: {', '.join(kinds)}")
    extra = json_object(args)
    given = {"prompts": prompt, "planted": planted, "normal": normal, "chat": chat, **extra}
    suites = [read_suite(f) for f in suite or []]  # bad suite files: fail before any work
    ctx = context(model, device, as_json)
    proposal = call(f"edits.{kind}", given, ctx).proposal
    result: dict[str, Any] = {"proposal": proposal_summary(proposal)}
    report = None
    if suites:
        validate_args = {"proposal": proposal.id, "suites": [s.model_dump() for s in suites]}
        report = call("edits.validate", validate_args, ctx)
        result["validation"] = validation_summary(report)
    if as_json:
        print_json(result)
        return
    out.print(
        f"[bold]proposal {proposal.id}[/] ({proposal.kind}): {', '.join(proposal.modules)}; "
        f"relative change {proposal.delta_norm:.4f}"
    )
    out.print(proposal.rationale)
    for evidence in proposal.evidence:
        out.print(f"[dim]{evidence.tool} (call {evidence.call_id}): {evidence.summary}[/]")
    if report is not None:
        print_validation(report)


def validate_command(
    proposal_id: Annotated[str, typer.Argument(help="A proposal id (or a unique prefix).")],
    suite: SuiteOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Validate a proposal on a sandbox copy of its model; the model itself never changes."""
    from selfscope.behaviour import read_suite
    from selfscope.edits import proposal as proposals

    ctx = context(None, device, as_json)
    proposal = proposals.load(ctx.workspace, proposal_id)
    suites = [read_suite(f) for f in suite or []]
    ctx.source = proposal.subject
    validate_args = {"proposal": proposal.id, "suites": [s.model_dump() for s in suites]}
    report: ValidationReport = call("edits.validate", validate_args, ctx)
    if as_json:
        print_json(
            {"proposal": proposal_summary(proposal), "validation": validation_summary(report)}
        )
        return
    out.print(f"[bold]proposal {proposal.id}[/] ({proposal.kind}) on {proposal.subject}")
    print_validation(report)
