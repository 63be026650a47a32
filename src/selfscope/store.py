"""The SQLite store: the workspace's only database, and this module its only reader/writer.

The schema is versioned with ``PRAGMA user_version`` and migrated forward on open: each entry of
:data:`MIGRATIONS` takes the schema from version ``i`` to ``i + 1`` inside one transaction, so a
crash mid-migration leaves the previous version intact. Never edit a released migration; append
a new one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfscope.atomic import crash_point

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
    # 4 -> 5: the guardian (selfscope.oversight). The ledger: append-only and hash-chained (each
    # entry's hash covers its fields and the previous entry's hash; see :func:`entry_hash`),
    # written in the same transaction as the change it records. Versions: immutable, content-
    # addressed (parent + one applied delta + the SHA-256 of the resulting tensors); HEAD per
    # subject. Proposals gain a status (the gate's state machine) and their proposer; reviews;
    # validations record the version they ran on and whether they passed; sealed suites;
    # policies; principals and their permissions.
    """
    CREATE TABLE ledger (
        seq         INTEGER PRIMARY KEY,    -- 1, 2, 3, ... without gaps
        at          REAL NOT NULL,
        principal   TEXT NOT NULL,
        action      TEXT NOT NULL,
        subject     TEXT NOT NULL,
        payload     TEXT NOT NULL,          -- canonical JSON
        payload_sha256 TEXT NOT NULL,
        prev        TEXT NOT NULL,          -- the previous entry's hash (64 zeros for the first)
        hash        TEXT NOT NULL
    );
    CREATE TABLE versions (
        id          TEXT PRIMARY KEY,       -- SHA-256 of [parent, delta_sha256, tensors_sha256]
        subject     TEXT NOT NULL,          -- the root weights' folder (resolved): the subject key
        source      TEXT NOT NULL,          -- the source string it was first loaded as
        number      INTEGER NOT NULL,       -- v0 (the root), v1, ...
        parent      TEXT REFERENCES versions(id),
        proposal_id TEXT,
        delta_sha256 TEXT,
        tensors_sha256 TEXT NOT NULL,
        files_sha256 TEXT NOT NULL,         -- the weight files' bytes (v0: the root folder's)
        principal   TEXT NOT NULL,
        created_at  REAL NOT NULL,
        UNIQUE (subject, number)
    );
    CREATE TABLE heads (
        subject     TEXT PRIMARY KEY,
        version     TEXT NOT NULL REFERENCES versions(id),
        moved_at    REAL NOT NULL
    );
    ALTER TABLE proposals ADD COLUMN status TEXT NOT NULL DEFAULT 'proposed';
    ALTER TABLE proposals ADD COLUMN proposer TEXT;
    ALTER TABLE validations ADD COLUMN version TEXT;
    ALTER TABLE validations ADD COLUMN passed INTEGER;
    ALTER TABLE validations ADD COLUMN principal TEXT;
    CREATE TABLE reviews (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        proposal_id TEXT NOT NULL REFERENCES proposals(id),
        principal   TEXT NOT NULL,
        decision    TEXT NOT NULL,          -- 'approve' | 'reject'
        note        TEXT NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE TABLE sealed_suites (
        sha256      TEXT PRIMARY KEY,
        subject     TEXT NOT NULL,
        name        TEXT NOT NULL,
        suite       TEXT NOT NULL,          -- JSON, never returned by a read or propose tool
        probes      INTEGER NOT NULL,
        principal   TEXT NOT NULL,
        sealed_at   REAL NOT NULL
    );
    CREATE TABLE policies (
        subject     TEXT PRIMARY KEY,
        policy      TEXT NOT NULL,          -- YAML as given
        sha256      TEXT NOT NULL,
        principal   TEXT NOT NULL,
        set_at      REAL NOT NULL
    );
    CREATE TABLE principals (
        name        TEXT PRIMARY KEY,
        permissions TEXT NOT NULL,          -- comma-separated: read, propose, govern
        created_at  REAL NOT NULL
    );
    """,
    # 5 -> 6: a sealed suite is keyed by its SHA-256 *and* its subject. Keyed by the SHA-256
    # alone, sealing the same suite for a second subject (an organism's blind copy) replaced
    # the first subject's row, and the organism lost its sealed suite.
    """
    CREATE TABLE sealed_suites_v6 (
        sha256      TEXT NOT NULL,
        subject     TEXT NOT NULL,
        name        TEXT NOT NULL,
        suite       TEXT NOT NULL,          -- JSON, never returned by a read or propose tool
        probes      INTEGER NOT NULL,
        principal   TEXT NOT NULL,
        sealed_at   REAL NOT NULL,
        PRIMARY KEY (sha256, subject)
    );
    INSERT INTO sealed_suites_v6 SELECT * FROM sealed_suites;
    DROP TABLE sealed_suites;
    ALTER TABLE sealed_suites_v6 RENAME TO sealed_suites;
    """,
    # 6 -> 7: API tokens of the HTTP door (selfscope.http.tokens), stored as SHA-256 only; a
    # token acts as its principal, with the permissions the principals table gives it.
    """
    CREATE TABLE tokens (
        sha256      TEXT PRIMARY KEY,       -- of the secret (the secret itself is never stored)
        name        TEXT NOT NULL UNIQUE,
        principal   TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        created_at  REAL NOT NULL,
        revoked_at  REAL
    );
    """,
]

#: the previous hash of the ledger's first entry
GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    """The one JSON spelling hashed into the ledger (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(
    seq: int, at: float, principal: str, action: str, subject: str, payload_sha256: str, prev: str
) -> str:
    """A ledger entry's hash: SHA-256 over its fields and the previous entry's hash."""
    fields = canonical([seq, repr(at), principal, action, subject, payload_sha256, prev])
    return hashlib.sha256(fields.encode()).hexdigest()


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
        # check_same_thread=False: a door may open the store in one thread and use it in another
        # (the HTTP server's thread pool); one connection is never used by two at once.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
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
        """A write transaction; inside another one it joins it (commits or rolls back with
        the outermost)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        crash_point()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        crash_point()  # everything written, not committed
        self._db.execute("COMMIT")
        crash_point()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``: writers in other processes wait), for a
        change made of several statements and the ledger entries recording it."""
        with self._transaction():
            yield

    # the ledger ------------------------------------------------------------------------------
    def _append(self, action: str, principal: str, subject: str, payload: Any) -> int:
        """Append one ledger entry; call inside a transaction (the entry commits with the
        change it records, or neither does). Returns its sequence number."""
        last = self._db.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        at = time.time()
        body = canonical(payload)
        digest = hashlib.sha256(body.encode()).hexdigest()
        own = entry_hash(seq, at, principal, action, subject, digest, prev)
        self._db.execute(
            "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at, principal, action, subject, body, digest, prev, own),
        )
        crash_point()
        return seq

    def append(self, action: str, principal: str, subject: str, payload: Any) -> int:
        """Append one ledger entry in its own transaction (or the caller's)."""
        with self.transaction():
            return self._append(action, principal, subject, payload)

    def ledger(self, start: int = 1, limit: int | None = None) -> list[dict[str, Any]]:
        """Ledger entries from sequence ``start`` on, in the order the table returns them by
        sequence (verification checks that order; it does not trust it)."""
        query = "SELECT * FROM ledger WHERE seq >= ? ORDER BY rowid"
        params: tuple[Any, ...] = (start,)
        if limit is not None:
            query, params = query + " LIMIT ?", (start, limit)
        cursor = self._db.execute(query, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def ledger_rows(self) -> Iterator[tuple[Any, ...]]:
        """Every ledger row as stored (seq, at, principal, action, subject, payload,
        payload_sha256, prev, hash), streamed in storage order."""
        yield from self._db.execute("SELECT * FROM ledger ORDER BY rowid")

    def ledger_head(self) -> tuple[int, str]:
        """(sequence, hash) of the last entry; (0, GENESIS) for an empty ledger."""
        last = self._db.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(last[0]), str(last[1])) if last else (0, GENESIS)

    # versions --------------------------------------------------------------------------------
    def versions(self, subject: str) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT * FROM versions WHERE subject = ? ORDER BY number", (subject,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def version_row(self, version_id: str) -> dict[str, Any] | None:
        cursor = self._db.execute("SELECT * FROM versions WHERE id = ?", (version_id,))
        row = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None

    def subjects(self) -> list[str]:
        rows = self._db.execute("SELECT subject FROM heads ORDER BY subject").fetchall()
        return [r[0] for r in rows]

    def head(self, subject: str) -> str | None:
        row = self._db.execute("SELECT version FROM heads WHERE subject = ?", (subject,)).fetchone()
        return str(row[0]) if row else None

    def add_version(self, row: dict[str, Any], principal: str, move_head: bool) -> None:
        """Insert a version (and move HEAD to it when ``move_head``), with its ledger entry;
        call inside :meth:`transaction` when it is part of a larger change."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO versions (id, subject, source, number, parent, proposal_id,"
                " delta_sha256, tensors_sha256, files_sha256, principal, created_at)"
                " VALUES (:id, :subject, :source, :number, :parent, :proposal_id,"
                " :delta_sha256, :tensors_sha256, :files_sha256, :principal, :created_at)",
                row,
            )
            self._append("version", principal, row["subject"], row)
            if move_head:
                self.move_head(row["subject"], row["id"], principal, "version")

    def move_head(self, subject: str, version_id: str, principal: str, why: str) -> None:
        with self.transaction():
            before = self.head(subject)
            self._db.execute(
                "INSERT OR REPLACE INTO heads VALUES (?, ?, ?)", (subject, version_id, time.time())
            )
            self._append("head", principal, subject, {"from": before, "to": version_id, "why": why})

    # proposals: the gate's state ------------------------------------------------------------
    def proposal_row(self, proposal_id: str) -> dict[str, Any] | None:
        cursor = self._db.execute("SELECT * FROM proposals WHERE id = ?", (proposal_id,))
        row = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None

    def proposal_rows(self) -> list[dict[str, Any]]:
        cursor = self._db.execute("SELECT * FROM proposals ORDER BY created_at")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def set_status(
        self, proposal_id: str, status: str, principal: str, payload: dict[str, Any]
    ) -> None:
        """Move a proposal to ``status`` and ledger it (``payload`` says why)."""
        with self.transaction():
            row = self.proposal_row(proposal_id)
            subject = row["subject"] if row else "-"
            self._db.execute("UPDATE proposals SET status = ? WHERE id = ?", (status, proposal_id))
            self._append(
                status, principal, subject, {"proposal": proposal_id, "status": status, **payload}
            )

    def record_review(self, proposal_id: str, principal: str, decision: str, note: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO reviews (proposal_id, principal, decision, note, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (proposal_id, principal, decision, note, time.time()),
            )
            row = self.proposal_row(proposal_id)
            self._append(
                "review",
                principal,
                row["subject"] if row else "-",
                {"proposal": proposal_id, "decision": decision, "note": note},
            )

    def reviews(self, proposal_id: str) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT * FROM reviews WHERE proposal_id = ? ORDER BY id", (proposal_id,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # sealed suites ---------------------------------------------------------------------------
    def seal_suite(
        self, sha256: str, subject: str, name: str, suite: str, probes: int, principal: str
    ) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO sealed_suites VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha256, subject, name, suite, probes, principal, time.time()),
            )
            self._append(
                "seal", principal, subject, {"suite": sha256, "name": name, "probes": probes}
            )

    def sealed_suites(self, subject: str) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT * FROM sealed_suites WHERE subject = ? ORDER BY sealed_at", (subject,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # policies and principals -----------------------------------------------------------------
    def set_policy(self, subject: str, policy: str, principal: str) -> None:
        digest = hashlib.sha256(policy.encode()).hexdigest()
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?)",
                (subject, policy, digest, principal, time.time()),
            )
            self._append("policy", principal, subject, {"sha256": digest, "policy": policy})

    def policy(self, subject: str) -> str | None:
        row = self._db.execute(
            "SELECT policy FROM policies WHERE subject = ?", (subject,)
        ).fetchone()
        return str(row[0]) if row else None

    def set_principal(self, name: str, permissions: list[str], by: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO principals VALUES (?, ?, ?)",
                (name, ",".join(sorted(permissions)), time.time()),
            )
            self._append("principal", by, "-", {"name": name, "permissions": sorted(permissions)})

    def principals(self) -> dict[str, list[str]]:
        rows = self._db.execute("SELECT name, permissions FROM principals ORDER BY name")
        return {str(n): [p for p in str(perms).split(",") if p] for n, perms in rows}

    def principal_permissions(self, name: str) -> list[str] | None:
        row = self._db.execute(
            "SELECT permissions FROM principals WHERE name = ?", (name,)
        ).fetchone()
        return [p for p in str(row[0]).split(",") if p] if row else None

    # API tokens ------------------------------------------------------------------------------
    def add_token(self, name: str, principal: str, sha256: str, by: str) -> None:
        """Store a token's hash for ``principal`` (the ledger records it, never the secret)."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                (sha256, name, principal, by, time.time()),
            )
            self._append("token.create", by, "-", {"name": name, "principal": principal})

    def revoke_token(self, name: str, by: str) -> bool:
        with self.transaction():
            done = self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            ).rowcount
            if done:
                self._append("token.revoke", by, "-", {"name": name})
        return bool(done)

    def token_principal(self, sha256: str) -> str | None:
        """The principal of a live token with this hash, else None."""
        row = self._db.execute(
            "SELECT principal FROM tokens WHERE sha256 = ? AND revoked_at IS NULL", (sha256,)
        ).fetchone()
        return str(row[0]) if row else None

    def tokens(self) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT name, principal, created_by, created_at, revoked_at FROM tokens ORDER BY name"
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

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
        """Complete the record of a call, and write it to the ledger in the same transaction."""
        with self._transaction():
            self._db.execute(
                "UPDATE tool_calls SET status = ?, result_sha256 = ?, seconds = ?, error = ?,"
                " subject_path = ? WHERE call_id = ?",
                (status, result_sha256 or "", seconds, error, subject_path, call_id),
            )
            row = self._db.execute(
                "SELECT tool, args, subject, principal, permission, parent FROM tool_calls"
                " WHERE call_id = ?",
                (call_id,),
            ).fetchone()
            if row is not None:
                tool, args, subject, principal, permission, parent = row
                payload = {
                    "call_id": call_id,
                    "tool": tool,
                    "args_sha256": hashlib.sha256(args.encode()).hexdigest(),
                    "permission": permission,
                    "parent": parent,
                    "status": status,
                    "result_sha256": result_sha256 or "",
                    "error": error,
                }
                self._append("tool_call", principal or "-", subject, payload)

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
        self,
        id: str,
        kind: str,
        subject: str,
        delta_sha256: str,
        delta_norm: float,
        proposal: str,
        proposer: str = "-",
    ) -> None:
        """A new proposal (status 'proposed'); the same proposal made again keeps its state."""
        with self._transaction():
            if self.proposal_row(id) is not None:
                return
            self._db.execute(
                "INSERT INTO proposals (id, kind, subject, delta_sha256, delta_norm, proposal,"
                " created_at, status, proposer) VALUES (?, ?, ?, ?, ?, ?, ?, 'proposed', ?)",
                (id, kind, subject, delta_sha256, delta_norm, proposal, time.time(), proposer),
            )
            self._append(
                "proposal",
                proposer,
                subject,
                {"proposal": id, "kind": kind, "delta_sha256": delta_sha256},
            )

    def record_validation(
        self,
        proposal_id: str,
        suites: str,
        report: str,
        *,
        version: str | None = None,
        passed: bool | None = None,
        principal: str = "-",
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO validations (proposal_id, suites, report, created_at, version,"
                " passed, principal) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    proposal_id,
                    suites,
                    report,
                    time.time(),
                    version,
                    None if passed is None else int(passed),
                    principal,
                ),
            )
            row = self.proposal_row(proposal_id)
            self._append(
                "validation",
                principal,
                row["subject"] if row else "-",
                {
                    "proposal": proposal_id,
                    "version": version,
                    "passed": passed,
                    "report_sha256": hashlib.sha256(report.encode()).hexdigest(),
                },
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
