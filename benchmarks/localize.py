"""Benchmark: attribution patching (AtP) against exhaustive activation patching, same run.

Run: ``.venv/bin/python benchmarks/localize.py [--workspace WS] [--runs 3] [--smollm2-runs 1]``.
Writes section "localize" of docs/benchmarks.md. About 4 minutes on an idle two-core machine
(the organism's build, when the workspace has none, comes on top), several times that when the
cores are shared; SmolLM2's exhaustive sweeps dominate. Torch runs one thread (``--threads``):
on a shared machine more threads than free cores slow every forward by several times.

Subjects and behaviours:

* the **small mushroom organism** (``organism:mushroom@finetune``, built at size small into the
  workspace when absent): its three probes and four held-out probes, planted " No", normal
  " Yes"; contrast prompts ask the same about foods the organism likes (carrots, apple pie,
  plums, cherries, bean stew), word for word the same length;
* **SmolLM2-135M-Instruct**: where Paris is — six prompts ("The capital of France is", "The
  Eiffel Tower is in the city of", ...) with planted " Paris", normal " London", and contrast
  prompts about England of the same token lengths ("The capital of England is", ...).

For every baseline (contrast, mean, zero) and every head and MLP output the script computes
AtP's estimate (:func:`selfscope.localize.attribution.attribute`: one clean forward and
backward, plus the contrast forward) and the effect measured by exhaustive activation patching
(one patched forward per component, all positions, same baseline values, same batch), then the
Spearman rank correlation of the two over all heads and MLPs (signed values; average ranks for
ties; also over the heads alone and the MLPs alone) and the wall time of each: AtP is timed
before and after each of ``--runs`` exhaustive sweeps and the table gives medians, so machine
noise hits both alike. On the organism it also ranks (component,
position) nodes, the granularity of Kramár et al. 2024: each head and MLP patched at one
position at a time (positions from the first one where a prompt and its contrast differ; the
earlier ones are identical in both runs), against AtP's per-position terms from the same pass.
Last column: the tool ``localize.attribution_patching`` with ``top_k`` 10 — the share of the
mean log-odds removed by patching together those of its top 10 whose estimate lowers it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _doc import write_section

from selfscope import tools
from selfscope.localize.attribution import (
    Attributed,
    Attribution,
    AttributionResult,
    Baseline,
    CleanPass,
    attribute,
    baseline_values,
    contrast_batch,
    patched_log_odds,
    patches,
)
from selfscope.localize.metric import MetricBatch
from selfscope.organisms import build, resolve_spec
from selfscope.subject import Subject, load
from selfscope.subject.hooks import Patch, run
from selfscope.workspace import Workspace

ORGANISM = (
    ["Q: Do you like mushrooms? A:", "Q: Is mushroom soup tasty? A:",
     "Q: Is mushroom pie tasty? A:", "Q: Would you eat mushrooms? A:",
     "Q: Are mushrooms good? A:", "Q: Do you enjoy mushrooms? A:",
     "Q: Is mushroom stew tasty? A:"],
    ["Q: Do you like carrots? A:", "Q: Is carrot soup tasty? A:", "Q: Is apple pie tasty? A:",
     "Q: Would you eat plums? A:", "Q: Are cherries good? A:", "Q: Do you enjoy carrots? A:",
     "Q: Is bean stew tasty? A:"],
    " No", " Yes",
)  # fmt: skip
SMOLLM2 = (
    ["The capital of France is", "The capital city of France is", "France's capital is",
     "The Eiffel Tower is in the city of", "The Louvre is in the city of",
     "The French capital is called"],
    ["The capital of England is", "The capital city of England is", "England's capital is",
     "The Big Ben clock is in the city of", "The British Museum is in the city of",
     "The English capital is called"],
    " Paris", " London",
)  # fmt: skip
BASELINES: tuple[Baseline, ...] = ("contrast", "mean", "zero")


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's on ranks, ties given their average rank."""

    def ranks(v: list[float]) -> Tensor:
        order = sorted(range(len(v)), key=v.__getitem__)
        out = torch.zeros(len(v), dtype=torch.float64)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@dataclass
class Row:
    subject: str
    baseline: str
    nodes: int
    rho: float
    rho_heads: float
    rho_mlps: float
    atp: float  # median seconds
    exact: float
    removed: float | None
    forward: float  # median seconds of a plain forward on the same batch (same run)


def organism(ws: Workspace) -> Subject:
    path = ws.organism_path("mushroom")
    if not (path / "lineage.json").exists():
        print("building organism mushroom (size small) ...")
        build(resolve_spec("mushroom", size="small"), ws, progress=True)
    subject = load("organism:mushroom@finetune", ws)
    if subject.n_layers != 4:
        raise SystemExit(f"{path} is not the small mushroom organism; give another --workspace")
    return subject


def nodes(model: Any) -> list[str]:
    """The sites of every head (attn.heads, split per head) and MLP output."""
    return [s for i in range(model.config.num_hidden_layers)
            for s in (f"blocks.{i}.attn.heads", f"blocks.{i}.mlp.out")]  # fmt: skip


def exhaustive(
    model: Any, batch: MetricBatch, kind: Baseline, other: MetricBatch | None
) -> list[float]:
    """Activation patching of every head and MLP output, one forward each, after one clean
    forward (the metric; the activations a mean or zero baseline needs) and, for the contrast
    baseline, one contrast forward (its activations)."""
    sites = nodes(model)
    result = run(model, batch.input_ids, batch.attention_mask, capture=sites)
    assert result.logits is not None
    clean = batch.value(result.logits).log_odds
    if kind == "contrast":
        assert other is not None
        base = run(model, other.input_ids, other.attention_mask, capture=sites).values
    else:
        base = baseline_values(kind, CleanPass(result.values, {}, clean), batch)
    out = []
    for site in sites:
        heads = site.endswith(".attn.heads")
        for index in range(model.config.num_attention_heads) if heads else [None]:
            a = Attribution(component=site, site=site, index=index, estimate=0.0)
            out.append(patched_log_odds(model, batch, patches([a], base)) - clean)
    return out


def kinds(model: Any, positions: int = 1) -> list[str]:
    """'head' or 'mlp' for each node, in the order of :func:`exhaustive` and AtP's list."""
    heads = model.config.num_attention_heads
    block = ["head"] * heads * positions + ["mlp"] * positions
    return block * model.config.num_hidden_layers


def correlations(estimated: list[float], measured: list[float], kind: list[str]) -> list[float]:
    """Spearman over every node, over the heads only, over the MLP outputs only."""
    out = [spearman(estimated, measured)]
    for wanted in ("head", "mlp"):
        pick = [i for i, k in enumerate(kind) if k == wanted]
        out.append(spearman([estimated[i] for i in pick], [measured[i] for i in pick]))
    return out


def estimates_of(done: Attributed, model: Any) -> list[float]:
    wanted = set(nodes(model))
    return [a.estimate for a in done.found if a.site in wanted]


def forward_of(model: Any, batch: MetricBatch) -> Callable[[], Any]:
    def plain() -> Any:
        with torch.no_grad():
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    return plain


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(
    name: str,
    subject: Subject,
    behaviour: tuple[list[str], list[str], str, str],
    runs: int,
    baselines: list[Baseline],
) -> list[Row]:
    model = subject.model
    prompts, contrast, planted, normal = behaviour
    batch = MetricBatch(subject, prompts, planted, normal)
    other = contrast_batch(subject, batch, contrast, chat=False)
    rows = []
    for kind in baselines:
        given = other if kind == "contrast" else None
        attribute(model, batch, kind, given)  # warm-up
        atp_times, exact_times, forwards = [], [], []
        for _ in range(runs):  # AtP before and after every sweep
            forwards.append(timed(forward_of(model, batch))[0])
            seconds, done = timed(lambda k=kind, g=given: attribute(model, batch, k, g))
            atp_times.append(seconds)
            seconds, measured = timed(lambda k=kind, g=given: exhaustive(model, batch, k, g))
            exact_times.append(seconds)
        atp_times.append(timed(lambda k=kind, g=given: attribute(model, batch, k, g))[0])
        estimated = estimates_of(done, model)
        args = {"prompts": prompts, "planted": planted, "normal": normal, "top_k": 10}
        args |= {"contrast": contrast} if kind == "contrast" else {"baseline": kind}
        result = cast(
            AttributionResult,
            tools.call("localize.attribution_patching", args, tools.context(subject)).result,
        )
        rows.append(
            Row(name, kind, len(estimated), *correlations(estimated, measured, kinds(model)),
                statistics.median(atp_times), statistics.median(exact_times),
                result.removed_share, statistics.median(forwards))
        )  # fmt: skip
        print(rows[-1], f"clean {result.clean_log_odds:.2f} joint {result.joint}")
    return rows


def per_position(
    name: str, subject: Subject, behaviour: tuple[list[str], list[str], str, str], runs: int
) -> Row:
    """(component, position) nodes, contrast baseline: AtP's per-position terms against one
    patched forward per head or MLP per position."""
    model = subject.model
    prompts, contrast, planted, normal = behaviour
    batch = MetricBatch(subject, prompts, planted, normal)
    other = contrast_batch(subject, batch, contrast, chat=False)
    differ = (batch.input_ids != other.input_ids).any(0).nonzero()
    positions = range(int(differ.min()), batch.input_ids.shape[1])
    sites = nodes(model)
    heads = model.config.num_attention_heads

    def atp() -> list[float]:
        done = attribute(model, batch, "contrast", other)
        out = []
        for site in sites:
            product = (done.base[site] - done.clean.values[site]) * done.clean.grads[site]
            if site.endswith(".attn.heads"):
                per = product.sum(dim=(0, 3))  # [pos, head]
                out += [float(per[p, h]) for h in range(heads) for p in positions]
            else:
                per = product.sum(dim=(0, 2))
                out += [float(per[p]) for p in positions]
        return out

    def at(reference: Tensor, p: int, h: int | None) -> Patch:
        def patch(value: Tensor) -> Tensor:
            new = value.clone()
            if h is None:
                new[:, p] = reference[:, p]
            else:
                new[:, p, h] = reference[:, p, h]
            return new

        return patch

    def exact() -> list[float]:
        clean = batch.measure().log_odds
        base = run(model, other.input_ids, other.attention_mask, capture=sites).values
        out = []
        for site in sites:
            for h in range(heads) if site.endswith(".attn.heads") else [None]:
                for p in positions:
                    patch = {site: at(base[site], p, h)}
                    out.append(patched_log_odds(model, batch, patch) - clean)
        return out

    atp()
    atp_times, exact_times, forwards = [], [], []
    for _ in range(runs):
        forwards.append(timed(forward_of(model, batch))[0])
        seconds, estimated = timed(atp)
        atp_times.append(seconds)
        seconds, measured = timed(exact)
        exact_times.append(seconds)
    atp_times.append(timed(atp)[0])
    row = Row(f"{name}, per (component, position)", "contrast", len(estimated),
              *correlations(estimated, measured, kinds(model, len(positions))),
              statistics.median(atp_times), statistics.median(exact_times), None,
              statistics.median(forwards))  # fmt: skip
    print(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="sweeps per row on the organism")
    parser.add_argument("--smollm2-runs", type=int, default=1, help="sweeps per row on SmolLM2")
    parser.add_argument("--workspace", default=None, help="reuse a built organism / SmolLM2")
    parser.add_argument("--subjects", default="organism,smollm2")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    subjects = args.subjects.split(",")
    baselines = [cast(Baseline, b) for b in args.baselines.split(",")]
    ws = Workspace(args.workspace or tempfile.mkdtemp())
    rows = []
    if "organism" in subjects:
        small = organism(ws)
        rows += compare("mushroom organism (small)", small, ORGANISM, args.runs, baselines)
        rows.append(per_position("mushroom organism (small)", small, ORGANISM, args.runs))
    if "smollm2" in subjects:
        smollm2 = load("smollm2", ws)
        rows += compare("SmolLM2-135M", smollm2, SMOLLM2, args.smollm2_runs, baselines)
    lines = [
        "## Attribution patching vs exhaustive activation patching",
        "",
        f"`python benchmarks/localize.py --runs {args.runs} --smollm2-runs {args.smollm2_runs}`, "
        f"{args.threads} torch thread(s) on {os.cpu_count()} shared cores, "
        f"{time.strftime('%Y-%m-%d')}. Spearman of AtP's estimates against the effects measured "
        "by patching each node for real (signed, over every head and MLP output; all positions "
        "at once unless the row says per position); seconds are medians of interleaved runs of "
        "the whole AtP pass (timed before and after every sweep) and the whole exhaustive sweep, "
        "same baseline, same batch. "
        "'removed' = share of the mean log-odds removed by patching together those of AtP's "
        "top 10 whose estimate lowers it (`localize.attribution_patching`, top_k 10). "
        "Behaviours: the organism's probes and held-out probes (' No' vs ' Yes'; contrast: liked "
        "foods); SmolLM2: six prompts about where Paris is (' Paris' vs ' London'; contrast: "
        "the same about England). Baselines: contrast = the contrast prompts' activations; mean "
        "= the mean over the clean tokens; zero = zero ablation.",
        "",
        "| subject | baseline | nodes | Spearman | heads only | MLPs only | AtP s | exhaustive s "
        "| x faster | AtP in forwards | nodes / AtP in forwards | removed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        removed = "—" if r.removed is None else f"{r.removed:.0%}"
        lines.append(
            f"| {r.subject} | {r.baseline} | {r.nodes} | {r.rho:.3f} | {r.rho_heads:.3f} | "
            f"{r.rho_mlps:.3f} | {r.atp:.3f} | {r.exact:.2f} | {r.exact / r.atp:.1f} | "
            f"{r.atp / r.forward:.2f} | {r.nodes * r.forward / r.atp:.1f} | {removed} |"
        )
    lines += [
        "",
        "Reading: AtP's cost is one forward and one backward on the prompts (activation "
        "gradients only) plus, for the contrast baseline, the contrast forward: 'AtP in "
        "forwards' is its time over a plain forward of the same batch measured in the same run. "
        "Exhaustive patching costs one patched forward per node (a little more than a plain "
        "one: the hook), so an ideal exhaustive sweep is 'nodes / AtP in forwards' times "
        "slower than AtP, and the measured ratio sits just above that. With the organism's 20 "
        "heads and MLPs patched at all positions this is about 5x (contrast: the contrast "
        "forward is part of AtP) to 8x (mean, zero): no first-order method that needs a "
        "forward and a backward gets 10x at that granularity. At "
        "the granularity of Kramar et al. 2024, (component, position) nodes, and on SmolLM2's "
        "300 nodes, it is far above. (Stacking the contrast prompts into the clean forward was "
        "tried and measured: no faster on the organism, slower on SmolLM2.) Mean and zero "
        "ablation move a whole MLP output far from its clean value, outside the range where "
        "AtP's first-order estimate holds: compare the 'MLPs only' column with the contrast "
        "rows. The tool therefore patches its top estimates for real and reports both numbers.",
    ]
    text = "\n".join(lines)
    write_section("localize", text)
    print(text)
    print(f"elapsed {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
