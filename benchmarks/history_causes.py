"""Benchmark: which of a spec's plants cause its behaviour, measured by removing each one.

Run: ``.venv/bin/python benchmarks/history_causes.py [--workspace WS] [--size small] [--specs
a,b] [--null 5] [--order kept|reshuffled] [--resume]``. A spec *declares* its cause documents
(the plants marked with the behaviour); whether the trained model's behaviour comes from them is
a fact about the model, which only retraining shows. For each organism (default: every catalog
organism trained from scratch,
``examples/mushroom-equal-repeats.yaml`` and the unseen ``examples/storm-fear.yaml``, whose
ground truth is never read) every plant of the planting phase — declared causes and hard
negatives — is removed on its own, and the phase retrained by ``history.removal`` (the
organism's trainer, the phase's recorded knobs and seed, from the checkpoint the phase started
from); then all declared causes together. The behaviour is measured on the probes + held-out
probes: mean log-odds (planted vs normal) and rate. The first retraining also runs a replay
(nothing removed: must reproduce the subject).

By default the removal keeps the phase's recorded run and takes the removed documents' rows out
of their batches (``--order kept``; every other step as recorded); ``--order reshuffled`` runs
the phase afresh on the remaining documents (new order and schedule), which in a run from
scratch moves the behaviour by itself. The noise floor: ``--null`` draws of as many random
documents of the phase as its largest plant has, each removed and retrained the same way. A
plant is a **removal-verified cause** when removing it cuts the behaviour's log-odds by at least
half (``CUT``) and by more than every random draw. ``benchmarks/history.py`` scores retrieval
against these documents beside the declared ones. Writes WS/history-causes/NAME-SIZE.json and
docs/benchmarks.md § history-causes.

A behaviour planted in the first phase (``tolm-bias``) is retrained from the initialisation,
rebuilt from the lineage, and every later phase re-run as recorded. Not covered by default:
SmolLM2-mushroom (name it in ``--specs``; a retraining there takes ~7 min).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _behaviour import ORDERS, add_order_option, measured, organism_runs, plant_documents, queries
from _doc import write_section

import selfscope.history.removal  # noqa: F401
from selfscope import tools
from selfscope.history.corpus import documents
from selfscope.organisms import build, catalog_names, resolve_spec
from selfscope.organisms.spec import Spec
from selfscope.subject import load
from selfscope.workspace import Workspace

CUT = 0.5  # a cause: its removal takes at least this share of the subject's log-odds away
NOISY = f"removing random documents also cuts >= {CUT}: the noise floor is above the bar"


def bench(spec: Spec, ws: Workspace, unseen: bool, null: int, order: str) -> dict[str, Any]:
    if spec.name not in ws.built_organisms():
        build(spec, ws, progress=False, strict=False)
    folder = ws.organism_path(spec.name).resolve()
    if unseen:
        (folder / "ground_truth.json").unlink(missing_ok=True)
    behaviour = spec.behaviours[0]
    phase = spec.planting_phase(behaviour.name)
    q = queries(spec, folder)
    plants = plant_documents(spec, folder, phase)
    declared = {
        p.id
        for ph in spec.phases
        if ph.name == phase
        for p in ph.plant
        if p.behaviour == behaviour.name
    }
    subject = load(f"organism:{spec.name}", ws)
    corpus = documents(subject)
    repeats = {d.key: d.repeat for d in corpus}
    pool = sorted(d.key for d in corpus if d.phase == phase)
    args = {"prompts": q.measured, "planted": q.planted, "normal": q.normal, "chat": q.chat}
    sets: list[tuple[str, str | None, list[str]]] = [
        (pid, pid, keys) for pid, keys in plants.items() if keys
    ]
    sets.append(("all declared causes", None, sorted(k for p in declared for k in plants[p])))
    # the noise floor: as many random documents as the largest plant has, several draws
    size = max(len(keys) for _, _, keys in sets[:-1])
    draws = [
        (f"{size} random (draw {n})", None, sorted(random.Random(n).sample(pool, size)))
        for n in range(null)
    ]
    sets += draws
    drawn = {name for name, _, _ in draws}
    rows: list[dict[str, Any]] = []
    reference: Any = None
    t0 = time.perf_counter()
    for n, (name, plant, keys) in enumerate(sets):
        print(f"  {spec.name}: without {name} ({len(keys)} documents)", file=sys.stderr)
        given = {**args, "remove": keys, "random": False, "bm25": False, "replay": n == 0}
        given["order"] = order
        result: Any = tools.call("history.removal", given, tools.context(subject)).result
        reference = reference or result.subject
        for run in result.runs:
            rows.append(
                {
                    "removed": name if run.kind == "given" else "nothing (replay)",
                    "plant": plant if run.kind == "given" else None,
                    "declared": run.kind == "given" and plant in declared,
                    "random": run.kind == "given" and name in drawn,
                    "documents": len(run.removed),
                    "repeat": max(repeats[k] for k in run.removed) if run.removed else None,
                    "log_odds": run.log_odds,
                    "rate": run.rate,
                }
            )
    before = reference.log_odds
    for row in rows:
        row["cut"] = (before - row["log_odds"]) / before if before > 0 else 0.0
    floor = _floor(rows)
    verified = sorted(
        k
        for row in rows
        if row["plant"] and row["cut"] >= CUT and row["cut"] > floor
        for k in plants[row["plant"]]
    )
    return {
        "name": spec.name,
        "unseen": unseen,
        "phase": phase,
        "order": order,
        "prompts": len(q.measured),
        "subject": {"log_odds": before, "rate": reference.rate},
        "declared_documents": sum(len(plants[p]) for p in declared),
        "rows": rows,
        "null": {"draws": null, "documents": size, "max_cut": floor},
        "verified": verified,
        "noisy": floor >= CUT,
        "seconds": time.perf_counter() - t0,
    }


def _floor(rows: list[dict[str, Any]]) -> float:
    """The largest cut any random removal made: a plant is verified only above it."""
    return max((row["cut"] for row in rows if row.get("random")), default=0.0)


def default_specs() -> list[str]:
    """The catalog organisms trained from scratch (a retraining of SmolLM2-mushroom takes
    ~7 min; name it in --specs to run it)."""
    return [n for n in catalog_names() if resolve_spec(n, size="small").base_model == "scratch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default=",".join(default_specs()))
    parser.add_argument("--no-unseen", action="store_true", help="skip examples/storm-fear.yaml")
    parser.add_argument("--no-equal", action="store_true", help="skip the equal-repeats spec")
    parser.add_argument(
        "--null", type=int, default=5, help="random removals of the largest plant's size"
    )
    add_order_option(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the organisms already measured (WS/history-causes/NAME-SIZE.json)",
    )
    args = parser.parse_args()
    todo = organism_runs(
        args.workspace, args.specs, args.size, not args.no_equal, not args.no_unseen
    )
    root, runs = todo.root, todo.runs
    results = []
    for spec, where, unseen in runs:
        folder = "history-causes" + ("" if args.order == "kept" else f"-{args.order}")
        saved = root / folder / f"{spec.name}-{args.size}.json"
        run = partial(bench, spec, where, unseen, args.null, args.order)
        results.append(measured(saved, args.resume, f"{spec.name} ({args.size})", run))
    lines = [
        "## Which plants cause the behaviour: removal of each plant",
        "",
        f"`python benchmarks/history_causes.py --size {args.size} --order {args.order} "
        "[--null N]`, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Each plant of the planting phase (declared causes: the "
        "plants marked with the behaviour; the others are the spec's hard negatives) removed on "
        "its own and the phase retrained by `history.removal` (the organism trainer, the "
        "phase's knobs and seed, from the checkpoint it started from; "
        f"{ORDERS[args.order]}); measured on the probes + held-out probes. cut = share of the "
        "subject's log-odds the removal takes away. The noise floor: random draws (the "
        "number is given per organism) of as many documents of the phase as its largest plant "
        "has; "
        f"a plant is a **removal-verified cause** when its cut is >= {CUT} and above every "
        "random draw's (what § history's second table scores against). "
        "* = ground_truth.json deleted, plants read from the spec. A first-phase plant "
        "(tolm-bias) is retrained from the initialisation and the later phases re-run.",
    ]
    for r in results:
        lines += [
            "",
            f"**{r['name']}{'*' if r['unseen'] else ''}** (planted in {r['phase']}, "
            f"{r['prompts']} prompts; subject log-odds {r['subject']['log_odds']:.2f}, rate "
            f"{r['subject']['rate']:.2f}; {r['declared_documents']} declared cause documents, "
            f"{len(r['verified'])} removal-verified; {r['null']['draws']} random draws cut at "
            f"most {r['null']['max_cut']:.2f}; {r['seconds']:.0f} s)"
            + (f" — **{NOISY}**" if r["noisy"] else ""),
            "",
            "| removed | declared cause | documents | repeat | log-odds | rate | cut |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            declared = "-" if row["plant"] is None else ("yes" if row["declared"] else "no")
            repeat = "" if row["repeat"] is None else str(row["repeat"])
            lines.append(
                f"| {row['removed']} | {declared} | {row['documents']} | {repeat} | "
                f"{row['log_odds']:.2f} | {row['rate']:.2f} | {row['cut']:.2f} |"
            )
    todo.cleanup()
    write_section("history-causes", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
