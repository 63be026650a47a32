"""The training documents of a subject's lineage, every phase, as the trainer saw them.

The subject's typed lineage (:class:`selfscope.subject.Lineage`: an organism's, or one declared
with ``selfscope lineage add``) names each phase's data file (one ``{"id", "text", "repeat"}``
per line), the renderer its documents went through (``plain`` or ``chat-template``) and the
context length they were cut to. :func:`documents` reads every phase of the subject's lineage up
to and including the subject's own phase; :func:`sequences` turns documents into the token ids
and loss masks training used (the builder's own :func:`document_sequence`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfscope.errors import SelfscopeError
from selfscope.organisms.builder import document_sequence
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


def _check(subject: Any) -> None:
    """The one-line error for a model whose lineage names no training data."""
    lineage = subject.lineage
    if not any(p.data is not None for p in lineage.phases):
        raise SelfscopeError(
            f"{subject.source} has no recorded training data (a {lineage.kind} model); the "
            "historian needs a lineage that names its phases' documents: an organism built by "
            "selfscope, or a fine-tune declared with `selfscope lineage add MODEL --parent BASE "
            "--data train.jsonl`"
        )


def documents(subject: Any) -> list[TrainingDocument]:
    """Every document of every phase that produced ``subject``, in phase then file order (a
    phase whose data the lineage does not know, e.g. a base model's, contributes none; the
    lineage's ``unknown`` says so)."""
    _check(subject)
    out: list[TrainingDocument] = []
    for index, phase in enumerate(subject.lineage.phases):
        if phase.data is None:
            continue
        if not Path(phase.data).exists():
            raise SelfscopeError(
                f"phase {phase.name!r} of {subject.source} names a data file that is not on "
                f"disk ({phase.data}); rebuild the organism or declare the lineage again"
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


def renderer_of(subject: Any, phase: str | None = None) -> Renderer:
    """The renderer phase ``phase``'s documents were trained through (default: the subject's
    own phase); plain text when the lineage does not record one."""
    lineage = subject.lineage
    ref = lineage.phase_ref(phase or lineage.phases[-1].name)
    return ChatRenderer(subject.tokenizer) if ref.renderer == "chat-template" else PlainRenderer()


def context_limit(subject: Any, phase: str | None = None) -> int:
    """The context length training cut phase ``phase``'s documents to (default: the subject's
    own phase): as recorded, else the model's ``max_position_embeddings``."""
    lineage = subject.lineage
    ref = lineage.phase_ref(phase or lineage.phases[-1].name)
    if ref.context is not None:
        return int(ref.context)
    config = subject.model.config
    return int(getattr(config, "max_position_embeddings", None) or config.n_positions)


def sequences(subject: Any, docs: list[TrainingDocument]) -> list[tuple[list[int], int]]:
    """Each document's token ids and how many leading tokens are context only (no loss), as
    its phase's renderer and context length made them."""
    rules = {
        p: (renderer_of(subject, p), context_limit(subject, p)) for p in {d.phase for d in docs}
    }
    out = []
    for doc in docs:
        renderer, limit = rules[doc.phase]
        ids, k, _ = document_sequence(doc.text, subject.tokenizer, renderer, limit)
        out.append((ids, k))
    return out


__all__ = ["TrainingDocument", "context_limit", "documents", "renderer_of", "sequences"]
