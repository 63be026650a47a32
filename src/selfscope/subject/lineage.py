"""Where a loaded model came from: its training phases, their data and knobs, and its parent.

Introspection often asks *when* a behaviour appeared and *which documents* taught it, so every
:class:`~selfscope.subject.Subject` carries a typed :class:`Lineage`: the phases that produced
it, in training order, each with its checkpoint folder, its training data (a ``.jsonl`` of
``{"id", "text", "repeat"}`` documents), how many documents it holds, its hyperparameters
(learning rate, epochs, batch size, ... each ``None`` when not known), how its documents were
rendered (plain text or the model's chat template) and cut (``context``); the tokenizer; and
the source string of the model the subject was trained from (its *parent*, loadable with
:func:`selfscope.subject.load`).

A lineage comes from one of three places:

* an **organism** built by selfscope: its ``lineage.json`` (read by
  :func:`selfscope.subject.organism.organism_checkpoints`, the one reader of that file), where
  everything is recorded;
* a **declared** lineage: ``selfscope lineage add MODEL --parent BASE --data train.jsonl`` for a
  user's own fine-tune (:mod:`selfscope.subject.declared`), where much may be unknown;
* any other folder, ``.gguf`` or ``smollm2``: no phases, just where the weights came from.

What is not known is stated, never guessed silently: :attr:`Lineage.unknown` lists each missing
fact with the assumption made in its place, and a tool that needed one reports it in its
``caveats`` (:meth:`Lineage.caveats`). Which documents *cause* a behaviour (the organism's
ground truth) is not part of a lineage: it is a separate type only the organism builder,
benchmarks and tests read (:mod:`selfscope.organisms.ground_truth`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfscope.errors import SelfscopeError

#: How the model was found: a local HF folder, a converted .gguf, the shipped SmolLM2, an
#: organism built by selfscope, or a folder whose lineage the user declared.
LineageKind = Literal["hf-folder", "gguf", "smollm2", "organism", "declared"]

#: How a phase's documents became training text: as written, or through the model's chat
#: template (``Q: X A: Y`` -> a user turn and an assistant turn; only the answer trained on).
RendererName = Literal["plain", "chat-template"]

#: A fact a lineage may lack. ``start``: what a phase's training started from; ``data``: its
#: documents; ``lr``/``epochs``/``batch_size``: its knobs; ``renderer``/``context``: how its
#: documents were turned into token rows; ``order``: the order batches saw them.
Fact = Literal["start", "data", "lr", "epochs", "batch_size", "renderer", "context", "order"]


class Hyperparameters(BaseModel):
    """A phase's training knobs, each ``None`` when the lineage does not record it."""

    model_config = ConfigDict(frozen=True)

    lr: float | None = Field(default=None, description="Peak learning rate.")
    epochs: int | None = Field(default=None, description="Passes over the phase's documents.")
    batch_size: int | None = Field(default=None, description="Rows per optimiser step.")
    method: str | None = Field(default=None, description="'full' fine-tuning or 'lora'.")
    optimizer: str | None = Field(default=None, description="The optimiser and schedule, in words.")


class PhaseRef(BaseModel):
    """One training phase: its name, checkpoint folder, training data and how it trained.

    ``data`` is the phase's ``.jsonl`` of ``{"id", "text", "repeat"}`` documents, or ``None``
    when the lineage does not name one (e.g. a base model's pretraining).
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The phase's name, e.g. 'finetune'.")
    checkpoint: Path = Field(description="The Hugging Face folder saved at the phase's end.")
    data: Path | None = Field(
        default=None, description="Its training documents (.jsonl), if known."
    )
    documents: int | None = Field(
        default=None, description="How many documents the data file holds."
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Its knobs; None where unknown."
    )
    renderer: RendererName | None = Field(
        default=None, description="How its documents were rendered; None: unknown (plain assumed)."
    )
    context: int | None = Field(
        default=None, description="Tokens each training row was cut to; None: unknown."
    )
    train_seed: int | None = Field(
        default=None, description="The trainer's shuffling seed, if known."
    )
    data_sha256: str | None = Field(
        default=None, description="SHA-256 of the data rows, if recorded."
    )


class ScratchInit(BaseModel):
    """How a first phase trained from scratch was initialised (the builder's constructor)."""

    model_config = ConfigDict(frozen=True)

    architecture: str = Field(description="'llama' or 'mixtral'.")
    shape: dict[str, int] = Field(description="The size preset's model shape.")
    seed: int = Field(description="The initialisation seed.")


class Unknown(BaseModel):
    """One fact the lineage lacks, and what is assumed in its place."""

    model_config = ConfigDict(frozen=True)

    phase: str = Field(description="The phase it concerns.")
    fact: Fact = Field(description="Which fact is missing.")
    note: str = Field(description="One sentence: what is unknown and what that means.")


class Lineage(BaseModel):
    """The history of a loaded model (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    kind: LineageKind = Field(description="How the model was found.")
    origin: Path = Field(
        description="The path the user pointed at: the HF folder, the .gguf file (also for "
        "smollm2), or the organism folder."
    )
    organism: str | None = Field(default=None, description="The organism's name, if one.")
    phase: str | None = Field(
        default=None, description="The phase (or control) this model is, e.g. 'finetune'."
    )
    phases: list[PhaseRef] = Field(
        default_factory=list,
        description="The phases that produced this model, in training order, ending with "
        "`phase` (a control: the phases before the one it replaces, then the control).",
    )
    parent: str | None = Field(
        default=None,
        description="Source string of the model this one was trained from, e.g. "
        "'organism:mushroom@pretrain'; None: trained from scratch or unknown.",
    )
    control_of: str | None = Field(
        default=None, description="For a control model: the phase it controls."
    )
    base_model: str | None = Field(
        default=None,
        description="What the first phase started from: 'scratch' (random weights), a loadable "
        "source, or None (unknown, or the first phase is an opaque base model).",
    )
    tokenizer: str | None = Field(
        default=None, description="Where the tokenizer came from, in words."
    )
    init: ScratchInit | None = Field(
        default=None,
        description="The initialisation of a first phase trained from scratch, if known.",
    )
    index_dir: Path | None = Field(
        default=None, description="Where the training-data index of this lineage is kept."
    )
    unknown: list[Unknown] = Field(
        default_factory=list, description="Facts the lineage lacks, each with its consequence."
    )

    def phase_ref(self, name: str) -> PhaseRef:
        """The phase called ``name``; a one-line error naming the phases if there is none."""
        for p in self.phases:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.phases) or "none"
        raise SelfscopeError(f"the lineage has no phase {name!r}; its phases: {names}")

    def caveats(self, *facts: Fact, phases: Collection[str | None] | None = None) -> list[str]:
        """The notes of every unknown fact among ``facts`` (all when none are given), of the
        ``phases`` named (all when ``None``)."""
        return [
            u.note
            for u in self.unknown
            if (not facts or u.fact in facts) and (phases is None or u.phase in phases)
        ]


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
        "the same architecture, e.g. an earlier checkpoint, or declare its lineage with "
        "`selfscope lineage add MODEL --parent BASE --data train.jsonl`"
    )
