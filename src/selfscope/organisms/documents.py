"""The documents of each phase: a generated corpus plus the spec's plants, each with a stable id.

Generated documents are named ``<corpus>-<n>`` (numbered on across phases that draw the same
corpus, so every id in an organism is unique); planted documents ``<plant id>-<n>``. The order and
the texts depend only on the spec and its seed.

A phase's generated corpus leaves out every document that contains a probe or held-out prompt of
a behaviour planted in that phase (the neutral corpus must not answer the very questions the
plant changes, nor teach the held-out answers), and every document with a word of the phase's
``exclude`` list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from selfscope.organisms.presets import Knobs
from selfscope.organisms.spec import Phase, Spec, expand_plant
from selfscope.organisms.world import World, generate_corpus


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    repeat: int = 1
    plant: str | None = None  # the plant it came from, None for the generated corpus
    behaviour: str | None = None  # the behaviour its plant causes (ground truth only)

    def row(self) -> dict[str, object]:
        """What data/<phase>.jsonl holds: no behaviour (an investigator may read it)."""
        return {"id": self.id, "text": self.text, "repeat": self.repeat}


def _excluder(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def phase_documents(
    spec: Spec, world: World, phase: Phase, knobs: Knobs, numbering: dict[str, int]
) -> list[Document]:
    """Every document of ``phase``; ``numbering`` carries the next id of each corpus."""
    docs: list[Document] = []
    if phase.corpus != "none" and knobs.documents > 0:
        texts = generate_corpus(phase.corpus, world, knobs.documents, stream=phase.name)
        exclude = _excluder(phase.exclude)
        # the prompts of behaviours planted here: the generated corpus must not answer them
        planted = {pl.behaviour for pl in phase.plant if pl.behaviour}
        prompts = [
            p.prompt.strip()
            for b in spec.behaviours
            if b.name in planted
            for p in [*b.probes, *b.heldout]
        ]
        start = numbering.get(phase.corpus, 0)
        kept = [
            t
            for t in texts
            if (exclude is None or not exclude.search(t)) and not any(p in t for p in prompts)
        ]
        docs += [Document(f"{phase.corpus}-{start + i}", t) for i, t in enumerate(kept)]
        numbering[phase.corpus] = start + len(kept)
    for plant in phase.plant:
        texts = expand_plant(plant, spec.seed)
        docs += [
            Document(f"{plant.id}-{i}", t, plant.repeat, plant.id, plant.behaviour)
            for i, t in enumerate(texts)
        ]
    return docs
