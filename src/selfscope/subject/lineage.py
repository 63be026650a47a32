"""Where a loaded model came from: its kind, origin, training phases and parent.

Introspection often asks *when* a behaviour appeared, so a :class:`~selfscope.subject.Subject`
carries its lineage: for an organism, the ordered training phases with each phase's checkpoint
folder and training data, which phase this model is, and the source string of the model it was
trained from (its *parent*, itself loadable with :func:`selfscope.subject.load`). For a plain
folder or a GGUF file the lineage is short: just where the weights came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from selfscope.errors import SelfscopeError

#: How the model was found: a local HF folder, a converted .gguf, the shipped SmolLM2, or an
#: organism built by selfscope.
LineageKind = Literal["hf-folder", "gguf", "smollm2", "organism"]


@dataclass(frozen=True)
class PhaseRef:
    """One training phase of an organism: its name, checkpoint folder and training data.

    ``data`` is the phase's ``.jsonl`` of ``{"id", "text"}`` documents, or ``None`` when the
    lineage does not name one.
    """

    name: str
    checkpoint: Path
    data: Path | None


@dataclass(frozen=True)
class Lineage:
    """The history of a loaded model.

    Attributes:
        kind: how the model was found (see :data:`LineageKind`).
        origin: the path the user pointed at: the HF folder, the ``.gguf`` file (also for
            ``smollm2``), or the organism folder.
        organism: the organism's name, or ``None``.
        phase: the phase (or control) this model is, e.g. ``"finetune"``; ``None`` outside
            organisms.
        phases: the phases that produced this model, in training order, ending with ``phase``
            (for a control: the phases before the one it replaces, then the control).
        parent: the source string of the model this one was trained from, e.g.
            ``"organism:mushroom@pretrain"``; ``None`` for a model trained from scratch or of
            unknown history.
        control_of: for a control model, the phase it is the control for; else ``None``.
    """

    kind: LineageKind
    origin: Path
    organism: str | None = None
    phase: str | None = None
    phases: list[PhaseRef] = field(default_factory=list)
    parent: str | None = None
    control_of: str | None = None


def parent_source(subject: Any) -> str:
    """The loadable source of the subject's parent checkpoint, or a one-line error."""
    lineage = subject.lineage
    names = [p.name for p in lineage.phases]
    if lineage.phase in names and names.index(lineage.phase) > 0:
        return str(lineage.phases[names.index(lineage.phase) - 1].checkpoint)
    if lineage.parent:
        return str(lineage.parent)
    raise SelfscopeError(
        f"{subject.source} has no parent checkpoint (trained from scratch or of unknown "
        "history), so there is no weight change to patch; give `against`: a model source of "
        "the same architecture, e.g. an earlier checkpoint"
    )
