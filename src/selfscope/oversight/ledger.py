"""The ledger: verify the hash chain, and sign its head so truncation shows too.

Every change the guardian allows is written to the store's ``ledger`` table in the same
transaction as the change itself (:meth:`selfscope.store.Store.append`): tool calls, proposals,
validations, reviews, status changes, versions, HEAD moves, policies, principals and sealed
suites. Each entry holds its sequence number, time, principal, action, subject, the SHA-256 of
its canonical JSON payload, the previous entry's hash and its own hash
(:func:`selfscope.store.entry_hash`), so editing, deleting, inserting or reordering any entry
breaks the chain at that entry, and :func:`verify` names the first one that is wrong.

A hash chain cannot see its own *tail* cut off, or the tail rewritten with fresh hashes: the
shorter (or rewritten) chain is internally consistent. That is what **signed heads** are for,
as in Certificate Transparency and Sigstore's Rekor: :func:`checkpoint` writes the head
(sequence, hash, time) signed with the principal's ed25519 key, which lives outside the
workspace (``$SELFSCOPE_KEYS`` or ``~/.config/selfscope/keys``); :func:`verify` given that
checkpoint also requires the ledger to still hold that entry with that hash. Someone who can
write the workspace *and* read the signing key can forge both (docs/oversight.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from selfscope import atomic, tools
from selfscope.errors import SelfscopeError
from selfscope.store import GENESIS, entry_hash
from selfscope.tools import ToolContext
from selfscope.workspace import KEYS_ENV, Workspace, keys_dir


class Verdict(BaseModel):
    """What :func:`verify` found."""

    ok: bool
    entries: int = Field(description="Entries checked.")
    head: int = Field(description="Sequence number of the last entry checked.")
    head_hash: str
    first_bad: int | None = Field(
        default=None, description="Sequence (or position, 1-based) of the first bad entry."
    )
    reason: str | None = None
    checkpoint: str | None = Field(
        default=None, description="What the signed checkpoint confirmed, when one was given."
    )
    seconds: float = 0.0


def verify(rows: Iterable[tuple[Any, ...]], checkpoint: dict[str, Any] | None = None) -> Verdict:
    """Check a ledger's rows (as the store returns them, in storage order): sequence numbers
    1, 2, 3, ...; each payload's SHA-256; each entry's link to the one before; each entry's own
    hash. With a ``checkpoint`` (see :func:`read_checkpoint`), the ledger must also still hold
    the signed head: same sequence, same hash."""
    started = time.perf_counter()
    prev, expected, count, head_hash = GENESIS, 1, 0, GENESIS
    signed = None if checkpoint is None else (int(checkpoint["seq"]), str(checkpoint["hash"]))
    confirmed = False

    def bad(position: int, reason: str) -> Verdict:
        return Verdict(
            ok=False,
            entries=count,
            head=expected - 1,
            head_hash=head_hash,
            first_bad=position,
            reason=reason,
            seconds=time.perf_counter() - started,
        )

    for row in rows:
        seq, at, principal, action, subject, payload, payload_sha, link, own = row
        count += 1
        if seq != expected:
            return bad(expected, f"entry {expected}: found sequence {seq} in its place")
        if hashlib.sha256(str(payload).encode()).hexdigest() != payload_sha:
            return bad(seq, f"entry {seq} ({action}): its payload does not match its SHA-256")
        if link != prev:
            return bad(seq, f"entry {seq} ({action}): its link does not match entry {seq - 1}")
        if entry_hash(seq, at, principal, action, subject, payload_sha, prev) != own:
            return bad(seq, f"entry {seq} ({action}): its fields do not match its hash")
        if signed is not None and seq == signed[0]:
            if own != signed[1]:
                return bad(seq, f"entry {seq}: not the entry the checkpoint signed (rewritten)")
            confirmed = True
        prev, head_hash, expected = own, own, expected + 1
    note = None
    if signed is not None:
        if not confirmed:
            return bad(
                expected,
                f"the ledger ends at entry {expected - 1}, before the signed checkpoint's "
                f"entry {signed[0]}: it was truncated",
            )
        note = f"holds the entry {signed[0]} the checkpoint signed"
    return Verdict(
        ok=True,
        entries=count,
        head=expected - 1,
        head_hash=head_hash,
        checkpoint=note,
        seconds=time.perf_counter() - started,
    )


def verify_workspace(workspace: Workspace, checkpoint: Path | None = None) -> Verdict:
    signed = read_checkpoint(checkpoint) if checkpoint is not None else None
    return verify(workspace.store.ledger_rows(), signed)


# signed heads ---------------------------------------------------------------------------------
def _key_path(principal: str) -> Path:
    if not principal or "/" in principal or principal.startswith("."):
        raise SelfscopeError(f"principal name {principal!r} cannot name a key file")
    return keys_dir() / f"{principal}.ed25519"


def signing_key(principal: str, workspace: Workspace | None = None) -> Any:
    """The principal's ed25519 private key, created (mode 0600) on first use; refused when it
    would live inside the workspace it signs for."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = _key_path(principal)
    if workspace is not None and path.resolve().is_relative_to(workspace.root.resolve()):
        raise SelfscopeError(
            f"the signing key {path} is inside the workspace {workspace.root}; keep keys "
            f"outside it (set {KEYS_ENV} to another folder)"
        )
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, raw.hex())
    os.chmod(path, 0o600)
    return key


def _public_hex(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return str(raw.hex())


def _signed_bytes(body: dict[str, Any]) -> bytes:
    fields = {k: body[k] for k in ("seq", "hash", "at", "principal", "workspace")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def checkpoint(workspace: Workspace, principal: str, out: Path) -> dict[str, Any]:
    """Sign the ledger's head (after verifying the chain) and write it to ``out``."""
    verdict = verify_workspace(workspace)
    if not verdict.ok:
        raise SelfscopeError(f"the ledger does not verify ({verdict.reason}); not signing it")
    seq, head = workspace.store.ledger_head()
    key = signing_key(principal, workspace)
    body: dict[str, Any] = {
        "seq": seq,
        "hash": head,
        "at": time.time(),
        "principal": principal,
        "workspace": str(workspace.root),
    }
    body["public_key"] = _public_hex(key)
    body["signature"] = key.sign(_signed_bytes(body)).hex()
    atomic.write_text(out, json.dumps(body, indent=2))
    workspace.store.append("checkpoint", principal, "-", {"seq": seq, "hash": head})
    return body


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file whose signature holds, under the key the signer keeps in the keys
    folder when it is there (a checkpoint signed by another key is refused)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        body = json.loads(Path(path).read_text())
        public = bytes.fromhex(body["public_key"])
        signature = bytes.fromhex(body["signature"])
        int(body["seq"])
    except FileNotFoundError:
        raise SelfscopeError(f"no checkpoint file {path}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise SelfscopeError(f"{path} is not a ledger checkpoint ({error})") from None
    own = _key_path(str(body.get("principal", "")))
    if own.exists():
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        mine = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(own.read_text().strip()))
        if _public_hex(mine) != public.hex():
            raise SelfscopeError(
                f"{path} is signed by a key that is not {body['principal']}'s ({own})"
            )
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, _signed_bytes(body))
    except InvalidSignature:
        raise SelfscopeError(f"{path}: the signature does not match its contents") from None
    return dict(body)


# tools ------------------------------------------------------------------------------------------
class VerifyArgs(BaseModel):
    checkpoint: str | None = Field(
        default=None,
        description="A signed checkpoint file (`selfscope ledger checkpoint`): also detects a "
        "truncated or rewritten tail.",
    )


@tools.tool("ledger.verify", VerifyArgs, Verdict)
def verify_tool(ctx: ToolContext, args: VerifyArgs) -> Verdict:
    """Check the ledger's hash chain entry by entry (sequence, payload hash, link, own hash) and
    name the first bad entry; with a signed checkpoint, also that the signed head is still
    there."""
    return verify_workspace(ctx.workspace, Path(args.checkpoint) if args.checkpoint else None)


class ShowArgs(BaseModel):
    last: int = Field(default=20, ge=1, le=10_000, description="How many of the last entries.")
    action: str | None = Field(default=None, description="Only entries of this action.")


class Entry(BaseModel):
    seq: int
    at: float
    principal: str
    action: str
    subject: str
    payload: Any
    hash: str


class Entries(BaseModel):
    entries: list[Entry]
    head: int


@tools.tool("ledger.show", ShowArgs, Entries)
def show_tool(ctx: ToolContext, args: ShowArgs) -> Entries:
    """The last entries of the ledger (who did what, when, to which subject)."""
    seq, _ = ctx.workspace.store.ledger_head()
    start = 1 if args.action else max(1, seq - args.last + 1)  # a filter reads them all
    rows = ctx.workspace.store.ledger(start)
    picked = [r for r in rows if args.action is None or r["action"] == args.action][-args.last :]
    entries = [
        Entry(
            seq=r["seq"],
            at=r["at"],
            principal=r["principal"],
            action=r["action"],
            subject=r["subject"],
            payload=json.loads(r["payload"]),
            hash=r["hash"],
        )
        for r in picked
    ]
    return Entries(entries=entries, head=seq)
