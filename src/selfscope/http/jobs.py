"""Background jobs: an investigation runs in a process of its own, never in the server's.

A job is a folder ``<workspace>/jobs/<id>/``:

* ``request.json`` — what to run and who asked (written once, atomically, before the start);
* ``status.json`` — ``queued`` → ``running`` → ``done`` | ``failed`` (atomic rewrites by the
  job's own process; the server writes only ``queued``);
* ``pid`` — the job process's pid (the server writes it after starting the process);
* ``progress.jsonl`` — one JSON object per progress event (appended and flushed line by line;
  a reader skips a last line cut short);
* ``result.json`` — the investigation's result (atomic; written before ``done``).

The process is started in a session of its own (``start_new_session``), so a client that
disconnects or a server that restarts does not stop it; a job whose status says ``queued`` or
``running`` while its process is gone is reported ``interrupted``, and resuming it runs the
investigation again, which reloads every finished step from its journal instead of redoing it.
``python -m selfscope.http.jobs WORKSPACE JOB`` is the job process.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfscope import atomic
from selfscope.errors import SelfscopeError
from selfscope.investigate.symptom import Symptom
from selfscope.progress import Advance
from selfscope.workspace import Workspace

State = Literal["queued", "running", "done", "failed", "interrupted"]


class InvestigationRequest(BaseModel):
    """What an investigation job investigates (the fields of ``selfscope investigate``)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="Any source `load` accepts.")
    symptom: Symptom
    removal: bool | None = Field(default=None, description="Run the removal test (default: auto).")
    fixes: list[Literal["rank_one", "revert_delta", "unlearn"]] | None = Field(
        default=None, description="Kinds of fix to propose (default: all three)."
    )


class JobStatus(BaseModel):
    id: str
    kind: str
    state: State
    requested_by: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    investigation: str | None = Field(default=None, description="Its id, once known.")
    progress: list[dict[str, Any]] = Field(default_factory=list, description="Latest events.")


def folder(workspace: Workspace, job_id: str) -> Path:
    if not job_id.startswith("j") or not all(c.isalnum() or c == "-" for c in job_id):
        raise SelfscopeError(f"no job {job_id!r}: job ids look like j18c2f3a4b5d-1a2b3c")
    return workspace.root / "jobs" / job_id


def start(workspace: Workspace, request: InvestigationRequest, requested_by: str) -> str:
    """Write the job's request, start its process, return its id."""
    job_id = f"j{int(time.time() * 1000):x}-{secrets.token_hex(3)}"
    where = folder(workspace, job_id)
    where.mkdir(parents=True)
    atomic.write_json(
        where / "request.json",
        {"kind": "investigation", "requested_by": requested_by, "created_at": time.time()}
        | {"request": request.model_dump(mode="json")},
    )
    _write_status(where, "queued")
    workspace.store.append(
        "job.start", requested_by, request.model, {"job": job_id, "kind": "investigation"}
    )
    _spawn(workspace, job_id)
    return job_id


def resume(workspace: Workspace, job_id: str, by: str) -> JobStatus:
    """Start an interrupted or failed job again (finished steps are reloaded, not redone)."""
    current = status(workspace, job_id)
    if current.state not in ("interrupted", "failed"):
        raise SelfscopeError(
            f"job {job_id} is {current.state}; only an interrupted or failed job resumes"
        )
    _write_status(folder(workspace, job_id), "queued")
    workspace.store.append("job.resume", by, "-", {"job": job_id})
    _spawn(workspace, job_id)
    return status(workspace, job_id)


def _spawn(workspace: Workspace, job_id: str) -> None:
    where = folder(workspace, job_id)
    with open(where / "stderr.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "selfscope.http.jobs", str(workspace.root), job_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    atomic.write_text(where / "pid", str(process.pid))
    _reap_later(process)


_CHILDREN: list[subprocess.Popen[bytes]] = []


def _reap_later(process: subprocess.Popen[bytes]) -> None:
    """Keep the handle so finished children are reaped (no zombies while the server runs)."""
    _CHILDREN.append(process)
    _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]


def _alive(pid: int) -> bool:
    for p in _CHILDREN:
        if p.pid == pid:
            return p.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie of another parent is gone for our purposes
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def _write_status(where: Path, state: State, **fields: Any) -> None:
    atomic.write_json(where / "status.json", {"state": state, "at": time.time(), **fields})


def status(workspace: Workspace, job_id: str, events: int = 20) -> JobStatus:
    where = folder(workspace, job_id)
    if not (where / "request.json").is_file():
        raise SelfscopeError(f"no job {job_id!r} in this workspace")
    request = json.loads((where / "request.json").read_text())
    raw = json.loads((where / "status.json").read_text())
    state: State = raw["state"]
    pid_file = where / "pid"
    running = state in ("queued", "running") and pid_file.is_file()
    if running and not _alive(int(pid_file.read_text())):
        state = "interrupted"
    return JobStatus(
        id=job_id,
        kind=request["kind"],
        state=state,
        requested_by=request["requested_by"],
        created_at=request["created_at"],
        started_at=raw.get("started_at"),
        finished_at=raw.get("finished_at"),
        error=raw.get("error"),
        investigation=raw.get("investigation"),
        progress=read_events(where)[-events:] if events else [],
    )


def listing(workspace: Workspace) -> list[JobStatus]:
    root = workspace.root / "jobs"
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if (p / "request.json").is_file()]
    return [status(workspace, j, events=1) for j in sorted(found)]


def read_events(where: Path, start: int = 0) -> list[dict[str, Any]]:
    """Progress events from line ``start`` on (a last line cut short is left for later)."""
    path = where / "progress.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[start:]
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the line being written (or the empty tail)
    return events


class FileProgress:
    """A progress sink appending JSON lines to a file (bars at most 4 updates a second)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = 0.0

    def _emit(self, event: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"at": time.time(), **event}) + "\n")
            f.flush()

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Advance]:
        done = 0
        self._emit({"bar": description, "done": 0, "total": total})

        def advance(n: int, note: str) -> None:
            nonlocal done
            done += n
            now = time.monotonic()
            if now - self._last >= 0.25 or done >= total:
                self._last = now
                self._emit({"bar": description, "done": done, "total": total, "note": note})

        yield advance

    def say(self, message: str) -> None:
        self._emit({"message": message})


def run(workspace: Workspace, job_id: str) -> int:
    """The job process: run the investigation, write its result, then ``done``."""
    from selfscope.investigate.run import KINDS, Investigation
    from selfscope.tools import _crash

    where = folder(workspace, job_id)
    request = InvestigationRequest.model_validate(
        json.loads((where / "request.json").read_text())["request"]
    )
    started = time.time()
    _write_status(where, "running", started_at=started)
    try:
        investigation = Investigation(
            workspace,
            request.model,
            request.symptom,
            removal=request.removal,
            kinds=tuple(request.fixes or KINDS),
            progress=FileProgress(where / "progress.jsonl"),
        )
        _write_status(where, "running", started_at=started, investigation=investigation.id)
        result = investigation.run()
        atomic.write_json(where / "result.json", result)
        _write_status(
            where,
            "done",
            started_at=started,
            finished_at=time.time(),
            investigation=result["investigation"],
        )
        return 0
    except BaseException as error:
        message = str(error) if isinstance(error, SelfscopeError) else _crash(error)
        _write_status(where, "failed", started_at=started, finished_at=time.time(), error=message)
        return 1


if __name__ == "__main__":
    sys.exit(run(Workspace(sys.argv[1]), sys.argv[2]))
