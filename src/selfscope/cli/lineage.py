"""``selfscope lineage add|list``: bring your own lineage (:mod:`selfscope.subject.declared`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from selfscope.cli._common import JsonOpt, out, print_json, workspace

lineage_app = typer.Typer(
    no_args_is_help=True, help="Declare how your own fine-tune was made (its lineage)."
)


def register(app: typer.Typer) -> None:
    app.add_typer(lineage_app, name="lineage")


@lineage_app.command("add")
def lineage_add(
    model: Annotated[Path, typer.Argument(help="The fine-tuned Hugging Face folder.")],
    data: Annotated[
        Path, typer.Option(help='Its training documents: JSONL of {"id","text"} or {"text"}.')
    ],
    parent: Annotated[
        Path | None, typer.Option(help="The Hugging Face folder it was fine-tuned from.")
    ] = None,
    scratch: Annotated[
        bool, typer.Option("--scratch", help="It was trained from random weights.")
    ] = False,
    phase: Annotated[str, typer.Option(help="The phase's name.")] = "finetune",
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs over the data.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per optimiser step.")] = None,
    chat: Annotated[
        bool | None,
        typer.Option(
            "--chat/--no-chat", help="Q/A documents went through the model's chat template."
        ),
    ] = None,
    context: Annotated[
        int | None, typer.Option(help="Tokens each training row was cut to.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Declare that MODEL was trained from --parent (or --scratch) on --data; afterwards
    `load(MODEL)` carries that lineage, so origin, weight deltas, weights.diff and trace work
    on it. What you do not give is listed as unknown."""
    from selfscope.subject.declared import declare

    lineage = declare(
        model,
        data=data,
        workspace=workspace(),
        parent=parent,
        scratch=scratch,
        phase=phase,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        chat=chat,
        context=context,
    )
    if as_json:
        print_json(lineage.model_dump(mode="json"))
        return
    own = lineage.phases[-1]
    chain = " -> ".join(p.name for p in lineage.phases)
    out.print(
        f"declared {lineage.origin}: phase [bold]{own.name}[/] ({own.documents} documents), "
        f"lineage {chain}" + (f", parent {lineage.parent}" if lineage.parent else "")
    )
    for note in lineage.caveats():
        out.print(f"  [dim]unknown: {note}[/]")


@lineage_app.command("list")
def lineage_list(as_json: JsonOpt = False) -> None:
    """The lineages declared in this workspace."""
    from selfscope.subject.declared import declarations

    rows = declarations(workspace())
    if as_json:
        print_json([{**d.model_dump(mode="json"), "weights_match": ok} for d, ok in rows])
        return
    if not rows:
        out.print("no lineage declared here (`selfscope lineage add MODEL --parent BASE --data F`)")
        return
    table = Table(title="declared lineages")
    for column in ("model", "phase", "parent", "documents", "weights"):
        table.add_column(column)
    for d, ok in rows:
        parent = "scratch" if d.scratch else str(d.parent or "unknown")
        weights = "as declared" if ok else "CHANGED (declare again)"
        table.add_row(str(d.model), d.phase, parent, str(d.documents), weights)
    out.print(table)
