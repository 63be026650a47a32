"""The command line: one Typer app, one module per room, every capability through the tools.

```
selfscope organism build|list      cli/organisms.py   the lab
selfscope models list, ask         cli/models.py      what can be loaded, and what it says
selfscope lineage add|list         cli/lineage.py     bring your own lineage (base -> fine-tune)
selfscope tool list|run            cli/tools.py       the registry itself (any tool, JSON args)
selfscope localize                 cli/localize.py    the debugger (localize.all)
selfscope index build, trace       cli/history.py     the historian
selfscope propose|validate       cli/edits.py       the surgeon (sandbox validation)
selfscope proposals list|show|validate, review, apply, rollback, principal
                                   cli/gate.py        the gate (selfscope.oversight)
selfscope ledger|versions|policy|suite  cli/ledger.py the guardian's records
selfscope demo                     cli/demo.py        the loop on the mushroom organism
selfscope serve, mcp, token        cli/serve.py       the other doors: HTTP + dashboard, MCP
selfscope organism random, bench   cli/game.py        the auditing game (selfscope.game)
```

Bad input is reported as one line on stderr (``error: ...``) with exit status 2, never a
traceback; ``--json`` prints one JSON object on stdout and keeps progress on stderr.
"""

from __future__ import annotations

import sys

import typer

from selfscope.cli import (
    demo,
    edits,
    game,
    gate,
    history,
    investigate,
    ledger,
    lineage,
    localize,
    models,
    organisms,
    selfmodel,
    serve,
)
from selfscope.cli import tools as tools_cli
from selfscope.cli._common import WorkspaceOpt, use_workspace
from selfscope.errors import SelfscopeError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Hyper-introspection for language models.",
)


@app.callback()
def _main(workspace: WorkspaceOpt = None) -> None:
    use_workspace(workspace)  # this invocation's; no environment writes


ROOMS = (organisms, models, lineage, tools_cli, localize, history, edits, gate, ledger, selfmodel)
for room in (*ROOMS, investigate, demo, serve, game):
    room.register(app)


def main() -> None:
    """Entry point: one clear line on bad input, exit status 2."""
    try:
        app(standalone_mode=False)
    except SelfscopeError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing was overwritten\n")
        sys.exit(130)
    except (typer.Exit, SystemExit) as stop:
        code = getattr(stop, "exit_code", getattr(stop, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as error:  # usage errors (typer's own click)
        format_message = getattr(error, "format_message", None)
        sys.stderr.write(f"error: {format_message() if format_message else error}\n")
        sys.exit(2)
