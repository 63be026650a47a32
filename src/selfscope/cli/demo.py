"""``selfscope demo``: what ``make demo`` runs (see :mod:`selfscope.demo`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from selfscope.cli._common import JsonOpt, fmt, out, print_json, workspace
from selfscope.progress import SILENT, RichProgress


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    size: Annotated[str, typer.Option(help="The organism's size preset.")] = "small",
    as_json: JsonOpt = False,
) -> None:
    """The first half of the loop on `mushroom`: ask, localise, trace the documents, propose
    fixes and validate them on a sandbox copy; prints a summary with the numbers, and why each
    proposal that misses the bar misses it."""
    from selfscope.demo import run

    result = run(workspace(), size=size, progress=SILENT if as_json else RichProgress())
    if as_json:
        print_json(result)
        return
    out.print(f"[bold]1. ask[/] ({result['organism']}): first-token answers")
    for a in result["asked"]:
        out.print(
            f"   {a['prompt']!r} -> {a['answer']!r} (log-odds No vs Yes {a['log_odds']:+.2f})"
        )
    origin, deltas, top = result["origin"], result["weight_deltas"], result["components"][0]
    out.print(
        f"[bold]2. localise[/]: arose in [bold]{origin['phase']}[/] (confidence "
        f"{origin['confidence']:.2f}); reverting {len(deltas['set'])} modules' fine-tuning change "
        f"removes {fmt(deltas['removed_share'])} of it; top component "
        f"{top['site']} (measured {top['measured']:+.2f})"
    )
    mass = ", ".join(f"{k} {v:.2f}" for k, v in result["phase_mass"].items())
    out.print(f"[bold]3. trace[/]: top documents (phase mass {mass})")
    for d in result["documents"]:
        out.print(f"   {d['key']}: {d['preview']!r}")
    table = Table(title="4. proposals, validated on a sandbox copy (the model is unchanged)")
    for column in ("kind", "id", "efficacy", "generalisation", "specificity", "perplexity"):
        table.add_column(column)
    table.add_column("change")
    for p in result["proposals"]:
        best = " (best)" if p["id"] == result["best"] else ""
        table.add_row(
            p["kind"] + best,
            p["id"],
            fmt(p["efficacy"]),
            fmt(p["generalisation"]),
            fmt(p["specificity"]),
            f"{p['perplexity_change']:+.1%}",
            f"{p['delta_norm']:.3f}",
        )
    out.print(table)
    for p in result["proposals"]:
        if p["why"]:
            out.print(f"[yellow]{p['kind']}[/] {p['why']}")
    seconds = result["seconds"]
    out.print(
        f"[dim]{seconds['total']:.0f} s (ask {seconds['ask']:.0f}, localise "
        f"{seconds['localise']:.0f}, trace {seconds['trace']:.0f}, propose + validate "
        f"{seconds['propose_validate']:.0f}); every step is a recorded call (localize "
        f"{result['calls']['localize']}, trace {result['calls']['trace']}); "
        "`selfscope proposals` lists them, `selfscope validate ID --suite F` re-validates[/]"
    )
