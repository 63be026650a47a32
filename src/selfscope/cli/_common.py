"""What every command module shares: options, the workspace, the tool context, JSON output.

Commands are thin doors: they turn options into a tool's arguments, call it through
:func:`selfscope.tools.call` (so the call is permission-checked and recorded like any other),
and render the typed result. ``--json`` prints the result on stdout; progress and news go to
stderr.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.progress import SILENT, RichProgress
from selfscope.workspace import Workspace

# 80 columns when piped would cut behaviour names; a terminal keeps its own width
out = Console(width=None if sys.stdout.isatty() else 140, emoji=False)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-w", help="Workspace folder (default $SELFSCOPE_HOME or ./.selfscope)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Any source `load` accepts.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")]
PromptsOpt = Annotated[
    list[str], typer.Option("--prompt", "-p", help="A prompt showing the behaviour (repeat).")
]
PlantedOpt = Annotated[str, typer.Option(help="The behaviour's completion, e.g. ' No'.")]
NormalOpt = Annotated[str, typer.Option(help="The normal completion, e.g. ' Yes'.")]
ChatOpt = Annotated[bool, typer.Option("--chat", help="Use the model's chat template.")]


_ROOT: ContextVar[Path | None] = ContextVar("selfscope_cli_workspace", default=None)


def use_workspace(root: Path | None) -> None:
    """Set this invocation's workspace (the app's ``--workspace`` callback)."""
    _ROOT.set(root)


def workspace() -> Workspace:
    """The workspace of this invocation (``--workspace``, else the default)."""
    return Workspace(_ROOT.get())


AsOpt = Annotated[
    str | None,
    typer.Option("--as", help="Act as this principal (default: $SELFSCOPE_PRINCIPAL, else $USER)."),
]


def context(
    model: str | None = None, device: str = "cpu", quiet: bool = False, as_name: str | None = None
) -> tools.ToolContext:
    """The tool context of a command: this workspace, the principal acting (``--as``, else the
    local identity, with the permissions the workspace grants it), the model loaded on first
    use, progress on stderr unless ``quiet`` (``--json``)."""
    from selfscope.oversight.principals import principal

    ws = workspace()
    return tools.ToolContext(
        workspace=ws,
        principal=principal(ws, as_name),
        progress=SILENT if quiet else RichProgress(),
        source=model,
        device=device,
    )


def call(name: str, args: dict[str, Any] | BaseModel, ctx: tools.ToolContext) -> Any:
    """Run tool ``name`` and return its typed result (the call is recorded in the store)."""
    return tools.call(name, args, ctx).result


def json_object(text: str, option: str = "--args") -> dict[str, Any]:
    """``text`` parsed as a JSON object, or one line that says how to write it."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise SelfscopeError(
            f'{option} is not JSON ({error.msg}); give an object like \'{{"prompt": "..."}}\''
        ) from None
    if not isinstance(parsed, dict):
        raise SelfscopeError(f"{option} must be a JSON object")
    return parsed


def jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(obj), indent=2) + "\n")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
