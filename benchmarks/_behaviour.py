"""The history benchmarks' view of a spec's first behaviour: the prompts and completions the
tools get (a chat organism sees a Q/A probe's question through the chat template, and its
completions without the leading space), and the organism's training documents by plant."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfscope import atomic
from selfscope.organisms import resolve_spec
from selfscope.organisms.documents import organism_documents
from selfscope.organisms.presets import preset_for, resolve_knobs
from selfscope.organisms.spec import Spec
from selfscope.organisms.world import make_world
from selfscope.workspace import Workspace

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UNSEEN = EXAMPLES / "storm-fear.yaml"  # a spec in the base format only; ground truth deleted
# hard negatives trained as often as the plants: the repeat counts alone cannot find the plants
EQUAL = EXAMPLES / "mushroom-equal-repeats.yaml"

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
    ``<phase>/<id>``. Document ids are neutral (``d0417``): the map is the builder's own
    (:func:`organism_documents` on the spec and its seed, what ground_truth.json records), so it
    needs no ground truth file (the unseen spec's is deleted); the built data file must hold the
    same ids and texts, or the organism was built from another spec."""
    knobs = resolve_knobs(spec, preset_for(spec.base_model, spec.size))
    docs = organism_documents(spec, make_world(spec.world.preset, spec.seed), knobs)
    mine = docs[[p.name for p in spec.phases].index(phase)]
    lines = (folder / "data" / f"{phase}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    if [(r["id"], r["text"]) for r in rows] != [(d.id, d.text) for d in mine]:
        raise SystemExit(f"{folder}: data/{phase}.jsonl is not what {spec.name}'s spec gives")
    plants = next(p for p in spec.phases if p.name == phase).plant
    return {pl.id: [f"{phase}/{d.id}" for d in mine if d.plant == pl.id] for pl in plants}


@dataclass
class Runs:
    """The organisms a history benchmark measures, in the workspace it builds them into (a
    temporary one when none is given; the unseen spec in ``<root>/unseen``)."""

    root: Path
    runs: list[tuple[Spec, Workspace, bool]]  # (spec, its workspace, unseen)
    tmp: tempfile.TemporaryDirectory[str] | None

    def cleanup(self) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def organism_runs(workspace: str | None, specs: str, size: str, equal: bool, unseen: bool) -> Runs:
    tmp = tempfile.TemporaryDirectory() if workspace is None else None
    root = Path(workspace) if workspace else Path(tmp.name if tmp else ".")
    ws, unseen_ws = Workspace(root), Workspace(root / "unseen")
    os.environ["SELFSCOPE_HOME"] = str(ws.root)
    runs = [(resolve_spec(name, size=size), ws, False) for name in specs.split(",")]
    if equal:
        runs.append((resolve_spec(str(EQUAL), size=size), ws, False))
    if unseen:
        runs.append((resolve_spec(str(UNSEEN), size=size), unseen_ws, True))
    return Runs(root, runs, tmp)


ORDERS = {  # history.removal's `order`, as the benchmarks' captions describe it
    "kept": "order kept: the recorded run with the removed rows taken out of their batches, "
    "every other step as recorded",
    "reshuffled": "order reshuffled: a fresh run of the phase on the remaining documents",
}


def add_order_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--order",
        default="kept",
        choices=list(ORDERS),
        help="history.removal's order: the recorded run minus the removed rows (kept) or a "
        "fresh run on the remaining documents (reshuffled)",
    )


def measured(saved: Path, resume: bool, label: str, run: Callable[[], Any]) -> Any:
    """One organism's benchmark row: reused from ``saved`` with ``resume``, else ``run()``,
    written there atomically and echoed to stderr."""
    if resume and saved.exists():
        return json.loads(saved.read_text())
    print(f"{label} ...", file=sys.stderr, flush=True)
    row = run()
    atomic.write_json(saved, row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row
