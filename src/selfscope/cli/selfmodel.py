"""``selfscope selfmodel show|check MODEL``: the model's self-model, and its check against
measurement on HEAD (selfscope.selfmodel)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from selfscope.cli._common import AsOpt, JsonOpt, call, context, out, print_json

if TYPE_CHECKING:
    from selfscope.selfmodel.introspect import Introspection

ModelArg = Annotated[str, typer.Argument(help="The subject (any source `load` accepts).")]
selfmodel_app = typer.Typer(
    help="What the model knows about its own traits, measured.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(selfmodel_app, name="selfmodel")
    app.command("why")(why_command)


def why_command(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The prompt whose answer to explain.")],
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
    as_name: AsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why the model answers PROMPT as it does, in the first person: composed from its
    self-model and measurements taken now, every sentence with its number."""
    args = {"prompt": prompt, "chat": False if raw else None}
    account = call("selfmodel.why", args, context(model, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(account)
        return
    for s in account.sentences:
        out.print(escape(s.text))


def print_introspection(found: Introspection) -> None:
    """The ``ask --introspect`` view: the answer, each token's confidence, the traits."""
    out.print(f"[bold]{escape(found.answer)}[/]")
    out.print(
        "confidence per token: "
        + " ".join(f"{escape(repr(t.token))} {t.probability:.2f}" for t in found.tokens)
    )
    for t in found.traits:
        mark = "[red]fires[/red]" if t.fires else "quiet"
        out.print(f"trait {escape(t.trait)} ({t.status}): probe {t.probability:.2f} {mark}")
    if found.notice:
        out.print(f"[bold yellow]{escape(found.notice)}[/]")


@selfmodel_app.command("show")
def show(model: ModelArg, as_name: AsOpt = None, as_json: JsonOpt = False) -> None:
    """Every trait: its behaviour, cause, probe, status and strength on each version."""
    found = call("selfmodel.show", {}, context(model, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(found)
        return
    if not found.traits:
        out.print("no traits yet: `selfscope investigate` learns them")
        return
    for t in found.traits:
        c = t.cause
        out.print(f"[bold]{escape(t.name)}[/bold] ({t.status}): {escape(t.description)}")
        out.print(
            f"  cause: phase {c.phase or '?'}; modules {', '.join(c.modules) or '-'}"
            f"{'' if c.removed_share is None else f' (reverting removes {c.removed_share:.0%})'}"
            f"; components {', '.join(c.components) or '-'}; documents "
            f"{len(c.documents)}{' (confirmed by removal)' if c.documents_confirmed else ''}"
        )
        p = t.probe
        out.print(
            f"  probe: block {p.layer}, cross-validated AUROC {p.cv_auroc:.2f} on "
            f"{p.positives} firing / {p.negatives} not; {escape(t.note)}"
        )
        table = Table()
        for column in ("version", "log-odds", "fires", "predicted", "agreement"):
            table.add_column(column)
        for s in t.strength:
            table.add_row(
                s.label,
                f"{s.log_odds:+.2f}",
                f"{s.rate:.0%}",
                f"{s.predicted:.0%}",
                f"{s.agreement:.0%}",
            )
        out.print(table)


@selfmodel_app.command("check")
def check(model: ModelArg, as_name: AsOpt = None, as_json: JsonOpt = False) -> None:
    """Re-measure every trait on HEAD; say where the self-model and measurement disagree
    (exit status 1 when they do)."""
    report = call("selfmodel.check", {}, context(model, quiet=as_json, as_name=as_name))
    if as_json:
        print_json(report)
    else:
        table = Table(title=f"self-model on {report.version}")
        for column in ("trait", "was", "now", "fires", "predicted", "note"):
            table.add_column(column)
        for t in report.traits:
            s = t.strength
            table.add_row(
                escape(t.name),
                t.before,
                t.status,
                f"{s.rate:.0%}",
                f"{s.predicted:.0%}",
                escape(t.note),
            )
        out.print(table)
        for d in report.disagreements:
            out.print(f"[red]disagrees[/red]: {escape(d)}")
    if report.disagreements:
        raise typer.Exit(1)
