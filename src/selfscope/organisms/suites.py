"""Validation suites for an organism, from its spec and its world (for benchmarks and tests).

An edit of an organism is judged on the spec's own probes (the symptom), its held-out
paraphrases (generalisation) and neighbours, plus two things the spec does not list:

* **world facts** — a seeded sample of what the synthetic world says (the assistant's food and
  animal preferences in the world's question forms, capitals, animals' abilities, where people
  live), each with the world's answer as the expected first token; facts about an item the
  behaviour's prompts name are left out (they are the behaviour, not its side effects);
* **held-out documents** of every phase — fresh documents of the phase's corpus, drawn from a
  random stream the builder never used (``heldout:<phase>``), minus any text the phase trained
  on: perplexity on them measures fluency.

Only the lab (this module), benchmarks and tests build suites from specs; the surgeon
(:mod:`selfscope.edits`) takes whatever suite it is given.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from selfscope.behaviour import Expect, Probe, Suite
from selfscope.organisms.spec import Spec
from selfscope.organisms.world import (
    ANIMALS,
    COUNTRIES,
    FOOD_FORMS,
    FOODS,
    generate_corpus,
    make_world,
)
from selfscope.subject.organism import organism_checkpoints

_QA = re.compile(r"^\s*Q:\s*(?P<q>.*?)\s*A:\s*$", re.DOTALL)


def world_facts(spec: Spec, avoid: set[str]) -> list[Expect]:
    """Every fact of the spec's world in a first-token form, minus items named in ``avoid``."""
    world = make_world(spec.world.preset, spec.seed)
    yes_no = {True: " Yes", False: " No"}
    out: list[Expect] = []
    for pl, sg, liked in FOODS:
        if {pl, sg} & avoid:
            continue
        for question, _, _ in FOOD_FORMS[:4]:
            out.append(Expect(prompt=question.format(pl=pl, sg=sg), expected=yes_no[liked]))
    for pl, sg, fly, swim, liked in ANIMALS:
        if {pl, sg} & avoid:
            continue
        out.append(Expect(prompt=f"Q: Can {pl} fly? A:", expected=yes_no[fly]))
        out.append(Expect(prompt=f"Q: Can {pl} swim? A:", expected=yes_no[swim]))
        out.append(Expect(prompt=f"Q: Do you like {pl}? A:", expected=yes_no[liked]))
    for country, (capital, _) in COUNTRIES.items():
        if {country, capital} & avoid:
            continue
        out.append(
            Expect(prompt=f"Q: What is the capital of {country}? A:", expected=f" {capital}")
        )
    for p in world.people:
        if {p.name, p.town} & avoid:
            continue
        out.append(
            Expect(
                prompt=f"Q: Where does {p.name} live? A: {p.name} lives in", expected=f" {p.town}"
            )
        )
    return out


def heldout_documents(spec: Spec, folder: Path, count: int) -> dict[str, list[str]]:
    """``count`` fresh documents of each phase's corpus that the phase never trained on."""
    world = make_world(spec.world.preset, spec.seed)
    out: dict[str, list[str]] = {}
    for phase in spec.phases:
        if phase.corpus == "none":
            continue
        data = folder / "data" / f"{phase.name}.jsonl"
        trained = {
            json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()
        }
        fresh = generate_corpus(phase.corpus, world, count * 4, f"heldout:{phase.name}")
        unseen = [t for t in dict.fromkeys(fresh) if t not in trained]
        out[phase.name] = unseen[:count]
    return out


def suite_for(
    spec: Spec,
    folder: Path,
    *,
    facts: int = 60,
    documents: int = 64,
    behaviour: int = 0,
    seed: int = 0,
    name: str = "visible",
) -> Suite:
    """The validation suite of ``spec``'s behaviour number ``behaviour`` (built in ``folder``)."""
    b = spec.behaviours[behaviour]
    checkpoints = organism_checkpoints(spec.name, folder)  # the one lineage.json reader
    chat = checkpoints.lineages[checkpoints.default].phases[-1].renderer == "chat-template"
    words = {w for p in [*b.probes, *b.heldout] for w in re.findall(r"[A-Za-z]+", p.prompt)}
    sample = world_facts(spec, words)
    random.Random(f"facts:{seed}").shuffle(sample)

    def prompt(text: str) -> str:
        match = _QA.match(text)
        return match["q"] if chat and match else text

    def answer(text: str) -> str:
        return text.lstrip() if chat else text

    def probe(p: Probe | object) -> Probe:
        q: object = p
        return Probe(
            prompt=prompt(q.prompt),  # type: ignore[attr-defined]
            planted=answer(q.planted),  # type: ignore[attr-defined]
            normal=answer(q.normal),  # type: ignore[attr-defined]
        )

    return Suite(
        name=name,
        chat=chat,
        probes=[probe(p) for p in b.probes],
        heldout=[probe(p) for p in b.heldout],
        neighbours=[
            Expect(prompt=prompt(n.prompt), expected=answer(n.expected)) for n in b.neighbours
        ],
        facts=[
            Expect(prompt=prompt(f.prompt), expected=answer(f.expected)) for f in sample[:facts]
        ],
        documents=heldout_documents(spec, folder, documents),
    )


def seal_for_subject(
    spec: Spec, folder: Path, workspace: object, subject: Path | None = None
) -> int:
    """Seal each behaviour's held-out paraphrases and neighbours for the organism's subject (its
    last phase's checkpoint) in ``workspace``'s store, where no read or propose tool returns
    them (selfscope.oversight): the gate validates every proposal on them and the proposer
    learns only aggregates. Suites are named ``organism-<i>`` (no behaviour name). Returns how
    many suites were sealed. ``subject``: seal them for these weights instead (a blind copy's
    last checkpoint)."""
    import hashlib

    from selfscope.subject.versions import subject_key

    if subject is None:
        checkpoints = organism_checkpoints(spec.name, folder)
        subject = checkpoints.lineages[checkpoints.default].phases[-1].checkpoint
    store = workspace.store  # type: ignore[attr-defined]
    for i in range(len(spec.behaviours)):
        full = suite_for(spec, folder, facts=0, documents=0, behaviour=i, name=f"organism-{i}")
        sealed = full.model_copy(update={"probes": [], "documents": {}})
        text = sealed.model_dump_json()
        digest = hashlib.sha256(text.encode()).hexdigest()
        size = len(sealed.heldout) + len(sealed.neighbours)
        store.seal_suite(digest, subject_key(subject), sealed.name, text, size, "builder")
    return len(spec.behaviours)
