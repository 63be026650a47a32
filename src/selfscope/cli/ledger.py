"""``selfscope ledger show|verify|checkpoint``, ``versions list|show|verify|rollback``,
``policy show|set``, ``suite seal``: the guardian's records from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from selfscope.cli._common import AsOpt, JsonOpt, call, context, out, print_json, workspace
from selfscope.errors import SelfscopeError

ModelArg = Annotated[str, typer.Argument(help="The subject (any source `load` accepts).")]
ledger_app = typer.Typer(help="The tamper-evident ledger of every change.", no_args_is_help=True)
versions_app = typer.Typer(help="A subject's immutable versions and HEAD.", no_args_is_help=True)
policy_app = typer.Typer(
    help="What may change in a subject, and who approves.", no_args_is_help=True
)
suite_app = typer.Typer(help="Suites the proposer never sees.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(versions_app, name="versions")
    app.add_typer(policy_app, name="policy")
    app.add_typer(suite_app, name="suite")


@ledger_app.command("show")
def ledger_show(
    last: Annotated[int, typer.Option(help="How many of the last entries.")] = 20,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The last entries: who did what, when, to which subject."""
    shown = call("ledger.show", {"last": last, "action": action}, context(None, quiet=True))
    if as_json:
        print_json(shown)
        return
    table = Table(title=f"ledger (head {shown.head})")
    for column in ("seq", "principal", "action", "subject", "hash"):
        table.add_column(column)
    for e in shown.entries:
        table.add_row(str(e.seq), e.principal, e.action, e.subject[-40:], e.hash[:12])
    out.print(table)


@ledger_app.command("verify")
def ledger_verify(
    checkpoint: Annotated[
        Path | None, typer.Option(help="A signed checkpoint: also detects truncation.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the hash chain; name the first bad entry (exit status 1 when one is found)."""
    args = {"checkpoint": str(checkpoint) if checkpoint else None}
    verdict = call("ledger.verify", args, context(None, quiet=True))
    if as_json:
        print_json(verdict)
    elif verdict.ok:
        extra = f"; {verdict.checkpoint}" if verdict.checkpoint else ""
        out.print(f"ledger OK: {verdict.entries} entries, head {verdict.head_hash[:12]}{extra}")
    else:
        out.print(f"[red]ledger BROKEN[/] at entry {verdict.first_bad}: {verdict.reason}")
    if not verdict.ok:
        raise typer.Exit(1)


@ledger_app.command("checkpoint")
def ledger_checkpoint(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the signed head.")],
    as_name: AsOpt = None,
) -> None:
    """Sign the ledger's head with your ed25519 key (kept outside the workspace)."""
    from selfscope.oversight.ledger import checkpoint
    from selfscope.oversight.principals import principal

    ws = workspace()
    body = checkpoint(ws, principal(ws, as_name).name, out_file)
    out.print(f"signed entry {body['seq']} ({body['hash'][:12]}) as {body['principal']}")


@versions_app.command("list")
def versions_list(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Every version of a subject; HEAD marked."""
    listing = call("versions.list", {"model": model}, context(None, quiet=True))
    if as_json:
        print_json(listing)
        return
    table = Table(title=f"{model} (HEAD {listing.head or 'v0, never versioned'})")
    for column in ("", "version", "id", "proposal", "by", "cached"):
        table.add_column(column)
    for v in listing.versions:
        table.add_row(
            "*" if v.head else "", v.label, v.id[:12], v.proposal or "-", v.principal,
            "yes" if v.cached else "no",
        )  # fmt: skip
    out.print(table)


@versions_app.command("show")
def versions_show(
    model: ModelArg,
    version: Annotated[str, typer.Argument(help="v2 or an id prefix.")] = "HEAD",
) -> None:
    """One version in full (default HEAD)."""
    listing = call("versions.list", {"model": model}, context(None, quiet=True))
    picked = [
        v
        for v in listing.versions
        if (version == "HEAD" and v.head) or v.label == version or v.id.startswith(version)
    ]
    if len(picked) != 1:
        known = ", ".join(v.label for v in listing.versions) or "none"
        raise SelfscopeError(f"no single version {version!r} of {model}; versions: {known}")
    print_json(picked[0])


@versions_app.command("verify")
def versions_verify(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Rebuild every version and check its tensors against its record and the ledger."""
    verdict = call("versions.verify", {"model": model}, context(None, quiet=True))
    if as_json:
        print_json(verdict)
    elif verdict.ok:
        out.print(f"versions OK: {verdict.checked} rebuilt, every tensor hash matches")
    else:
        for line in verdict.problems:
            out.print(f"[red]{line}[/]")
    if not verdict.ok:
        raise typer.Exit(1)


@versions_app.command("rollback")
def versions_rollback(
    model: ModelArg,
    to: Annotated[str | None, typer.Option(help="v2 or an id prefix (default: parent).")] = None,
    as_name: AsOpt = None,
) -> None:
    """Move HEAD back (the same as `selfscope rollback`)."""
    done = call("gate.rollback", {"model": model, "to": to}, context(None, as_name=as_name))
    out.print(f"{done.model}: HEAD {done.moved_from} -> {done.moved_to}")


@policy_app.command("show")
def policy_show(model: ModelArg) -> None:
    """The subject's policy (the default when none was set)."""
    import yaml

    from selfscope.oversight.gate import key_of
    from selfscope.oversight.policy import current

    ws = workspace()
    policy = current(ws, key_of(ws, model))
    out.print(yaml.safe_dump(policy.model_dump(), sort_keys=False).rstrip())


@policy_app.command("set")
def policy_set(
    model: ModelArg,
    file: Annotated[Path, typer.Argument(help="The policy YAML.")],
    as_name: AsOpt = None,
) -> None:
    """Set the subject's policy (needs govern; a ledger entry)."""
    from selfscope.oversight.gate import key_of
    from selfscope.oversight.policy import set_policy
    from selfscope.oversight.principals import principal

    ws = workspace()
    set_policy(ws, key_of(ws, model), file, principal(ws, as_name))
    out.print(f"policy of {model} set from {file}")


@suite_app.command("seal")
def suite_seal(
    file: Annotated[Path, typer.Argument(help="The suite (.json or .yaml).")],
    model: Annotated[str, typer.Option("--model", "-m", help="The subject it guards.")],
    name: Annotated[str | None, typer.Option(help="Its name (default: the suite's).")] = None,
    as_name: AsOpt = None,
) -> None:
    """Seal a suite: the gate validates on it; no read or propose tool ever returns it."""
    args = {"model": model, "file": str(file), "name": name}
    sealed = call("suites.seal", args, context(None, quiet=True, as_name=as_name))
    out.print(f"sealed {sealed.name} ({sealed.probes} prompts) for {model}: {sealed.sha256[:12]}")
