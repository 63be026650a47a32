"""The architecture as a test: rooms import downward only, ground truth stays in the lab, and the
tool registry lists exactly the modules that register tools.

The allowed graph (docs/architecture.md draws it) is :data:`ALLOWED`: a room may import itself
and the rooms listed for it, nothing else. ``TYPE_CHECKING`` imports count too (an annotation is
a dependency for a reader). Ground truth (``ground_truth.json``, ``spec.yaml``, a ``GroundTruth``
type) may be named only by the lab's builder and blinding (:data:`TRUTH_ALLOWED`), the auditing
game's scorer, ``benchmarks/`` and tests (the latter two are not scanned here). Docstrings are
prose and are not scanned.

The last test proves the checker can fail: it copies the package, adds a forbidden import and a
ground-truth read, and expects both reported.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import selfscope
from selfscope import tools

PACKAGE = Path(selfscope.__file__).parent

BASE = {"errors", "atomic", "progress", "store", "workspace"}
#: room -> the rooms it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "errors": set(),
    "progress": set(),
    "atomic": {"errors"},
    "store": {"errors", "atomic"},
    "workspace": {"errors", "atomic", "store"},
    "behaviour": {"errors"},
    "report": {"errors", "atomic"},
    "subject": BASE | {"behaviour"},
    "tools": BASE | {"subject"},
    "access": BASE | {"subject", "tools", "behaviour", "report"},
    "organisms": BASE | {"subject", "behaviour"},
    "localize": BASE | {"subject", "tools", "behaviour", "report", "access"},
    "history": BASE
    | {"subject", "tools", "behaviour", "report", "access", "localize", "organisms"},
    "edits": BASE | {"subject", "tools", "behaviour", "report", "access", "localize", "history"},
    "selfmodel": BASE
    | {"subject", "tools", "behaviour", "report", "access", "localize", "history"},
    "oversight": BASE
    | {"subject", "tools", "behaviour", "report", "access", "localize", "history", "edits"}
    | {"selfmodel"},
    "investigate": BASE
    | {"subject", "tools", "behaviour", "report", "access", "localize", "history", "edits"}
    | {"oversight", "selfmodel"},
    "demo": BASE
    | {"subject", "tools", "behaviour", "access", "localize", "history", "edits", "organisms"}
    | {"investigate", "oversight", "selfmodel"},
    # the other doors: thin, on the registry, the gate and the investigation
    "http": BASE | {"subject", "tools", "behaviour", "edits", "oversight", "investigate"},
    "mcp_server": BASE | {"tools", "oversight"},
    # the auditing game: builds organisms, runs investigators in another process, scores them
    "game": BASE | {"subject", "behaviour", "organisms", "oversight"},
    "cli": BASE
    | {"subject", "tools", "behaviour", "access", "localize", "history", "edits", "organisms"}
    | {"demo", "report", "oversight", "investigate", "selfmodel", "http", "mcp_server", "game"},
}
#: files (relative to the package) that may name ground truth or the spec file
TRUTH_ALLOWED = {"organisms/builder.py", "organisms/blind.py", "organisms/ground_truth.py"}
TRUTH_ALLOWED |= {"game/score.py", "game/bench.py"}  # the auditing game's scorer and runner
TRUTH_WORDS = ("ground_truth", "spec.yaml", "GroundTruth")


def _room(relative: Path) -> str:
    return relative.parts[0].removesuffix(".py")


def _imports(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    """(line, imported selfscope module) for every import in ``tree``."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("selfscope")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base == "selfscope":  # from selfscope import tools -> selfscope.tools
                found += [(node.lineno, f"selfscope.{a.name}") for a in node.names]
            elif base.startswith("selfscope."):
                found.append((node.lineno, base))
    return found


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
    return ids


def violations(package: Path) -> list[str]:
    """Every forbidden import and every ground-truth mention in ``package``, one line each."""
    out = []
    for file in sorted(package.rglob("*.py")):
        relative = file.relative_to(package)
        room = _room(relative)
        module = ".".join(["selfscope", *relative.with_suffix("").parts])
        tree = ast.parse(file.read_text())
        allowed = ALLOWED.get(room)
        if allowed is None:
            out.append(f"{relative}: room {room!r} is not in the allowed graph (ALLOWED)")
            continue
        for line, imported in _imports(tree, module):
            target = imported.split(".")[1] if "." in imported else "__init__"
            if target != room and target not in allowed:
                out.append(f"{relative}:{line}: {room} imports {imported} ({target} is above it)")
        if relative.as_posix() in TRUTH_ALLOWED:
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = None if id(node) in docs else node.value
            elif isinstance(node, ast.Name | ast.alias):
                text = node.id if isinstance(node, ast.Name) else node.name
            elif isinstance(node, ast.Attribute):
                text = node.attr
            if text and any(word in text for word in TRUTH_WORDS):
                line = getattr(node, "lineno", "?")
                out.append(f"{relative}:{line}: names ground truth ({text[:40]!r})")
    return out


def test_rooms_import_downward_and_ground_truth_stays_in_the_lab() -> None:
    assert violations(PACKAGE) == []


def test_tool_modules_are_exactly_the_modules_that_register_tools() -> None:
    registering = set()
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef):
                for d in node.decorator_list:
                    func = d.func if isinstance(d, ast.Call) else d
                    name = getattr(func, "id", None) or getattr(func, "attr", None)
                    if name == "tool":
                        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
                        registering.add(".".join(parts))
    assert registering == set(tools.TOOL_MODULES)
    # and every registered tool came from one of them
    assert {t.fn.__module__ for t in tools.registry().values()} == registering


def test_the_checker_catches_a_forbidden_import_and_a_ground_truth_read(tmp_path: Path) -> None:
    copy = tmp_path / "selfscope"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(copy) == []
    lens = copy / "access" / "lens.py"
    lens.write_text(lens.read_text() + "\nfrom selfscope.edits import proposal  # upward\n")
    origin = copy / "localize" / "origin.py"
    origin.write_text(
        origin.read_text() + '\n\ndef peek(folder):\n    return (folder / "ground_truth.json")\n'
    )
    found = violations(copy)
    assert len(found) == 2, found
    assert found[0].startswith("access/lens.py:") and "imports selfscope.edits" in found[0]
    assert found[1].startswith("localize/origin.py:") and "ground truth" in found[1]
