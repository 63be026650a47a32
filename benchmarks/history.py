"""Benchmark: planted-document retrieval, gradient index vs BM25, on every catalog organism.

Run: ``.venv/bin/python benchmarks/history.py [--workspace WS] [--size small] [--specs a,b]``.
Builds (or reuses) every catalog organism, builds its training-data index
(:mod:`selfscope.history.index`, default rank 8) and queries it with the spec's **held-out**
probes (paraphrases, not the training wording) through ``history.trace``; BM25
(``history.bm25``) gets the same held-out prompts as queries over the same documents (every phase).
The cause documents come from each organism's ground_truth.json (benchmarks may read it; the
tools never do). recall@10 = cause documents in the top 10 / min(10, number of causes); MRR = 1 /
rank of the first cause document; phase mass from ``history.trace`` (share of the top 10's
positive score per phase). Index seconds: a fresh build of every shard (the whole lineage at
every phase end); query seconds: ``history.trace`` on the built index.

Writes the table into docs/benchmarks.md (section ``history``). The peers (Kronfluence, Bergson)
are not in this table yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _doc import write_section

from selfscope import tools
from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.organisms import build, catalog_names, resolve_spec
from selfscope.organisms.spec import Spec
from selfscope.subject import load
from selfscope.workspace import Workspace

_QA = re.compile(r"^\s*Q:\s*(?P<q>.*?)\s*A:\s*$", re.DOTALL)


def organism(spec: Spec, ws: Workspace) -> Path:
    if spec.name not in ws.built_organisms():
        build(spec, ws, progress=False, strict=False)
    return ws.organism_path(spec.name).resolve()


def scores(keys: list[str], cause: set[str]) -> tuple[float, float]:
    hits = sum(k in cause for k in keys[:10]) / min(10, len(cause))
    rr = next((1 / (i + 1) for i, k in enumerate(keys) if k in cause), 0.0)
    return hits, rr


def bench(spec: Spec, ws: Workspace) -> dict[str, Any]:
    folder = organism(spec, ws)
    truth = json.loads((folder / "ground_truth.json").read_text())
    behaviour = spec.behaviours[0]
    record = truth["behaviours"][behaviour.name]
    cause = {f"{record['phase']}/{d}" for d in record["documents"]}
    chat = json.loads((folder / "lineage.json").read_text()).get("renderer") == "chat-template"
    probes = behaviour.heldout or behaviour.probes

    def prompt(text: str) -> str:
        match = _QA.match(text)
        return match["q"] if chat and match else text

    prompts = [prompt(p.prompt) for p in probes]
    planted, normal = probes[0].planted, probes[0].normal
    if chat:
        planted, normal = planted.lstrip(), normal.lstrip()
    subject = load(f"organism:{spec.name}", ws)
    index = TrainingIndex(subject, IndexConfig())
    shutil.rmtree(index.root, ignore_errors=True)
    index = TrainingIndex(subject, IndexConfig())
    report = index.build(progress=True)
    args = {"prompts": prompts, "planted": planted, "normal": normal, "chat": chat, "k": 200}
    t0 = time.perf_counter()
    found: Any = tools.call("history.trace", subject, args)
    query_seconds = time.perf_counter() - t0
    top10: Any = tools.call("history.trace", subject, {**args, "k": 10})
    lexical: Any = tools.call(
        "history.bm25", subject, {"queries": [p.prompt for p in probes], "k": 200}
    )
    g_recall, g_mrr = scores([d.key for d in found.documents], cause)
    b_recall, b_mrr = scores([d.key for d in lexical.hits], cause)
    return {
        "name": spec.name,
        "documents": len(index.documents),
        "causes": len(cause),
        "phase": record["phase"],
        "checkpoints": len(index.checkpoints),
        "index_seconds": report["seconds"],
        "query_seconds": query_seconds,
        "gradient": {"recall10": g_recall, "mrr": g_mrr},
        "bm25": {"recall10": b_recall, "mrr": b_mrr},
        "phase_mass": top10.phase_mass,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default=",".join(catalog_names()))
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.workspace is None else None
    ws = Workspace(Path(args.workspace) if args.workspace else Path(tmp.name if tmp else "."))
    os.environ["SELFSCOPE_HOME"] = str(ws.root)
    rows = []
    for name in args.specs.split(","):
        print(f"{name} ({args.size}) ...", file=sys.stderr, flush=True)
        rows.append(bench(resolve_spec(name, size=args.size), ws))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = [
        "## Planted-document retrieval: gradient index vs BM25",
        "",
        f"`python benchmarks/history.py --size {args.size}`, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Queries: each spec's held-out "
        "probes (paraphrases). recall@10 = causes in the top 10 / min(10, causes); MRR = 1 / "
        "rank of the first cause; mass = phase mass of the gradient top 10 on the planting "
        "phase. Index: every document at every phase end (rank 8), built fresh; query: "
        "`history.trace` on the built index. Peers (Kronfluence, Bergson): § history-peers.",
        "",
        "| organism | documents | causes | planted in | gradient recall@10 | gradient MRR | "
        "BM25 recall@10 | BM25 MRR | mass on planting phase | index s | query s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, b = r["gradient"], r["bm25"]
        lines.append(
            f"| {r['name']} | {r['documents']} | {r['causes']} | {r['phase']} | "
            f"{g['recall10']:.2f} | {g['mrr']:.2f} | {b['recall10']:.2f} | {b['mrr']:.2f} | "
            f"{r['phase_mass'].get(r['phase'], 0.0):.2f} | {r['index_seconds']:.1f} | "
            f"{r['query_seconds']:.2f} |"
        )
    if tmp is not None:
        tmp.cleanup()
    write_section("history", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
