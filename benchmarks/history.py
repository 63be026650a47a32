"""Benchmark: planted-document retrieval, gradient index vs BM25, on every catalog organism.

Run: ``.venv/bin/python benchmarks/history.py [--workspace WS] [--size small] [--specs a,b]
[--seeds 0,1,2] [--no-unseen]``. Builds (or reuses) every catalog organism and
``examples/storm-fear.yaml`` (a spec written with the base format only, built in a workspace of
its own whose ``ground_truth.json`` is deleted before the tools run; its cause documents are read
from the spec's plants), builds its training-data index fresh (:mod:`selfscope.history.index`,
rank 8) once per projection seed, and queries it with the spec's **held-out** probes
(paraphrases, not the training wording) through ``history.trace``: token mode (the default: a
document's best trained token at the checkpoint its phase started from) and document mode
(``tokens: false``). BM25 (``history.bm25``) gets the same held-out prompts over the same
documents (every phase). The cause documents come from each organism's ground_truth.json
(benchmarks may read it; the tools never do). recall@10 = cause documents in the top 10 /
min(10, number of causes), among **all documents of all phases**; "in phase" = the same among
the planting phase's documents only; MRR = 1 / rank of the first cause document; phase mass from
``history.trace`` (share of the top 10's positive score per phase). Index seconds: a fresh build
(document rows at every phase end; token rows at every phase start); query seconds:
``history.trace`` on the built index (checksums verified, both query gradients, scoring).
Projections are random: every number is reported as the mean over the seeds, with the minimum.

Writes the table into docs/benchmarks.md (section ``history``). Peers: § history-peers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _behaviour import measured, organism_runs, plant_documents, queries
from _doc import write_section

from selfscope import tools
from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.history.retrieval import phase_mass
from selfscope.organisms import build, catalog_names
from selfscope.organisms.spec import Spec
from selfscope.progress import RichProgress
from selfscope.subject import load
from selfscope.workspace import Workspace

# history.trace's (tokens, visits, precondition): the default, and the ablations
MODES = {
    "tokens": (True, True, False),
    "tokens-once": (True, False, False),
    "documents": (False, True, False),
    "documents-once": (False, False, False),
    "tokens-once-fisher": (True, False, True),
    "documents-fisher": (False, True, True),
}
TOP = 1000  # ranked keys kept per run: enough to rescore against another cause set


def organism(spec: Spec, ws: Workspace) -> Path:
    if spec.name not in ws.built_organisms():
        build(spec, ws, progress=False, strict=False)
    return ws.organism_path(spec.name).resolve()


def scores(keys: list[str], cause: set[str]) -> tuple[float, float]:
    hits = sum(k in cause for k in keys[:10]) / min(10, len(cause))
    rr = next((1 / (i + 1) for i, k in enumerate(keys) if k in cause), 0.0)
    return hits, rr


def causes(spec: Spec, folder: Path, unseen: bool) -> tuple[str, set[str]]:
    """The planting phase and its cause documents' keys: from ground_truth.json, or (the unseen
    spec, whose ground truth is deleted) from the spec's plants and the phase's data file."""
    behaviour = spec.behaviours[0]
    if not unseen:
        record = json.loads((folder / "ground_truth.json").read_text())["behaviours"]
        record = record[behaviour.name]
        return record["phase"], {f"{record['phase']}/{d}" for d in record["documents"]}
    phase = spec.planting_phase(behaviour.name)
    plants = plant_documents(spec, folder, phase)
    declared = next(p for p in spec.phases if p.name == phase).plant
    return phase, {k for pl in declared if pl.behaviour == behaviour.name for k in plants[pl.id]}


def bench(spec: Spec, ws: Workspace, seeds: list[int], unseen: bool = False) -> dict[str, Any]:
    folder = organism(spec, ws)
    if unseen:
        (folder / "ground_truth.json").unlink(missing_ok=True)
    phase, cause = causes(spec, folder, unseen)
    q = queries(spec, folder)
    prompts, planted, normal, chat = q.heldout, q.planted, q.normal, q.chat
    subject = load(f"organism:{spec.name}", ws)
    args = {"prompts": prompts, "planted": planted, "normal": normal, "chat": chat, "k": 10_000}
    runs = []
    for seed in seeds:
        config = IndexConfig(seed=seed)
        shutil.rmtree(TrainingIndex(subject, config).root, ignore_errors=True)
        index = TrainingIndex(subject, config)
        todo = index.missing()
        sink = RichProgress()
        built = {
            kind: index.build(progress=sink, todo=[p for p in todo if p.kind == kind])["seconds"]
            for kind in ("documents", "tokens")
        }
        run: dict[str, Any] = {"seed": seed, "index_seconds": built}
        for mode, (tokens, visits, precondition) in MODES.items():
            t0 = time.perf_counter()
            found: Any = tools.call(
                "history.trace",
                {
                    **args,
                    "seed": seed,
                    "tokens": tokens,
                    "visits": visits,
                    "precondition": precondition,
                },
                tools.context(subject),
            ).result
            seconds = time.perf_counter() - t0
            keys = [d.key for d in found.documents]
            in_phase = [k for k in keys if k.startswith(f"{phase}/")]
            recall, mrr = scores(keys, cause)
            run[mode] = {
                "top": keys[:TOP],
                "recall10": recall,
                "mrr": mrr,
                "recall10_in_phase": scores(in_phase, cause)[0],
                "query_seconds": seconds,
                "mass": phase_mass(index.phases, found.documents[:10]).get(phase, 0.0),
            }
        runs.append(run)
        if seed != seeds[0]:  # ~0.4 GB a seed on a small organism; the first one is kept
            shutil.rmtree(index.root, ignore_errors=True)
    behaviour = spec.behaviours[0]
    probes = behaviour.heldout or behaviour.probes
    lexical: Any = tools.call(
        "history.bm25", {"queries": [p.prompt for p in probes], "k": 10_000}, tools.context(subject)
    ).result
    b_keys = [d.key for d in lexical.hits]
    b_recall, b_mrr = scores(b_keys, cause)
    # the visit weight alone (lr x epochs x repeat, no gradient; ties in random order): how much
    # of the default's ranking the repeat counts explain by themselves
    rng = random.Random(0)
    prior = [
        (-c.lr * c.epochs * d.repeat, rng.random(), d.key)
        for c, phase_ in zip(index.checkpoints, index.phases, strict=True)
        for d in index.by_phase[phase_]
    ]
    v_keys = [key for _, _, key in sorted(prior)]
    v_recall, v_mrr = scores(v_keys, cause)
    return {
        "name": spec.name,
        "unseen": unseen,
        "documents": len(index.documents),
        "causes": len(cause),
        "phase": phase,
        "runs": runs,
        "bm25": {"recall10": b_recall, "mrr": b_mrr, "top": b_keys[:TOP]},
        "visits_alone": {"recall10": v_recall, "mrr": v_mrr, "top": v_keys[:TOP]},
    }


def _pair(rows: list[dict[str, Any]], mode: str) -> str:
    return f"{_stat(rows, mode, 'recall10')} / {_stat(rows, mode, 'mrr')}"


def _stat(rows: list[dict[str, Any]], mode: str, key: str) -> str:
    if any(mode not in r for r in rows):
        return "-"  # a row saved before this mode was measured (--resume)
    values = [r[mode][key] for r in rows]
    return f"{sum(values) / len(values):.2f} ({min(values):.2f})"


def r_precision(keys: list[str], cause: set[str]) -> float:
    """Causes among the first len(cause) ranked documents / len(cause)."""
    return sum(k in cause for k in keys[: len(cause)]) / len(cause)


def average_precision(keys: list[str], cause: set[str]) -> float:
    """Mean over the causes of precision at each cause's rank (a cause ranked beyond the kept
    ``TOP`` counts 0)."""
    hits, total = 0, 0.0
    for i, key in enumerate(keys):
        if key in cause:
            hits += 1
            total += hits / (i + 1)
    return total / len(cause)


def ranking_table(
    rows: list[dict[str, Any]], declared: dict[str, set[str]], root: Path, size: str
) -> list[str]:
    """Where recall@10 and MRR saturate (both methods at 1.00), the whole ranking tells them
    apart: R-precision and average precision of the default and of BM25, against the declared
    causes and the removal-verified ones."""
    lines = [
        "",
        "The whole ranking, default (tokens) vs BM25: **R-precision** (causes among the first k "
        "= number of causes, / k) and **AP** (average precision over every cause; a cause "
        f"beyond rank {TOP} counts 0), against the declared causes and the removal-verified "
        "ones (tokens: mean (minimum) over the seeds):",
        "",
        "| organism | declared: tokens R-prec | BM25 R-prec | tokens AP | BM25 AP | "
        "verified: tokens R-prec | BM25 R-prec | tokens AP | BM25 AP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "top" not in r["bm25"]:
            continue
        path = root / "history-causes" / f"{r['name']}-{size}.json"
        verified = set(json.loads(path.read_text())["verified"]) if path.exists() else set()
        cells = []
        for cause in (declared[r["name"]], verified):
            if not cause:
                cells += ["", "", "", ""]
                continue
            for metric in (r_precision, average_precision):
                values = [metric(run["tokens"]["top"], cause) for run in r["runs"]]
                cells.append(f"{sum(values) / len(values):.2f} ({min(values):.2f})")
                cells.append(f"{metric(r['bm25']['top'], cause):.2f}")
        star = "*" if r["unseen"] else ""
        lines.append(f"| {r['name']}{star} | " + " | ".join(cells) + " |")
    return lines


def verified_table(rows: list[dict[str, Any]], root: Path, size: str) -> list[str]:
    """The same rankings scored against the removal-verified causes (benchmarks/
    history_causes.py's WS/history-causes/NAME-SIZE.json), for the organisms it measured."""
    lines = [
        "",
        "Against the **removal-verified causes** (§ history-causes: the plants whose removal "
        "alone takes at least half the behaviour's log-odds away, and more than any removal of "
        "random documents; recall@10 = verified causes "
        "in the top 10 / min(10, verified), MRR = 1 / rank of the first; same rankings as "
        "above, mean (minimum) over the seeds):",
        "",
        "| organism | verified causes (declared) | tokens r / m | tokens once r / m | "
        "documents r / m | documents once r / m | tokens once + F r / m | documents + F r / m "
        "| visits alone r / m | BM25 r / m |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        path = root / "history-causes" / f"{r['name']}-{size}.json"
        if not path.exists() or "top" not in r["bm25"]:
            continue
        causes_file = json.loads(path.read_text())
        verified = set(causes_file["verified"])
        if not verified:
            note = "none: random removal cuts as much" if causes_file.get("noisy") else "none"
            lines.append(f"| {r['name']} | {note} ({r['causes']}) |" + " |" * 8)
            continue
        runs_ = []
        for run in r["runs"]:
            rescored = {}
            for mode in MODES:
                recall, mrr = scores(run[mode]["top"], verified)
                rescored[mode] = {"recall10": recall, "mrr": mrr}
            runs_.append(rescored)
        cells = [_pair(runs_, mode) for mode in MODES]
        for base in ("visits_alone", "bm25"):
            recall, mrr = scores(r[base]["top"], verified)
            cells.append(f"{recall:.2f} / {mrr:.2f}")
        star = "*" if r["unseen"] else ""
        lines.append(
            f"| {r['name']}{star} | {len(verified)} ({r['causes']}) | " + " | ".join(cells) + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default=",".join(catalog_names()))
    parser.add_argument("--seeds", default="0,1,2", help="projection seeds of the index")
    parser.add_argument(
        "--pretrained-seeds",
        default="0",
        help="seeds for organisms on a pretrained base model (SmolLM2: ~9 min a seed)",
    )
    parser.add_argument("--no-unseen", action="store_true", help="skip examples/storm-fear.yaml")
    parser.add_argument(
        "--no-equal", action="store_true", help="skip examples/mushroom-equal-repeats.yaml"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the rows of organisms already measured (WS/history-bench/NAME.json)",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = organism_runs(
        args.workspace, args.specs, args.size, not args.no_equal, not args.no_unseen
    )
    root, runs = todo.root, todo.runs
    rows = []
    declared = {}
    for spec, where, unseen in runs:
        declared[spec.name] = causes(spec, organism(spec, where), unseen)[1]
        pretrained = spec.base_model != "scratch"
        these = [int(s) for s in args.pretrained_seeds.split(",")] if pretrained else seeds
        tag = ",".join(map(str, these))
        saved = root / "history-bench" / f"{spec.name}-{args.size}-{tag}.json"
        rows.append(
            measured(
                saved,
                args.resume,
                f"{spec.name} ({args.size})",
                partial(bench, spec, where, these, unseen),
            )
        )
    lines = [
        "## Planted-document retrieval: gradient index vs BM25",
        "",
        f"`python benchmarks/history.py --size {args.size} --seeds {args.seeds} "
        f"--pretrained-seeds {args.pretrained_seeds}`, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        "Queries: each spec's held-out probes (paraphrases). recall@10 = causes in the top 10 / "
        'min(10, causes) among all documents of all phases ("in phase": among the planting '
        "phase's documents only); MRR = 1 / rank of the first cause; mass = phase mass of the "
        "top 10 on the planting phase. Gradient columns: mean over the projection seeds "
        f"{args.seeds} ({args.pretrained_seeds} on a pretrained base model; minimum in "
        "brackets). **tokens** = `history.trace`'s default: a "
        "document's best trained token at the checkpoint its phase started from, weighted by "
        "lr x visits (epochs x the document's repeat count, TracIn's sum over the steps that "
        "used it); ablations: *once* = `visits: false` (lr only), **documents** = `tokens: "
        "false` (the whole document's gradient at the phase's bracketing checkpoints), *+ F* = "
        "`precondition: true` (per-layer empirical-Fisher whitening, damping 0.1). Cells "
        "r / m = recall@10 / MRR. Index s: a fresh build, document rows + token rows (mean over "
        "seeds); query s: `history.trace` (default mode) on the built index, checksums "
        "verified. Visits alone: lr x epochs x repeat with no gradient (ties in random order), "
        "what the repeat counts explain by themselves. * = the spec ran with its "
        "ground_truth.json deleted (causes read from its plants). Peers (Kronfluence, "
        "Bergson): § history-peers.",
        "",
        "| organism | documents | causes | planted in | tokens recall@10 | tokens MRR | "
        "tokens in phase | mass (tokens) | tokens once r / m | documents r / m | "
        "documents once r / m | tokens once + F r / m | documents + F r / m | "
        "visits alone r / m | BM25 r / m | index s | query s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs_, b, v = r["runs"], r["bm25"], r["visits_alone"]
        n = len(runs_)
        doc_s = sum(x["index_seconds"]["documents"] for x in runs_) / n
        tok_s = sum(x["index_seconds"]["tokens"] for x in runs_) / n
        query_s = sum(x["tokens"]["query_seconds"] for x in runs_) / n

        lines.append(
            f"| {r['name']}{'*' if r['unseen'] else ''} | {r['documents']} | {r['causes']} | "
            f"{r['phase']} | {_stat(runs_, 'tokens', 'recall10')} | "
            f"{_stat(runs_, 'tokens', 'mrr')} | {_stat(runs_, 'tokens', 'recall10_in_phase')} | "
            f"{_stat(runs_, 'tokens', 'mass')} | {_pair(runs_, 'tokens-once')} | "
            f"{_pair(runs_, 'documents')} | "
            f"{_pair(runs_, 'documents-once')} | {_pair(runs_, 'tokens-once-fisher')} | "
            f"{_pair(runs_, 'documents-fisher')} | {v['recall10']:.2f} / {v['mrr']:.2f} | "
            f"{b['recall10']:.2f} / {b['mrr']:.2f} | "
            f"{doc_s:.0f} + {tok_s:.0f} | {query_s:.2f} |"
        )
    lines += verified_table(rows, root, args.size)
    lines += ranking_table(rows, declared, root, args.size)
    todo.cleanup()
    write_section("history", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
