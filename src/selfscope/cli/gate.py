"""``selfscope proposals list|show|validate|rebase``, ``review``, ``apply``, ``rollback``,
``principal grant|list``: the gate (selfscope.oversight.gate) from the command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from selfscope.cli._common import AsOpt, JsonOpt, call, context, fmt, out, print_json, workspace
from selfscope.errors import SelfscopeError
from selfscope.oversight.gate import Applied, GateReport, Reviewed, RolledBack

IdArg = Annotated[str, typer.Argument(help="A proposal id (or a unique prefix of 6+).")]
proposals_app = typer.Typer(
    help="Proposals and their state: proposed, validated, approved, applied, rejected, stale.",
    invoke_without_command=True,
    no_args_is_help=False,
)
principal_app = typer.Typer(help="Who may read, propose and govern.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(proposals_app, name="proposals")
    app.add_typer(principal_app, name="principal")
    app.command("review")(review_command)
    app.command("apply")(apply_command)
    app.command("rollback")(rollback_command)


@proposals_app.callback()
def _proposals(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The proposals stored in this workspace (default: list them)."""
    if ctx.invoked_subcommand is None:
        list_command(as_json)


@proposals_app.command("list")
def list_command(as_json: JsonOpt = False) -> None:
    """Every proposal, oldest first, with its status and proposer."""
    from selfscope.oversight.gate import proposal_listing

    listing = proposal_listing(workspace())
    if as_json:
        print_json(listing)
        return
    table = Table(title="proposals")
    for column in ("id", "kind", "subject", "status", "proposer", "relative change"):
        table.add_column(column)
    for r in listing:
        table.add_row(
            r["id"], r["kind"], r["subject"], r["status"], r["proposer"], f"{r['delta_norm']:.4f}"
        )
    out.print(table)


@proposals_app.command("show")
def show_command(proposal_id: IdArg, as_json: JsonOpt = False) -> None:
    """One proposal: what it changes, its evidence, its validations and reviews."""
    from selfscope.edits.proposal import Proposal
    from selfscope.oversight.gate import proposal_record

    shown = proposal_record(workspace(), proposal_id)
    if as_json:
        print_json(shown)
        return
    proposal, reviews = Proposal.model_validate(shown["proposal"]), shown["reviews"]
    out.print(f"[bold]{proposal.id}[/] {proposal.kind} on {proposal.subject}: {shown['status']}")
    out.print(f"modules: {', '.join(proposal.modules)}; relative change {proposal.delta_norm:.4f}")
    out.print(proposal.rationale)
    for r in reviews:
        out.print(f"review by {r['principal']}: {r['decision']} {r['note']}")


@proposals_app.command("validate")
def validate_command(
    proposal_id: IdArg,
    suite: Annotated[
        list[str] | None, typer.Option(help="An extra visible suite file (repeat).")
    ] = None,
    as_name: AsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate through the gate on HEAD: visible + sealed + protected suites and the policy."""
    args = {"proposal": proposal_id, "suite_files": suite or []}
    report: GateReport = call("gate.validate", args, context(None, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(report)
        return
    verdict = "[green]validated[/]" if report.passed else "[red]rejected[/]"
    out.print(f"proposal {report.proposal} on {report.version_label}: {verdict}")
    table = Table()
    for column in ("check", "held", "value", "limit", "detail"):
        table.add_column(column)
    for c in report.checks:
        table.add_row(c.name, "yes" if c.passed else "NO", fmt(c.value), fmt(c.limit), c.detail)
    out.print(table)


@proposals_app.command("rebase")
def rebase_command(proposal_id: IdArg, as_name: AsOpt = None, as_json: JsonOpt = False) -> None:
    """Carry a stale proposal's delta onto HEAD as a new proposal (then validate it)."""
    from selfscope.edits.proposal import Proposal

    new: Proposal = call("gate.rebase", {"proposal": proposal_id}, context(None, as_name=as_name))
    if as_json:
        print_json(new)
        return
    out.print(f"rebased {proposal_id} onto HEAD: new proposal {new.id} (validate it)")


def review_command(
    proposal_id: IdArg,
    approve: Annotated[bool, typer.Option("--approve", help="Approve it.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject it.")] = False,
    note: Annotated[str, typer.Option(help="Why, in a sentence (kept in the ledger).")] = "",
    as_name: AsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve or reject a validated proposal (needs govern; never your own proposal)."""
    if approve == reject:
        raise SelfscopeError("give exactly one of --approve or --reject")
    args = {"proposal": proposal_id, "approve": approve, "note": note}
    done: Reviewed = call("gate.review", args, context(None, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(done)
        return
    out.print(f"{done.reviewer} reviewed {done.proposal}: now {done.status}")


def apply_command(proposal_id: IdArg, as_name: AsOpt = None, as_json: JsonOpt = False) -> None:
    """Apply an approved proposal: a new immutable version, and HEAD moves to it."""
    args = {"proposal": proposal_id}
    done: Applied = call("gate.apply", args, context(None, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(done)
        return
    out.print(
        f"applied {done.proposal}: HEAD is now {done.version_label} ({done.version[:12]}, "
        f"tensors {done.tensors_sha256[:12]}; {done.seconds:.1f} s)"
    )


def rollback_command(
    model: Annotated[str, typer.Argument(help="The subject (any source `load` accepts).")],
    to: Annotated[
        str | None, typer.Option(help="A version: v2 or an id prefix (default: HEAD's parent).")
    ] = None,
    as_name: AsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a subject's HEAD back to an earlier version (needs govern; nothing is deleted)."""
    args = {"model": model, "to": to}
    done: RolledBack = call("gate.rollback", args, context(None, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(done)
        return
    out.print(f"{done.model}: HEAD {done.moved_from} -> {done.moved_to}")


@principal_app.command("grant")
def grant_command(
    name: Annotated[str, typer.Argument(help="The principal's name.")],
    role: Annotated[str, typer.Option(help="reader, proposer or reviewer (= govern).")],
    as_name: AsOpt = None,
) -> None:
    """Give a principal a role (needs govern, except a workspace's very first govern grant)."""
    from selfscope.oversight.principals import grant, principal

    ws = workspace()
    granted = grant(ws, name, role, principal(ws, as_name))
    out.print(f"{granted.name}: {', '.join(sorted(granted.permissions))}")


@principal_app.command("list")
def principals_command(as_json: JsonOpt = False) -> None:
    """The principals this workspace grants permissions to."""
    listing = workspace().store.principals()
    if as_json:
        print_json(listing)
        return
    for name, perms in listing.items():
        out.print(f"{name}: {', '.join(perms)}")
