"""``selfscope serve`` (the HTTP API and the dashboard), ``selfscope token create|list|revoke``,
``selfscope mcp`` (the MCP server): the other doors, started from the command line."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer
from rich.table import Table

from selfscope.cli._common import AsOpt, JsonOpt, out, print_json, workspace
from selfscope.errors import SelfscopeError

token_app = typer.Typer(help="API tokens of the HTTP door (stored hashed).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.command("mcp")(mcp_command)
    app.add_typer(token_app, name="token")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    host: Annotated[str, typer.Option(help="Address to bind (default loopback only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    subjects: Annotated[
        int, typer.Option(min=1, max=16, help="Models kept loaded between requests.")
    ] = 2,
) -> None:
    """Serve the HTTP API (/api, OpenAPI at /openapi.json) and the dashboard (/)."""
    import uvicorn

    from selfscope.http.app import create_app
    from selfscope.oversight import tokens

    ws = workspace()
    if not loopback(host) and not tokens.any_live(ws):
        raise SelfscopeError(
            f"refusing to bind {host} with no API token in this workspace: create one first "
            "(`selfscope token create --name NAME --role ROLE`), or bind 127.0.0.1"
        )
    out.print(f"selfscope on http://{host}:{port}/ (workspace {ws.root}); Ctrl-C stops")
    uvicorn.run(
        create_app(ws.root, keep_loaded=subjects), host=host, port=port, log_level="warning"
    )


def mcp_command(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The default subject of the tools.")
    ] = None,
    transport: Annotated[str, typer.Option(help="stdio or http (streamable HTTP).")] = "stdio",
    host: Annotated[str, typer.Option(help="Address for --transport http.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8766,
) -> None:
    """Serve the read and propose tools over MCP as the `agent` principal."""
    from selfscope import mcp_server

    root = workspace().root
    if transport == "stdio":
        import anyio

        anyio.run(mcp_server.serve_stdio, root, model)
    elif transport == "http":
        if not loopback(host):
            raise SelfscopeError(
                f"the MCP server has no authentication; bind a loopback address, not {host}"
            )
        mcp_server.serve_http(root, model, host, port)
    else:
        raise SelfscopeError(f"unknown transport {transport!r}; use stdio or http")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="The principal the token acts as, e.g. alice.")],
    role: Annotated[str, typer.Option(help="reader, proposer or reviewer.")],
    as_name: AsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant NAME the role and print a new token for it (shown once, stored hashed)."""
    from selfscope.oversight import tokens
    from selfscope.oversight.principals import principal

    ws = workspace()
    label, secret = tokens.create(ws, name, role, principal(ws, as_name))
    if as_json:
        print_json({"name": label, "principal": name, "role": role, "token": secret})
        return
    out.print(f"token {label} for {name} ({role}); it is shown only now:")
    out.print(secret, soft_wrap=True)


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Every token: its name, principal, who made it, whether it is revoked."""
    rows = workspace().store.tokens()
    if as_json:
        print_json(rows)
        return
    table = Table(title="API tokens")
    for column in ("name", "principal", "created by", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["principal"], r["created_by"], "yes" if r["revoked_at"] else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name (selfscope token list).")],
    as_name: AsOpt = None,
) -> None:
    """Revoke a token at once."""
    from selfscope.oversight import tokens
    from selfscope.oversight.principals import principal

    ws = workspace()
    tokens.revoke(ws, name, principal(ws, as_name))
    out.print(f"revoked {name}")
