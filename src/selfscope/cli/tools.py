"""``selfscope tool list|run``: the registry itself — any tool, its schema, JSON arguments."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from selfscope import tools
from selfscope.cli._common import DeviceOpt, JsonOpt, context, json_object, out, print_json
from selfscope.errors import SelfscopeError

tool_app = typer.Typer(no_args_is_help=True, help="The introspection tools (one registry).")


def register(app: typer.Typer) -> None:
    app.add_typer(tool_app, name="tool")


@tool_app.command("list")
def tool_list(
    schema: Annotated[
        str | None, typer.Option(help="Print the schema instead: openai | mcp.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every registered tool with its permission and description."""
    if schema is not None:
        if schema not in ("openai", "mcp"):
            raise SelfscopeError(f"unknown schema {schema!r}; use openai or mcp")
        print_json(tools.openai_schema() if schema == "openai" else tools.mcp_tools())
        return
    listing: list[dict[str, Any]] = [
        {
            "name": t.name,
            "permission": t.permission,
            "description": t.description,
            "arguments": list(t.input.model_fields),
        }
        for t in tools.registry().values()
    ]
    if as_json:
        print_json({"tools": listing})
        return
    table = Table(title="tools")
    for column in ("name", "permission", "arguments", "description"):
        table.add_column(column)
    for t in listing:
        table.add_row(t["name"], t["permission"], ", ".join(t["arguments"]), t["description"])
    out.print(table)


@tool_app.command("run")
def tool_run(
    name: Annotated[str, typer.Argument(help="A tool name (see `tool list`).")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Any source `load` accepts (tools that read one)."),
    ] = None,
    args: Annotated[
        str, typer.Option("--args", help="The tool's arguments as a JSON object.")
    ] = "{}",
    device: DeviceOpt = "cpu",
) -> None:
    """Run one tool and print its result as JSON, with the call id under "call_id"."""
    tool_ = tools.get(name)  # unknown tool: fail before anything else
    parsed = json_object(args)
    done = tools.call(tool_.name, parsed, context(model, device, quiet=True))
    sys.stdout.write(
        '{"call_id": "' + done.id + '", "result": ' + done.result.model_dump_json(indent=2) + "}\n"
    )
