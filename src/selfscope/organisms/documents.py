"""The documents of each phase: a generated corpus plus the spec's plants, each with a neutral id.

An investigator reads the training data, so a document's id must not say where it came from:
every document of every phase, generated or planted, is named ``d<n>`` (``d0417``), numbered
after a seeded shuffle of its phase's documents, and the phase's data file lists them in that
order. Neither the id nor the position tells a plant from the generated corpus; the id -> plant
(or corpus) map is written only to ``ground_truth.json``. Numbers run on across phases (the
first phase gets ``d0000``...), so every id of an organism is unique; the width is 4 digits, or
more when the organism has more than 10,000 documents. The texts, the ids and the order depend
only on the spec and its seed.

A phase's generated corpus leaves out every document that contains a probe or held-out prompt of
a behaviour planted in that phase (the neutral corpus must not answer the very questions the
plant changes, nor teach the held-out answers), and every document with a word of the phase's
``exclude`` list.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

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
    corpus: str | None = None  # the generated corpus it came from, None for a plant

    def row(self) -> dict[str, object]:
        """What data/<phase>.jsonl holds: no behaviour (an investigator may read it)."""
        return {"id": self.id, "text": self.text, "repeat": self.repeat}


def _excluder(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def phase_documents(spec: Spec, world: World, phase: Phase, knobs: Knobs) -> list[Document]:
    """Every document of ``phase``, generated corpus first, then each plant's; ids not yet set."""
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
        docs += [
            Document("", t, corpus=phase.corpus)
            for t in texts
            if (exclude is None or not exclude.search(t)) and not any(p in t for p in prompts)
        ]
    for plant in phase.plant:
        texts = expand_plant(plant, spec.seed)
        docs += [Document("", t, plant.repeat, plant.id, plant.behaviour) for t in texts]
    return docs


def organism_documents(spec: Spec, world: World, knobs: list[Knobs]) -> list[list[Document]]:
    """Every phase's documents with their neutral ids, each phase in its shuffled order."""
    phases = [
        phase_documents(spec, world, phase, k) for phase, k in zip(spec.phases, knobs, strict=True)
    ]
    width = max(4, len(str(sum(len(docs) for docs in phases) - 1)))
    out: list[list[Document]] = []
    start = 0
    for phase, docs in zip(spec.phases, phases, strict=True):
        order = list(range(len(docs)))
        random.Random(f"{spec.seed}:{phase.name}:ids").shuffle(order)
        out.append([replace(docs[j], id=f"d{start + n:0{width}d}") for n, j in enumerate(order)])
        start += len(docs)
    return out
