"""Progress bars for long work, on stderr (so ``--json`` output on stdout stays clean)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool = True
) -> Iterator[Callable[[int, str], None]]:
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
