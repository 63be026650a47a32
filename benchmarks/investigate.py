"""`selfscope investigate` on blind copies of every catalog organism and an unseen spec, scored
against ground truth: origin phase, recall@10 of the cause documents (and BM25's), every
diagnosis link measured, the submitted proposal through the gate with sealed suites, time.

    python benchmarks/investigate.py [--workspace DIR] [--size small] [--specs a,b]
        [--smollm2 DIR_OF_A_BUILT_SMOLLM2_MUSHROOM_WORKSPACE]

Each organism: a blind copy (`organism blind`: no spec, no ground truth; its held-out suite
sealed for the copy), investigated by the CLI in a separate process given one probe prompt and
the desired answer only. Run 1 builds the training-data index into the copy; run 2 investigates
a second blind copy in a fresh workspace with that index copied in — the "index cached" time.
Both run in fresh workspaces holding only the copy's sealed suite.
Recall@10 counts the ground truth's cause documents among the top 10 (over min(10, causes)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _doc import fmt, publish
from origin import UNSEEN, built, expected_phase, tool_args

from selfscope.organisms import catalog_names, resolve_spec
from selfscope.organisms.blind import blind
from selfscope.organisms.suites import seal_for_subject
from selfscope.workspace import Workspace

EXE = [sys.executable, "-m", "selfscope.cli"]


def investigate(ws: Path, copy: Path, prompt: str, desired: str, chat: bool) -> dict[str, Any]:
    args = [*EXE, "--workspace", str(ws), "investigate", "-m", str(copy), "-p", prompt]
    args += ["--desired", desired, "--json"] + (["--chat"] if chat else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELFSCOPE_HOME": str(ws)}
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        wall = time.perf_counter() - started
        return {"error": done.stderr.strip().splitlines()[-1:], "wall": wall}
    out: dict[str, Any] = json.loads(done.stdout)
    out["wall"] = time.perf_counter() - started
    return out


def recall(ids: list[str], causes: set[str]) -> float | None:
    if not causes:
        return None
    return len(set(ids[:10]) & causes) / min(10, len(causes))


def score(
    result: dict[str, Any], folder: Path, behaviour: str, declared: set[str] | None
) -> dict[str, Any]:
    """``declared``: the cause documents when ground_truth.json was deleted (the unseen spec:
    history_causes.py's record of its plants' documents)."""
    truth_file = folder / "ground_truth.json"
    if truth_file.exists():
        b = json.loads(truth_file.read_text())["behaviours"][behaviour]
        causes = {f"{b['phase']}/{d}" for d in b["documents"]}
    else:
        causes = declared or set()
    if "error" in result:
        return {"error": result["error"]}
    submitted = [p for p in result["proposals"] if p["id"] and p["id"] == result["submitted"]]
    validation = submitted[0]["validation"] if submitted else None
    links = result["diagnosis"]
    return {
        "phase": result["origin"]["phase"],
        "expected": None if not truth_file.exists() else b["phase"],
        "recall10": recall([d["id"] for d in result["documents"]], causes),
        "top10": [d["id"] for d in result["documents"]][:10],
        "bm25_recall10": recall([d["id"] for d in result["bm25"]], causes),
        "links": len(links),
        "links_measured": all(isinstance(x["effect"], float) and x["evidence"] for x in links),
        "submitted": submitted[0]["kind"] if submitted else None,
        "gate_passed": bool(validation and validation["passed"]),
        "sealed": len(validation["sealed"]) if validation else 0,
        "removal": "runs" in result["removal"],
        "trait": result.get("trait", {}).get("status"),
        "why_not": [
            p["why"] or p["skipped"] for p in result["proposals"] if p.get("status") != "validated"
        ],
        "seconds": result["seconds"],
    }


def sealed(spec: Any, folder: Path, copy: Path, root: Path) -> Path:
    """A fresh workspace at ``root`` with the organism's held-out suite sealed for ``copy``."""
    last = json.loads((copy / "lineage.json").read_text())["phases"][-1]["checkpoint"]
    seal_for_subject(spec, folder, Workspace(root), subject=copy.resolve() / last)
    return root


def bench(spec_path: str, size: str, ws: Workspace, verified: Path | None) -> dict[str, Any]:
    spec = resolve_spec(spec_path, size=size)
    folder, _ = built(spec, ws)
    b = spec.behaviours[0]
    chat = json.loads((folder / "lineage.json").read_text())["phases"][-1].get("renderer") == (
        "chat-template"
    )
    args = tool_args(b, chat)
    prompt, desired = args["prompts"][0], args["normal"]
    root = ws.root / "investigate-bench" / spec.name
    shutil.rmtree(root, ignore_errors=True)
    first_ws, second_ws = root / "ws1", root / "ws2"
    os.environ["SELFSCOPE_HOME"] = str(ws.root)
    copy1 = blind(spec.name, root / "copy1", ws)
    for index in (copy1.resolve() / "index").glob("*"):  # the organism's own: built again
        shutil.rmtree(index)
    run1 = investigate(sealed(spec, folder, copy1, first_ws), copy1, prompt, desired, chat)
    copy2 = blind(spec.name, root / "copy2", ws)
    for index in (copy1.resolve() / "index").glob("*"):
        if not (copy2.resolve() / "index" / index.name).exists():
            shutil.copytree(index, copy2.resolve() / "index" / index.name)
    run2 = investigate(sealed(spec, folder, copy2, second_ws), copy2, prompt, desired, chat)
    row = {"organism": spec.name, "prompt": prompt, "desired": desired}
    record = (verified or Path("-")) / f"{spec.name}-{size}.json"
    listed = json.loads(record.read_text()).get("declared_documents") if record.exists() else None
    declared = set(listed) if isinstance(listed, list) else None  # a count only: not scored
    row["run1"] = score(run1, folder, b.name, declared) | {"wall": run1["wall"]}
    row["run2"] = score(run2, folder, b.name, declared) | {"wall": run2["wall"]}
    row["expected"] = expected_phase(spec, folder, b.name)
    print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    return row


def journal_top10(root: Path, organism: str, run: str) -> list[str] | None:
    """The top 10 documents from a run's journal (rows saved before the ids were kept)."""
    ws = "ws1" if run == "run1" else "ws2"
    for found in root.glob(f"**/investigate-bench/{organism}/{ws}/investigations/*/documents.json"):
        trace = json.loads(found.read_text())["result"]["trace"]
        return [d["key"] for d in trace["documents"]][:10] if trace else None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    small = ",".join(n for n in catalog_names() if "smollm2" not in n)
    parser.add_argument("--specs", default=small)
    parser.add_argument("--no-unseen", action="store_true")
    parser.add_argument("--smollm2", help="a workspace holding a built smollm2-mushroom")
    parser.add_argument(
        "--verified",
        help="benchmarks/history_causes.py's JSON folder: also score against its "
        "removal-verified causes (the same builds)",
    )
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite the table from the saved JSON"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the saved rows; measure only the others"
    )
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.workspace is None else None
    root = Path(args.workspace or (tmp.name if tmp else "."))
    catalog = Workspace(root / "catalog") if (root / "catalog").exists() else Workspace(root)
    runs = [(n, catalog) for n in args.specs.split(",") if n]
    if not args.no_unseen:
        runs.append((str(UNSEEN), Workspace(root / "unseen")))
    if args.smollm2:
        runs.append(("smollm2-mushroom", Workspace(Path(args.smollm2))))
    saved = root / "investigate-bench.json"
    rows = json.loads(saved.read_text()) if saved.exists() and args.resume else []
    if not args.table_only:
        for name, ws in runs:
            spec_name = resolve_spec(name, size=args.size).name
            if any(r["organism"] == spec_name for r in rows):
                continue  # measured earlier (--resume)
            print(f"{name} ...", file=sys.stderr, flush=True)
            verified = Path(args.verified) if args.verified else None
            rows.append(bench(name, args.size, ws, verified))
            saved.write_text(json.dumps(rows, indent=1, default=str))  # after each organism
    elif saved.exists():
        rows = json.loads(saved.read_text())
    for r in rows:
        found = Path(args.verified or "-") / f"{r['organism']}-{args.size}.json"
        verified = set(json.loads(found.read_text())["verified"]) if found.exists() else set()
        for run in ("run1", "run2"):
            ids = r[run].get("top10") or journal_top10(root, r["organism"], run)
            logged = r[run].get("verified_recall10_logged")  # from a table printed earlier
            r[run]["verified_recall10"] = recall(ids, verified) if ids is not None else logged
    lines = [
        "## The investigation loop on blind copies",
        "",
        f"`python benchmarks/investigate.py --size {args.size}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Each "
        "organism's blind copy (no spec, no ground truth) investigated by `selfscope investigate` "
        "in its own process, given one probe prompt and the desired answer; scored here against "
        "ground truth. *cached*: a second blind copy in a fresh workspace with the index copied "
        "in. Recall@10 = cause documents in the top 10 / min(10, causes): *verified* = the plants "
        "whose removal alone cut the behaviour by half and more than random removals "
        "(§ history-causes, the same builds), *declared* = every document of the spec's plants.",
        "",
        "| organism | origin (truth) | recall@10 verified | recall@10 declared | BM25 recall@10 "
        "declared | links, all measured | removal | submitted | gate (sealed suites) | trait | "
        "first run s | cached s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, c = r["run1"], r["run2"]
        if "error" in a or "error" in c:
            why = a.get("error") or c.get("error")
            lines.append(f"| {r['organism']} | error: {why} |" + " - |" * 11)
            continue
        lines.append(
            f"| {r['organism']}{' †' if r.get('note') else ''} | {a['phase']} ({r['expected']}) | "
            f"**{fmt(a.get('verified_recall10'))}** | {fmt(a['recall10'])} | "
            f"{fmt(a['bm25_recall10'])} | {a['links']}, {'yes' if a['links_measured'] else 'NO'} | "
            f"{'ran' if a['removal'] else 'skipped'} | {a['submitted'] or '-'} | "
            f"{'passed' if a['gate_passed'] else 'failed'} ({a['sealed']}) | {a['trait']} | "
            f"{a['seconds']['total']:.0f} | **{c['seconds']['total']:.0f}** |"
        )
    notes = sorted({r["note"] for r in rows if r.get("note")})
    lines += ["", *(f"† {n}." for n in notes)] if notes else []
    publish("investigate", lines)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
