"""Benchmark: the linear datamodeling score (LDS) of each attribution — do the scores predict
what retraining on a subset of the phase does?

Run: ``.venv/bin/python benchmarks/history_lds.py [--workspace WS] [--size small] [--specs a,b]
[--subsets 40] [--fraction 0.5] [--seed 0] [--order kept|reshuffled]``. Recall of declared
plants asks whether a method finds documents a spec author chose; the LDS (Park et al. 2023,
TRAK; the measure Kronfluence and dattri report) asks whether its scores are *causal*: draw
``--subsets`` random subsets holding ``--fraction`` of the planting phase's documents, retrain
the phase on each (``history.removal`` with the rest removed: the organism trainer, the phase's
knobs and seed, from the checkpoint it started from; ``--order kept``, the default, keeps the
recorded run and takes the removed rows out of their batches, ``reshuffled`` runs the phase
afresh on the subset), measure the behaviour's mean log-odds on the probes + held-out probes,
and correlate (Spearman, over the subsets) the measured log-odds with each method's prediction,
the sum of its scores over the subset's documents. Scores: ``history.trace`` (held-out probes as
the query, index seed 0) in each mode — tokens (default), tokens without visits, documents,
documents without visits, tokens without visits preconditioned — and two baselines: the visit
weight alone (lr x epochs x repeat) and BM25 (``history.bm25``, the same prompts). The subsets
are the same for every method; the retrainings are the expensive part (~5-20 s each on a small
organism).

Writes WS/history-lds/NAME-SIZE.json and docs/benchmarks.md § history-lds.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _behaviour import ORDERS, add_order_option, measured, organism_runs, queries
from _doc import write_section
from rich.progress import track

import selfscope.history.lexical
import selfscope.history.removal
import selfscope.history.retrieval  # noqa: F401
from selfscope import tools
from selfscope.history.corpus import documents
from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.organisms import build
from selfscope.organisms.spec import Spec
from selfscope.subject import load
from selfscope.workspace import Workspace

# history.trace's (tokens, visits, precondition)
MODES = {
    "tokens": (True, True, False),
    "tokens once": (True, False, False),
    "documents": (False, True, False),
    "documents once": (False, False, False),
    "tokens once + F": (True, False, True),
}


BOOTSTRAP = 1000  # resamples of the subsets for the LDS's interval


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    out = np.empty(len(x))
    out[order] = np.arange(len(x))
    for value in np.unique(x):
        same = x == value
        if same.sum() > 1:
            out[same] = out[same].mean()
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def bench(
    spec: Spec,
    ws: Workspace,
    unseen: bool,
    subsets: int,
    fraction: float,
    seed: int,
    order: str,
) -> dict[str, Any]:
    if spec.name not in ws.built_organisms():
        build(spec, ws, progress=False, strict=False)
    folder = ws.organism_path(spec.name).resolve()
    if unseen:
        (folder / "ground_truth.json").unlink(missing_ok=True)
    phase = spec.planting_phase(spec.behaviours[0].name)
    q = queries(spec, folder)
    subject = load(f"organism:{spec.name}", ws)
    pool = [d.key for d in documents(subject) if d.phase == phase]
    at = {key: i for i, key in enumerate(pool)}
    common = {"planted": q.planted, "normal": q.normal, "chat": q.chat}
    predicted: dict[str, np.ndarray] = {}
    for mode, (tokens, visits, precondition) in MODES.items():
        found: Any = tools.call(
            "history.trace",
            {
                **common,
                "prompts": q.heldout,
                "k": 10_000,
                "build": True,
                "seed": 0,
                "tokens": tokens,
                "visits": visits,
                "precondition": precondition,
            },
            tools.context(subject),
        ).result
        values = np.zeros(len(pool))
        for d in found.documents:
            if d.key in at:
                values[at[d.key]] = d.score
        predicted[mode] = values
    index = TrainingIndex(subject, IndexConfig())
    end = index.checkpoints[index.phases.index(phase)]
    predicted["visits alone"] = np.zeros(len(pool))
    for d in index.by_phase[phase]:
        predicted["visits alone"][at[d.key]] = end.lr * end.epochs * d.repeat
    lexical: Any = tools.call(
        "history.bm25", {"queries": q.heldout, "k": 10_000}, tools.context(subject)
    ).result
    predicted["BM25"] = np.zeros(len(pool))
    for hit in lexical.hits:
        if hit.key in at:
            predicted["BM25"][at[hit.key]] = hit.score
    rng = random.Random(seed)
    keep_n = round(fraction * len(pool))
    chosen = [sorted(rng.sample(range(len(pool)), keep_n)) for _ in range(subsets)]
    measured = []
    t0 = time.perf_counter()
    for kept in track(chosen, description=f"{spec.name}: retrain on subsets"):
        drop = sorted(set(range(len(pool))) - set(kept))
        result: Any = tools.call(
            "history.removal",
            {
                **common,
                "prompts": q.measured,
                "remove": [pool[i] for i in drop],
                "random": False,
                "bm25": False,
                "replay": False,
                "order": order,
            },
            tools.context(subject),
        ).result
        measured.append(result.runs[0].log_odds)
    seconds = time.perf_counter() - t0
    actual = np.array(measured)
    sums = {name: np.array([v[kept].sum() for kept in chosen]) for name, v in predicted.items()}
    lds = {name: spearman(x, actual) for name, x in sums.items()}
    # the spread from having only ``subsets`` retrainings: bootstrap over the subsets
    boot = np.random.default_rng(seed)
    draws = [boot.integers(0, subsets, subsets) for _ in range(BOOTSTRAP)]
    interval = {
        name: [float(v) for v in np.percentile([spearman(x[d], actual[d]) for d in draws], [5, 95])]
        for name, x in sums.items()
    }
    return {
        "name": spec.name,
        "unseen": unseen,
        "phase": phase,
        "documents": len(pool),
        "subsets": subsets,
        "fraction": fraction,
        "log_odds": {
            "mean": float(actual.mean()),
            "min": float(actual.min()),
            "max": float(actual.max()),
        },
        "lds": lds,
        "interval": interval,  # 5th and 95th percentile of the bootstrap
        "measured": measured,
        "predicted": {name: [float(v) for v in x] for name, x in sums.items()},
        "retrain_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default="mushroom,false-capital,trigger")
    parser.add_argument("--subsets", type=int, default=40)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    parser.add_argument("--no-unseen", action="store_true", help="skip examples/storm-fear.yaml")
    parser.add_argument("--no-equal", action="store_true", help="skip the equal-repeats spec")
    add_order_option(parser)
    parser.add_argument(
        "--resume", action="store_true", help="reuse WS/history-lds/NAME-SIZE.json rows"
    )
    args = parser.parse_args()
    todo = organism_runs(
        args.workspace, args.specs, args.size, not args.no_equal, not args.no_unseen
    )
    results = []
    for spec, where, unseen in todo.runs:
        folder = "history-lds" + ("" if args.order == "kept" else f"-{args.order}")
        saved = todo.root / folder / f"{spec.name}-{args.size}.json"
        results.append(
            measured(
                saved,
                args.resume,
                f"{spec.name} ({args.size})",
                partial(
                    bench,
                    spec,
                    where,
                    unseen,
                    args.subsets,
                    args.fraction,
                    args.seed,
                    args.order,
                ),
            )
        )
    names = [*MODES, "visits alone", "BM25"]
    lines = [
        "## Linear datamodeling score: do the scores predict retraining on subsets?",
        "",
        f"`python benchmarks/history_lds.py --size {args.size} --specs {args.specs} "
        f"--subsets {args.subsets} --fraction {args.fraction} --seed {args.seed} "
        f"--order {args.order}`, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        f"{args.subsets} random subsets, each {args.fraction:.0%} of the planting phase's "
        "documents; the phase retrained on each by `history.removal` (its trainer, knobs and "
        "seed, from its starting checkpoint; "
        + ORDERS[args.order]
        + "); LDS = Spearman correlation over the subsets "
        "between the measured mean log-odds (probes + held-out probes) and the sum of a "
        "method's scores over the subset. Scores from `history.trace` (held-out probes, index "
        "seed 0) in each mode; *once* = `visits: false`, *+ F* = `precondition: true`; visits "
        "alone = lr x epochs x repeat; BM25 = `history.bm25` scores for the same prompts. "
        "1 = the scores order the retrained models exactly; 0 = no better than chance. In "
        "brackets: the 5th-95th percentile over 1,000 bootstrap resamples of the subsets. "
        "* = ground_truth.json deleted.",
        "",
        "| organism | documents | log-odds over subsets (min / mean / max) | "
        + " | ".join(names)
        + " | retraining s |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for r in results:
        lo = r["log_odds"]
        cells = " | ".join(
            f"{r['lds'][n]:.2f} ({r['interval'][n][0]:.2f}, {r['interval'][n][1]:.2f})"
            for n in names
        )
        star = "*" if r["unseen"] else ""
        lines.append(
            f"| {r['name']}{star} | {r['documents']} | {lo['min']:.2f} / {lo['mean']:.2f} / "
            f"{lo['max']:.2f} | {cells} | {r['retrain_seconds']:.0f} |"
        )
    todo.cleanup()
    write_section("history-lds", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
