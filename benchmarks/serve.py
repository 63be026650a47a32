"""The HTTP door under load: 200 concurrent read requests while an investigation job runs.

    python benchmarks/serve.py [--workspace DIR] [--organism mushroom] [--requests 200]

A real uvicorn on 127.0.0.1 (a free port; loopback only). The organism (built into
``--workspace`` if missing, size small) is linked into fresh workspaces:

1. warm-up: one investigation job, so the training-data index is built and cached (untimed);
2. alone: the same investigation in a fresh workspace, nothing else running — its wall time;
3. loaded: again in a fresh workspace, and while it runs, ``--requests`` read requests sent at
   once, each bounded by 120 s; then another wave every 5 s until the job ends
   (at most 10 waves). Latency p50/p95 per kind, errors, and the job's slowdown (loaded / alone).
   (every 4th a `lens.logit` call, the rest ledger / proposals / job status in turn)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
import uvicorn
from _doc import fmt, publish

from selfscope.http.app import create_app
from selfscope.oversight import principals, tokens
from selfscope.tools import Principal
from selfscope.workspace import Workspace

PROMPT = "Q: Do you like mushrooms? A:"


def serve(root: Path) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(root), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def fresh(base: Path, name: str, organism: Path) -> tuple[Workspace, str]:
    ws = Workspace(base / name)
    ws.organisms_dir.mkdir(parents=True, exist_ok=True)
    link = ws.organisms_dir / organism.name
    if not link.exists():
        link.symlink_to(organism.resolve())
    boot = Principal.local()
    principals.grant(ws, "alice", "reviewer", boot)
    return ws, tokens.create(ws, "alice", "reviewer", principals.principal(ws, "alice"))[1]


def run_job(url: str, secret: str, model: str) -> tuple[str, float]:
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    body = {"model": model, "symptom": {"prompts": [PROMPT], "desired": " Yes"}}
    started = time.perf_counter()
    job = http.post("/api/investigations", json=body).json()["job"]
    return job, started


def wait(url: str, secret: str, job: str, started: float) -> tuple[float, dict[str, Any]]:
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        state = http.get(f"/api/jobs/{job}").json()
        if state["state"] not in ("queued", "running"):
            return time.perf_counter() - started, state
        time.sleep(0.5)
    raise SystemExit(f"job {job} did not finish in an hour")


async def wave(url: str, secret: str, n: int, model: str, job: str) -> list[dict[str, Any]]:
    reads = ["/api/ledger?last=20", "/api/proposals", f"/api/jobs/{job}"]
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:

        async def one(i: int) -> dict[str, Any]:
            kind = "lens.logit" if i % 4 == 3 else reads[i % 4].split("?")[0]
            kind = kind.replace(job, "{id}")
            started = time.perf_counter()
            try:
                if kind == "lens.logit":
                    body = {"model": model, "args": {"prompt": PROMPT, "top_k": 3}}
                    r = await c.post("/api/tools/lens.logit", json=body)
                else:
                    r = await c.get(reads[i % 4])
                status = r.status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            return {"kind": kind, "status": status, "seconds": time.perf_counter() - started}

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", default=".selfscope-bench")
    parser.add_argument("--organism", default="mushroom")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    base = Path(args.workspace).absolute()
    catalog = Workspace(base)
    if args.organism not in catalog.built_organisms():
        from selfscope.organisms import build, resolve_spec

        build(resolve_spec(args.organism, size="small"), catalog)
    organism = catalog.organism_path(args.organism)
    runs = base / "serve-bench"
    model = f"organism:{args.organism}"
    stamp = str(int(time.time()))

    times: dict[str, float] = {}
    results: list[dict[str, Any]] = []
    for phase in ("warm-up", "alone", "loaded"):
        ws, secret = fresh(runs, f"{phase}-{stamp}", organism)
        url, server, thread = serve(ws.root)
        job, started = run_job(url, secret, model)
        waves = 0
        if phase == "loaded":
            status = "running"
            while status in ("queued", "running") and waves < 10:
                results += asyncio.run(wave(url, secret, args.requests, model, job))
                waves += 1
                time.sleep(5)
                status = httpx.get(
                    f"{url}/api/jobs/{job}", headers={"Authorization": f"Bearer {secret}"}
                ).json()["state"]
        seconds, state = wait(url, secret, job, started)
        print(f"{phase}: {state['state']} in {seconds:.1f} s ({waves} waves)", flush=True)
        if state["state"] != "done":
            raise SystemExit(f"the {phase} job failed: {state['error']}")
        times[phase] = seconds
        server.should_exit = True
        thread.join(timeout=30)

    errors = [r for r in results if r["status"] != 200]
    kinds = sorted({r["kind"] for r in results})
    lines = [
        "## The HTTP door under load",
        "",
        f"`python benchmarks/serve.py --organism {args.organism} --requests {args.requests}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. uvicorn on 127.0.0.1; an investigation job (small "
        f"`{args.organism}`, index cached by a warm-up run) runs while waves of "
        f"{args.requests} read requests are sent at once (every 4th a `lens.logit` call on the "
        "model, the rest ledger / proposals / job status); a wave every 5 s until the "
        "job ends. Slowdown = the job's wall time under load / alone (fresh workspaces).",
        "",
        f"**{len(results)} requests, {len(errors)} errors; the job completed; alone "
        f"{times['alone']:.1f} s, under load {times['loaded']:.1f} s: slowdown "
        f"{times['loaded'] / times['alone']:.2f}x.**",
        "",
        "| request | count | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for kind in [*kinds, "all"]:
        secs = [r["seconds"] * 1000 for r in results if kind in ("all", r["kind"])]
        lines.append(
            f"| {kind} | {len(secs)} | {fmt(statistics.median(secs))} | {fmt(pct(secs, 0.95))} "
            f"| {fmt(max(secs))} |"
        )
    publish("serve", lines)


if __name__ == "__main__":
    main()
