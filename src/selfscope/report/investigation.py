"""An investigation's report: ``report.md`` and a self-contained ``report.html`` (inline SVG
figures, inline CSS, no scripts, nothing fetched), written atomically beside its journal.

Figures (each an ``<svg data-figure=...>``; a figure with nothing to draw is replaced by a line
saying why): the causal trace of the first prompt (restoring each site of the clean run into
one with the subject noised: a heatmap of positions × layers per kind), the top documents by
phase for gradient retrieval beside BM25, the mean log-odds before / after each proposal on a
sandbox copy, the behaviour at each checkpoint of the lineage, retrieval's phase mass, the
verified components' patched effects, the weight-delta modules' revert shares, and the
proposals' efficacy / generalisation / specificity on the gate's suites. Tables: the diagnosis
(claim, effect, measure, confidence, calls), what was not found, the top documents by gradient
retrieval beside BM25's, and the proposals' checks.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from selfscope import atomic
from selfscope.report.bars import bars_svg

CSS = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}th{background:#f2f2f2}"
    "figure{margin:1em 0}.none{color:#777;font-style:italic}code{font-size:12px}"
)


def _chart(name: str, title: str, pairs: list[tuple[str, float]]) -> str | None:
    """A bar chart of ``(label, value)`` pairs, or ``None`` when there is nothing to draw."""
    if not pairs:
        return None
    return bars_svg(name, title, [p[0] for p in pairs], [p[1] for p in pairs])


def _tagged(name: str, svg: str | None) -> str | None:
    """An SVG made elsewhere (the causal trace's heatmaps), tagged with its figure name."""
    if not svg or "<svg" not in svg:
        return None
    return svg.replace("<svg", f'<svg data-figure="{name}"', 1)


def _kind(proposal: dict[str, Any]) -> str:
    """A proposal's kind, with the memory a rank-one edit rewrote when it is not the default."""
    matrix = proposal.get("matrix")
    return f"{proposal['kind']} ({matrix})" if matrix else str(proposal["kind"])


def figures(result: dict[str, Any]) -> dict[str, str | None]:
    """Each figure's SVG, or ``None`` when there is nothing to draw."""
    mass = (result.get("origin") or {}).get("phase_mass") or {}
    comps = [c for c in result.get("components", []) if c.get("measured") is not None][:10]
    deltas = [d for d in result.get("weight_deltas", []) if d.get("share") is not None][:10]
    rows = []
    for p in result.get("proposals", []):
        checks = {c["name"]: c.get("value") for c in (p.get("validation") or {}).get("checks", [])}
        for metric in ("efficacy", "generalisation", "specificity"):
            if checks.get(metric) is not None:
                rows.append((f"{_kind(p)} {metric}", float(checks[metric])))
    by_phase: list[tuple[str, float]] = []
    for label, items in (
        ("retrieval", result.get("documents", [])),
        ("BM25", result.get("bm25", [])),
    ):
        phases = [d["phase"] for d in items]
        by_phase += [(f"{label}: {ph}", float(phases.count(ph))) for ph in dict.fromkeys(phases)]
    before_after: list[tuple[str, float]] = []
    for p in result.get("proposals", []):
        visible = ((p.get("validation") or {}).get("visible") or [None])[0]
        measured = (visible or {}).get("probes")
        if measured:
            before_after.append((f"{_kind(p)} before", measured["log_odds_before"]))
            before_after.append((f"{_kind(p)} after", measured["log_odds_after"]))
    trace = result.get("trace") or {}
    cues = result.get("cues") or {}
    deleted = [("(no word deleted)", cues["log_odds"])] if cues else []
    deleted += [(f"without {w['word']!r}", w["log_odds"]) for w in cues.get("words", [])]
    return {
        "trace": _tagged("trace", trace.get("figure")),
        "cues": _chart(
            "cues",
            "The cue scan: mean log-odds on the first prompt with each word deleted "
            "(below 0: the desired answer wins)",
            deleted,
        ),
        "documents_by_phase": _chart(
            "documents_by_phase",
            "Top documents by phase: gradient retrieval beside BM25 (count of the top 10)",
            by_phase,
        ),
        "before_after": _chart(
            "before_after",
            "Before / after each proposal: mean log-odds on the prompts (sandbox copy)",
            before_after,
        ),
        "checkpoints": _chart(
            "checkpoints",
            "Behaviour at each checkpoint (mean log-odds)",
            [(c["name"], c["log_odds"]) for c in result.get("checkpoints") or []],
        ),
        "phase_mass": _chart(
            "phase_mass",
            "Retrieval's phase mass (share of the top documents' score)",
            list(mass.items()),
        ),
        "components": _chart(
            "components",
            "Components: effect of patching each (change in log-odds)",
            [
                (c["site"] + ("" if c["verified"] else " (not verified)"), c["measured"])
                for c in comps
            ],
        ),
        "weight_deltas": _chart(
            "weight_deltas",
            "Weight deltas: share removed by reverting each module alone",
            [(d["module"], d["share"]) for d in deltas],
        ),
        "proposals": _chart(
            "proposals", "Proposals on the gate's suites (visible + sealed, worst suite)", rows
        ),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else " ".join(str(value).split())  # one line per table cell


def _table_md(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _table_html(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _sections(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, headers, rows) of every table."""
    diag = [
        [d["claim"], d["effect"], d["measure"], d["confidence"], d["evidence"]]
        for d in result.get("diagnosis", [])
    ]
    docs = result.get("documents", [])
    bm25 = result.get("bm25", [])
    side = [
        [
            docs[i]["id"] if i < len(docs) else "",
            docs[i]["score"] if i < len(docs) else "",
            docs[i]["preview"] if i < len(docs) else "",
            bm25[i]["id"] if i < len(bm25) else "",
            bm25[i]["preview"] if i < len(bm25) else "",
        ]
        for i in range(max(len(docs), len(bm25)))
    ]
    props = [
        [
            _kind(p),
            p.get("id") or "-",
            p.get("status") or "skipped",
            p.get("why") or p.get("skipped") or "passed every check",
        ]
        for p in result.get("proposals", [])
    ]
    return [
        ("Diagnosis", ["claim", "effect", "measure", "confidence", "calls"], diag),
        ("Not found or not confirmed", ["finding"], [[n] for n in result.get("not_found", [])]),
        (
            "Top documents of the origin phase (gradient retrieval) beside BM25's",
            ["retrieval", "score", "text", "BM25", "text"],
            side,
        ),
        ("Proposals (validated through the gate)", ["kind", "id", "status", "why"], props),
    ]


def _intro(result: dict[str, Any]) -> list[str]:
    s, m, o = result["symptom"], result["metric"], result.get("origin") or {}
    submitted = result.get("submitted")
    return [
        f"Model `{result['model']}`; prompts: {', '.join(repr(p) for p in s['prompts'])}.",
        f"Observed {s['observed']!r}, desired {s['desired']!r}: mean log-odds "
        f"{m['log_odds']:.2f}, rate {m['rate']:.2f}.",
        f"Origin: {o.get('phase') or 'not found'}"
        + (f" (confidence {o['confidence']:.2f}, by {o['by']})" if o.get("confidence") else ""),
        "Submitted for approval: "
        + (f"proposal `{submitted}`" if submitted else "nothing (no proposal passed the gate)")
        + ". Nothing was applied.",
    ]


def write(folder: Path, result: dict[str, Any]) -> dict[str, str]:
    """Write ``report.md`` and ``report.html`` into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    figs = figures(result)
    title = f"Investigation {result['investigation']}"
    md = [f"# {title}", "", *[f"- {line}" for line in _intro(result)], ""]
    html = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1><ul>",
        *[f"<li>{escape(line)}</li>" for line in _intro(result)],
        "</ul><h2>Figures</h2>",
    ]
    for name, svg in figs.items():
        if svg is None:
            html.append(f"<p class='none'>{escape(name)}: nothing to draw</p>")
        else:
            html.append(f"<figure>{svg}</figure>")
    md.append("Figures: see report.html (" + ", ".join(n for n, s in figs.items() if s) + ").")
    for heading, headers, rows in _sections(result):
        md += ["", f"## {heading}", "", _table_md(headers, rows) if rows else "_none_"]
        html.append(f"<h2>{escape(heading)}</h2>")
        html.append(_table_html(headers, rows) if rows else "<p class='none'>none</p>")
    html.append("</body></html>")
    paths = {"markdown": str(folder / "report.md"), "html": str(folder / "report.html")}
    atomic.write_text(paths["markdown"], "\n".join(md) + "\n")
    atomic.write_text(paths["html"], "\n".join(html) + "\n")
    return paths
