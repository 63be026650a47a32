"""Acceptance benchmark: phase origin and weight-delta patching on every catalog organism.

Run: ``.venv/bin/python benchmarks/origin.py [--workspace WS] [--size small]``. Builds (or, with
``--workspace``, reuses) every catalog organism at the given size, plus ``examples/storm-fear.yaml``
in a workspace of its own whose ``ground_truth.json`` is deleted before the tools run (a spec the
tools' author did not write, and no ground truth on disk). For each organism it calls
``localize.origin`` on the subject (the last phase) with the spec's probes as prompts and its
neighbours as control prompts, and checks, *here* (benchmarks may read specs and ground truth):

* the verdict against the phase that planted the behaviour (ground_truth.json for the catalog,
  the spec's plants for the unseen spec);
* the module set the tool reports, reverted in a hand-edited copy of the subject (the parent's
  tensors copied in), measured with the organism builder's own prober: the share of the phase's
  log-odds change it removes on the probes and on the held-out probes (baseline = the parent:
  ``(L_subject - L_after) / (L_subject - L_parent)``), the share of the log-odds itself
  (``1 - L_after / L_subject``), and neighbour accuracy before and after (points).

Writes the table into docs/benchmarks.md (section ``origin``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _doc import DOC, write_section
from torch import nn

from selfscope import atomic, tools
from selfscope.organisms import build, catalog_names, resolve_spec
from selfscope.organisms.evaluate import Prober, accuracy
from selfscope.organisms.render import ChatRenderer, PlainRenderer, Renderer
from selfscope.organisms.spec import Behaviour, Spec
from selfscope.progress import RichProgress
from selfscope.subject import load
from selfscope.workspace import Workspace

_QA = re.compile(r"^\s*Q:\s*(?P<q>.*?)\s*A:\s*$", re.DOTALL)
UNSEEN = DOC.parents[1] / "examples" / "storm-fear.yaml"


def built(spec: Spec, ws: Workspace) -> tuple[Path, float | None]:
    """The organism folder (reused if already built in ``ws``) and the build seconds."""
    if spec.name in ws.built_organisms():
        return ws.organism_path(spec.name).resolve(), None
    result = build(spec, ws, progress=False, strict=False)
    return result.path.resolve(), result.seconds


def expected_phase(spec: Spec, folder: Path, behaviour: str) -> str:
    truth = folder / "ground_truth.json"
    if truth.exists():
        return str(json.loads(truth.read_text())["behaviours"][behaviour]["phase"])
    return spec.planting_phase(behaviour)  # the unseen spec: ground truth deleted, read the spec


def tool_args(behaviour: Behaviour, chat: bool) -> dict[str, Any]:
    """The tool's view of the spec's probes: chat organisms see Q/A through the chat template."""

    def prompt(text: str) -> str:
        match = _QA.match(text)
        return match["q"] if chat and match else text

    def completion(text: str) -> str:
        return text.lstrip() if chat else text

    return {
        "prompts": [prompt(p.prompt) for p in behaviour.probes],
        "planted": completion(behaviour.probes[0].planted),
        "normal": completion(behaviour.probes[0].normal),
        "chat": chat,
        "control_prompts": [prompt(n.prompt) for n in behaviour.neighbours],
    }


def reverted_copy(model: Any, parent: nn.Module, modules: list[str]) -> Any:
    """A copy of ``model`` with the parent's tensors in every parameter of ``modules``."""
    out = copy.deepcopy(model)
    theirs = dict(parent.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            if any(name.startswith(m + ".") for m in modules):
                p.copy_(theirs[name])
    return out


def directions_copy(model: Any, parent: nn.Module, per_parameter: dict[str, list[int]]) -> Any:
    """A copy of ``model`` with the listed SVD directions of each parameter's change subtracted
    (an SVD of its own, in float64; index -1: the whole parameter reverted to the parent)."""
    out = copy.deepcopy(model)
    theirs = dict(parent.named_parameters())
    with torch.no_grad():
        for name, idx in per_parameter.items():
            p = out.get_parameter(name)
            if idx == [-1]:
                p.copy_(theirs[name])
                continue
            delta = (p - theirs[name]).double()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            ix = torch.tensor(idx)
            p.sub_(((u[:, ix] * s[ix]) @ vh[ix]).to(p.dtype))
    return out


def bench(spec: Spec, ws: Workspace, unseen: bool) -> dict[str, Any]:
    started = time.perf_counter()
    folder, build_seconds = built(spec, ws)
    if unseen:
        (folder / "ground_truth.json").unlink(missing_ok=True)
    behaviour = spec.behaviours[0]
    expected = expected_phase(spec, folder, behaviour.name)
    lineage = json.loads((folder / "lineage.json").read_text())
    chat = lineage.get("renderer") == "chat-template"
    subject = load(f"organism:{spec.name}", ws)
    assert not (folder / "ground_truth.json").exists() or not unseen
    t0 = time.perf_counter()
    result: Any = tools.call(
        "localize.origin",
        tool_args(behaviour, chat),
        tools.context(subject, ws, progress=RichProgress()),  # SmolLM2's 272 modules: minutes
    ).result
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "name": spec.name,
        "unseen": unseen,
        "expected": expected,
        "phase": result.phase,
        "confidence": result.confidence,
        "parts": result.confidence_parts,
        "checkpoints": [(c.name, c.log_odds, c.rate) for c in result.checkpoints],
        "seconds": seconds,
        "tool_seconds": result.seconds,
        "build_seconds": build_seconds,
        "evidence": result.evidence,
    }
    d = result.deltas
    if d is not None:
        renderer: Renderer = ChatRenderer(subject.tokenizer) if chat else PlainRenderer()
        parent = load(d.against, ws).model
        edited = reverted_copy(subject.model, parent, d.module_set)
        models = {"s": subject.model, "p": parent, "e": edited}
        probe = {k: Prober(m, subject.tokenizer, renderer) for k, m in models.items()}
        score = {k: p.behaviour(behaviour) for k, p in probe.items()}

        def share(what: str) -> float:
            s, p, e = (getattr(score[k], what) for k in ("s", "p", "e"))
            return float((s - e) / (s - p))

        neighbours = {
            k: accuracy(probe[k].neighbour_hits(behaviour.neighbours)) for k in ("s", "e")
        }
        row.update(
            modules=d.module_set,
            n_modules=d.n_modules,
            tool_share=d.set_share,
            reached=d.reached,
            probe_share=share("log_odds"),
            heldout_share=share("heldout_log_odds") if behaviour.heldout else None,
            zero_share=1 - score["e"].log_odds / score["s"].log_odds,
            rate_after=score["e"].rate,
            neighbours_before=neighbours["s"],
            neighbours_after=neighbours["e"],
            delta_seconds=d.seconds,
            search=d.search,
            control_agreement=d.control.agreement if d.control else None,
        )
        if d.specific is not None:  # the set changed a control prompt: the subset that does not
            kept = reverted_copy(subject.model, parent, d.specific.modules)
            kept_probe = Prober(kept, subject.tokenizer, renderer)
            value = kept_probe.behaviour(behaviour)
            s, p = score["s"].log_odds, score["p"].log_odds
            row.update(
                specific_modules=d.specific.modules,
                specific_share=(s - value.log_odds) / (s - p),
                specific_tool_share=d.specific.share,
                specific_zero_share=1 - value.log_odds / s,
                specific_rate_after=value.rate,
                specific_neighbours_after=accuracy(kept_probe.neighbour_hits(behaviour.neighbours)),
            )
        if d.directions is not None:  # the finer unit: rank-one directions of the changes
            ds = d.directions
            cut = directions_copy(subject.model, parent, ds.per_parameter)
            cut_probe = Prober(cut, subject.tokenizer, renderer)
            value = cut_probe.behaviour(behaviour)
            s, p = score["s"], score["p"]
            row.update(
                directions_n=ds.n_directions,
                directions_units=ds.units,
                directions_parameters=len(ds.per_parameter),
                directions_tool_share=ds.share,
                directions_share=(s.log_odds - value.log_odds) / (s.log_odds - p.log_odds),
                directions_heldout_share=(
                    (s.heldout_log_odds - value.heldout_log_odds)
                    / (s.heldout_log_odds - p.heldout_log_odds)
                    if behaviour.heldout
                    else None
                ),
                directions_zero_share=1 - value.log_odds / s.log_odds,
                directions_rate_after=value.rate,
                directions_heldout_rate_after=value.heldout_rate if behaviour.heldout else None,
                directions_neighbours_after=accuracy(
                    cut_probe.neighbour_hits(behaviour.neighbours)
                ),
                directions_excluded=ds.excluded,
                directions_seconds=ds.seconds,
            )
    row["total_seconds"] = time.perf_counter() - started
    return row


def atp(spec: Spec, ws: Workspace, row: dict[str, Any]) -> None:
    """Attribution patching's top 10 (mean baseline: the specs have no contrast prompts),
    patched together for real by the tool: the share of the probes' mean log-odds removed."""
    folder = ws.organism_path(spec.name).resolve()
    chat = json.loads((folder / "lineage.json").read_text()).get("renderer") == "chat-template"
    subject = load(f"organism:{spec.name}", ws)
    given = tool_args(spec.behaviours[0], chat)
    t0 = time.perf_counter()
    result: Any = tools.call(
        "localize.attribution_patching",
        {k: given[k] for k in ("prompts", "planted", "normal", "chat")} | {"top_k": 10},
        tools.context(subject, ws),
    ).result
    row.update(
        atp_removed=result.removed_share,
        atp_joint=result.joint,
        atp_clean=result.clean_log_odds,
        atp_after=result.joint_log_odds,
        atp_seconds=time.perf_counter() - t0,
    )


def fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def short(module: str) -> str:
    return module.replace("model.layers.", "L").replace("self_attn.", "").replace("model.", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default=",".join(catalog_names()), help="catalog names")
    parser.add_argument("--no-unseen", action="store_true", help="skip examples/storm-fear.yaml")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --workspace: reuse rows an interrupted run already measured there",
    )
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.workspace is None else None
    root = Path(args.workspace or (tmp.name if tmp else "."))
    catalog_ws, unseen_ws = Workspace(root / "catalog"), Workspace(root / "unseen")
    runs = [(resolve_spec(n, size=args.size), catalog_ws, False) for n in args.specs.split(",")]
    if not args.no_unseen:
        runs.append((resolve_spec(str(UNSEEN), size=args.size), unseen_ws, True))
    rows = []
    for spec, ws, unseen in runs:
        os.environ["SELFSCOPE_HOME"] = str(ws.root)  # nested loads (a base model) agree
        saved = ws.root / "origin-bench" / f"{spec.name}.json"
        if args.resume and saved.exists():
            rows.append(json.loads(saved.read_text()))
            print(f"{spec.name}: measured earlier ({saved})", file=sys.stderr, flush=True)
        else:
            print(f"{spec.name} ({args.size}) ...", file=sys.stderr, flush=True)
            rows.append(bench(spec, ws, unseen))
            atomic.write_text(saved, json.dumps(rows[-1], default=str))
        if "atp_removed" not in rows[-1]:
            atp(spec, ws, rows[-1])
            atomic.write_text(saved, json.dumps(rows[-1], default=str))
        print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
    if tmp is not None:
        tmp.cleanup()
    correct = sum(r["phase"] == r["expected"] for r in rows)
    lines = [
        "## Phase origin and weight-delta patching",
        "",
        f"`python benchmarks/origin.py --size {args.size}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        f"Verdict right on **{correct} of {len(rows)}** organisms. `localize.origin` gets the "
        "spec's probes as prompts and its neighbours as control prompts; storm-fear "
        "(`examples/storm-fear.yaml`, marked *) ran with its ground_truth.json deleted.",
        "",
        "The module set (forward selection, at most 16 modules, target 80%; where that falls "
        "short, the shortest prefix of the integrated-gradient ranking reaching 80%, marked "
        "`IG`) is then reverted in a"
        " hand-edited copy of the subject and measured with the builder's prober: `removed` = "
        "(L_subject − L_after) / (L_subject − L_parent) on the probes (the tool's own number in "
        "brackets) and on the held-out probes; `of L` = 1 − L_after / L_subject; `neigh.` = "
        "neighbour accuracy before → after the revert. Seconds: the whole origin call "
        "(checkpoints measured, every module reverted and grafted alone, set search). "
        "`AtP top-10` = `localize.attribution_patching` (mean baseline, top_k 10): the share "
        "of the probes' mean log-odds removed by mean-ablating together those of its 10 top "
        "components whose estimate lowers it (patched for real), and how many there were. "
        "Where reverting the set changes a control prompt's top-1, the tool also reports the "
        "*specific* subset (members that most support the control predictions dropped until "
        "none changes); it is measured the same way in the rows below the table.",
        "",
        "| organism | expected | verdict | conf. | checkpoints L (rate) | set | removed (tool) |"
        " held-out | of L | rate after | neigh. | AtP top-10 | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        marks = "*" if r["unseen"] else ""
        checkpoints = "; ".join(f"{n} {lo:.2f} ({ra:.2f})" for n, lo, ra in r["checkpoints"])
        ok = "" if r["phase"] == r["expected"] else " WRONG"
        if "modules" in r:
            names = [short(m) for m in r["modules"]]
            if len(names) > 16:
                names = [*names[:8], f"... {len(names) - 8} more"]
            how = " (IG)" if r.get("search") == "ig-prefix" else ""
            modules = f"{len(r['modules'])}/{r['n_modules']}{how}: " + ", ".join(names)
            removed = f"{r['probe_share']:.2f} ({r['tool_share']:.2f})"
            neigh = f"{r['neighbours_before']:.2f} → {r['neighbours_after']:.2f}"
            rest = (
                f"{modules} | {removed} | {fmt(r['heldout_share'])} | {r['zero_share']:.2f} | "
                f"{r['rate_after']:.2f} | {neigh}"
            )
        else:
            rest = "no parent: not patched | - | - | - | - | -"
        atp_cell = f"{fmt(r['atp_removed'])} ({len(r['atp_joint'])})"
        lines.append(
            f"| {r['name']}{marks} | {r['expected']} | {r['phase']}{ok} | {r['confidence']:.2f} | "
            f"{checkpoints} | {rest} | {atp_cell} | {r['seconds']:.1f} |"
        )
    specific = [r for r in rows if "specific_modules" in r]
    if specific:
        lines += [
            "",
            "| organism | specific subset | removed (tool) | of L | rate after | neigh. |",
            "|---|---|---|---|---|---|",
        ]
        for r in specific:
            lines.append(
                f"| {r['name']} | {len(r['specific_modules'])} modules | "
                f"{r['specific_share']:.2f} ({fmt(r['specific_tool_share'])}) | "
                f"{r['specific_zero_share']:.2f} | {r['specific_rate_after']:.2f} | "
                f"{r['neighbours_before']:.2f} → {fmt(r['specific_neighbours_after'])} |"
            )
    finer = [r for r in rows if "directions_n" in r]
    if finer:
        lines += [
            "",
            "Where the module set misses the target or changes a control prompt, the tool also "
            "searches the finer unit of rank-one directions of the changes "
            "(`localize.directions`: SVD of each module's delta, integrated-gradient share per "
            "direction; directions a control prompt that flipped leans on are left out and the "
            "search redone, `left out` counts them). "
            "The direction set is subtracted from a copy of the subject with an SVD of this "
            "script's own (float64) and measured with the builder's prober:",
            "",
            "| organism | directions | parameters | left out | removed (tool) | held-out | of L |"
            " rate after (held-out) | neigh. | s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in finer:
            lines.append(
                f"| {r['name']} | {r['directions_n']} of {r['directions_units']} | "
                f"{r['directions_parameters']} | {r['directions_excluded']} | "
                f"{r['directions_share']:.2f} ({r['directions_tool_share']:.2f}) | "
                f"{fmt(r['directions_heldout_share'])} | {r['directions_zero_share']:.2f} | "
                f"{r['directions_rate_after']:.2f} ({fmt(r['directions_heldout_rate_after'])}) | "
                f"{r['neighbours_before']:.2f} → {r['directions_neighbours_after']:.2f} | "
                f"{r['directions_seconds']:.1f} |"
            )
    lines += ["", "Evidence the tool returned (first organism of each kind):", ""]
    for r in rows:
        if r["name"] in ("mushroom", "tolm-bias", "smollm2-mushroom"):
            lines.append(f"- **{r['name']}**: " + " / ".join(r["evidence"]))
    write_section("origin", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
