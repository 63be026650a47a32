"""A blind copy of an organism: what an investigator may open, and nothing that names the cause.

An auditing game hands an investigator a model and its training record and asks *what was
planted, and by which documents?* The organism's own folder cannot be handed over: its
``spec.yaml`` lists the plants, ``ground_truth.json`` maps documents to them, ``report.json``
names the behaviours, and a control trained without the cause documents reveals them by
difference. :func:`blind` writes the copy that can be handed over::

    DEST/
      lineage.json              phases in order, checkpoint and data paths, document counts,
                                data hashes, training knobs and seeds, losses, timings, software
      tokenizer/                (organisms trained from scratch)
      checkpoints/<phase>/      every phase's Hugging Face folder (no control)
      data/<phase>.jsonl        {"id", "text", "repeat"} per training document, in the
                                recorded order
      index/<digest>/           the training-data index, if one was built (selfscope.history)

and nothing else: no spec, ground truth, report or control; no organism name, spec hash,
plant id, behaviour name or description; the documents keep their neutral ids (``d0417``,
:mod:`selfscope.organisms.documents`) and keep their repeat counts: how often each document was
trained on is part of the training record (retrieval weights a document by its visits, and a
removal retraining replays the recorded run only with them). Repeats do not point at the plants
because the specs repeat their hard negatives as often as their plants (the catalog's, and the
auditing game's generator's). The spine's first copies dropped them; the investigation's recall
on blind copies then fell (moe-mushroom, one probe prompt: 3 cause documents in the top 10
against 7 on the organism itself, measured 2026-12-06) and removal tests there were not the
recorded run.

The copy loads like the organism: ``load(str(dest))`` is its last phase, ``load(f"{dest}@PHASE")``
a given one (:mod:`selfscope.subject.load`), with an organism lineage, so ``localize.origin``,
``localize.weight_deltas`` and ``history.trace`` work on it. It is written into a staging folder
and published atomically (``DEST`` becomes a symlink to it, like a workspace organism).

The organism's held-out paraphrases and neighbours are sealed for the copy's weights in the
workspace the copy is made from (:func:`selfscope.organisms.suites.seal_for_subject`), as the
builder seals them for the organism: an investigation of the copy in that workspace has its
proposals validated on them by the gate, and never sees them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from selfscope import atomic
from selfscope.errors import SelfscopeError
from selfscope.organisms.spec import Spec, load_spec
from selfscope.organisms.suites import seal_for_subject
from selfscope.workspace import Workspace

#: A neutral document id, as the builder writes them.
NEUTRAL_ID = re.compile(r"d\d{4,}")
#: lineage.json keys the copy keeps (``name``, ``spec_sha256`` and ``controls`` name or reveal
#: the cause; ``seconds`` includes the controls' training).
LINEAGE_KEYS = (
    "base_model",
    "architecture",
    "size",
    "seed",
    "world",
    "renderer",
    "tokenizer",
    "model",
    "phases",
    "built_at",
    "software",
)


def _rows_sha256(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()


def _blind_data(source: Path, dest: Path, phase: dict[str, Any]) -> str:
    """Copy one phase's data file as ``{"id", "text", "repeat"}`` rows; their SHA-256 (the
    lineage's)."""
    rows = []
    with open(source / phase["data"], encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                if not NEUTRAL_ID.fullmatch(str(row["id"])):
                    raise SelfscopeError(
                        f"document {row['id']!r} of phase {phase['name']!r} has an id that is "
                        "not neutral (an organism built before neutral ids); rebuild it with "
                        "`selfscope organism build NAME`"
                    )
                rows.append(
                    {"id": str(row["id"]), "text": str(row["text"]), "repeat": row.get("repeat", 1)}
                )
    atomic.write_jsonl(dest / phase["data"], rows)
    return _rows_sha256(rows)


def _blind_lineage(lineage: dict[str, Any], shas: dict[str, str]) -> dict[str, Any]:
    out = {k: lineage[k] for k in LINEAGE_KEYS if k in lineage}
    phases = []
    for phase in lineage["phases"]:
        entry = {**phase, "data_sha256": shas[phase["name"]]}
        knobs = dict(entry.get("hyperparameters") or {})
        knobs.pop("documents", None)  # the generated corpus's size: documents - it = plants
        entry["hyperparameters"] = knobs
        phases.append(entry)
    out["phases"] = phases
    return out


def _copy_index(source: Path, dest: Path, phases: list[str]) -> list[str]:
    """Copy every training-data index of ``source`` whose shards belong to ``phases``; the
    manifest is rewritten to name the copy (the original names the organism and its build
    folder). Returns the copied config digests."""
    copied = []
    for folder in sorted((source / "index").glob("*")):
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text())
        shards = [
            s
            for s in manifest.get("shards", [])
            if s.get("checkpoint") in phases and s.get("phase") in phases
        ]
        if not shards:
            continue
        out = dest / "index" / folder.name
        out.mkdir(parents=True)
        for shard in shards:
            shutil.copy2(folder / shard["file"], out / shard["file"])
        keep = set(phases)
        manifest["subject"] = "."  # the copy itself
        manifest["phases"] = [p for p in manifest.get("phases", []) if p in keep]
        manifest["documents"] = {
            p: n for p, n in (manifest.get("documents") or {}).items() if p in keep
        }
        manifest["checkpoints"] = [
            {**c, "path": f"checkpoints/{c['name']}"}
            for c in manifest.get("checkpoints", [])
            if c.get("name") in keep
        ]
        manifest["shards"] = shards
        atomic.write_json(out / "manifest.json", manifest)
        copied.append(folder.name)
    return copied


def _strings(obj: Any) -> list[str]:
    """Every key and string value in a JSON document."""
    if isinstance(obj, dict):
        return [*obj, *(s for v in obj.values() for s in _strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def secrets(spec: Spec) -> tuple[set[str], list[str]]:
    """What a blind copy must never hold: names that must not be a JSON key or value (the
    organism's name, its plants' ids, its behaviours' names), and phrases that must not occur
    anywhere (behaviour names and descriptions, which are not words of any document)."""
    behaviours = [b.name for b in spec.behaviours]
    names = {spec.name, *behaviours, *(pl.id for p in spec.phases for pl in p.plant)}
    return names, [*behaviours, *(b.description for b in spec.behaviours)]


def check_blind(dest: Path, spec: Spec) -> None:
    """Raise if a JSON file the copy wrote (lineage, index manifests) or a document id names
    the cause; the document texts may contain any word."""
    names, phrases = secrets(spec)
    texts = [dest / "lineage.json", *sorted((dest / "index").glob("*/manifest.json"))]
    for path in texts:
        content = path.read_text(encoding="utf-8")
        found = sorted(names & set(_strings(json.loads(content))))
        found += [p for p in phrases if p in content]
        if found:
            raise SelfscopeError(
                f"the blind copy's {path.relative_to(dest)} names {', '.join(found)}; this is a "
                "bug in selfscope.organisms.blind, please report it"
            )
    for path in sorted((dest / "data").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if set(row) != {"id", "text", "repeat"} or not NEUTRAL_ID.fullmatch(row["id"]):
                raise SelfscopeError(f"the blind copy's {path.name} has the row {row}: a bug")


def blind(name: str, dest: str | Path, workspace: Workspace | None = None) -> Path:
    """Write the blind copy of the built organism ``name`` to ``dest`` (module docstring).

    ``dest`` must not exist, or be a blind copy written before (it is replaced atomically).
    Returns ``dest``. Raises :class:`SelfscopeError` with one line when the organism is not
    built, was built before neutral document ids, or ``dest`` is taken.
    """
    ws = workspace or Workspace()
    if name not in ws.built_organisms():
        built = ", ".join(ws.built_organisms()) or "none"
        raise SelfscopeError(
            f"organism {name!r} is not built in {ws.root} (built: {built}); build it first with "
            f"`selfscope organism build {name}`"
        )
    source = ws.organism_path(name).resolve()
    target = Path(dest).expanduser().absolute()
    if target.exists() and not (target.is_symlink() and (target / "lineage.json").is_file()):
        raise SelfscopeError(f"{target} exists and is not a blind copy; choose another DEST")
    spec = load_spec(source / "spec.yaml")
    lineage = json.loads((source / "lineage.json").read_text())
    phases = [p["name"] for p in lineage["phases"]]
    with atomic.staging_dir(target.parent, target.name) as out:
        if (source / "tokenizer").is_dir():
            shutil.copytree(source / "tokenizer", out / "tokenizer")
        shas = {}
        for phase in lineage["phases"]:
            shutil.copytree(source / phase["checkpoint"], out / phase["checkpoint"])
            shas[phase["name"]] = _blind_data(source, out, phase)
        _copy_index(source, out, phases)
        atomic.write_json(out / "lineage.json", _blind_lineage(lineage, shas))
        check_blind(out, spec)
        atomic.publish_dir(out, target)
    # the held-out paraphrases and neighbours, sealed for the copy's weights in this workspace
    # (as the builder seals them for the organism): the gate validates on them, unseen
    last = target.resolve() / lineage["phases"][-1]["checkpoint"]
    seal_for_subject(spec, source, ws, subject=last)
    return target


__all__ = ["NEUTRAL_ID", "blind", "check_blind", "secrets"]
