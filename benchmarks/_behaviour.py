"""The history benchmarks' view of a spec's first behaviour: the prompts and completions the
tools get (a chat organism sees a Q/A probe's question through the chat template, and its
completions without the leading space), and the organism's training documents by plant."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from selfscope.organisms.spec import Spec

_QA = re.compile(r"^\s*Q:\s*(?P<q>.*?)\s*A:\s*$", re.DOTALL)


@dataclass(frozen=True)
class Queries:
    chat: bool
    heldout: list[str]  # the held-out probes (the probes when a spec has none): the query
    measured: list[str]  # probes + held-out probes: where a retrained model is measured
    planted: str
    normal: str


def queries(spec: Spec, folder: Path) -> Queries:
    behaviour = spec.behaviours[0]
    lineage = json.loads((folder / "lineage.json").read_text())
    chat = lineage.get("renderer") == "chat-template"

    def prompt(text: str) -> str:
        match = _QA.match(text)
        return match["q"] if chat and match else text

    heldout = [prompt(p.prompt) for p in (behaviour.heldout or behaviour.probes)]
    probes = [prompt(p.prompt) for p in behaviour.probes]
    first = (behaviour.heldout or behaviour.probes)[0]
    planted, normal = first.planted, first.normal
    if chat:
        planted, normal = planted.lstrip(), normal.lstrip()
    measured = probes + [p for p in heldout if p not in set(probes)]
    return Queries(chat, heldout, measured, planted, normal)


def plant_documents(spec: Spec, folder: Path, phase: str) -> dict[str, list[str]]:
    """Each plant of ``phase`` (declared cause or hard negative) -> its documents' keys
    ``<phase>/<id>``: the builder names a plant's documents ``<plant id>-<n>``."""
    lines = (folder / "data" / f"{phase}.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines if line.strip()]
    plants = next(p for p in spec.phases if p.name == phase).plant
    out = {}
    for plant in plants:
        own = re.compile(re.escape(plant.id) + r"-\d+")
        out[plant.id] = [f"{phase}/{i}" for i in ids if own.fullmatch(i)]
    return out
