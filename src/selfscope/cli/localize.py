"""``selfscope localize``: the debugger's whole answer for one behaviour (tool localize.all)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    out,
    print_json,
)
from selfscope.errors import SelfscopeError
from selfscope.localize.pipeline import LocalizeReport


def register(app: typer.Typer) -> None:
    app.command("localize")(localize_command)


def localize_command(
    model: ModelOpt,
    prompt: PromptsOpt,
    planted: PlantedOpt,
    normal: NormalOpt,
    contrast: Annotated[
        list[str] | None,
        typer.Option(help="Per prompt, a same-length prompt without the behaviour (repeat)."),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(help="Prompts whose next token must not change (collateral check; repeat)."),
    ] = None,
    trace_subject: Annotated[
        str | None, typer.Option(help="Words of the first prompt to noise for causal tracing.")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, max=200, help="Components verified/listed.")] = 10,
    chat: ChatOpt = False,
    figure: Annotated[
        Path | None, typer.Option(help="Write the causal-tracing heatmap (SVG) here.")
    ] = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Where a behaviour lives, which weight changes made it, and in which phase it arose."""
    from selfscope.atomic import write_text

    if figure is not None and trace_subject is None:
        raise SelfscopeError("--figure is the causal-tracing heatmap: give --trace-subject too")
    args = {"prompts": prompt, "planted": planted, "normal": normal, "chat": chat}
    args |= {"contrast": contrast, "control_prompts": control or [], "top_k": top_k}
    args |= {"trace_subject": trace_subject}
    report: LocalizeReport = call("localize.all", args, context(model, device, as_json))
    if report.trace is not None:
        if figure is not None and report.trace.figure:
            write_text(figure, report.trace.figure)
        report.trace.figure = None  # the SVG goes to --figure, not into the JSON
    if as_json:
        print_json(report)
        return
    _print_localize(report)


def _print_localize(report: LocalizeReport) -> None:
    metric = report.metric
    out.print(
        f"[bold]{report.model}[/]: mean log-odds {metric.log_odds:+.2f}, rate {metric.rate:.2f}"
    )
    if report.origin:
        origin = report.origin
        out.print(f"origin: [bold]{origin.phase}[/] (confidence {origin.confidence:.2f})")
        for line in origin.evidence:
            out.print(f"  - {line}")
    table = Table(title="components (attribution patching, top ones patched for real)")
    for column in ("site", "estimate", "measured", "verified"):
        table.add_column(column)
    for c in report.components:
        table.add_row(c.site, f"{c.estimate:+.3f}", f"{c.measured:+.3f}", str(c.verified))
    out.print(table)
    deltas = report.weight_deltas
    if deltas:
        out.print(
            f"weight deltas vs {deltas.against}: reverting {deltas.module_set} removes "
            f"{fmt(deltas.set_share)} of the behaviour"
        )
    for step, reason in report.skipped.items():
        out.print(f"[dim]{step}: skipped ({reason})[/]")
    calls = ", ".join(f"{k} {v}" for k, v in report.calls.items())
    out.print(f"[dim]recorded calls: {calls}[/]")
