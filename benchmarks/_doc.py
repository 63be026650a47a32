"""Write one benchmark's section of docs/benchmarks.md, between its own markers, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfscope import atomic
from selfscope.game.bench import write_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEAD = "# Benchmarks\n\nEach section is written by its script in `benchmarks/`.\n"


def write_section(name: str, text: str) -> None:
    if not DOC.exists():
        atomic.write_text(DOC, HEAD)
    write_markdown(DOC, name, text.split("\n"))


def publish(name: str, lines: list[str]) -> None:
    """Write the section and print it."""
    write_section(name, "\n".join(lines))
    print("\n".join(lines))


def fmt(x: Any) -> str:
    """A table cell: two decimals for a float, '-' for nothing."""
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)
