"""The tool registry: every capability, registered once, reachable the same way from every door.

A tool is a plain typed function ``fn(subject, args) -> result`` with a pydantic input model, a
pydantic output model (JSON-serialisable), a docstring an LLM can read, and a permission:
``read`` (inspect), ``propose`` (create a proposal) or ``govern`` (approve, apply, roll back).
The CLI (``selfscope tool run``), and later the HTTP API, the MCP server and the investigator,
call :func:`call`, never the function directly, so every call is validated the same way and
recorded in the store (tool, arguments, result digest, subject, time).

:func:`openai_schema` and :func:`mcp_tools` describe the same definitions in the two formats
LLM clients read (tool names there use ``_`` for ``.``, which OpenAI does not allow).
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from selfscope.errors import SelfscopeError

Permission = Literal["read", "propose", "govern"]
In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

#: modules whose import registers tools (kept explicit: no scanning, no plugins yet)
TOOL_MODULES = (
    "selfscope.access.activations",
    "selfscope.access.gradients",
    "selfscope.access.lens",
    "selfscope.access.temperature",
    "selfscope.access.tokens",
    "selfscope.access.weights",
    "selfscope.edits.ablate",
    "selfscope.edits.experts",
    "selfscope.edits.rank_one",
    "selfscope.edits.revert",
    "selfscope.edits.steer",
    "selfscope.edits.unlearn",
    "selfscope.edits.validate",
    "selfscope.history.lexical",
    "selfscope.history.removal",
    "selfscope.history.retrieval",
    "selfscope.history.semantic",
    "selfscope.localize.attribution",
    "selfscope.localize.deltas",
    "selfscope.localize.experts",
    "selfscope.localize.origin",
    "selfscope.localize.trace",
)


@dataclass(frozen=True)
class Tool:
    name: str
    input: type[BaseModel]
    output: type[BaseModel]
    fn: Callable[[Any, Any], BaseModel]
    permission: Permission
    description: str

    @property
    def schema_name(self) -> str:
        return self.name.replace(".", "_")


_REGISTRY: dict[str, Tool] = {}
_WORKSPACE: ContextVar[Any] = ContextVar("selfscope_workspace", default=None)


def workspace() -> Any:
    """The workspace of the tool call running now (``call``'s argument), else the default one.
    ``propose`` tools store their proposals there."""
    from selfscope.workspace import Workspace

    current = _WORKSPACE.get()
    return current if current is not None else Workspace()


def tool(
    name: str, input: type[In], output: type[Out], permission: Permission = "read"
) -> Callable[[Callable[[Any, In], Out]], Callable[[Any, In], Out]]:
    """Register ``fn(subject, args)`` as tool ``name``; its docstring is its description."""

    def register(fn: Callable[[Any, In], Out]) -> Callable[[Any, In], Out]:
        if name in _REGISTRY:
            raise ValueError(f"tool {name!r} is registered twice")
        doc = " ".join((fn.__doc__ or "").split())
        _REGISTRY[name] = Tool(name, input, output, fn, permission, doc)
        return fn

    return register


def registry() -> dict[str, Tool]:
    for module in TOOL_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Tool:
    tools = registry()
    found = tools.get(name) or next((t for t in tools.values() if t.schema_name == name), None)
    if found is None:
        raise SelfscopeError(f"unknown tool {name!r}; tools: {', '.join(tools)}")
    return found


def parse_args(tool_: Tool, args: dict[str, Any]) -> BaseModel:
    try:
        return tool_.input.model_validate(args)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "arguments"
        fields = ", ".join(
            f"{k}{'' if f.is_required() else '?'}" for k, f in tool_.input.model_fields.items()
        )
        raise SelfscopeError(
            f"{tool_.name}: {where}: {first['msg']}; arguments are {{{fields}}} (? = optional)"
        ) from None


def call(name: str, subject: Any, args: dict[str, Any], workspace: Any = None) -> BaseModel:
    """Validate ``args``, run tool ``name`` on ``subject``, record the call, return the result."""
    tool_ = get(name)
    parsed = parse_args(tool_, args)
    started = time.perf_counter()
    token = _WORKSPACE.set(workspace)
    try:
        result = tool_.fn(subject, parsed)
    finally:
        _WORKSPACE.reset(token)
    seconds = time.perf_counter() - started
    if workspace is not None:
        payload = result.model_dump_json().encode()
        workspace.store.record_tool_call(
            tool_.name,
            parsed.model_dump_json(),
            hashlib.sha256(payload).hexdigest(),
            getattr(subject, "source", "?"),
            str(getattr(subject, "path", "")),
            seconds,
        )
    return result


def openai_schema() -> list[dict[str, Any]]:
    """OpenAI-style function tools, one per registered tool."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.schema_name,
                "description": f"[{t.permission}] {t.description}",
                "parameters": t.input.model_json_schema(),
            },
        }
        for t in registry().values()
    ]


def mcp_tools() -> list[dict[str, Any]]:
    """MCP-style tool list (name, description, inputSchema, outputSchema)."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "inputSchema": t.input.model_json_schema(),
            "outputSchema": t.output.model_json_schema(),
            "annotations": {"permission": t.permission, "readOnlyHint": t.permission == "read"},
        }
        for t in registry().values()
    ]
