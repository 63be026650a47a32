"""The SQLite store: the workspace's only database, and this module its only reader/writer.

The schema is versioned with ``PRAGMA user_version`` and migrated forward on open: each entry of
:data:`MIGRATIONS` takes the schema from version ``i`` to ``i + 1`` inside one transaction, so a
crash mid-migration leaves the previous version intact. Never edit a released migration; append
a new one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIGRATIONS: list[str] = [
    # 0 -> 1: organisms built in this workspace, and models converted into it.
    """
    CREATE TABLE organisms (
        name        TEXT PRIMARY KEY,
        path        TEXT NOT NULL,
        spec_sha256 TEXT NOT NULL,
        size        TEXT NOT NULL,
        status      TEXT NOT NULL,          -- 'ok' | 'missed-targets'
        built_at    REAL NOT NULL,
        seconds     REAL NOT NULL,
        summary     TEXT NOT NULL           -- JSON: the build's summary
    );
    CREATE TABLE models (
        key         TEXT PRIMARY KEY,       -- e.g. 'gguf:<sha256>'
        source      TEXT NOT NULL,          -- where it came from (a .gguf path)
        path        TEXT NOT NULL,          -- the converted safetensors folder
        architecture TEXT NOT NULL,
        parameters  INTEGER NOT NULL,
        created_at  REAL NOT NULL
    );
    """,
    # 1 -> 2: every tool call (the ledger issue will hash-chain these)
    """
    CREATE TABLE tool_calls (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        tool        TEXT NOT NULL,
        args        TEXT NOT NULL,          -- JSON, as validated
        result_sha256 TEXT NOT NULL,
        subject     TEXT NOT NULL,          -- the source string, e.g. organism:mushroom@finetune
        subject_path TEXT NOT NULL,         -- the folder actually loaded
        seconds     REAL NOT NULL,
        called_at   REAL NOT NULL
    );
    """,
    # 2 -> 3: edit proposals and their sandbox validations (the surgeon, selfscope.edits)
    """
    CREATE TABLE proposals (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        subject     TEXT NOT NULL,
        delta_sha256 TEXT NOT NULL,         -- <workspace>/deltas/<sha256>.safetensors
        delta_norm  REAL NOT NULL,
        proposal    TEXT NOT NULL,          -- JSON: the whole Proposal
        created_at  REAL NOT NULL
    );
    CREATE TABLE validations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        proposal_id TEXT NOT NULL REFERENCES proposals(id),
        suites      TEXT NOT NULL,          -- names of the suites validated on
        report      TEXT NOT NULL,          -- JSON: the ValidationReport
        created_at  REAL NOT NULL
    );
    """,
    # 3 -> 4: the tool contract (selfscope.tools): every call has an id that evidence cites,
    # the principal who made it and the permission it needed, its parent call (a composite
    # tool's inner calls), and its status. A call is recorded before it runs ('running') and
    # completed after ('ok', 'error'); refusals are recorded too ('denied', 'invalid').
    """
    ALTER TABLE tool_calls ADD COLUMN call_id TEXT;
    ALTER TABLE tool_calls ADD COLUMN principal TEXT;
    ALTER TABLE tool_calls ADD COLUMN permission TEXT;
    ALTER TABLE tool_calls ADD COLUMN parent TEXT;
    ALTER TABLE tool_calls ADD COLUMN status TEXT NOT NULL DEFAULT 'ok';
    ALTER TABLE tool_calls ADD COLUMN error TEXT;
    CREATE UNIQUE INDEX tool_calls_call_id ON tool_calls (call_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class OrganismRow:
    name: str
    path: str
    spec_sha256: str
    size: str
    status: str
    built_at: float
    seconds: float
    summary: dict[str, Any]


@dataclass(frozen=True)
class ModelRow:
    key: str
    source: str
    path: str
    architecture: str
    parameters: int
    created_at: float


class Store:
    """A connection to ``store.sqlite``, migrated to :data:`SCHEMA_VERSION` on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        current = self.version
        if current > SCHEMA_VERSION:
            from selfscope.errors import SelfscopeError

            raise SelfscopeError(
                f"the store {self.path} has schema version {current}, newer than this selfscope "
                f"({SCHEMA_VERSION}); upgrade selfscope or use another --workspace"
            )
        for target, script in enumerate(MIGRATIONS[current:], start=current + 1):
            with self._transaction():
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # organisms -------------------------------------------------------------------------------
    def record_organism(
        self,
        name: str,
        path: str,
        spec_sha256: str,
        size: str,
        status: str,
        seconds: float,
        summary: dict[str, Any],
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO organisms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, path, spec_sha256, size, status, time.time(), seconds, json.dumps(summary)),
            )

    def organisms(self) -> list[OrganismRow]:
        rows = self._db.execute("SELECT * FROM organisms ORDER BY name").fetchall()
        return [
            OrganismRow(
                name=row[0],
                path=row[1],
                spec_sha256=row[2],
                size=row[3],
                status=row[4],
                built_at=row[5],
                seconds=row[6],
                summary=json.loads(row[7]),
            )
            for row in rows
        ]

    # tool calls ------------------------------------------------------------------------------
    def record_call_start(
        self,
        call_id: str,
        tool: str,
        args: str,
        subject: str,
        principal: str,
        permission: str,
        parent: str | None,
    ) -> None:
        """A call about to run (status 'running'); :meth:`record_call_end` completes it."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO tool_calls (call_id, tool, args, result_sha256, subject, subject_path,"
                " seconds, called_at, principal, permission, parent, status)"
                " VALUES (?, ?, ?, '', ?, '', 0, ?, ?, ?, ?, 'running')",
                (call_id, tool, args, subject, time.time(), principal, permission, parent),
            )

    def record_call_end(
        self,
        call_id: str,
        status: str,
        result_sha256: str | None,
        seconds: float,
        error: str | None,
        subject_path: str = "",
    ) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE tool_calls SET status = ?, result_sha256 = ?, seconds = ?, error = ?,"
                " subject_path = ? WHERE call_id = ?",
                (status, result_sha256 or "", seconds, error, subject_path, call_id),
            )

    def tool_call(self, call_id: str) -> dict[str, Any] | None:
        """The recorded call ``call_id``, or ``None``."""
        cursor = self._db.execute("SELECT * FROM tool_calls WHERE call_id = ?", (call_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        names = [d[0] for d in cursor.description]
        return dict(zip(names, row, strict=True))

    def tool_calls(self) -> list[dict[str, Any]]:
        cursor = self._db.execute("SELECT * FROM tool_calls ORDER BY id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # proposals and validations ---------------------------------------------------------------
    def record_proposal(
        self, id: str, kind: str, subject: str, delta_sha256: str, delta_norm: float, proposal: str
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO proposals VALUES (?, ?, ?, ?, ?, ?, ?)",
                (id, kind, subject, delta_sha256, delta_norm, proposal, time.time()),
            )

    def record_validation(self, proposal_id: str, suites: str, report: str) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO validations (proposal_id, suites, report, created_at)"
                " VALUES (?, ?, ?, ?)",
                (proposal_id, suites, report, time.time()),
            )

    def validations(self, proposal_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM validations"
        params: tuple[str, ...] = ()
        if proposal_id is not None:
            query, params = query + " WHERE proposal_id = ?", (proposal_id,)
        cursor = self._db.execute(query + " ORDER BY id", params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # models ----------------------------------------------------------------------------------
    def record_model(
        self, key: str, source: str, path: str, architecture: str, parameters: int
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                (key, source, path, architecture, parameters, time.time()),
            )

    def model(self, key: str) -> ModelRow | None:
        row = self._db.execute("SELECT * FROM models WHERE key = ?", (key,)).fetchone()
        return ModelRow(*row) if row else None

    def models(self) -> list[ModelRow]:
        rows = self._db.execute("SELECT * FROM models ORDER BY created_at").fetchall()
        return [ModelRow(*row) for row in rows]
