"""The tool contract: every capability registered once, reached the same way from every door.

A *tool* is a typed function ``fn(ctx, args) -> result``: ``args`` is an instance of its
pydantic input model, the result an instance of its pydantic output model (JSON-serialisable,
fields described, so the MCP ``outputSchema`` an agent reads explains itself), and ``ctx`` a
:class:`ToolContext` — everything a tool may use besides its arguments:

* ``workspace`` — where the store, organisms, indexes, deltas and proposals live;
* ``subject`` — the model under introspection, loaded lazily from ``source`` the first time a
  tool asks for it (a tool that lists proposals never loads a model);
* ``principal`` — who is calling and with which permissions;
* ``progress`` — a sink for progress bars and news (:mod:`selfscope.progress`): how progress is
  shown is the door's business, never an argument of the tool;
* ``call_id`` — the id of the call running now, so what a tool measures can cite it.

Each tool has one permission: ``read`` (inspect), ``propose`` (create a proposal) or ``govern``
(approve, apply, roll back). The CLI, the HTTP API, the MCP server and the investigator all go
through :func:`call`, which

1. checks the principal holds the tool's permission (else one line, and the refusal is
   recorded too),
2. validates the arguments (one line naming the field and listing the arguments),
3. records the call in the workspace's store *before* it runs (status ``running``) and
   completes the record after (``ok`` with the result's SHA-256, or ``error`` with the message),
4. returns a :class:`ToolCall`: the call id beside the typed result.

Call ids are what :class:`selfscope.behaviour.Evidence` cites, so a proposal or a diagnosis can
be traced back to the exact recorded calls it rests on. A tool that runs other tools does it
with ``ctx.call(name, args)``: the inner call is recorded with the outer one as its parent and
runs with the same principal (a ``read`` caller cannot escalate through a composite tool).

:func:`openai_schema` and :func:`mcp_tools` describe the same definitions in the two formats
LLM clients read (tool names there use ``_`` for ``.``, which OpenAI does not allow).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import secrets
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from selfscope.errors import SelfscopeError
from selfscope.progress import SILENT, ProgressSink
from selfscope.workspace import Workspace

if TYPE_CHECKING:
    from selfscope.subject import Subject

Permission = Literal["read", "propose", "govern"]
PERMISSIONS: tuple[Permission, ...] = ("read", "propose", "govern")
In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

#: modules whose import registers tools (kept explicit; tests/test_layers.py checks that it
#: lists exactly the modules holding a ``@tool`` site)
TOOL_MODULES = (
    "selfscope.access.activations",
    "selfscope.access.ask",
    "selfscope.access.gradients",
    "selfscope.access.lens",
    "selfscope.access.temperature",
    "selfscope.access.tokens",
    "selfscope.access.weights",
    "selfscope.edits.ablate",
    "selfscope.edits.experts",
    "selfscope.edits.listing",
    "selfscope.edits.rank_one",
    "selfscope.edits.revert",
    "selfscope.edits.steer",
    "selfscope.edits.unlearn",
    "selfscope.edits.validate",
    "selfscope.history.build",
    "selfscope.history.lexical",
    "selfscope.history.removal",
    "selfscope.history.retrieval",
    "selfscope.history.semantic",
    "selfscope.localize.attribution",
    "selfscope.localize.deltas",
    "selfscope.localize.experts",
    "selfscope.localize.origin",
    "selfscope.localize.pipeline",
    "selfscope.localize.trace",
    "selfscope.oversight.gate",
    "selfscope.oversight.ledger",
    "selfscope.oversight.sealed",
    "selfscope.oversight.versions",
    "selfscope.selfmodel.introspect",
    "selfscope.selfmodel.traits",
)


PRINCIPAL_ENV = "SELFSCOPE_PRINCIPAL"


def local_name() -> str:
    """The local identity: ``$SELFSCOPE_PRINCIPAL``, else the first line of
    ``~/.config/selfscope/principal``, else ``$USER`` (else ``local``)."""
    from pathlib import Path

    named = os.environ.get(PRINCIPAL_ENV, "").strip()
    if named:
        return named
    config = Path.home() / ".config" / "selfscope" / "principal"
    if config.is_file():
        lines = config.read_text().strip().splitlines()
        if lines and lines[0].strip():
            return lines[0].strip()
    return os.environ.get("USER") or "local"


class PermissionDenied(SelfscopeError):
    """The caller lacks the permission a tool needs."""


@dataclass(frozen=True)
class Principal:
    """Who calls a tool, and what they may do."""

    name: str
    permissions: frozenset[Permission]

    @classmethod
    def of(cls, name: str, *permissions: Permission) -> Principal:
        unknown = [p for p in permissions if p not in PERMISSIONS]
        if unknown:
            raise SelfscopeError(
                f"unknown permission {unknown[0]!r}; permissions: read, propose, govern"
            )
        return cls(name, frozenset(permissions))

    @classmethod
    def local(cls) -> Principal:
        """The person at the keyboard of the CLI (:func:`local_name`): reads and proposes;
        governing (approving, applying) is granted explicitly in the workspace's principals
        table (:mod:`selfscope.oversight.principals`), never by default."""
        return cls.of(local_name(), "read", "propose")

    def holds(self, permission: Permission) -> bool:
        return permission in self.permissions


#: an investigator or an LLM agent: ``read`` + ``propose``, never ``govern`` (DESIGN.md)
AGENT = Principal.of("agent", "read", "propose")
INVESTIGATOR = Principal.of("investigator", "read", "propose")  # selfscope investigate
READER = Principal.of("reader", "read")


@dataclass
class ToolContext:
    """What a running tool may use besides its arguments (see the module docstring).

    Give either a loaded ``subject`` or a ``source`` string (loaded on first use of
    :attr:`subject`, with ``device``); tools that need no model never load one.
    """

    workspace: Workspace
    principal: Principal = field(default_factory=Principal.local)
    progress: ProgressSink = SILENT
    source: str | None = None
    device: str = "cpu"
    call_id: str | None = None
    _subject: Subject | None = None

    @property
    def subject(self) -> Subject:
        """The model under introspection (loaded now if only its source was given)."""
        if self._subject is None:
            if self.source is None:
                raise SelfscopeError("this tool needs a model: give one (--model SOURCE)")
            from selfscope.subject import load

            self._subject = load(self.source, self.workspace, device=self.device)
        return self._subject

    @property
    def has_subject(self) -> bool:
        return self._subject is not None

    def subject_name(self) -> str:
        if self._subject is not None:
            return self._subject.source
        return self.source or "-"

    def call(self, name: str, args: Mapping[str, Any] | BaseModel) -> ToolCall[Any]:
        """Run another tool as part of this call (same subject, principal and progress; the
        inner call is recorded with this call as its parent)."""
        return call(name, args, self)


def context(
    subject: Subject | str | None = None,
    workspace: Workspace | str | os.PathLike[str] | None = None,
    *,
    principal: Principal | None = None,
    progress: ProgressSink = SILENT,
    device: str = "cpu",
) -> ToolContext:
    """A :class:`ToolContext` for a loaded subject or a source string; the workspace defaults
    to ``$SELFSCOPE_HOME`` or ``./.selfscope`` (calls are always recorded somewhere)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    loaded = None if subject is None or isinstance(subject, str) else subject
    return ToolContext(
        workspace=ws,
        principal=principal or Principal.local(),
        progress=progress,
        source=subject if isinstance(subject, str) else (loaded.source if loaded else None),
        device=device if loaded is None else str(getattr(loaded, "device", device)),
        _subject=loaded,
    )


@dataclass(frozen=True)
class Tool(Generic[In, Out]):
    name: str
    input: type[In]
    output: type[Out]
    fn: Callable[[ToolContext, In], Out]
    permission: Permission
    description: str

    @property
    def schema_name(self) -> str:
        return self.name.replace(".", "_")


@dataclass(frozen=True)
class ToolCall(Generic[Out]):
    """One recorded call: its id (cite it as evidence), the tool, the typed result."""

    id: str
    tool: str
    result: Out
    seconds: float


_REGISTRY: dict[str, Tool[Any, Any]] = {}


def tool(
    name: str, input: type[In], output: type[Out], permission: Permission = "read"
) -> Callable[[Callable[[ToolContext, In], Out]], Callable[[ToolContext, In], Out]]:
    """Register ``fn(ctx, args)`` as tool ``name``; its docstring is its description."""

    def register(fn: Callable[[ToolContext, In], Out]) -> Callable[[ToolContext, In], Out]:
        if name in _REGISTRY:
            raise ValueError(f"tool {name!r} is registered twice")
        doc = " ".join((fn.__doc__ or "").split())
        _REGISTRY[name] = Tool(name, input, output, fn, permission, doc)
        return fn

    return register


def registry() -> dict[str, Tool[Any, Any]]:
    for module in TOOL_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Tool[Any, Any]:
    tools = registry()
    found = tools.get(name) or next((t for t in tools.values() if t.schema_name == name), None)
    if found is None:
        raise SelfscopeError(f"unknown tool {name!r}; tools: {', '.join(tools)}")
    return found


def parse_args(tool_: Tool[In, Any], args: Mapping[str, Any] | BaseModel) -> In:
    if isinstance(args, tool_.input):
        return args
    raw = args.model_dump() if isinstance(args, BaseModel) else dict(args)
    try:
        return tool_.input.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "arguments"
        fields = ", ".join(
            f"{k}{'' if f.is_required() else '?'}" for k, f in tool_.input.model_fields.items()
        )
        raise SelfscopeError(
            f"{tool_.name}: {where}: {first['msg']}; arguments are {{{fields}}} (? = optional)"
        ) from None


def new_call_id() -> str:
    """A call id: time-ordered (milliseconds, hex) and random, e.g. ``c193f4a2b1c7-9f3e0a1b``."""
    return f"c{int(time.time() * 1000):x}-{secrets.token_hex(4)}"


def call(name: str, args: Mapping[str, Any] | BaseModel, ctx: ToolContext) -> ToolCall[Any]:
    """Check the permission, validate ``args``, run tool ``name`` in ``ctx``, record the call
    (always: refusals and failures too), and return the call id beside the result."""
    tool_ = get(name)
    store = ctx.workspace.store
    call_id = new_call_id()
    raw = args.model_dump(mode="json") if isinstance(args, BaseModel) else dict(args)
    if not ctx.principal.holds(tool_.permission):
        message = (
            f"{ctx.principal.name} may not call {tool_.name}: it needs the '{tool_.permission}' "
            f"permission and {ctx.principal.name} holds "
            f"{', '.join(sorted(ctx.principal.permissions)) or 'none'}"
        )
        store.record_call_start(
            call_id, tool_.name, _json(raw), ctx.subject_name(), ctx.principal.name,
            tool_.permission, ctx.call_id,
        )  # fmt: skip
        store.record_call_end(call_id, "denied", None, 0.0, message)
        raise PermissionDenied(message)
    try:
        parsed = parse_args(tool_, args)
    except SelfscopeError as error:
        store.record_call_start(
            call_id, tool_.name, _json(raw), ctx.subject_name(), ctx.principal.name,
            tool_.permission, ctx.call_id,
        )  # fmt: skip
        store.record_call_end(call_id, "invalid", None, 0.0, str(error))
        raise
    store.record_call_start(
        call_id, tool_.name, parsed.model_dump_json(), ctx.subject_name(), ctx.principal.name,
        tool_.permission, ctx.call_id,
    )  # fmt: skip
    inner = replace(ctx, call_id=call_id)
    started = time.perf_counter()
    try:
        result = tool_.fn(inner, parsed)
    except BaseException as error:
        message = str(error) if isinstance(error, SelfscopeError) else _crash(error)
        store.record_call_end(call_id, "error", None, time.perf_counter() - started, message)
        raise
    finally:
        if inner._subject is not None and ctx._subject is None:
            ctx._subject = inner._subject  # loaded lazily inside: keep it for the next call
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(result.model_dump_json().encode()).hexdigest()
    store.record_call_end(
        call_id, "ok", digest, seconds, None, str(getattr(inner._subject, "path", ""))
    )
    return ToolCall(call_id, tool_.name, result, seconds)


def _json(raw: Any) -> str:
    return json.dumps(raw, sort_keys=True, default=str)


def _crash(error: BaseException) -> str:
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return f"{type(error).__name__}: {error}{where}"


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
