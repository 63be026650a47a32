"""The investigation's journal: each finished step's result on disk and in the ledger.

An investigation is identified by what it investigates: the model's source, the version it ran
on (HEAD when it started) and the symptom (:func:`investigation_id`). Its steps write
``<workspace>/investigations/<id>/<step>.json`` (``{"step", "seconds", "result"}``, atomically)
and then a ledger entry ``investigation.step`` with the result's SHA-256. Running the same
investigation again (after a crash, or to read it) loads every finished step instead of
redoing it, so a killed run resumes where it stopped and ends with the same result. A step file
without its ledger entry (a kill between the two) gets the entry on resume; a step file whose
SHA-256 differs from its ledger entry (edited since) is redone.
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
            logged = self.logged().get(name)
            if logged is None:  # killed between the file and its ledger entry: record it now
                self._log(name, float(saved["seconds"]), saved["result"], recovered=True)
            if logged is None or logged == _sha256(saved["result"]):
                self.seconds[name] = float(saved["seconds"])
                self.resumed.append(name)
                self.progress.say(f"{name}: done earlier ({saved['seconds']:.1f} s), not redone")
                return saved["result"]
            self.progress.say(f"{name}: its file differs from the ledger's record; redoing it")
        self.progress.say(f"[bold]{name}[/] ...")
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, {"step": name, "seconds": seconds, "result": result})
        self._log(name, seconds, result)
        self.seconds[name] = seconds
        return result

    def logged(self) -> dict[str, str]:
        """Each step of this investigation the ledger records, with its result's SHA-256 (the
        last entry when a step was redone)."""
        out = {}
        for entry in self.workspace.store.ledger():
            if entry["action"] != "investigation.step":
                continue
            payload = json.loads(entry["payload"])
            if payload.get("investigation") == self.id:
                out[payload["step"]] = payload["result_sha256"]
        return out

    def _log(self, name: str, seconds: float, result: Any, recovered: bool = False) -> None:
        payload = {
            "investigation": self.id,
            "step": name,
            "seconds": seconds,
            "result_sha256": _sha256(result),
        }
        if recovered:
            payload["recovered"] = True
        self.workspace.store.append("investigation.step", self.principal, self.subject, payload)


def _sha256(result: Any) -> str:
    text = json.dumps(result, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
