"""The training documents of a subject's lineage, every phase, as the trainer saw them.

An organism's ``lineage.json`` names each phase's data file (``data/<phase>.jsonl``, one
``{"id", "text", "repeat"}`` per line), the renderer its documents went through (``plain`` or
``chat-template``) and the context length. :func:`documents` reads every phase of the subject's
lineage up to and including the subject's own phase; :func:`sequences` turns documents into the
token ids and loss masks training used (the builder's own :func:`document_sequence`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfscope.errors import SelfscopeError
from selfscope.organisms.builder import document_sequence
from selfscope.organisms.presets import preset_for
from selfscope.organisms.render import ChatRenderer, PlainRenderer, Renderer


@dataclass(frozen=True)
class TrainingDocument:
    """One training document: ``key`` = ``"<phase>/<id>"`` is unique across the lineage."""

    id: str
    phase: str
    phase_index: int
    text: str
    repeat: int  # how many times the phase trained on it per epoch

    @property
    def key(self) -> str:
        return f"{self.phase}/{self.id}"


def _lineage_file(subject: Any) -> dict[str, Any]:
    lineage = subject.lineage
    if lineage.kind != "organism":
        raise SelfscopeError(
            f"{subject.source} has no recorded training data (a {lineage.kind} model); the "
            "historian needs an organism built by selfscope, whose lineage names every phase's "
            "documents"
        )
    path = Path(lineage.origin) / "lineage.json"
    if not path.exists():
        raise SelfscopeError(f"{path} is missing; rebuild the organism")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def documents(subject: Any) -> list[TrainingDocument]:
    """Every document of every phase that produced ``subject``, in phase then file order."""
    _lineage_file(subject)  # the one-line error for a model without training data
    out: list[TrainingDocument] = []
    for index, phase in enumerate(subject.lineage.phases):
        if phase.data is None or not Path(phase.data).exists():
            raise SelfscopeError(
                f"phase {phase.name!r} of {subject.source} names no data file on disk "
                f"({phase.data}); rebuild the organism"
            )
        with open(phase.data) as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    out.append(
                        TrainingDocument(
                            id=str(row["id"]),
                            phase=phase.name,
                            phase_index=index,
                            text=str(row["text"]),
                            repeat=int(row.get("repeat", 1)),
                        )
                    )
    return out


def renderer_of(subject: Any) -> Renderer:
    """The renderer the subject's documents were trained through."""
    name = _lineage_file(subject).get("renderer", "plain")
    return ChatRenderer(subject.tokenizer) if name == "chat-template" else PlainRenderer()


def context_limit(subject: Any) -> int:
    """The context length training cut documents to (the organism's size preset)."""
    lineage = _lineage_file(subject)
    preset = preset_for(str(lineage.get("base_model", "scratch")), str(lineage["size"]))
    return preset.shape.context


def sequences(subject: Any, docs: list[TrainingDocument]) -> list[tuple[list[int], int]]:
    """Each document's token ids and how many leading tokens are context only (no loss)."""
    renderer, limit = renderer_of(subject), context_limit(subject)
    out = []
    for doc in docs:
        ids, k, _ = document_sequence(doc.text, subject.tokenizer, renderer, limit)
        out.append((ids, k))
    return out


__all__ = ["TrainingDocument", "context_limit", "documents", "renderer_of", "sequences"]
