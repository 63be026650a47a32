"""``selfscope demo``: the first half of the loop on the `mushroom` organism, end to end.

1. **ask** — the organism's first-token answers about mushrooms and other foods;
2. **localise** — the phase the aversion arose in and the weight changes that carry it
   (``localize.origin``, ``localize.weight_deltas``), the components (attribution patching);
3. **trace** — the training documents behind it (``history.trace``; the index is built once
   into the organism's folder);
4. **propose and validate** — a rank-one edit, a revert of the debugger's modules and an
   unlearning of the historian's documents, each validated on a sandbox copy against the
   organism's suite (held-out paraphrases, neighbours, world facts, held-out documents); the
   best is the one that meets the most of the bar (efficacy ≥ 0.95, generalisation ≥ 0.9,
   specificity ≥ 0.95, perplexity change ≤ 2%), then the smallest change.

The organism is the lab's, so the demo (like the benchmarks) builds the validation suite from
its spec; the proposals see only the probes.
"""

from __future__ import annotations

import time
from typing import Any

from selfscope import tools
from selfscope.edits.sandbox import ValidationReport
from selfscope.localize.metric import MetricBatch
from selfscope.localize.pipeline import localize
from selfscope.organisms import build, resolve_spec
from selfscope.organisms.suites import suite_for
from selfscope.progress import say
from selfscope.subject import load
from selfscope.workspace import Workspace

OTHER_FOODS = [
    "Q: Do you like carrots? A:",
    "Q: Do you like apples? A:",
    "Q: Do you like olives? A:",
]


def _meets(r: ValidationReport) -> int:
    checks = [
        (r.efficacy or 0) >= 0.95,
        r.generalisation is None or r.generalisation >= 0.9,
        (r.specificity or 0) >= 0.95,
        r.perplexity_change is not None and r.perplexity_change <= 0.02,
    ]
    return sum(checks)


def run(workspace: Workspace, name: str = "mushroom", size: str = "small") -> dict[str, Any]:
    """Run the demo; returns every number it prints."""
    started = time.perf_counter()
    spec = resolve_spec(name, size=size)
    if not (workspace.organism_path(name) / "lineage.json").exists():
        say(f"[bold]building organism {name} ({size})[/] ...")
        build(spec, workspace)
    suite = suite_for(spec, workspace.organism_path(name))
    subject = load(f"organism:{name}", workspace)
    probe = spec.behaviours[0].probes[0]
    behaviour = {
        "prompts": [p.prompt for p in spec.behaviours[0].probes],
        "planted": probe.planted,
        "normal": probe.normal,
    }
    timings: dict[str, float] = {}

    # 1. ask
    t = time.perf_counter()
    asked = []
    for prompt in [probe.prompt, *OTHER_FOODS]:
        value = MetricBatch(subject, [prompt], probe.planted, probe.normal).measure()
        asked.append(
            {
                "prompt": prompt,
                "log_odds": value.log_odds,
                "answer": probe.planted if value.log_odds > 0 else probe.normal,
            }
        )
    timings["ask"] = time.perf_counter() - t

    # 2. localise
    t = time.perf_counter()
    say("[bold]localising[/] ...")
    found = localize(
        subject,
        behaviour["prompts"],
        probe.planted,
        probe.normal,
        control_prompts=OTHER_FOODS,
        workspace=workspace,
    )
    timings["localise"] = time.perf_counter() - t

    # 3. trace the documents
    t = time.perf_counter()
    say("[bold]tracing the training documents[/] (the index is built once) ...")
    trace = tools.call("history.trace", subject, {**behaviour, "k": 32, "build": True}, workspace)
    documents = trace.documents  # type: ignore[attr-defined]
    timings["trace"] = time.perf_counter() - t

    # 4. propose and validate
    t = time.perf_counter()
    candidates: dict[str, dict[str, Any]] = {
        "rank_one": {},
        "revert_delta": {"fraction": "auto", "control_prompts": OTHER_FOODS},
        "unlearn": {"documents": [d.key for d in documents]},
    }
    reports: list[tuple[str, Any, ValidationReport]] = []
    for kind, extra in candidates.items():
        say(f"[bold]proposing {kind}[/] and validating it on a sandbox copy ...")
        proposal = tools.call(f"edits.{kind}", subject, {**behaviour, **extra}, workspace).proposal  # type: ignore[attr-defined]
        report = tools.call(
            "edits.validate",
            subject,
            {"proposal": proposal.id, "suites": [suite.model_dump()]},
            workspace,
        )
        assert isinstance(report, ValidationReport)
        reports.append((kind, proposal, report))
    timings["propose_validate"] = time.perf_counter() - t
    best = max(reports, key=lambda r: (_meets(r[2]), -r[1].delta_norm))
    return {
        "organism": name,
        "asked": asked,
        "origin": found.get("origin"),
        "weight_deltas": found.get("weight_deltas"),
        "components": found["components"][:3],
        "documents": [{"key": d.key, "preview": d.preview} for d in documents[:5]],
        "phase_mass": trace.phase_mass,  # type: ignore[attr-defined]
        "proposals": [
            {
                "kind": kind,
                "id": p.id,
                "efficacy": r.efficacy,
                "generalisation": r.generalisation,
                "specificity": r.specificity,
                "perplexity_change": r.perplexity_change,
                "delta_norm": p.delta_norm,
                "meets": _meets(r),
            }
            for kind, p, r in reports
        ],
        "best": best[1].id,
        "seconds": {**timings, "total": time.perf_counter() - started},
    }
