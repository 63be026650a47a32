"""Benchmark: the removal test — does retraining without the retrieved documents remove the
behaviour?

Run: ``.venv/bin/python benchmarks/history_removal.py [--workspace WS] [--size small] [--specs
mushroom,...] [--seed 0] [--order kept|reshuffled]``. For each organism (a behaviour planted
after the first phase: the removal test retrains a phase from the checkpoint it started from),
``history.trace`` is queried with the spec's **held-out** probes (token mode, the default, and
document mode, ``tokens: false``); the top k documents of the planting phase (k = the number of
cause documents, from ground_truth.json: benchmarks may read it, the tools never do) are removed
and the phase retrained by ``history.removal`` (the organism's own trainer, the phase's recorded
knobs and seed; by default the recorded run with the removed rows taken out of their batches),
beside k random documents of the phase, BM25's top k for the prompts, a replay with nothing
removed (must reproduce the subject), and the cause documents themselves (the ceiling). The
behaviour is measured on the probes and held-out probes together: log-odds (planted vs normal,
mean) and rate (share of prompts where the planted answer wins).

Writes docs/benchmarks.md § history-removal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _behaviour import ORDERS, add_order_option, queries
from _doc import write_section

import selfscope.history.removal
import selfscope.history.retrieval  # noqa: F401
from selfscope import tools
from selfscope.organisms import build, resolve_spec
from selfscope.organisms.spec import Spec
from selfscope.subject import load
from selfscope.workspace import Workspace


def bench(spec: Spec, ws: Workspace, seed: int, order: str) -> dict[str, Any]:
    if spec.name not in ws.built_organisms():
        build(spec, ws, progress=False, strict=False)
    folder = ws.organism_path(spec.name).resolve()
    behaviour = spec.behaviours[0]
    record = json.loads((folder / "ground_truth.json").read_text())["behaviours"][behaviour.name]
    phase = record["phase"]
    cause = sorted(f"{phase}/{d}" for d in record["documents"])
    q = queries(spec, folder)
    heldout, measured, planted, normal, chat = q.heldout, q.measured, q.planted, q.normal, q.chat
    subject = load(f"organism:{spec.name}", ws)
    common = {"planted": planted, "normal": normal, "chat": chat}
    k = len(cause)
    tops: dict[str, list[str]] = {}
    for mode in ("tokens", "documents"):
        given = {**common, "prompts": heldout, "k": 10_000, "build": True, "seed": seed}
        given["tokens"] = mode == "tokens"
        found: Any = tools.call("history.trace", given, tools.context(subject)).result
        tops[mode] = [d.key for d in found.documents if d.phase == phase][:k]
    args = {**common, "prompts": measured, "order": order}
    t0 = time.perf_counter()
    main: Any = tools.call(
        "history.removal", {**args, "remove": tops["tokens"]}, tools.context(subject)
    ).result
    rows = [("subject (not retrained)", main.subject, None)]
    labels = {"replay": "nothing (replay)", "random": f"{k} random", "bm25": f"BM25 top {k}"}
    for run in main.runs:
        label = f"token-mode top {k}" if run.kind == "given" else labels[run.kind]
        rows.append((label, run, sum(r in set(cause) for r in run.removed)))
    extra = {"documents": f"document-mode top {k}", "causes": f"the {k} cause documents"}
    for name, removed in (("documents", tops["documents"]), ("causes", cause)):
        other: Any = tools.call(
            "history.removal",
            {**args, "remove": removed, "random": False, "bm25": False, "replay": False},
            tools.context(subject),
        ).result
        run = other.runs[0]
        rows.append((extra[name], run, sum(r in set(cause) for r in run.removed)))
    return {
        "name": spec.name,
        "phase": phase,
        "k": k,
        "prompts": len(measured),
        "seconds": time.perf_counter() - t0,
        "rows": [
            {"removed": label, "causes_in_set": c, "log_odds": r.log_odds, "rate": r.rate}
            for label, r, c in rows
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default="mushroom")
    parser.add_argument("--seed", type=int, default=0, help="projection seed of the index")
    add_order_option(parser)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.workspace is None else None
    ws = Workspace(Path(args.workspace) if args.workspace else Path(tmp.name if tmp else "."))
    os.environ["SELFSCOPE_HOME"] = str(ws.root)
    results = []
    for name in args.specs.split(","):
        print(f"{name} ({args.size}) ...", file=sys.stderr, flush=True)
        results.append(bench(resolve_spec(name, size=args.size), ws, args.seed, args.order))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    lines = [
        "## The removal test: retrain without the retrieved documents",
        "",
        f"`python benchmarks/history_removal.py --size {args.size} --specs {args.specs} "
        f"--seed {args.seed} --order {args.order}`, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. `history.trace` queried with the held-out probes; its "
        "top k documents of the planting phase (k = number of cause documents) removed and the "
        "phase retrained by `history.removal` (the organism trainer, the phase's knobs and "
        "seed, from the checkpoint it started from; "
        + ORDERS[args.order]
        + "). Behaviour measured on the probes + "
        'held-out probes. "causes" = cause documents in the removed set.',
    ]
    for r in results:
        lines += [
            "",
            f"**{r['name']}** (planted in {r['phase']}, k = {r['k']}, {r['prompts']} prompts, "
            f"{r['seconds']:.0f} s of retraining)",
            "",
            "| removed | causes | log-odds | rate |",
            "|---|---|---|---|",
        ]
        for row in r["rows"]:
            c = "" if row["causes_in_set"] is None else str(row["causes_in_set"])
            lines.append(f"| {row['removed']} | {c} | {row['log_odds']:.2f} | {row['rate']:.2f} |")
    if tmp is not None:
        tmp.cleanup()
    write_section("history-removal", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
