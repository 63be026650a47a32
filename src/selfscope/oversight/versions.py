"""``versions.list`` and ``versions.verify``: what a subject's versions are, and whether every
byte on disk is still what the ledger says it is.

:func:`verify` rebuilds each version from the root weights and its chain of deltas and compares
the tensors' SHA-256 with the version's record *and* with the ledger entry that created it (a
row edited in the store is caught by the second comparison, a weight or delta file changed on
disk by the first); a materialised cache whose tensors differ is reported too (and is rebuilt
on its next load).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from selfscope import tools
from selfscope.behaviour import fingerprint
from selfscope.errors import SelfscopeError
from selfscope.subject import versions as versioning
from selfscope.subject.load import root_folder, version_key
from selfscope.tools import ToolContext
from selfscope.workspace import Workspace


class ModelArgs(BaseModel):
    model: str = Field(min_length=1, description="The subject, as any source `load` accepts.")


class VersionInfo(BaseModel):
    label: str = Field(description="v0 (the root weights), v1, ...")
    id: str
    parent: str | None
    proposal: str | None = Field(description="The proposal whose delta made it.")
    delta_sha256: str | None
    tensors_sha256: str
    principal: str = Field(description="Who applied it (for v0: who registered it).")
    created_at: float
    head: bool
    cached: bool = Field(description="Whether its weights are materialised in the cache.")


class VersionList(BaseModel):
    model: str
    key: str = Field(description="The folder of the root weights: the subject's key.")
    head: str | None = Field(description="The label of HEAD (None: never versioned).")
    versions: list[VersionInfo]


def listing(workspace: Workspace, model: str) -> VersionList:
    key = version_key(model, workspace)
    head = workspace.store.head(key)
    rows = workspace.store.versions(key)
    infos = [
        VersionInfo(
            label=versioning.label(r),
            id=r["id"],
            parent=r["parent"],
            proposal=r["proposal_id"],
            delta_sha256=r["delta_sha256"],
            tensors_sha256=r["tensors_sha256"],
            principal=r["principal"],
            created_at=r["created_at"],
            head=r["id"] == head,
            cached=r["number"] == 0
            or (versioning.cache_dir(workspace) / r["id"] / "config.json").exists(),
        )
        for r in rows
    ]
    label = next((i.label for i in infos if i.head), None)
    return VersionList(model=model, key=key, head=label, versions=infos)


@tools.tool("versions.list", ModelArgs, VersionList)
def list_tool(ctx: ToolContext, args: ModelArgs) -> VersionList:
    """A subject's versions (v0 = the weights on disk; each later one = its parent plus one
    applied delta), which is HEAD, and which are materialised."""
    return listing(ctx.workspace, args.model)


class VersionsVerdict(BaseModel):
    model: str
    ok: bool
    checked: int = Field(description="Versions rebuilt and compared.")
    problems: list[str] = Field(description="One line per problem, first found first.")


def _ledgered(workspace: Workspace) -> dict[str, dict[str, Any]]:
    """Version rows as the ledger recorded them when they were created, by id."""
    out = {}
    for row in workspace.store.ledger_rows():
        if row[3] == "version":
            payload = json.loads(row[5])
            out[str(payload["id"])] = payload
    return out


def verify(workspace: Workspace, model: str) -> VersionsVerdict:
    root = root_folder(model, workspace)
    rows = workspace.store.versions(versioning.subject_key(root))
    recorded = _ledgered(workspace)
    problems: list[str] = []
    for row in rows:
        name = versioning.label(row)
        if recorded.get(row["id"]) != row:
            problems.append(f"{name}: its record differs from the ledger entry that created it")
            continue
        want = versioning.version_id(row["parent"], row["delta_sha256"], row["tensors_sha256"])
        if want != row["id"]:
            problems.append(f"{name}: its id is not the hash of its contents")
            continue
        cache = root if row["number"] == 0 else versioning.cache_dir(workspace) / str(row["id"])
        if (cache / "config.json").exists() and versioning.files_sha256(cache) != row[
            "files_sha256"
        ]:
            where = "the root weight files" if row["number"] == 0 else f"its cache {cache}"
            problems.append(f"{name}: {where} changed on disk (a byte differs from the record)")
            if row["number"] == 0:
                continue
        try:
            built = versioning.build_weights(workspace, root, row)
        except SelfscopeError as error:
            problems.append(f"{name}: {error}")
            continue
        got = fingerprint(built.model)
        if got != row["tensors_sha256"]:
            problems.append(
                f"{name}: the root weights and deltas give tensors {got[:12]}, not the recorded "
                f"{str(row['tensors_sha256'])[:12]} (a weight or delta file changed)"
            )
    return VersionsVerdict(model=model, ok=not problems, checked=len(rows), problems=problems)


@tools.tool("versions.verify", ModelArgs, VersionsVerdict)
def verify_tool(ctx: ToolContext, args: ModelArgs) -> VersionsVerdict:
    """Rebuild every version of a subject from the root weights and its deltas, and check the
    tensors' SHA-256 against the version's record and the ledger entry that created it."""
    return verify(ctx.workspace, args.model)
