"""Versions: immutable, content-addressed states of a subject's weights, and HEAD.

A subject (any source: an organism, a Hugging Face folder, a ``.gguf``, ``smollm2``) is keyed by
the folder its root weights load from (resolved; :func:`subject_key`). Its versions live in the
store's ``versions`` table:

* ``v0`` is the root: the weights as they are on disk, with their tensors' SHA-256
  (:func:`selfscope.behaviour.fingerprint`), registered the first time the guardian needs it;
* ``vN`` is its parent plus *one* applied delta (the content-addressed file a proposal wrote,
  ``<workspace>/deltas/<sha256>.safetensors``) and the SHA-256 of the resulting tensors; its id
  is the SHA-256 of ``[parent id, delta SHA-256, tensors SHA-256]``.

Nothing is stored twice: a version costs its delta file. Its full weights are *materialised* on
first load into ``<workspace>/versions/<id>/`` (a plain Hugging Face folder, written to a
staging folder and renamed), a cache that can be deleted and is rebuilt from the root and the
deltas. Loading it checks its weight files against the version's record
(:func:`check_files`); a changed cache is rebuilt from the root and the deltas.

The check on load is the files' SHA-256 the first time, then a *stamp*: after a full hash
matches, ``verified.json`` in the cache records each weight file's size, mtime, ctime, inode and
device, MAC'd (HMAC-SHA-256) with a key kept outside the workspace
(:func:`selfscope.workspace.keys_dir`). A later load whose files still have exactly those stats
skips the hash, as git's index skips unchanged files. Any write to a file changes its ctime,
which no unprivileged process can set back, and replacing it changes the inode; a stamp edited to
match is refused without the key. Files whose ctime is not older than the file system's own
"now" when the hash starts are never stamped (a write in the same timestamp tick could go
unseen: git's "racy" case), whatever the file system's timestamp granularity. What the
stamp cannot see (a root who resets the clock, bits rotting on disk under unchanged stats),
``selfscope versions verify`` does: it hashes everything, always.

HEAD per subject lives in the store's ``heads`` table. :func:`selfscope.subject.load` resolves a
source to its HEAD by default; ``SOURCE@v3`` or ``SOURCE@<id prefix>`` loads a given version
(``@v0`` the root). Organism phases (``organism:NAME@pretrain``) are untouched: a suffix is a
version reference only when it reads ``v<number>`` or is 6+ hex digits.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from selfscope import atomic
from selfscope.behaviour import fingerprint
from selfscope.errors import LoadError
from selfscope.subject.deltas import RUNTIME, add_delta, load_delta
from selfscope.subject.hf import load_folder
from selfscope.workspace import Workspace, keys_dir

_REF = re.compile(r"^(v\d+|[0-9a-f]{6,64})$")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", ".index.json")
STAMP = "verified.json"
STAMP_KEY = "cache-stamps.key"
RACY_NS = 50_000_000  # a cache written this recently is waited out before its first hash


def split_ref(source: str) -> tuple[str, str | None]:
    """``("organism:mushroom", "v2")`` from ``"organism:mushroom@v2"``; no reference: ``None``."""
    base, at, ref = source.rpartition("@")
    if at and base and _REF.match(ref):
        return base, ref
    return source, None


def subject_key(folder: Path) -> str:
    """The key a subject's versions are stored under: its root weights' folder, resolved."""
    return str(Path(folder).resolve())


def version_id(parent: str | None, delta_sha256: str | None, tensors_sha256: str) -> str:
    key = f'["{parent or ""}","{delta_sha256 or ""}","{tensors_sha256}"]'
    return hashlib.sha256(key.encode()).hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith(WEIGHT_FILES))


def files_sha256(folder: Path) -> str:
    """SHA-256 over the weight files of ``folder`` (names and bytes, in name order): any byte
    changed in them changes it, even one that leaves every tensor as it was."""
    digest = hashlib.sha256()
    for path in _weight_files(folder):
        digest.update(f"{path.name}\n".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _stats(folder: Path) -> list[list[Any]]:
    out: list[list[Any]] = []
    for path in _weight_files(folder):
        st = path.stat()
        out.append([path.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
    return out


def _stamp_key(workspace: Workspace) -> bytes | None:
    """The MAC key for cache stamps (created, mode 0600, on first use); ``None`` when it would
    live inside the workspace (a stamp anyone who writes the cache could forge) or cannot be
    written: then every load hashes in full."""
    path = keys_dir() / STAMP_KEY
    try:
        if path.resolve().is_relative_to(workspace.root.resolve()):
            return None
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, os.urandom(32))
            os.chmod(path, 0o600)
        return path.read_bytes()
    except OSError:
        return None


def _mac(key: bytes, body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def stamped(workspace: Workspace, folder: Path, row: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a valid stamp for version ``row`` and its weight files still
    have exactly the stats the stamp recorded when their hash last matched. Anything wrong with
    the stamp (missing, malformed, forged, a file gone) is "not stamped": the files get hashed."""
    key = _stamp_key(workspace)
    try:
        stamp = json.loads((folder / STAMP).read_text())
        mac = stamp.pop("mac") if isinstance(stamp, dict) else None
        return (
            key is not None
            and isinstance(mac, str)
            and hmac.compare_digest(mac.encode(), _mac(key, stamp).encode())
            and stamp.get("version") == row["id"]
            and stamp.get("files_sha256") == row["files_sha256"]
            and stamp.get("stats") == _stats(folder)
        )
    except (OSError, ValueError, TypeError):
        return False


def _fs_now(folder: Path) -> int | None:
    """The file system's own "now" in ``folder`` (a probe file's ctime): on the clock and at
    the granularity its timestamps have, whatever they are. ``None`` when it cannot write."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        try:
            return os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError:
        return None


def hash_and_stamp(workspace: Workspace, folder: Path, version: str, want: str | None) -> str:
    """The SHA-256 of ``folder``'s weight files (:func:`files_sha256`); when it equals ``want``
    (``None``: whatever it is, e.g. a cache just written), stamp the folder for version
    ``version``, unless the files changed while being hashed or too recently to tell.

    "Too recently" is git's racy case, judged on the file system's own clock: a file whose
    ctime is not older than a probe file created just before the hash could be written again
    within the same timestamp tick without its stats changing, so it is not stamped. A stamp is
    an optimisation: when it cannot be written, nothing fails."""
    newest = max((s[3] for s in _stats(folder)), default=0)
    time.sleep(min(max(newest + RACY_NS - time.time_ns(), 0), RACY_NS) / 1e9)  # out of the tick
    now = _fs_now(folder)
    before = _stats(folder)
    digest = files_sha256(folder)
    key = _stamp_key(workspace)
    racy = now is None or any(s[3] >= now for s in before)
    if key is None or (want is not None and digest != want) or racy or _stats(folder) != before:
        return digest
    body = {"version": version, "files_sha256": digest, "stats": before}
    with contextlib.suppress(OSError):  # a read-only cache: every load hashes
        atomic.write_json(folder / STAMP, body | {"mac": _mac(key, body)})
    return digest


def check_files(workspace: Workspace, folder: Path, row: dict[str, Any]) -> bool:
    """Whether ``folder``'s weight files are version ``row``'s: by its stamp when it holds,
    else by hashing them in full (and stamping them when they match). A file that vanishes
    while being checked counts as changed (the cache is rebuilt)."""
    if stamped(workspace, folder, row):
        return True
    want = str(row["files_sha256"])
    try:
        return hash_and_stamp(workspace, folder, str(row["id"]), want) == want
    except OSError:
        return False


def cache_dir(workspace: Workspace) -> Path:
    return workspace.root / "versions"


def label(row: dict[str, Any]) -> str:
    return f"v{row['number']}"


def find(workspace: Workspace, key: str, ref: str) -> dict[str, Any]:
    """The version ``ref`` (``v3`` or an id prefix) of subject ``key``, or one clear line."""
    rows = workspace.store.versions(key)
    if ref.startswith("v") and ref[1:].isdigit():
        found = [r for r in rows if r["number"] == int(ref[1:])]
    else:
        found = [r for r in rows if r["id"].startswith(ref)]
    if not found:
        known = ", ".join(f"{label(r)} ({r['id'][:12]})" for r in rows) or "none yet"
        raise LoadError(f"no version {ref} of {key}; its versions: {known}")
    if len(found) > 1:
        raise LoadError(f"{ref} matches {len(found)} versions of {key}; give more of the id")
    return found[0]


def chain(workspace: Workspace, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The versions from the root to ``row``, oldest first."""
    out = [row]
    while out[0]["parent"]:
        parent = workspace.store.version_row(out[0]["parent"])
        if parent is None:
            raise LoadError(f"version {label(out[0])} names a parent that is not in the store")
        out.insert(0, parent)
    return out


def ensure_root(workspace: Workspace, key: str, source: str, model: Any, principal: str) -> str:
    """Register ``v0`` (the root weights as loaded now from the folder ``key``) and make it
    HEAD, once; its id."""
    rows = workspace.store.versions(key)
    if rows:
        return str(rows[0]["id"])
    tensors = fingerprint(model)
    row = {
        "id": version_id(None, None, tensors),
        "subject": key,
        "source": source,
        "number": 0,
        "parent": None,
        "proposal_id": None,
        "delta_sha256": None,
        "tensors_sha256": tensors,
        "files_sha256": files_sha256(Path(key)),
        "principal": principal,
        "created_at": time.time(),
    }
    workspace.store.add_version(row, principal, move_head=True)
    return str(row["id"])


def build_weights(workspace: Workspace, root: Path, row: dict[str, Any]) -> Any:
    """The model of version ``row``: the root folder's weights plus every delta on the way."""
    loaded = load_folder(root, "cpu")
    for step in chain(workspace, row)[1:]:
        delta = load_delta(workspace, str(step["delta_sha256"]))
        if any(k.startswith(RUNTIME) for k in delta):
            raise LoadError(f"version {label(step)} holds a runtime intervention, not weights")
        add_delta(loaded.model, delta)
    return loaded


def materialise(workspace: Workspace, root: Path, row: dict[str, Any]) -> Path:
    """``<workspace>/versions/<id>/``: version ``row``'s weights as a plain HF folder (built
    once, atomically; its tensors checked against the version's hash before publishing)."""
    folder = cache_dir(workspace) / str(row["id"])
    if (folder / "config.json").exists():
        return folder
    loaded = build_weights(workspace, root, row)
    got = fingerprint(loaded.model)
    if got != row["tensors_sha256"]:
        raise LoadError(
            f"version {label(row)} of {row['source']} rebuilds to other tensors than it recorded "
            f"(SHA-256 {got[:12]} != {str(row['tensors_sha256'])[:12]}): the root weights or a "
            "delta changed; run `selfscope versions verify`"
        )
    return write_cache(workspace, root, row, loaded.model)


def write_cache(workspace: Workspace, root: Path, row: dict[str, Any], model: Any) -> Path:
    """Publish ``model`` (version ``row``'s weights) as ``<workspace>/versions/<id>/``: the
    root folder's other files (config, tokenizer) beside ``model.safetensors``, written to a
    staging folder and renamed, so a crash leaves no half-written version."""
    folder = cache_dir(workspace) / str(row["id"])
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staging_dir(folder.parent, folder.name) as staging:
        for item in root.iterdir():
            if item.is_file() and not item.name.endswith(WEIGHT_FILES):
                shutil.copy2(item, staging / item.name)
        model.config.save_pretrained(staging)
        atomic.crash_point()
        save_file(_weights(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        atomic.crash_point()
        atomic.fsync_tree(staging)
        try:
            staging.rename(folder)
            atomic.crash_point()
        except OSError:
            if not (folder / "config.json").exists():  # not another process's finished copy
                raise
            shutil.rmtree(staging, ignore_errors=True)
    atomic.fsync_path(folder.parent)
    return folder


def _weights(model: Any) -> dict[str, Any]:
    """``model``'s tensors to save, each stored once under the first name the state dict gives
    it: tied weights keep the embedding's name, as the root files do (SmolLM2's cache saved
    under ``lm_head.weight`` instead, by ``safetensors.torch.save_model``, loaded 30% slower:
    0.45 s against 0.34 s, medians of 6)."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.numel() == 0 or tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor.contiguous()
    return out


def drop_cache(workspace: Workspace, row: dict[str, Any]) -> None:
    shutil.rmtree(cache_dir(workspace) / str(row["id"]), ignore_errors=True)


def select(
    workspace: Workspace | None, folder: Path, ref: str | None, source: str
) -> tuple[Path, dict[str, Any] | None]:
    """The folder to load for ``source`` (the root's, or a materialised version's) and the
    version row (``None`` while the subject has no versions and none was asked for)."""
    if workspace is None:
        if ref is not None:
            raise LoadError(f"{source}: a version needs a workspace (--workspace)")
        return folder, None
    key = subject_key(folder)
    if ref is not None:
        row = find(workspace, key, ref)
    else:
        head = workspace.store.head(key)
        if head is None:
            return folder, None
        found = workspace.store.version_row(head)
        if found is None:
            raise LoadError(f"HEAD of {source} names a version that is not in the store")
        row = found
    if row["number"] == 0:
        return folder, row
    return materialise(workspace, folder, row), row
