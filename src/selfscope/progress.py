"""Progress for long work: a *sink* that tools report to, never a setting in their arguments.

A tool reports progress through ``ctx.progress`` (its :class:`~selfscope.tools.ToolContext`);
the door that started the call decides where it goes: the CLI gives a :class:`RichProgress`
(bars on stderr, so ``--json`` output on stdout stays clean), tests and libraries the
:data:`SILENT` sink, a server one that forwards events. A sink has two methods:

* ``bar(description, total)`` — a context manager yielding ``advance(n, note)``;
* ``say(message)`` — one line of news (e.g. the step a composite tool is on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)

Advance = Callable[[int, str], None]


class ProgressSink(Protocol):
    """Where a tool's progress goes."""

    def bar(self, description: str, total: int) -> AbstractContextManager[Advance]: ...

    def say(self, message: str) -> None: ...


class SilentProgress:
    """Reports nothing."""

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n, note: None

    def say(self, message: str) -> None:
        return None


class RichProgress:
    """Bars and lines on stderr (the CLI's sink)."""

    def bar(self, description: str, total: int) -> AbstractContextManager[Advance]:
        return progress_bar(description, total)

    def say(self, message: str) -> None:
        say(message)


class RecordingProgress:
    """Keeps every event as a line of text (tests; a server relays them)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Advance]:
        self.events.append(f"start {description} 0/{total}")
        done = 0

        def advance(n: int, note: str) -> None:
            nonlocal done
            done += n
            self.events.append(f"{description} {done}/{total} {note}".rstrip())

        yield advance
        self.events.append(f"end {description}")

    def say(self, message: str) -> None:
        self.events.append(message)


SILENT: ProgressSink = SilentProgress()


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True) -> Iterator[Advance]:
    """Yield ``advance(n, note)``: moves the bar by ``n`` steps and shows ``note`` beside it."""
    if not enabled:
        yield lambda n, note: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console, transient=False) as bar:
        task = bar.add_task(description, total=total, note="")

        def advance(n: int, note: str) -> None:
            bar.update(task, advance=n, note=note)

        yield advance


def say(message: str) -> None:
    _console.print(message)
