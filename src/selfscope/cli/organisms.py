"""``selfscope organism build|list``: the lab's model organisms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from selfscope.cli._common import JsonOpt, fmt, out, print_json, workspace
from selfscope.errors import TargetsMissed

organism_app = typer.Typer(no_args_is_help=True, help="Build and list model organisms.")


def register(app: typer.Typer) -> None:
    app.add_typer(organism_app, name="organism")


@organism_app.command("build")
def organism_build(
    spec: Annotated[
        str, typer.Argument(help="A catalog name (see `organism list`) or a .yaml spec path.")
    ],
    size: Annotated[
        str | None, typer.Option(help="tiny | small | medium (overrides the spec).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Overrides the spec's seed.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Build a model organism: train its phases, verify its behaviours, write its report."""
    from selfscope.organisms import build, resolve_spec
    from selfscope.organisms.checks import missed_message

    resolved = resolve_spec(spec, size=size, seed=seed)
    result = build(resolved, workspace(), device=device, strict=False)
    if as_json:
        print_json(result.summary())
    else:
        _print_build(result.summary())
    if result.failures:
        raise TargetsMissed(missed_message(resolved, result.failures, result.path))


def _print_build(summary: dict[str, Any]) -> None:
    table = Table(
        title=f"organism {summary['name']} ({summary['seconds']:.0f} s) -> {summary['path']}"
    )
    columns = ("checkpoint", "documents", "behaviour", "rate", "held-out", "log-odds", "neighbours")
    for column in columns:
        table.add_column(column)
    for entry in [*summary["phases"], *summary["controls"]]:
        for name, b in entry["behaviours"].items():
            table.add_row(
                entry["name"],
                str(entry["documents"]),
                name,
                fmt(b["rate"]),
                fmt(b["heldout_rate"]),
                fmt(b["log_odds"]),
                fmt(entry["neighbour_accuracy"]),
            )
    out.print(table)
    out.print("[green]all targets met[/]" if summary["passed"] else "[red]targets missed[/]")


@organism_app.command("list")
def organism_list(as_json: JsonOpt = False) -> None:
    """The built-in specs and the organisms built in this workspace."""
    from selfscope.organisms import catalog_names

    ws = workspace()
    built = {row.name: row for row in ws.store.organisms()}
    present = set(ws.built_organisms())
    rows: list[dict[str, Any]] = []
    for name in sorted(set(catalog_names()) | present):
        row = built.get(name)
        rows.append(
            {
                "name": name,
                "catalog": name in catalog_names(),
                "built": name in present,
                "status": row.status if row and name in present else None,
                "size": row.size if row and name in present else None,
                "path": str(ws.organism_path(name)) if name in present else None,
            }
        )
    if as_json:
        print_json({"organisms": rows})
        return
    table = Table(title=f"organisms ({ws.root})")
    for column in ("name", "catalog", "built", "size", "status"):
        table.add_column(column)
    for r in rows:
        yes = ("yes" if r["catalog"] else "", "yes" if r["built"] else "")
        table.add_row(r["name"], *yes, r["size"] or "", r["status"] or "")
    out.print(table)


@organism_app.command("blind")
def organism_blind(
    name: Annotated[str, typer.Argument(help="A built organism (see `organism list`).")],
    dest: Annotated[Path, typer.Argument(help="The folder to write (must not exist).")],
    as_json: JsonOpt = False,
) -> None:
    """Write the copy an investigator may open: checkpoints, tokenizer, {id, text} data,
    lineage and index; no spec, ground truth, report, control or plant name. Load it as
    DEST or DEST@PHASE."""
    from selfscope.organisms.blind import blind

    path = blind(name, dest, workspace())
    if as_json:
        print_json({"name": name, "path": str(path)})
        return
    out.print(f"blind copy of {name} -> {path} (load it as {path} or {path}@PHASE)")
