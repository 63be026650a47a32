"""The MCP door: ``selfscope mcp`` serves the registry's ``read`` and ``propose`` tools to any
MCP client, as the ``agent`` principal (over stdio, or streamable HTTP on loopback).

An agent gets exactly an investigator's powers: the ``govern`` tools (review, apply, roll back,
seal) are not listed, and calling one by name is refused by the registry's permission check
anyway (``agent`` can never hold ``govern``: :mod:`selfscope.oversight.principals`). Each call
goes through :func:`selfscope.tools.call`, so it is validated, recorded in the store as
``agent``, and cites a call id. Every tool's input schema gains an optional ``model`` (the
subject to read; default: the server's ``--model``). A failure is a tool result with
``isError`` and the same one line the CLI prints, never a crashed session.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.oversight.principals import principal
from selfscope.workspace import Workspace

MODEL_FIELD = {
    "type": "string",
    "description": "The subject to read (any source `load` accepts); default: the server's "
    "--model.",
}


def offered() -> list[types.Tool]:
    """The tools an agent sees (from :func:`selfscope.tools.mcp_tools`): every ``read`` and
    ``propose`` tool, never ``govern``; each input schema gains the optional ``model``."""
    listed = []
    for t in tools.mcp_tools():
        permission = t["annotations"]["permission"]
        if permission == "govern":
            continue
        schema = t["inputSchema"]
        schema.setdefault("properties", {})["model"] = MODEL_FIELD
        listed.append(
            types.Tool(
                name=t["name"],
                description=f"[{permission}] {t['description']}",
                input_schema=schema,
                output_schema=t["outputSchema"],
                annotations=types.ToolAnnotations(read_only_hint=permission == "read"),
            )
        )
    return listed


def server(root: str | Path | None = None, model: str | None = None) -> Server[Any]:
    """The MCP server for the workspace at ``root``; ``model`` is the default subject."""
    ws_root = Workspace(root).root
    loaded: dict[str, Any] = {}  # source -> Subject, kept between calls (one session)

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=offered())

    def run(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        ws = Workspace(ws_root)
        try:
            source = arguments.pop("model", None) or model
            if source is not None and not isinstance(source, str):
                raise SelfscopeError("model must be a string (a source `load` accepts)")
            ctx = tools.ToolContext(workspace=ws, principal=principal(ws, "agent"), source=source)
            if source in loaded:
                ctx._subject = loaded[source]
            done = tools.call(name, arguments, ctx)
            if source is not None and ctx._subject is not None:
                loaded.clear()  # one model at a time: a 135M model is 0.5 GB in float32
                loaded[source] = ctx._subject
            return {"call_id": done.id, "result": done.result.model_dump(mode="json")}
        finally:
            if "store" in ws.__dict__:
                ws.store.close()

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        try:
            done = await anyio.to_thread.run_sync(run, params.name, arguments)
        except SelfscopeError as error:
            return _error(str(error))
        except Exception as error:  # a tool's crash is one line for the agent, not a dead session
            return _error(tools._crash(error))
        text = json.dumps(done["result"])
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"call {done['call_id']}: {text}")],
            structured_content=done["result"],
            _meta={"call_id": done["call_id"]},
        )

    return Server(
        "selfscope",
        version="0.1.0",
        instructions="Introspection tools over a language model's weights, activations, "
        "gradients and training data, as the `agent` principal: read and propose, never "
        "approve or apply. Every call is recorded with an id you can cite.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"error: {message}")], is_error=True
    )


async def serve_stdio(root: str | Path | None = None, model: str | None = None) -> None:
    from mcp.server.stdio import stdio_server

    app = server(root, model)
    async with stdio_server() as (read, write):
        await app.run(read, write, app.create_initialization_options())


def serve_http(root: str | Path | None, model: str | None, host: str, port: int) -> None:
    import uvicorn

    app = server(root, model)
    uvicorn.run(app.streamable_http_app(host=host), host=host, port=port, log_level="warning")
