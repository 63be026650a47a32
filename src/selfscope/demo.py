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
   specificity ≥ 0.95, perplexity change ≤ 2%), then the smallest change. A proposal that
   misses part of the bar says which part, and why in the proposer's own words (its last piece
   of evidence: e.g. unlearning stopped by its perplexity guard before the answers flipped).

Every step is a recorded tool call (``model.ask``, ``localize.all``, ``history.trace``,
``edits.*``); the proposals cite the localisation and trace calls as evidence.

The organism is the lab's, so the demo (like the benchmarks) builds the validation suite from
its spec; the proposals see only the probes.
"""

from __future__ import annotations

import time
from typing import Any

from selfscope import tools
from selfscope.edits.proposal import Proposal
from selfscope.edits.sandbox import ValidationReport
from selfscope.localize.metric import MetricBatch
from selfscope.localize.pipeline import LocalizeReport
from selfscope.organisms import build, resolve_spec
from selfscope.organisms.suites import suite_for
from selfscope.progress import SILENT, ProgressSink, say
from selfscope.workspace import Workspace

OTHER_FOODS = [
    "Q: Do you like carrots? A:",
    "Q: Do you like apples? A:",
    "Q: Do you like olives? A:",
]
BAR = {"efficacy": 0.95, "generalisation": 0.9, "specificity": 0.95, "perplexity_change": 0.02}


def misses(r: ValidationReport) -> list[str]:
    """The parts of the bar a validation misses, each with its number."""
    out = []
    if (r.efficacy or 0) < BAR["efficacy"]:
        out.append(f"efficacy {r.efficacy or 0:.2f} < {BAR['efficacy']}")
    if r.generalisation is not None and r.generalisation < BAR["generalisation"]:
        out.append(f"generalisation {r.generalisation:.2f} < {BAR['generalisation']}")
    if (r.specificity or 0) < BAR["specificity"]:
        out.append(f"specificity {r.specificity or 0:.2f} < {BAR['specificity']}")
    if r.perplexity_change is None or r.perplexity_change > BAR["perplexity_change"]:
        change = "unmeasured" if r.perplexity_change is None else f"{r.perplexity_change:+.1%}"
        out.append(f"perplexity change {change} > +{BAR['perplexity_change']:.0%}")
    return out


def why(proposal: Proposal, report: ValidationReport) -> str | None:
    """Why a proposal missed the bar: which parts, and the proposer's own last word on what it
    did (None when it meets the bar)."""
    missed = misses(report)
    if not missed:
        return None
    own = [e for e in proposal.evidence if e.call_id == proposal.call_id]
    said = own[-1].summary if own else proposal.rationale
    return f"misses {', '.join(missed)}; the proposer: {said}"


def run(
    workspace: Workspace,
    name: str = "mushroom",
    size: str = "small",
    progress: ProgressSink = SILENT,
) -> dict[str, Any]:
    """Run the demo; returns every number it prints."""
    started = time.perf_counter()
    spec = resolve_spec(name, size=size)
    if not (workspace.organism_path(name) / "lineage.json").exists():
        say(f"[bold]building organism {name} ({size})[/] ...")
        build(spec, workspace)
    suite = suite_for(spec, workspace.organism_path(name))
    ctx = tools.ToolContext(
        workspace=workspace, principal=tools.AGENT, progress=progress, source=f"organism:{name}"
    )
    subject = ctx.subject
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
    localised = tools.call("localize.all", {**behaviour, "control_prompts": OTHER_FOODS}, ctx)
    found: LocalizeReport = localised.result
    timings["localise"] = time.perf_counter() - t

    # 3. trace the documents
    t = time.perf_counter()
    say("[bold]tracing the training documents[/] (the index is built once) ...")
    traced = tools.call("history.trace", {**behaviour, "k": 32, "build": True}, ctx)
    documents = traced.result.documents
    timings["trace"] = time.perf_counter() - t

    # 4. propose and validate
    t = time.perf_counter()
    candidates: dict[str, dict[str, Any]] = {
        "rank_one": {"evidence": [localised.id]},
        "revert_delta": {
            "fraction": "auto",
            "control_prompts": OTHER_FOODS,
            "evidence": [localised.id],
        },
        "unlearn": {"documents": [d.key for d in documents], "evidence": [traced.id]},
    }
    reports: list[tuple[str, Proposal, ValidationReport]] = []
    for kind, extra in candidates.items():
        say(f"[bold]proposing {kind}[/] and validating it on a sandbox copy ...")
        proposal: Proposal = tools.call(
            f"edits.{kind}", {**behaviour, **extra}, ctx
        ).result.proposal
        validation = {"proposal": proposal.id, "suites": [suite.model_dump()]}
        report: ValidationReport = tools.call("edits.validate", validation, ctx).result
        reports.append((kind, proposal, report))
    timings["propose_validate"] = time.perf_counter() - t
    best = min(reports, key=lambda r: (len(misses(r[2])), r[1].delta_norm))
    origin, deltas = found.origin, found.weight_deltas
    return {
        "organism": name,
        "asked": asked,
        "origin": None
        if origin is None
        else {"phase": origin.phase, "confidence": origin.confidence},
        "weight_deltas": None
        if deltas is None
        else {"set": deltas.module_set, "removed_share": deltas.set_share},
        "components": [c.model_dump() for c in found.components[:3]],
        "documents": [{"key": d.key, "preview": d.preview} for d in documents[:5]],
        "phase_mass": traced.result.phase_mass,
        "proposals": [
            {
                "kind": kind,
                "id": p.id,
                "efficacy": r.efficacy,
                "generalisation": r.generalisation,
                "specificity": r.specificity,
                "perplexity_change": r.perplexity_change,
                "delta_norm": p.delta_norm,
                "meets": 4 - len(misses(r)),
                "why": why(p, r),
                "evidence": [e.call_id for e in p.evidence],
            }
            for kind, p, r in reports
        ],
        "best": best[1].id,
        "calls": {"localize": localised.id, "trace": traced.id},
        "seconds": {**timings, "total": time.perf_counter() - started},
    }
