"""The investigator's process: the selfscope CLI behind an audit hook that refuses the answers.

``python -m selfscope.game.sandbox --deny PATH [--deny PATH ...] -- CLI ARGS ...`` installs a
:func:`sys.addaudithook` hook, then runs ``selfscope CLI ARGS`` in this process. The hook
refuses (``PermissionError``) every ``open``, directory listing, ``chdir`` and copy of a path
that resolves (symlinks followed) inside a denied path: the game denies the organisms' build
folders (each holds ``spec.yaml`` and ``ground_truth.json``) and the specs folder. Audit hooks
cannot be removed once installed, so nothing the investigation runs afterwards can lift it.

The game also hands the investigator nothing that leads there: the blind copy (neutral ids, no
spec, no ground truth: :mod:`selfscope.organisms.blind`) and a fresh workspace of its own
(``SELFSCOPE_HOME``); the hook is what makes "cannot read" a property rather than a habit.
Each refusal is also written to stderr as ``sandbox: refused <event> <path>``.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: audit events whose first argument is a path the hook checks
EVENTS = frozenset(
    {"open", "os.listdir", "os.scandir", "os.chdir", "shutil.copytree", "shutil.copyfile"}
)


def install(denied: Sequence[str | Path]) -> None:
    """Refuse, from now on in this process, any access to a path inside ``denied`` (or inside
    where a symlink in a denied folder points: an organism is a symlink to its build)."""
    roots = [os.path.realpath(p) for p in denied]
    for folder in denied:
        if os.path.isdir(folder):
            roots += [os.path.realpath(e.path) for e in os.scandir(folder) if e.is_symlink()]

    def inside(path: Any) -> bool:
        if isinstance(path, int) or path is None:
            return False
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in EVENTS and args and inside(args[0]):
            sys.stderr.write(f"sandbox: refused {event} {args[0]}\n")
            raise PermissionError(f"the auditing game's sandbox refuses {args[0]}")

    sys.addaudithook(hook)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    denied: list[str] = []
    while args and args[0] == "--deny":
        if len(args) < 2:
            sys.exit("sandbox: --deny needs a path")
        denied.append(args[1])
        args = args[2:]
    if not args or args[0] != "--":
        sys.exit("usage: python -m selfscope.game.sandbox --deny PATH ... -- CLI ARGS")
    install(denied)
    sys.argv = ["selfscope", *args[1:]]
    # run the command line as `python -m selfscope.cli` would: a launch, not a dependency of
    # the game's room on the doors above it
    runpy.run_module("selfscope.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
