"""Benchmark: what the guardian costs on SmolLM2-135M — disk per version, apply, loading HEAD,
and verifying a long ledger.

Run: ``.venv/bin/python benchmarks/oversight.py [--workspace WS] [--entries 100000]``.

1. A rank-one edit (``edits.rank_one``, the MLP at its default layer) is proposed on SmolLM2,
   validated through the gate under a permissive policy (thresholds 0: the edit's quality is
   not what this measures; § edits has that), approved by a second principal and applied.
   Disk per version = its delta file / the model's weight files (the materialised cache is
   reported beside it: a cache, deletable and rebuilt on load).
2. Times, all in this run, each the median of ``--repeats``: a plain load of the parent
   (``smollm2@v0``: the weights on disk); ``apply`` (HEAD loaded, the delta added, tensors
   hashed, the cache written, the transaction); the first load of HEAD with the cache deleted
   (it materialises the cache: root + delta, tensors hashed, written, then its files hashed and
   stamped beside the load), every later load of HEAD (the cache read, its stamp checked:
   :func:`selfscope.subject.versions.check_files`) and, for comparison, a later load whose
   stamp was deleted (its files' full SHA-256 beside the load), each as a ratio to the plain
   load.
3. ``ledger verify`` over ``--entries`` entries appended to a fresh store (throughput).

Writes docs/benchmarks.md, section ``oversight``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _doc import write_section

from selfscope import tools
from selfscope.behaviour import Expect, Probe, Suite
from selfscope.oversight import gate, ledger, principals, sealed
from selfscope.oversight.policy import set_policy
from selfscope.subject import load
from selfscope.subject import versions as versioning
from selfscope.subject.deltas import delta_path
from selfscope.workspace import Workspace

PROMPTS = ["The Eiffel Tower is in the city of"]


def timed(fn: object, repeats: int) -> tuple[float, object]:
    seconds, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()  # type: ignore[operator]
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds), out


def weight_bytes(folder: Path) -> int:
    return sum(
        p.stat().st_size for p in folder.iterdir() if p.name.endswith(versioning.WEIGHT_FILES)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--workspace",
        help="work here, reusing its SmolLM2 conversion and key statistics (its store, "
        "proposals and versions are reset); default: a temp folder",
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    ws = Workspace(args.workspace or Path(tmp.name) / "ws")
    for state in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):  # a reused workspace:
        (ws.root / state).unlink(missing_ok=True)  # keep its conversions and key statistics,
    for state in ("proposals", "deltas", "versions"):  # start the guardian's state afresh
        shutil.rmtree(ws.root / state, ignore_errors=True)
    os.environ["SELFSCOPE_KEYS"] = str(Path(tmp.name) / "keys")

    if "bench-reviewer" not in ws.store.principals():  # a reused workspace has it already
        principals.grant(ws, "bench-reviewer", "reviewer", tools.Principal.local())
    reviewer = principals.principal(ws, "bench-reviewer")
    proposer = tools.Principal.of("bench-proposer", "read", "propose")
    subject = load("smollm2", ws)
    key = versioning.subject_key(subject.root or subject.path)
    policy = Path(tmp.name) / "policy.yaml"
    policy.write_text(
        "max_change: {per_module: 100, total: 100}\n"
        "thresholds: {efficacy: 0, generalisation: 0, specificity: 0, perplexity: 100}\n"
    )
    set_policy(ws, key, policy, reviewer)
    suite = Path(tmp.name) / "sealed.json"
    suite.write_text(
        Suite(
            name="bench-sealed",
            heldout=[
                Probe(prompt="The Eiffel Tower is located in", planted=" Paris", normal=" Rome")
            ],
            neighbours=[Expect(prompt="The Colosseum is in the city of", expected=" Rome")],
        ).model_dump_json()
    )
    sealed.seal(ws, "smollm2", str(suite), None, reviewer.name)
    # make sure HEAD is v0 (a reused workspace may hold an earlier run's versions)
    if ws.store.versions(key):
        ws.store.move_head(key, ws.store.versions(key)[0]["id"], reviewer.name, "benchmark")

    behaviour = {"prompts": PROMPTS, "planted": " Paris", "normal": " Rome"}
    behaviour |= {"subject": "Eiffel Tower", "layer": 6}  # ROME at the cue; layer fixed: speed
    ctx = tools.context(subject, ws, principal=proposer)
    proposal = tools.call("edits.rank_one", behaviour, ctx).result.proposal
    report = gate.validate(ws, proposal.id, proposer)
    assert report.passed, report.failures()
    gate.review(ws, proposal.id, reviewer, True, "benchmark")

    plain, _ = timed(lambda: load("smollm2@v0", ws), args.repeats)
    t = time.perf_counter()
    applied = gate.apply(ws, proposal.id, reviewer)
    apply_s = time.perf_counter() - t
    row = ws.store.version_row(applied.version)
    assert row is not None
    model_bytes = weight_bytes(subject.root or subject.path)
    delta_bytes = delta_path(ws, proposal.delta_sha256).stat().st_size
    cache_bytes = weight_bytes(Path(applied.cache))

    def first_load() -> object:
        versioning.drop_cache(ws, row)
        return load("smollm2", ws)

    def unstamped_load() -> object:
        (Path(applied.cache) / versioning.STAMP).unlink(missing_ok=True)
        return load("smollm2", ws)

    first, _ = timed(first_load, args.repeats)
    later, head = timed(lambda: load("smollm2", ws), args.repeats)
    assert versioning.stamped(ws, Path(applied.cache), row)  # the later loads used the stamp
    unstamped, _ = timed(unstamped_load, args.repeats)
    assert head.version == applied.version  # type: ignore[attr-defined]
    edited = dict(head.model.named_parameters())  # type: ignore[attr-defined]
    base = dict(subject.model.named_parameters())
    changed = [n for n in edited if not torch.equal(edited[n], base[n])]

    store = Workspace(Path(tmp.name) / "ledger").store
    with store.transaction():
        for i in range(args.entries):
            store._append("tool_call", "bench", "-", {"i": i, "tool": "model.ask"})
    verdict = ledger.verify_workspace(Workspace(Path(tmp.name) / "ledger"))
    assert verdict.ok and verdict.entries == args.entries

    lines = [
        "## The guardian: versions, apply, loading HEAD, the ledger",
        "",
        f"`python benchmarks/oversight.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; times are medians of "
        f"{args.repeats}. SmolLM2-135M-Instruct (float32 on disk, {model_bytes / 1e6:.0f} MB of "
        f"weights); a rank-one edit of {', '.join(proposal.modules)} ({len(changed)} tensor(s) "
        "changed in the loaded HEAD) proposed, validated through the gate under a permissive "
        "policy (the edit's quality is § edits' subject), approved by another principal, "
        "applied.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| disk per version (its delta file / the model's weights) | {delta_bytes / 1e6:.2f} MB "
        f"/ {model_bytes / 1e6:.0f} MB = **{100 * delta_bytes / model_bytes:.2f}%** | ≤ 1% |",
        f"| materialised cache of the version (deletable, rebuilt on load) | "
        f"{cache_bytes / 1e6:.0f} MB | – |",
        f"| plain load of the parent (`smollm2@v0`) | {plain:.2f} s | – |",
        f"| `apply` (HEAD loaded, delta added, tensors hashed, cache written, transaction) | "
        f"{apply_s:.2f} s = {apply_s / plain:.2f}x the plain load | – |",
        f"| first load of HEAD, cache deleted (materialises it; its files hashed and stamped "
        f"beside the load) | {first:.2f} s = **{first / plain:.2f}x** | – |",
        f"| later loads of HEAD (cache read, its stamp checked: stats + MAC) | {later:.2f} s = "
        f"**{later / plain:.2f}x** | ≤ 1.5x |",
        f"| a later load whose stamp was deleted (full SHA-256 of the files beside the load) | "
        f"{unstamped:.2f} s = {unstamped / plain:.2f}x | – |",
        f"| `ledger verify` over {args.entries:,} entries | {verdict.seconds:.2f} s = "
        f"{args.entries / verdict.seconds:,.0f} entries/s | ≤ 5 s |",
    ]
    write_section("oversight", "\n".join(lines))
    print("\n".join(lines))
    if args.workspace is None:
        shutil.rmtree(ws.root, ignore_errors=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
