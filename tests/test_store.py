"""The workspace store and atomic writes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from selfscope import atomic
from selfscope.errors import SelfscopeError
from selfscope.store import SCHEMA_VERSION, Store
from selfscope.workspace import Workspace


def test_store_is_migrated_and_reopens(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert ws.store.version == SCHEMA_VERSION
    ws.store.record_model("gguf:x", "/a.gguf", "/m", "llama", 10)
    again = Store(tmp_path / "store.sqlite")
    assert again.version == SCHEMA_VERSION
    model = again.model("gguf:x")
    assert model is not None and model.parameters == 10


def test_a_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(SelfscopeError, match="newer than this selfscope"):
        Store(path)


def test_workspace_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFSCOPE_HOME", str(tmp_path / "home"))
    assert Workspace().root == tmp_path / "home"


def test_atomic_write_keeps_old_content_on_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.json"
    atomic.write_json(target, {"v": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.write_json(target, {"v": 2})
    monkeypatch.undo()
    assert target.read_text().strip().startswith('{\n  "v": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"], "no temp file left behind"


def test_publish_dir_swaps_atomically(tmp_path: Path) -> None:
    first, second = tmp_path / "b1", tmp_path / "b2"
    first.mkdir()
    second.mkdir()
    (first / "x").write_text("1")
    (second / "x").write_text("2")
    link = tmp_path / "organisms" / "o"
    atomic.publish_dir(first, link)
    assert (link / "x").read_text() == "1"
    atomic.publish_dir(second, link)
    assert (link / "x").read_text() == "2"
    assert not first.exists(), "the replaced build is removed after the swap"


def test_one_suite_sealed_for_two_subjects_stays_sealed_for_both(tmp_path: Path) -> None:
    """An organism and its blind copy get the same held-out suite; keyed by its SHA-256 alone,
    the second seal replaced the first subject's row (fixed in schema 6)."""
    store = Workspace(tmp_path / "ws").store
    store.seal_suite("ab" * 32, "/organism", "organism-0", '{"name": "s"}', 3, "builder")
    store.seal_suite("ab" * 32, "/blind-copy", "organism-0", '{"name": "s"}', 3, "builder")
    assert [r["subject"] for r in store.sealed_suites("/organism")] == ["/organism"]
    assert [r["subject"] for r in store.sealed_suites("/blind-copy")] == ["/blind-copy"]
