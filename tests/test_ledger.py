"""The ledger and the version files are tamper-evident: every random edit, deletion, insertion,
reordering or truncation of ledger entries, and every byte flipped in a version's or delta's
file, is detected (`ledger verify`, with a signed checkpoint for truncations; `versions
verify`). Hypothesis draws the tampering; the counts are asserted at the end."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfscope.behaviour import fingerprint
from selfscope.errors import SelfscopeError
from selfscope.oversight import ledger
from selfscope.oversight import versions as version_audit
from selfscope.store import GENESIS, entry_hash
from selfscope.subject import Subject, load
from selfscope.subject import versions as versioning
from selfscope.subject.deltas import add_delta, delta_path, save_delta
from selfscope.workspace import Workspace

N_ENTRIES = 40
DETECTED: dict[str, int] = {}


def _fresh_ledger(tmp: Path) -> Workspace:
    ws = Workspace(tmp)
    for i in range(N_ENTRIES):
        ws.store.append(
            random.Random(i).choice(["tool_call", "proposal", "review", "version", "head"]),
            f"p{i % 3}",
            f"subject-{i % 2}",
            {"i": i, "note": "x" * (i % 5)},
        )
    return ws


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    ws = _fresh_ledger(tmp_path_factory.mktemp("ledger"))
    rows = list(ws.store.ledger_rows())
    assert ledger.verify(rows).ok and len(rows) == N_ENTRIES
    return rows


def test_a_fresh_ledger_verifies_and_each_hash_is_recomputable(
    chain: list[tuple[Any, ...]],
) -> None:
    prev = GENESIS
    for seq, at, principal, action, subject, payload, payload_sha, link, own in chain:
        assert hashlib.sha256(payload.encode()).hexdigest() == payload_sha
        assert link == prev
        fields = json.dumps(
            [seq, repr(at), principal, action, subject, payload_sha, prev],
            sort_keys=True,
            separators=(",", ":"),
        )
        assert hashlib.sha256(fields.encode()).hexdigest() == own  # an independent hash
        prev = own


def _mutate(rows: list[tuple[Any, ...]], data: st.DataObject) -> tuple[list[tuple[Any, ...]], str]:
    """One random tampering of ``rows`` and its kind (never a no-op)."""
    kind = data.draw(st.sampled_from(["edit", "delete", "insert", "reorder", "truncate"]))
    out = list(rows)
    n = len(out)
    if kind == "edit":
        i = data.draw(st.integers(0, n - 1))
        column = data.draw(st.integers(0, 8))
        row = list(out[i])
        old = row[column]
        if isinstance(old, int) and not isinstance(old, bool):
            new: Any = old + data.draw(st.integers(1, 5)) * data.draw(st.sampled_from([1, -1]))
        elif isinstance(old, float):
            new = old + data.draw(st.floats(1e-6, 1e6))
        else:
            text = str(old)
            j = data.draw(st.integers(0, max(0, len(text) - 1)))
            replacement = data.draw(st.characters(codec="utf-8"))
            new = text[:j] + replacement + text[j + 1 :]
            if new == text:
                new = text + replacement
        row[column] = new
        out[i] = tuple(row)
    elif kind == "delete":
        del out[data.draw(st.integers(0, n - 2))]  # the last one: that is truncation
    elif kind == "insert":
        i = data.draw(st.integers(0, n - 1))
        source = out[data.draw(st.integers(0, n - 1))]
        out.insert(i, source)
    elif kind == "reorder":
        i = data.draw(st.integers(0, n - 2))
        j = data.draw(st.integers(i + 1, n - 1))
        out[i], out[j] = out[j], out[i]
    else:
        out = out[: data.draw(st.integers(0, n - 1))]
    return out, kind


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_tampering_of_the_ledger_is_detected(
    chain: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    tampered, kind = _mutate(chain, data)
    head = {"seq": chain[-1][0], "hash": chain[-1][8]}  # a checkpoint signed at the head
    verdict = ledger.verify(tampered, head)
    assert not verdict.ok, kind
    assert verdict.first_bad is not None and verdict.reason
    DETECTED[kind] = DETECTED.get(kind, 0) + 1


def test_a_rewritten_tail_is_found_only_with_a_checkpoint(chain: list[tuple[Any, ...]]) -> None:
    """Cut the last 5 entries and append 5 new ones with fresh, valid hashes: the chain alone
    verifies (the limit of a hash chain), the signed checkpoint of the old head does not."""
    rows = list(chain[:-5])
    prev = rows[-1][8]
    for seq in range(len(rows) + 1, len(rows) + 6):
        payload = json.dumps({"forged": seq})
        digest = hashlib.sha256(payload.encode()).hexdigest()
        at = time.time()
        own = entry_hash(seq, at, "mallory", "review", "-", digest, prev)
        rows.append((seq, at, "mallory", "review", "-", payload, digest, prev, own))
        prev = own
    assert ledger.verify(rows).ok
    verdict = ledger.verify(rows, {"seq": chain[-1][0], "hash": chain[-1][8]})
    assert not verdict.ok and "rewritten" in (verdict.reason or "")


def test_tampering_in_the_store_itself_names_the_first_bad_entry(tmp_path: Path) -> None:
    ws = _fresh_ledger(tmp_path / "ws")
    assert ledger.verify_workspace(ws).ok
    db = sqlite3.connect(ws.root / "store.sqlite")
    db.execute("UPDATE ledger SET principal = 'mallory' WHERE seq = 17")
    db.commit()
    verdict = ledger.verify_workspace(ws)
    assert not verdict.ok and verdict.first_bad == 17 and "entry 17" in (verdict.reason or "")
    db.execute("DELETE FROM ledger WHERE seq = 9")
    db.commit()
    assert ledger.verify_workspace(ws).first_bad == 9


def test_a_signed_checkpoint_catches_truncation_and_refuses_a_foreign_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ledger.KEYS_ENV, str(tmp_path / "keys"))
    ws = _fresh_ledger(tmp_path / "ws")
    body = ledger.checkpoint(ws, "alice", tmp_path / "head.json")
    assert (tmp_path / "keys" / "alice.ed25519").stat().st_mode & 0o077 == 0
    assert ledger.verify_workspace(ws, tmp_path / "head.json").ok
    db = sqlite3.connect(ws.root / "store.sqlite")
    db.execute("DELETE FROM ledger WHERE seq >= ?", (body["seq"] - 3,))
    db.commit()
    assert ledger.verify_workspace(ws).ok  # the chain alone cannot see it
    verdict = ledger.verify_workspace(ws, tmp_path / "head.json")
    assert not verdict.ok and "truncated" in (verdict.reason or "")
    # a checkpoint whose fields were changed after signing
    forged = json.loads((tmp_path / "head.json").read_text())
    forged["seq"] = 3
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(SelfscopeError, match="signature does not match"):
        ledger.read_checkpoint(tmp_path / "forged.json")
    # keys inside the workspace are refused
    monkeypatch.setenv(ledger.KEYS_ENV, str(ws.root / "keys"))
    with pytest.raises(SelfscopeError, match="inside the workspace"):
        ledger.checkpoint(ws, "bob", tmp_path / "b.json")


# version and delta files ---------------------------------------------------------------------
def _versioned(tiny_llama: Subject, root: Path) -> tuple[Workspace, str]:
    """A workspace where ``tiny_llama`` has v0 and two applied deltas (v1, v2), materialised."""
    ws = Workspace(root)
    source = str(tiny_llama.path)
    key = versioning.subject_key(tiny_llama.path)
    versioning.ensure_root(ws, key, source, tiny_llama.model, "alice")
    model = load(source).model
    parent = ws.store.head(key)
    for number in (1, 2):
        torch.manual_seed(number)
        name = f"model.layers.{number}.mlp.down_proj.weight"
        delta = {name: 0.01 * torch.randn_like(dict(model.named_parameters())[name])}
        sha = save_delta(ws, delta)
        add_delta(model, delta)
        tensors = fingerprint(model)
        row = {
            "id": versioning.version_id(parent, sha, tensors),
            "subject": key,
            "source": source,
            "number": number,
            "parent": parent,
            "proposal_id": f"p{number}",
            "delta_sha256": sha,
            "tensors_sha256": tensors,
            "files_sha256": "",
            "principal": "alice",
            "created_at": time.time(),
        }
        cache = versioning.write_cache(ws, tiny_llama.path, row, model)
        row["files_sha256"] = versioning.files_sha256(cache)
        ws.store.add_version(row, "alice", move_head=True)
        parent = row["id"]
    return ws, source


def test_versions_load_by_label_and_by_id_and_head_is_the_default(
    tiny_llama: Subject, tmp_path: Path
) -> None:
    ws, source = _versioned(tiny_llama, tmp_path / "ws")
    rows = ws.store.versions(versioning.subject_key(tiny_llama.path))
    head = load(source, ws)
    assert head.version == rows[2]["id"] and fingerprint(head.model) == rows[2]["tensors_sha256"]
    assert load(f"{source}@v1", ws).version == rows[1]["id"]
    assert fingerprint(load(f"{source}@{rows[1]['id'][:8]}", ws).model) == rows[1]["tensors_sha256"]
    assert fingerprint(load(f"{source}@v0", ws).model) == fingerprint(tiny_llama.model)
    assert version_audit.verify(ws, source).ok
    # a cache changed on disk is found on load (its files' hash) and rebuilt from root + deltas
    cache = versioning.cache_dir(ws) / str(rows[2]["id"]) / "model.safetensors"
    data = bytearray(cache.read_bytes())
    data[-1] ^= 0x01
    cache.write_bytes(bytes(data))
    assert fingerprint(load(source, ws).model) == rows[2]["tensors_sha256"]
    assert versioning.files_sha256(cache.parent) == rows[2]["files_sha256"]
    with pytest.raises(SelfscopeError, match="no version v7"):
        load(f"{source}@v7", ws)


def test_a_stamped_cache_skips_the_hash_until_a_file_or_the_stamp_changes(
    tiny_llama: Subject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, source = _versioned(tiny_llama, tmp_path / "ws")
    head = ws.store.versions(versioning.subject_key(tiny_llama.path))[2]
    folder = versioning.cache_dir(ws) / str(head["id"])
    weights = folder / "model.safetensors"
    hashed: list[Path] = []
    real = versioning.files_sha256
    monkeypatch.setattr(versioning, "files_sha256", lambda f: hashed.append(f) or real(f))

    def loads_right() -> int:
        """Load HEAD, check its tensors, and say how many times its files were hashed."""
        hashed.clear()
        assert fingerprint(load(source, ws).model) == head["tensors_sha256"]
        return len(hashed)

    assert loads_right() == 1 and (folder / versioning.STAMP).exists()  # hashed, then stamped
    assert loads_right() == 0  # the stamp holds: no hash
    # a byte flipped in place with its mtime put back: the ctime moved, so the stamp fails,
    # the hash runs, and the cache is rebuilt; the rebuilt cache is hashed and stamped on the
    # next load, and skipped after that
    stat = weights.stat()
    with weights.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)[0]
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last ^ 0x01]))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_ino == stat.st_ino and weights.stat().st_size == stat.st_size
    assert loads_right() == 1
    assert real(folder) == head["files_sha256"]
    assert loads_right() == 1 and loads_right() == 0
    # a stamp edited to match other files (here: its recorded stats) fails its MAC
    stamp = json.loads((folder / versioning.STAMP).read_text())
    stamp["stats"][0][2] += 1
    (folder / versioning.STAMP).write_text(json.dumps(stamp))
    assert not versioning.stamped(ws, folder, head)
    assert loads_right() == 1
    # a malformed stamp is "not stamped", never an error
    for junk in ("[]", '{"mac": 7}', '{"mac": "\u00e9"}', "not json"):
        (folder / versioning.STAMP).write_text(junk)
        assert not versioning.stamped(ws, folder, head)
    assert loads_right() == 1 and loads_right() == 0
    # without the key (keys inside the workspace are not used) nothing is stamped: every
    # load hashes in full
    monkeypatch.setenv("SELFSCOPE_KEYS", str(ws.root / "keys"))
    assert loads_right() == 1 and loads_right() == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(["delta", "cache", "root"]),
    where=st.floats(0.0, 1.0, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_every_byte_flip_in_a_version_or_delta_file_is_found(
    tiny_llama: Subject,
    tmp_path_factory: pytest.TempPathFactory,
    target: str,
    where: float,
    bit: int,
) -> None:
    # a private copy of the root folder: flipping the shared fixture's bytes would leak
    import shutil

    root = tmp_path_factory.mktemp("flip")
    shutil.copytree(tiny_llama.path, root / "model")
    subject = load(str(root / "model"))
    ws, source = _versioned(subject, root / "ws")
    rows = ws.store.versions(versioning.subject_key(subject.path))
    if target == "delta":
        path = delta_path(ws, str(rows[1]["delta_sha256"]))
    elif target == "cache":
        path = versioning.cache_dir(ws) / str(rows[2]["id"]) / "model.safetensors"
    else:
        path = root / "model" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[int(where * len(data))] ^= 1 << bit
    path.write_bytes(bytes(data))
    verdict = version_audit.verify(ws, source)
    assert not verdict.ok and verdict.problems, target
    DETECTED[f"file:{target}"] = DETECTED.get(f"file:{target}", 0) + 1


def test_the_counts_reach_the_bar() -> None:
    """Runs last in this module: at least 1,000 tamperings in all, every one detected (a miss
    fails its own example above)."""
    if not DETECTED:
        pytest.skip("run with the whole module")
    assert sum(DETECTED.values()) >= 1000, DETECTED
    assert {"edit", "delete", "insert", "reorder", "truncate"} <= set(DETECTED), DETECTED
