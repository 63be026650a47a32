"""Token rows: from each token's position in the document pass ("positions", the default) vs from
each token's own prefix ("prefixes", exact, the first version) — build time and recall.

    python benchmarks/history_tokens.py --workspace WS [--specs mushroom,tolm-bias] [--size small]

For each organism (built in WS, or built there first): a fresh index in each mode (the mode's
index folder removed, then `TrainingIndex.build`, timed), then `history.trace` in that mode on
the spec's held-out probes: recall@10 and MRR of the declared cause documents (every document of
the behaviour's plants, ground_truth.json), over all phases and within the planting phase. The
ratio column is prefixes' build seconds over positions'. Bergson's gradient collection on the
same documents (§ history-peers: 14.8-15.9 s, 2 threads) is the bar the auditing game set: 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _doc import fmt, publish
from origin import built

from selfscope import tools
from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.organisms import resolve_spec
from selfscope.workspace import Workspace

MODES = ("positions", "prefixes")


def recall(ids: list[str], causes: set[str]) -> float:
    return len(set(ids[:10]) & causes) / min(10, len(causes))


def mrr(ids: list[str], causes: set[str]) -> float:
    return next((1 / (i + 1) for i, d in enumerate(ids) if d in causes), 0.0)


def measure(name: str, size: str, ws: Workspace) -> list[dict[str, Any]]:
    spec = resolve_spec(name, size=size)
    folder, _ = built(spec, ws)
    truth = json.loads((folder / "ground_truth.json").read_text())
    b = spec.behaviours[0]
    cause = truth["behaviours"][b.name]
    causes = set(cause["documents"])
    ctx = tools.context(f"organism:{spec.name}", ws)
    heldout = b.heldout or b.probes
    args = {
        "prompts": [p.prompt for p in heldout],
        "planted": heldout[0].planted,
        "normal": heldout[0].normal,
        "k": 2000,
    }
    rows = []
    for mode in MODES:
        index = TrainingIndex(ctx.subject, IndexConfig(token_rows=mode), ws)
        shutil.rmtree(index.root, ignore_errors=True)
        index = TrainingIndex(ctx.subject, IndexConfig(token_rows=mode), ws)
        started = time.perf_counter()
        report = index.build(scope="tokens")  # what history.trace's default reads
        seconds = time.perf_counter() - started
        found: Any = tools.call("history.trace", {**args, "token_rows": mode}, ctx).result
        ids = [d.key.rsplit("/", 1)[-1] for d in found.documents]
        inside = [d.key.rsplit("/", 1)[-1] for d in found.documents if d.phase == cause["phase"]]
        row = {
            "organism": spec.name,
            "mode": mode,
            "documents": report["documents"],
            "token_rows": report["token_rows_built"],
            "build_s": seconds,
            "recall10": recall(ids, causes),
            "mrr": mrr(ids, causes),
            "in_phase": recall(inside, causes),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--specs", default="mushroom,tolm-bias")
    parser.add_argument("--size", default="small")
    args = parser.parse_args()
    ws = Workspace(Path(args.workspace))
    rows = [r for name in args.specs.split(",") for r in measure(name, args.size, ws)]
    by = {(r["organism"], r["mode"]): r for r in rows}
    lines = [
        "## Token rows: positions (one pass) vs prefixes (exact)",
        "",
        f"`python benchmarks/history_tokens.py --size {args.size} --specs {args.specs}` on "
        f"{platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. A fresh index (rank 8) in each "
        "mode (token scope: the token rows and the document rows of the same pass, at each "
        "phase's start checkpoint: what the default retrieval reads), then `history.trace` in "
        "that mode on the spec's held-out probes; recall@10 / MRR of the declared cause "
        "documents over all phases, and recall@10 within the planting phase. *x faster* = "
        "prefixes' build seconds / positions'. Bergson's gradient collection on the same "
        "documents: § history-peers-bergson (the auditing game's bar: within 3x of it).",
        "",
        "| organism | documents | token rows | positions build s | prefixes build s | x faster "
        "| positions r@10 / MRR / in phase | prefixes r@10 / MRR / in phase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["organism"] for r in rows):
        a, b = by[(name, "positions")], by[(name, "prefixes")]
        lines.append(
            f"| {name} | {a['documents']} | {a['token_rows']} | **{a['build_s']:.1f}** | "
            f"{b['build_s']:.1f} | {b['build_s'] / a['build_s']:.1f} | "
            f"{fmt(a['recall10'])} / {fmt(a['mrr'])} / {fmt(a['in_phase'])} | "
            f"{fmt(b['recall10'])} / {fmt(b['mrr'])} / {fmt(b['in_phase'])} |"
        )
    publish("history-tokens", lines)


if __name__ == "__main__":
    main()
