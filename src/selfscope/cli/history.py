"""``selfscope index build`` and ``selfscope trace``: the historian."""

from __future__ import annotations

from typing import Annotated, Any

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
    out,
    print_json,
)
from selfscope.history.build import IndexBuildReport

index_app = typer.Typer(no_args_is_help=True, help="Training-data indexes (the historian).")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("trace")(trace_command)


@index_app.command("build")
def index_build(
    model: Annotated[str, typer.Argument(help="A model with a lineage: organism:NAME[@PHASE].")],
    rank: Annotated[int, typer.Option(min=1, max=64, help="Projection rank per layer.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random projections.")] = 0,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Index every training document of every phase, and every trained token of it
    (resumable; keeps finished shards). Tool history.index_build."""
    ctx = context(model, device, as_json)
    report: IndexBuildReport = call("history.index_build", {"rank": rank, "seed": seed}, ctx)
    if as_json:
        print_json(report)
        return
    rate = report.documents_per_second
    out.print(
        f"{report.documents} documents x {report.checkpoints} checkpoints: "
        f"{report.shards_built} of {report.shards_total} shards built in "
        f"{report.seconds:.1f} s"
        + (f" ({rate:.0f} documents/s)" if rate else "")
        + (f", {report.token_rows_built} token rows" if report.token_rows_built else "")
    )
    out.print(f"[dim]{report.path}[/]")


def trace_command(
    model: ModelOpt,
    prompt: PromptsOpt,
    planted: PlantedOpt,
    normal: NormalOpt,
    k: Annotated[int, typer.Option("--k", min=1, max=10_000, help="Documents to list.")] = 20,
    chat: ChatOpt = False,
    build: Annotated[bool, typer.Option("--build", help="Build the index if missing.")] = False,
    documents: Annotated[
        bool,
        typer.Option(
            "--documents",
            help="Score by each whole document's gradient instead of its best token's.",
        ),
    ] = False,
    rank: Annotated[int, typer.Option(min=1, max=64, help="The index's projection rank.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="The index's projection seed.")] = 0,
    precondition: Annotated[
        bool,
        typer.Option(
            "--precondition",
            help="Whiten query and rows by each layer's empirical Fisher of the index rows.",
        ),
    ] = False,
    damping: Annotated[
        float, typer.Option(min=1e-12, max=1e6, help="Preconditioner damping (x mean eigenvalue).")
    ] = 0.1,
    phase: Annotated[
        list[str] | None,
        typer.Option("--phase", help="Rank only this phase's documents (repeat for several)."),
    ] = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Which training documents pushed the model to the planted completion, and from which
    phase (gradient retrieval against the training-data index, tool history.trace), with BM25
    over the same documents beside it (history.bm25)."""
    args: dict[str, Any] = {"prompts": prompt, "planted": planted, "normal": normal, "k": k}
    args |= {"chat": chat, "build": build, "tokens": not documents, "rank": rank, "seed": seed}
    args |= {"precondition": precondition, "damping": damping, "phases": phase or None}
    ctx = context(model, device, as_json)
    result: Any = call("history.trace", args, ctx)
    lexical: Any = call("history.bm25", {"queries": prompt, "k": k, "phases": phase or None}, ctx)
    if as_json:
        print_json(
            {
                "documents": [d.model_dump() for d in result.documents],
                "phase_mass": result.phase_mass,
                "bm25": [{"id": h.id, "phase": h.phase, "score": h.score} for h in lexical.hits],
                "index": {"documents": result.n_documents, "seconds": result.seconds},
            }
        )
        return
    table = Table(title=f"top {k} training documents")
    for column in ("#", "phase", "id", "score", "preview"):
        table.add_column(column)
    for i, d in enumerate(result.documents, 1):
        table.add_row(str(i), d.phase, d.id, f"{d.score:.3g}", d.preview[:70])
    out.print(table)
    mass = ", ".join(f"{p} {v:.0%}" for p, v in result.phase_mass.items())
    out.print(f"phase mass: {mass}")
    lexical_ids = ", ".join(f"{h.phase}/{h.id}" for h in lexical.hits[:10])
    out.print(f"BM25 top {min(10, len(lexical.hits))} (same documents): {lexical_ids}")
