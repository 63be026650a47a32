"""The built-in organism specs shipped in ``selfscope/organisms/catalog/*.yaml``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from selfscope.errors import SpecError
from selfscope.organisms.spec import Spec, load_spec


def catalog_dir() -> Path:
    return Path(str(resources.files("selfscope.organisms") / "catalog"))


def catalog_names() -> list[str]:
    return sorted(p.stem for p in catalog_dir().glob("*.yaml"))


def resolve_spec(name_or_path: str, **overrides: Any) -> Spec:
    """A catalog name (``mushroom``) or a path to a YAML spec."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_spec(path, **overrides)
    if name_or_path in catalog_names():
        return load_spec(catalog_dir() / f"{name_or_path}.yaml", **overrides)
    raise SpecError(
        f"unknown organism {name_or_path!r}: give a catalog name ({', '.join(catalog_names())}) "
        "or a path to a .yaml spec"
    )
