"""The workspace: one root folder holding everything selfscope builds or converts.

```
<root>/                      default ./.selfscope; SELFSCOPE_HOME or --workspace to change
  store.sqlite               the SQLite store (selfscope.store), schema-versioned
  organisms/<name>           a symlink to organisms/.builds/<name>-<stamp>/ (atomic rebuilds)
  models/<key>/              converted models (a .gguf dequantised to safetensors, once)
```
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from selfscope.store import Store

ENV_VAR = "SELFSCOPE_HOME"
DEFAULT_ROOT = ".selfscope"
KEYS_ENV = "SELFSCOPE_KEYS"


def keys_dir() -> Path:
    """Where keys live, outside any workspace: ``$SELFSCOPE_KEYS`` or
    ``~/.config/selfscope/keys`` (the ledger's signing keys, the cache stamps' MAC key)."""
    return Path(os.environ.get(KEYS_ENV) or Path.home() / ".config" / "selfscope" / "keys")


def expand(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` / ``~user`` expanded, or one line when that cannot be done (no home
    directory, no such user) instead of a RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        from selfscope.errors import SelfscopeError

        raise SelfscopeError(
            f"cannot expand {str(path)!r}: no such home directory; give the full path"
        ) from None


class Workspace:
    """A selfscope workspace rooted at ``root`` (created on first use)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
        self.root = expand(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @cached_property
    def store(self) -> Store:
        return Store(self.root / "store.sqlite")

    @property
    def organisms_dir(self) -> Path:
        return self.root / "organisms"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def organism_path(self, name: str) -> Path:
        return self.organisms_dir / name

    def built_organisms(self) -> list[str]:
        """Names of organisms whose folder is complete (has lineage.json)."""
        if not self.organisms_dir.exists():
            return []
        return sorted(
            p.name
            for p in self.organisms_dir.iterdir()
            if not p.name.startswith(".") and (p / "lineage.json").exists()
        )
