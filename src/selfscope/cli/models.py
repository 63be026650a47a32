"""``selfscope models list`` and ``selfscope ask``: what can be loaded, and what it says."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from selfscope.cli._common import DeviceOpt, JsonOpt, call, context, out, print_json, workspace
from selfscope.subject.ask import Answer

models_app = typer.Typer(no_args_is_help=True, help="Models this workspace can load.")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("ask")(ask_command)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Every source string `load`/`ask` accepts here, and whether it is ready."""
    from selfscope.subject.catalog import list_models

    entries = list_models(workspace())
    if as_json:
        print_json({"models": entries})
        return
    table = Table(title="models")
    for column in ("source", "kind", "ready", "note"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.source, e.kind, "yes" if e.available else "no", e.note)
    out.print(table)


def ask_command(
    model: Annotated[
        str, typer.Argument(help="smollm2 | organism:NAME[@PHASE] | a HF folder | a .gguf file")
    ],
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, max=2048)] = 40,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
    introspect: Annotated[
        bool,
        typer.Option(
            "--introspect",
            help="Also the confidence of each token and the known traits firing "
            "(selfmodel.introspect).",
        ),
    ] = False,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Greedy answer plus the top-5 first-token probabilities (tool model.ask)."""
    args = {"prompt": prompt, "max_new_tokens": max_new_tokens, "chat": False if raw else None}
    if introspect:
        from selfscope.cli.selfmodel import print_introspection

        found = call("selfmodel.introspect", args, context(model, device, as_json))
        if as_json:
            print_json({"model": model, **found.model_dump()})
        else:
            print_introspection(found)
        return
    answer: Answer = call("model.ask", args, context(model, device, as_json))
    if as_json:
        print_json({"model": model, **answer.model_dump()})
        return
    out.print(f"[bold]{answer.text}[/]")
    table = Table(title="first token")
    for column in ("token", "id", "probability"):
        table.add_column(column)
    for t in answer.top_tokens:
        table.add_row(repr(t.token), str(t.id), f"{t.probability:.4f}")
    out.print(table)
    out.print(f"{answer.seconds:.2f} s", style="dim")
