"""Atomic writes: a crash at any point leaves the previous state intact.

Files are written to a temporary sibling, flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX). Folders are built under a temporary name and published by
atomically swapping a symlink (:func:`publish_dir`), so a reader sees the old folder or the new
one, never half of either.

:func:`crash_point` marks the steps between which a crash must leave a consistent state (each
file write, each folder published, each store transaction). With ``SELFSCOPE_CRASH_AT=N`` in
the environment the N-th point reached kills the process with SIGKILL: the crash tests
(tests/test_oversight_crash.py) run ``selfscope apply`` once per point and check what is left.
Unset (always, outside those tests) it costs one integer comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CRASH_AT = int(os.environ.get("SELFSCOPE_CRASH_AT") or 0)
_reached = 0


def crash_point() -> None:
    """Count this point; die here (SIGKILL, nothing flushed or cleaned) if it is the N-th of
    ``SELFSCOPE_CRASH_AT=N``."""
    global _reached
    if not _CRASH_AT:
        return
    _reached += 1
    if _reached == _CRASH_AT:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: Path) -> None:
    """Flush one file or folder entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root``) before publishing it."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() or path.is_dir():
            fsync_path(path)
            crash_point()
    fsync_path(root)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data[: len(data) // 2])
            crash_point()  # half written
            handle.write(data[len(data) // 2 :])
            handle.flush()
            os.fsync(handle.fileno())
        crash_point()  # written, not yet renamed
        os.replace(tmp, target)
        crash_point()  # renamed, folder entry not yet flushed
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(target.parent)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def staging_dir(parent: Path, name: str) -> Iterator[Path]:
    """A fresh temporary folder under ``parent``; removed if the block raises."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(built: Path, link: Path) -> None:
    """Make ``link`` point at the finished folder ``built``, atomically.

    ``link`` is a symlink (relative, so the workspace can move). ``built`` is flushed to disk
    first; a previous target is removed only after the new link is in place.
    """
    fsync_tree(built)
    link.parent.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    if link.is_symlink():
        old = link.resolve()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a selfscope-managed link; move it away")
    tmp_link = link.parent / f".{link.name}.link.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_link)
    os.symlink(os.path.relpath(built, link.parent), tmp_link)
    os.replace(tmp_link, link)
    fsync_path(link.parent)
    if old is not None and old != built.resolve() and old.exists():
        shutil.rmtree(old, ignore_errors=True)
