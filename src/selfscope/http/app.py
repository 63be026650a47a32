"""The HTTP door: every registered tool, investigations as jobs, proposals, versions, the
ledger and the self-model, behind API tokens; and the dashboard (``/``).

``create_app(root)`` builds the FastAPI app for the workspace at ``root``. The routes are thin:
each turns its request into a tool's arguments and runs it through :func:`selfscope.tools.call`
as the token's principal (so the permission check, the argument validation and the call record
are the registry's, the same as for the CLI and MCP), or reads what the CLI reads.

* **Auth**: every ``/api`` route but ``/api/health`` needs ``Authorization: Bearer <token>``
  (:mod:`selfscope.oversight.tokens`): a missing or unknown token → 401, a token whose
  principal lacks the permission → 403. Routes without a tool behind them state their
  permission (:func:`need`).
* **Errors** are JSON problems (RFC 9457): ``{"type", "title", "status", "detail"}``, where
  ``detail`` is the same one line the CLI prints. Unexpected failures are 500 with one line.
* **Threads**: routes run in the server's thread pool, each with a workspace (SQLite
  connection) of its own; models stay loaded between requests (:class:`Subjects`), one call
  at a time per model (hooks are per model).
* **Files**: only an investigation's own report files are served, resolved inside its folder.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from selfscope import tools
from selfscope.errors import LoadError, SelfscopeError
from selfscope.http import jobs
from selfscope.oversight import gate, tokens
from selfscope.tools import Permission, PermissionDenied, Principal
from selfscope.workspace import Workspace

PROBLEM = "application/problem+json"


class Problem(Exception):
    """An HTTP error with one line of detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Invalid input",
    500: "Internal error",
}


def problem(status: int, detail: str) -> JSONResponse:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body | {"detail": detail}, status, headers=headers, media_type=PROBLEM)


def status_of(error: SelfscopeError) -> int:
    text = str(error)
    if isinstance(error, PermissionDenied):
        return 403
    if text.startswith(("unknown tool", "no job", "no investigation", "no proposal")):
        return 404
    if "arguments are {" in text or isinstance(error, LoadError):
        return 422
    if "stale" in text:
        return 409
    return 400


class Subjects:
    """Loaded models kept between requests: keyed by source and HEAD (an apply or a rollback
    moves HEAD, so the next request loads the new version), at most ``size`` at once."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, key: tuple[str, str]) -> Any:
        with self._guard:
            found = self._loaded.get(key)
            if found is not None:
                self._loaded.move_to_end(key)
            return found

    def put(self, key: tuple[str, str], subject: Any) -> None:
        with self._guard:
            self._loaded[key] = subject
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)


# -- request and response bodies ------------------------------------------------------------
class ToolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(
        default=None, min_length=1, description="The subject, for tools that read a model."
    )
    args: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments.")


class ToolResponse(BaseModel):
    call_id: str = Field(description="The recorded call (cite it as evidence).")
    tool: str
    seconds: float
    result: dict[str, Any]


class ToolInfo(BaseModel):
    name: str
    permission: Permission
    description: str
    input_schema: dict[str, Any]


class Whoami(BaseModel):
    principal: str
    permissions: list[str]


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approve: bool = Field(description="True to approve, False to reject.")
    note: str = Field(default="", max_length=2000, description="Why, in a sentence.")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    to: str | None = None


class Started(BaseModel):
    job: str
    state: str


# -- dependencies (module level: the route signatures' annotations are resolved here) -----
def workspace(request: Request) -> Iterator[Workspace]:
    """A workspace of the request's own (one SQLite connection, closed after the response)."""
    ws = Workspace(request.app.state.root)
    try:
        yield ws
    finally:
        if "store" in ws.__dict__:
            ws.store.close()


Ws = Annotated[Workspace, Depends(workspace)]


def caller(
    ws: Ws,
    authorization: Annotated[
        str | None, Header(description="`Bearer <token>` (selfscope token create)")
    ] = None,
) -> Principal:
    """The principal the request's token acts as: 401 without a live token."""
    if not authorization:
        raise Problem(
            401,
            "no token: send `Authorization: Bearer <token>` "
            "(make one with `selfscope token create --name NAME --role ROLE`)",
        )
    scheme, _, secret = authorization.partition(" ")
    found = tokens.resolve(ws, secret.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise Problem(401, "unknown or revoked token")
    return found


Caller = Annotated[Principal, Depends(caller)]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selfscope")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(root: str | Path | None = None, *, keep_loaded: int = 2) -> FastAPI:
    """The app for the workspace at ``root`` (default: ``$SELFSCOPE_HOME`` or ./.selfscope)."""
    ws_root = Workspace(root).root
    loaded = Subjects(keep_loaded)
    app = FastAPI(
        title="selfscope",
        version=_version(),
        description="Hyper-introspection for language models: every tool, the gate, the "
        "ledger and the self-model, behind API tokens. Errors are JSON problems whose "
        "`detail` is one line saying what to fix.",
    )
    app.state.root = ws_root

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(Problem)
    async def _problem(_: Request, error: Problem) -> JSONResponse:
        return problem(error.status, error.detail)

    @app.exception_handler(SelfscopeError)
    async def _selfscope(_: Request, error: SelfscopeError) -> JSONResponse:
        return problem(status_of(error), str(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return problem(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return problem(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, error: Exception) -> JSONResponse:
        return problem(500, tools._crash(error))

    def need(who: Principal, permission: Permission, what: str) -> None:
        if not who.holds(permission):
            raise Problem(
                403,
                f"{who.name} may not {what}: it needs the '{permission}' permission and holds "
                f"{', '.join(sorted(who.permissions)) or 'none'}",
            )

    def run(
        ws: Workspace, who: Principal, name: str, args: dict[str, Any], model: str | None = None
    ) -> tools.ToolCall[Any]:
        """``tools.call`` as ``who``, with the model kept loaded between requests."""
        ctx = tools.ToolContext(workspace=ws, principal=who, source=model)
        if model is None:
            return tools.call(name, args, ctx)
        from selfscope.subject.load import version_key

        key = (model, ws.store.head(version_key(model, ws)) or "-")
        with loaded.lock(key):
            ctx._subject = loaded.get(key)
            done = tools.call(name, args, ctx)
            if ctx._subject is not None:
                loaded.put(key, ctx._subject)
            return done

    def result(done: tools.ToolCall[Any]) -> dict[str, Any]:
        return dict(done.result.model_dump(mode="json"))

    # -- the API ----------------------------------------------------------------------------
    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Is the server up (no token needed)."""
        return {"ok": True}

    @app.get("/api/whoami", tags=["meta"])
    def whoami(who: Caller) -> Whoami:
        """The principal the token acts as, and its permissions."""
        return Whoami(principal=who.name, permissions=sorted(who.permissions))

    @app.get("/api/tools", tags=["tools"])
    def tool_list(who: Caller) -> list[ToolInfo]:
        """Every registered tool with its permission and input schema."""
        need(who, "read", "list tools")
        return [
            ToolInfo(
                name=t.name,
                permission=t.permission,
                description=t.description,
                input_schema=t.input.model_json_schema(),
            )
            for t in tools.registry().values()
        ]

    @app.post("/api/tools/{name}", tags=["tools"])
    def tool_call(name: str, body: ToolRequest, who: Caller, ws: Ws) -> ToolResponse:
        """Run one tool as the token's principal (checked, validated and recorded by the
        registry)."""
        done = run(ws, who, name, body.args, body.model)
        return ToolResponse(
            call_id=done.id, tool=done.tool, seconds=done.seconds, result=result(done)
        )

    @app.get("/api/subjects", tags=["versions"])
    def subjects(who: Caller, ws: Ws) -> list[dict[str, Any]]:
        """Built organisms and every subject with versions: HEAD and how many versions."""
        need(who, "read", "list subjects")
        rows: dict[str, dict[str, Any]] = {}
        for name in ws.built_organisms():
            rows[f"organism:{name}"] = {"source": f"organism:{name}", "key": None}
        from selfscope.subject.load import version_key

        for source in list(rows):
            try:
                rows[source]["key"] = version_key(source, ws)
            except SelfscopeError:
                continue
        keys = {r["key"]: s for s, r in rows.items() if r["key"]}
        for key in ws.store.subjects():
            source = keys.get(key, key)
            rows.setdefault(source, {"source": source, "key": key})
        for row in rows.values():
            versions = ws.store.versions(row["key"]) if row["key"] else []
            head = ws.store.head(row["key"]) if row["key"] else None
            number = next((v["number"] for v in versions if v["id"] == head), None)
            row |= {"versions": len(versions), "head": head, "head_number": number}
        return sorted(rows.values(), key=lambda r: r["source"])

    @app.get("/api/versions", tags=["versions"])
    def versions(who: Caller, ws: Ws, model: str = Query(min_length=1)) -> dict[str, Any]:
        """A subject's versions, HEAD marked (tool versions.list)."""
        return result(run(ws, who, "versions.list", {"model": model}))

    @app.get("/api/versions/verify", tags=["versions"])
    def versions_verify(who: Caller, ws: Ws, model: str = Query(min_length=1)) -> dict[str, Any]:
        """Check every version's files against the hashes in the ledger (versions.verify)."""
        return result(run(ws, who, "versions.verify", {"model": model}))

    @app.post("/api/rollback", tags=["versions"])
    def rollback(body: RollbackBody, who: Caller, ws: Ws) -> dict[str, Any]:
        """Move HEAD back (gate.rollback; govern)."""
        return result(run(ws, who, "gate.rollback", body.model_dump()))

    @app.get("/api/proposals", tags=["proposals"])
    def proposals(who: Caller, ws: Ws) -> list[dict[str, Any]]:
        """Every proposal, oldest first, with its status."""
        need(who, "read", "list proposals")
        return gate.proposal_listing(ws)

    @app.get("/api/proposals/{proposal_id}", tags=["proposals"])
    def proposal(proposal_id: str, who: Caller, ws: Ws) -> dict[str, Any]:
        """One proposal: what it changes, its evidence, its validations and reviews."""
        need(who, "read", "read proposals")
        return gate.proposal_record(ws, proposal_id)

    @app.post("/api/proposals/{proposal_id}/validate", tags=["proposals"])
    def validate(proposal_id: str, who: Caller, ws: Ws) -> dict[str, Any]:
        """Validate through the gate (gate.validate; propose)."""
        return result(run(ws, who, "gate.validate", {"proposal": proposal_id}))

    @app.post("/api/proposals/{proposal_id}/review", tags=["proposals"])
    def review(proposal_id: str, body: ReviewBody, who: Caller, ws: Ws) -> dict[str, Any]:
        """Approve or reject (gate.review; govern; never your own proposal)."""
        return result(run(ws, who, "gate.review", {"proposal": proposal_id} | body.model_dump()))

    @app.post("/api/proposals/{proposal_id}/apply", tags=["proposals"])
    def apply(proposal_id: str, who: Caller, ws: Ws) -> dict[str, Any]:
        """Apply an approved proposal: a new version, HEAD moves (gate.apply; govern)."""
        return result(run(ws, who, "gate.apply", {"proposal": proposal_id}))

    @app.get("/api/ledger", tags=["ledger"])
    def ledger(
        who: Caller,
        ws: Ws,
        last: int = Query(default=50, ge=1, le=10_000),
        action: str | None = Query(default=None, max_length=100),
    ) -> dict[str, Any]:
        """The last ledger entries (ledger.show)."""
        return result(run(ws, who, "ledger.show", {"last": last, "action": action}))

    @app.get("/api/ledger/verify", tags=["ledger"])
    def ledger_verify(who: Caller, ws: Ws) -> dict[str, Any]:
        """Walk the hash chain (ledger.verify)."""
        return result(run(ws, who, "ledger.verify", {}))

    @app.get("/api/selfmodel", tags=["selfmodel"])
    def selfmodel(who: Caller, ws: Ws, model: str = Query(min_length=1)) -> dict[str, Any]:
        """The subject's self-model: its traits (selfmodel.show)."""
        return result(run(ws, who, "selfmodel.show", {}, model))

    @app.post("/api/selfmodel/check", tags=["selfmodel"])
    def selfmodel_check(who: Caller, ws: Ws, model: str = Query(min_length=1)) -> dict[str, Any]:
        """Re-measure every trait on HEAD (selfmodel.check)."""
        return result(run(ws, who, "selfmodel.check", {}, model))

    # -- investigations (jobs) --------------------------------------------------------------
    @app.post("/api/investigations", tags=["investigations"], status_code=202)
    def investigate(body: jobs.InvestigationRequest, who: Caller, ws: Ws) -> Started:
        """Start an investigation as a background job (propose: it leaves proposals)."""
        need(who, "propose", "start investigations")
        from selfscope.subject.load import version_key

        version_key(body.model, ws)  # an unknown model is one line now, not a failed job
        job = jobs.start(ws, body, who.name)
        return Started(job=job, state=jobs.status(ws, job).state)

    @app.get("/api/investigations", tags=["investigations"])
    def investigations(who: Caller, ws: Ws) -> list[dict[str, Any]]:
        """Every finished investigation in the workspace (newest first)."""
        need(who, "read", "list investigations")
        root = ws.root / "investigations"
        found = sorted(root.glob("*/result.json"), key=lambda p: -p.stat().st_mtime)
        rows = []
        for path in found:
            try:
                r = json.loads(path.read_text())
                row = {
                    "id": r["investigation"],
                    "model": r["model"],
                    "prompts": r["symptom"]["prompts"],
                    "observed": r["symptom"]["observed"],
                    "desired": r["symptom"]["desired"],
                    "phase": (r.get("origin") or {}).get("phase"),
                    "submitted": r.get("submitted"),
                    "finished_at": path.stat().st_mtime,
                }
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not an investigation's result (or being replaced): not listed
            rows.append(row)
        return rows

    def inv_folder(ws: Workspace, inv_id: str) -> Path:
        if not (len(inv_id) == 16 and all(c in "0123456789abcdef" for c in inv_id)):
            raise Problem(404, f"no investigation {inv_id!r}: ids are 16 hex digits")
        folder = ws.root / "investigations" / inv_id
        if not (folder / "result.json").is_file():
            raise Problem(404, f"no finished investigation {inv_id} in this workspace")
        return folder

    @app.get("/api/investigations/{inv_id}", tags=["investigations"])
    def investigation(inv_id: str, who: Caller, ws: Ws) -> dict[str, Any]:
        """One investigation's result (the shape of `selfscope investigate --json`)."""
        need(who, "read", "read investigations")
        return dict(json.loads((inv_folder(ws, inv_id) / "result.json").read_text()))

    REPORTS = {"report.html": "text/html", "report.md": "text/markdown"}

    @app.get("/api/investigations/{inv_id}/files/{name:path}", tags=["investigations"])
    def investigation_file(inv_id: str, name: str, who: Caller, ws: Ws) -> FileResponse:
        """An investigation's report (report.html, report.md); nothing else is served."""
        need(who, "read", "read reports")
        folder = inv_folder(ws, inv_id).resolve()
        if name not in REPORTS:
            raise Problem(404, f"no file {name!r}: files are {', '.join(REPORTS)}")
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            raise Problem(404, f"no file {name!r} in investigation {inv_id}")
        return FileResponse(path, media_type=REPORTS[name])

    @app.get("/api/jobs", tags=["jobs"])
    def job_list(who: Caller, ws: Ws) -> list[jobs.JobStatus]:
        """Every job with its state."""
        need(who, "read", "list jobs")
        return jobs.listing(ws)

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str, who: Caller, ws: Ws) -> jobs.JobStatus:
        """A job's state and its latest progress events."""
        need(who, "read", "read jobs")
        return jobs.status(ws, job_id)

    @app.post("/api/jobs/{job_id}/resume", tags=["jobs"])
    def job_resume(job_id: str, who: Caller, ws: Ws) -> jobs.JobStatus:
        """Start an interrupted or failed job again (finished steps are not redone)."""
        need(who, "propose", "resume jobs")
        return jobs.resume(ws, job_id, who.name)

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(
        job_id: str, who: Caller, limit: float = Query(default=600, gt=0, le=3600)
    ) -> StreamingResponse:
        """Progress as server-sent events until the job ends (or ``limit`` seconds pass)."""
        need(who, "read", "read jobs")
        where = jobs.folder(Workspace(ws_root), job_id)
        if not (where / "request.json").is_file():
            raise Problem(404, f"no job {job_id!r} in this workspace")

        async def stream() -> AsyncIterator[str]:
            seen, waited = 0, 0.0
            while waited < limit:
                events = jobs.read_events(where, seen)
                seen += len(events)
                for event in events:
                    yield f"event: progress\ndata: {json.dumps(event)}\n\n"
                state = jobs.status(Workspace(ws_root), job_id, events=0)
                if state.state not in ("queued", "running"):
                    yield f"event: end\ndata: {state.model_dump_json()}\n\n"
                    return
                await asyncio.sleep(0.5)
                waited += 0.5
            yield "event: timeout\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- the dashboard ----------------------------------------------------------------------
    static = resources.files("selfscope.http") / "static"

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text())

    STATIC = {"app.js": "text/javascript", "style.css": "text/css"}

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> HTMLResponse:
        if name not in STATIC:
            raise Problem(404, f"no static file {name!r}")
        return HTMLResponse((static / name).read_text(), media_type=STATIC[name])

    return app
