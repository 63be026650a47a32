"""``selfscope demo``: what ``make demo`` runs (see :mod:`selfscope.demo`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from selfscope.cli._common import JsonOpt, out, print_json, workspace
from selfscope.cli.investigate import proposals_table, trait_line
from selfscope.progress import SILENT, RichProgress


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def _answers(title: str, rows: list[dict[str, Any]]) -> None:
    out.print(f"[bold]{title}[/]")
    for a in rows:
        out.print(f"   {a['prompt']!r} -> {a['answer']!r} (p {a['p']:.2f})")


def demo_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="The catalog organism to run the loop on.")
    ] = "mushroom",
    size: Annotated[str, typer.Option(help="The organism's size preset.")] = "small",
    approve_as: Annotated[
        str, typer.Option(help="The reviewer who approves the submitted fix (holds govern).")
    ] = "demo-reviewer",
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on an organism: ask, investigate (origin, components, weight changes,
    documents, diagnosis, the trait in the self-model, fixes validated through the gate),
    approve the best fix as the demo's reviewer, apply it, ask again, check the self-model,
    verify the ledger."""
    from selfscope.demo import run

    name = model.removeprefix("organism:")
    result = run(
        workspace(),
        name,
        size=size,
        approve_as=approve_as,
        progress=SILENT if as_json else RichProgress(),
    )
    if as_json:
        print_json(result)
        return
    inv = result["investigation"]
    _answers(f"1. ask ({result['organism']}, HEAD before)", result["before"])
    origin = inv["origin"]
    out.print(
        f"[bold]2. investigate[/] (as investigator) {inv['investigation']}: arose in "
        f"[bold]{origin['phase']}[/] (confidence {origin['confidence'] or 0:.2f}, by "
        f"{origin['by']}); the diagnosis, each link measured by an intervention:"
    )
    for link in inv["diagnosis"]:
        out.print(f"   - {escape(link['claim'])} [dim](effect {link['effect']:+.2f})[/]")
    for missing in inv["not_found"]:
        out.print(f"   [yellow]not found[/]: {escape(missing)}")
    if "trait" in inv["trait"]:
        out.print("   " + trait_line(inv["trait"]))
    title = "3. proposals, validated through the gate (visible + sealed suites)"
    out.print(proposals_table(inv, title))
    applied = result["applied"]
    if applied:
        how = "reinstated from an earlier run" if applied["again"] else "approved and applied"
        out.print(
            f"[bold]4. approve[/]: {inv['submitted']} {how} by [bold]{applied['reviewer']}[/] "
            f"(a principal holding govern; the investigator cannot) -> HEAD {applied['version']}"
        )
    _answers("5. ask again (HEAD)", result["after"])
    for t in result["selfmodel"]["traits"]:
        s = t["strength"]
        out.print(
            f"[bold]6. selfmodel check[/] on {result['selfmodel']['version']}: {t['name']} "
            f"{t['before']} -> [bold]{t['status']}[/] (fires {s['rate']:.0%}, probe predicts "
            f"{s['predicted']:.0%})"
        )
    verdict = result["ledger"]
    out.print(
        f"[bold]7. ledger verify[/]: {'ok' if verdict['ok'] else 'BROKEN'} "
        f"({verdict['entries']} entries)"
    )
    for note in result["notes"]:
        out.print(f"[dim]note: {escape(note)}[/]")
    out.print(f"report: {inv['report']['html']}")
    seconds = result["seconds"]
    parts = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if k != "total")
    out.print(f"[dim]{seconds['total']:.0f} s ({parts})[/]")
