"""The investigation's journal: each finished step's result on disk and in the ledger.

An investigation is identified by what it investigates: the model's source, the version it ran
on (HEAD when it started) and the symptom (:func:`investigation_id`). Its steps write
``<workspace>/investigations/<id>/<step>.json`` (``{"step", "seconds", "result"}``, atomically)
and then a ledger entry ``investigation.step`` with the result's SHA-256. Running the same
investigation again (after a crash, or to read it) loads every finished step instead of
redoing it, so a killed run resumes where it stopped and ends with the same result.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfscope import atomic
from selfscope.progress import SILENT, ProgressSink
from selfscope.workspace import Workspace


def investigation_id(source: str, version: str | None, symptom: dict[str, Any]) -> str:
    body = json.dumps([source, version or "", symptom], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def folder_of(workspace: Workspace, inv_id: str) -> Path:
    return workspace.root / "investigations" / inv_id


class Journal:
    """Run steps once; remember their results."""

    def __init__(
        self,
        workspace: Workspace,
        inv_id: str,
        principal: str,
        subject: str,
        progress: ProgressSink = SILENT,
    ) -> None:
        self.workspace, self.id, self.principal, self.subject = (
            workspace,
            inv_id,
            principal,
            subject,
        )
        self.folder = folder_of(workspace, inv_id)
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.resumed: list[str] = []

    def path(self, step: str) -> Path:
        return self.folder / f"{step}.json"

    def step(self, name: str, run: Callable[[], Any]) -> Any:
        """``run()``'s result for step ``name`` (JSON-able), computed once: a finished step is
        read back, not redone."""
        path = self.path(name)
        if path.exists():
            saved = json.loads(path.read_text())
            self.seconds[name] = float(saved["seconds"])
            self.resumed.append(name)
            self.progress.say(f"{name}: done earlier ({saved['seconds']:.1f} s), not redone")
            return saved["result"]
        self.progress.say(f"[bold]{name}[/] ...")
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, {"step": name, "seconds": seconds, "result": result})
        digest = hashlib.sha256(
            json.dumps(result, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        self.workspace.store.append(
            "investigation.step",
            self.principal,
            self.subject,
            {"investigation": self.id, "step": name, "seconds": seconds, "result_sha256": digest},
        )
        self.seconds[name] = seconds
        return result
