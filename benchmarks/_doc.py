"""Write one benchmark's section of docs/benchmarks.md, between its own markers, atomically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from selfscope import atomic

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEAD = "# Benchmarks\n\nEach section is written by its script in `benchmarks/`.\n"


def write_section(name: str, text: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = DOC.read_text() if DOC.exists() else HEAD
    block = f"{start}\n{text}\n{end}"
    if start in old:
        new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic.write_text(DOC, new)


def publish(name: str, lines: list[str]) -> None:
    """Write the section and print it."""
    write_section(name, "\n".join(lines))
    print("\n".join(lines))


def fmt(x: Any) -> str:
    """A table cell: two decimals for a float, '-' for nothing."""
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)
