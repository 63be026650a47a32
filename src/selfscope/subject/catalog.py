"""What can be loaded here: the shipped model, converted models and built organisms.

:func:`list_models` answers "which source strings would :func:`~selfscope.subject.load` accept
in this workspace, and which of them are ready?" without loading any weights: it reads the
package metadata, the store's ``models`` table and each organism's ``lineage.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from selfscope.errors import LoadError
from selfscope.subject import organism, smollm2
from selfscope.workspace import Workspace


@dataclass(frozen=True)
class ModelEntry:
    """One loadable model.

    Attributes:
        source: the string to pass to :func:`~selfscope.subject.load`.
        kind: ``smollm2``, ``gguf`` (a converted file) or ``organism``.
        available: whether ``load(source)`` can work now (package installed, files present).
        path: the Hugging Face folder it loads from, when that exists already.
        note: one line for people: state, size, or what to do to make it available.
    """

    source: str
    kind: Literal["smollm2", "gguf", "organism"]
    available: bool
    path: Path | None
    note: str


def _smollm2_entry(workspace: Workspace) -> tuple[ModelEntry, str | None]:
    gguf = smollm2.find_smollm2()
    if gguf is None:
        note = f"SmolLM2-135M-Instruct; not installed: `{smollm2.INSTALL_HINT}`"
        return ModelEntry(smollm2.SOURCE, "smollm2", False, None, note), None
    for row in workspace.store.models():
        if row.source == str(gguf) and Path(row.path).is_dir():
            note = f"SmolLM2-135M-Instruct; converted ({row.parameters:,} parameters)"
            return ModelEntry(smollm2.SOURCE, "smollm2", True, Path(row.path), note), str(gguf)
    note = "SmolLM2-135M-Instruct; installed, converted on first load (~20 s)"
    return ModelEntry(smollm2.SOURCE, "smollm2", True, None, note), str(gguf)


def _converted_entries(workspace: Workspace, skip: str | None) -> list[ModelEntry]:
    entries = []
    for row in workspace.store.models():
        if row.source == skip:
            continue
        ready = Path(row.path).is_dir() and Path(row.source).is_file()
        note = f"{row.architecture}, {row.parameters:,} parameters, converted from GGUF"
        if not ready:
            note += "; the .gguf or its converted folder is gone"
        entries.append(ModelEntry(row.source, "gguf", ready, Path(row.path), note))
    return entries


def _organism_entries(workspace: Workspace) -> list[ModelEntry]:
    entries = []
    for name in workspace.built_organisms():
        try:
            found = organism.organism_checkpoints(name, organism.organism_folder(name, workspace))
        except LoadError as exc:
            entries.append(
                ModelEntry(organism.source_string(name), "organism", False, None, str(exc))
            )
            continue
        for phase, lineage in found.lineages.items():
            checkpoint = lineage.phases[-1].checkpoint
            if lineage.control_of:
                note = f"control for phase {lineage.control_of}"
            else:
                note = f"phase {len(lineage.phases)} of {len(found.phases)}"
                note += " (default)" if phase == found.default else ""
            ready = (checkpoint / "config.json").is_file()
            note += "" if ready else "; checkpoint missing, rebuild the organism"
            source = organism.source_string(name, phase)
            entries.append(ModelEntry(source, "organism", ready, checkpoint, note))
    return entries


def list_models(workspace: Workspace) -> list[ModelEntry]:
    """Every model :func:`~selfscope.subject.load` accepts by name in ``workspace``.

    The shipped ``smollm2`` first, then other converted GGUF files from the store, then each
    built organism's phases (in training order) and controls as ``organism:NAME@PHASE``. Local
    Hugging Face folders are not listed: any such folder path is accepted as it is.
    """
    first, skip = _smollm2_entry(workspace)
    return [first, *_converted_entries(workspace, skip), *_organism_entries(workspace)]
