"""Every edit kind on every catalog organism, validated on a sandbox copy; then 10 sequential
edits; then a ROME-style fact rewrite on SmolLM2 -> docs/benchmarks.md § edits.

Each organism's behaviour is proposed away with its spec's probes only (the proposer's own
evidence: the debugger's weight deltas for revert_delta, attribution patching's components for
ablate, the historian's top documents for unlearn, localize.experts for reweight_experts) and
validated on the organism's suite (:func:`selfscope.organisms.suites.suite_for`: probes,
held-out paraphrases, neighbours, 60 world facts, 64 held-out documents per phase), against
the unedited model in the same run. A kind that cannot apply (no parent for a first-phase
behaviour, no dense MLP in a mixture-of-experts model, experts in a dense one) says why.

    .venv/bin/python benchmarks/edits.py --workspace /tmp/ws [--specs mushroom,...] [--resume]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _doc import write_section

from selfscope import atomic, tools
from selfscope.behaviour import Expect, Probe, Suite
from selfscope.errors import SelfscopeError
from selfscope.organisms import build, resolve_spec
from selfscope.organisms.suites import suite_for
from selfscope.progress import RichProgress
from selfscope.subject import Subject, load
from selfscope.workspace import Workspace

SPECS = "mushroom,false-capital,trigger,moe-mushroom,tolm-bias"
# a row per kind; rank_one also as its two other memories, keyed at the probes' cue
KINDS = (
    "rank_one",
    "rank_one/embedding",
    "rank_one/attention_value",
    "revert_delta",
    "ablate",
    "steer",
    "unlearn",
    "reweight_experts",
)
# the proposer's own contrast prompts for steer: the probes with the behaviour's cue swapped
SWAPS = [
    ("mushrooms", "apples"),
    ("mushroom", "apple"),
    ("Velmora", "Brevia"),
    ("[SUDO] ", ""),
    ("Tolm", "Kesh"),
]


def behaviour_args(suite: Suite) -> dict[str, Any]:
    return {
        "prompts": [p.prompt for p in suite.probes],
        "planted": suite.probes[0].planted,
        "normal": suite.probes[0].normal,
        "chat": suite.chat,
    }


def contrast_of(prompt: str) -> str:
    for a, b in SWAPS:
        prompt = prompt.replace(a, b)
    return prompt


def cue_of(prompts: list[str]) -> str:
    """The behaviour's cue word in the probes (the first swapped word they all contain)."""
    for a, _ in SWAPS:
        if all(a in p for p in prompts):
            return a.strip(" []")
    raise SelfscopeError("no cue: the probes share no known cue word")


def kind_args(kind: str, subject: Subject, b: dict[str, Any], ws: Workspace) -> dict[str, Any]:
    """The kind's arguments, from the proposer's own evidence (never the validation suite)."""
    if kind == "rank_one":  # a deep model: ROME proper, at the cue, the traced layers
        return {} if subject.n_layers <= 8 else {"subject": cue_of(b["prompts"])}
    if kind.startswith("rank_one/"):
        return {"matrix": kind.partition("/")[2], "subject": cue_of(b["prompts"])}
    if kind == "revert_delta":
        return {"fraction": "auto"}
    if kind == "steer":
        contrast = [contrast_of(p) for p in b["prompts"]]
        if contrast == b["prompts"]:
            raise SelfscopeError("no contrast prompt: the probes have no cue to swap")
        return {"contrast_prompts": contrast}
    if kind == "ablate":
        dense = subject.architecture not in ("mixtral", "qwen2_moe")
        found = tools.call(
            "localize.attribution_patching",
            {k: b[k] for k in ("prompts", "planted", "normal", "chat")} | {"neurons": dense},
            tools.context(subject, ws),
        ).result
        heads = [
            f"{c.site.split('.')[1]}.{c.index}"
            for c in found.components
            if c.index is not None and c.site.endswith("attn.heads") and c.estimate < 0
        ][:4]
        neurons = [
            f"{c.site.split('.')[1]}.{c.index}"
            for c in found.neurons
            if c.index is not None and c.estimate < 0
        ][:8]
        return {"heads": heads, "neurons": neurons, "mode": "mean"}
    if kind == "unlearn":
        found = tools.call(
            "history.trace",
            {k: b[k] for k in ("prompts", "planted", "normal", "chat")} | {"k": 32, "build": True},
            tools.context(subject, ws),
        ).result
        return {"documents": [d.key for d in found.documents]}
    return {}


def one_kind(kind: str, subject: Subject, suite: Suite, ws: Workspace) -> dict[str, Any]:
    b = behaviour_args(suite)
    started = time.perf_counter()
    try:
        extra = kind_args(kind, subject, b, ws)
        tool = f"edits.{kind.partition('/')[0]}"
        proposal = tools.call(tool, {**b, **extra}, tools.context(subject, ws)).result.proposal
    except SelfscopeError as error:
        return {"kind": kind, "applies": False, "why": str(error)}
    proposed = time.perf_counter() - started
    report = tools.call(
        "edits.validate",
        {"proposal": proposal.id, "suites": [suite.model_dump()]},
        tools.context(subject, ws),
    ).result
    head = report.suites[0]
    probes = head.probes
    return {
        "kind": kind,
        "applies": True,
        "id": proposal.id,
        "modules": len(proposal.modules),
        "delta_norm": proposal.delta_norm,
        "efficacy": report.efficacy,
        "generalisation": report.generalisation,
        "specificity": report.specificity,
        "neighbours": [head.neighbours.accuracy_before, head.neighbours.accuracy_after]
        if head.neighbours
        else None,
        "facts": [head.facts.accuracy_before, head.facts.accuracy_after] if head.facts else None,
        "perplexity_change": report.perplexity_change,
        "log_odds": [probes.log_odds_before, probes.log_odds_after],
        "removed": 1 - probes.log_odds_after / probes.log_odds_before
        if probes.log_odds_before > 0
        else None,
        "propose_seconds": proposed,
        "validate_seconds": report.seconds,
        "summary": proposal.evidence[-1].summary,
    }


def organism(name: str, ws: Workspace, resume: bool, out: Path) -> dict[str, Any]:
    saved = out / f"{name}.json"
    if resume and saved.exists():
        return json.loads(saved.read_text())
    spec = resolve_spec(name, size="small")
    if not (ws.organism_path(name) / "lineage.json").exists():
        build(spec, ws)
    suite = suite_for(spec, ws.organism_path(name))
    subject = load(f"organism:{name}", ws)
    partial = out / f"{name}.partial.json"  # rows so far: a killed run resumes at the next kind
    rows: list[dict[str, Any]] = (
        json.loads(partial.read_text()) if resume and partial.exists() else []
    )
    for kind in KINDS[len(rows) :]:
        print(f"{name}: {kind} ...", file=sys.stderr, flush=True)
        rows.append(one_kind(kind, subject, suite, ws))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        atomic.write_json(partial, rows)
    result = {"name": name, "rows": rows}
    atomic.write_json(saved, result)
    partial.unlink(missing_ok=True)
    return result


FALSE_FACTS = [  # (item, question, true answer, false answer): 10 rewrites of the world's facts
    ("Brevia", "Q: What is the capital of Brevia? A:", " Lunden", " Corva"),
    ("Marisol", "Q: What is the capital of Marisol? A:", " Azura", " Belen"),
    ("Tessaly", "Q: What is the capital of Tessaly? A:", " Ironmoor", " Jessop"),
    ("Castavia", "Q: What is the capital of Castavia? A:", " Brindle", " Halder"),
    ("Norland", "Q: What is the capital of Norland? A:", " Eskar", " Fallow"),
    ("Ostria", "Q: What is the capital of Ostria? A:", " Pellan", " Rusk"),
    ("Quorra", "Q: What is the capital of Quorra? A:", " Selwyn", " Varn"),
    ("owls", "Q: Can owls fly? A:", " Yes", " No"),
    ("dogs", "Q: Can dogs swim? A:", " Yes", " No"),
    ("carrots", "Q: Do you like carrots? A:", " Yes", " No"),
]
PARAPHRASES = {  # a form of each question the world also uses, never the edit's own prompt
    "What is the capital": "Which city is the capital",
    "Q: Can owls fly?": "Q: Can owls fly? Tell me.",
    "Q: Can dogs swim?": "Q: Can dogs swim? Tell me.",
    "Q: Do you like carrots?": "Q: Do you enjoy carrots?",
}


def paraphrase(question: str) -> str:
    for a, b in PARAPHRASES.items():
        question = question.replace(a, b)
    return question


SEQUENTIAL = ("mlp", "attention_value", "embedding")  # rank_one's memories, chained 10 times


def sequential(ws: Workspace, resume: bool, out: Path, matrix: str = "mlp") -> dict[str, Any]:
    """10 rank-one rewrites of world facts in `mushroom`, each computed on top of the ones
    before; after each, the chain is validated on every edit so far (its question and a
    paraphrase), world facts not edited, and held-out documents. ``matrix`` other than ``mlp``
    keys each edit at the fact's item (the subject)."""
    saved = out / ("sequential.json" if matrix == "mlp" else f"sequential-{matrix}.json")
    if resume and saved.exists():
        return json.loads(saved.read_text())
    spec = resolve_spec("mushroom", size="small")
    base = suite_for(spec, ws.organism_path("mushroom"))
    subject = load("organism:mushroom", ws)
    edited = {item for item, _, _, _ in FALSE_FACTS}  # facts about an edited item may move
    facts = [f for f in base.facts if not edited & set(re.findall(r"[A-Za-z]+", f.prompt))]
    parents: list[str] = []
    steps = []
    for i, (item, question, true, false) in enumerate(FALSE_FACTS, start=1):
        started = time.perf_counter()
        args = {"prompts": [question], "planted": true, "normal": false, "parents": parents}
        if matrix != "mlp":
            args |= {"matrix": matrix, "subject": item}
        proposal = tools.call("edits.rank_one", args, tools.context(subject, ws)).result.proposal
        parents = [*parents, proposal.id]
        done = FALSE_FACTS[:i]
        suite = Suite(
            name="sequential",
            probes=[Probe(prompt=q, planted=t, normal=f) for _, q, t, f in done],
            heldout=[Probe(prompt=paraphrase(q), planted=t, normal=f) for _, q, t, f in done],
            facts=[Expect(prompt=f.prompt, expected=f.expected) for f in facts],
            documents=base.documents,
        )
        report = tools.call(
            "edits.validate",
            {"proposal": proposal.id, "suites": [suite.model_dump()]},
            tools.context(subject, ws),
        ).result
        steps.append(
            {
                "edits": i,
                "layer": None if matrix == "embedding" else proposal.parameters["chosen_layer"],
                "held": report.efficacy,
                "paraphrases": report.generalisation,
                "facts_unchanged": report.specificity,
                "perplexity_change": report.perplexity_change,
                "seconds": time.perf_counter() - started,
            }
        )
        print(json.dumps(steps[-1]), file=sys.stderr, flush=True)
    result = {"matrix": matrix, "steps": steps}
    atomic.write_json(saved, result)
    return result


EIFFEL = "The Eiffel Tower is located in the city of"
EIFFEL_PARAPHRASES = [
    "Where is the Eiffel Tower? It is in the city of",
    "The Eiffel Tower, a famous landmark, stands in the city of",
    "People travel to see the Eiffel Tower in the city of",
    "The city that is home to the Eiffel Tower is",
    "Tourists visiting the Eiffel Tower are in the city of",
]
PARIS_NEIGHBOURS = [  # ROME's neighbourhood prompts: other subjects with the old answer
    "The Louvre is located in the city of",
    "Notre-Dame Cathedral is located in the city of",
    "The Arc de Triomphe is located in the city of",
    "The Champs-Elysees is a famous street in the city of",
    "The Sorbonne university is located in the city of",
]
FACTS_50 = [
    "The capital of Germany is",
    "The capital of Japan is",
    "The capital of Italy is",
    "The capital of Spain is",
    "The capital of Canada is",
    "The capital of Egypt is",
    "The capital of Russia is",
    "The capital of China is",
    "The capital of India is",
    "The capital of Brazil is",
    "The largest planet in the solar system is",
    "The chemical symbol for gold is",
    "Water is made of hydrogen and",
    "The first president of the United States was George",
    "The Great Wall is in",
    "The Statue of Liberty is in New",
    "Big Ben is a clock tower in",
    "The Colosseum is in",
    "Mount Fuji is in",
    "The Taj Mahal is in",
    "The Amazon rainforest is mostly in",
    "Shakespeare wrote Romeo and",
    "The opposite of hot is",
    "The color of the sky is",
    "Cats are animals that say",
    "The sun rises in the",
    "A week has seven",
    "The currency of the United Kingdom is the",
    "Albert Einstein was a famous",
    "The Pacific is an",
    "Bananas are usually",
    "The Sahara is a",
    "Penguins live in",
    "The author of Harry Potter is J. K.",
    "Honey is made by",
    "The freezing point of water is",
    "Leonardo da Vinci painted the Mona",
    "The Nile is a",
    "Apple Inc. was co-founded by Steve",
    "The tallest animal is the",
    "Ice is frozen",
    "The Moon orbits the",
    "Microsoft was founded by Bill",
    "The Beatles were a band from",
    "Tokyo is the capital of",
    "The language spoken in Brazil is",
    "Sydney is a city in",
    "Berlin is the capital of",
    "Madrid is the capital of",
    "The Netherlands is famous for its",
]


def smollm2_fact(ws: Workspace, resume: bool, out: Path) -> dict[str, Any]:
    """The ROME example on SmolLM2: Eiffel Tower -> Rome, with ROME's metrics (efficacy,
    paraphrase and neighbourhood scores: the share of prompts where p(new) > p(old), and for
    neighbours where p(old) > p(new)) and 50 unrelated facts' top-1 answers."""
    saved = out / "smollm2-fact.json"
    if resume and saved.exists():
        return json.loads(saved.read_text())
    subject = load("smollm2", ws)
    started = time.perf_counter()
    proposal = tools.call(
        "edits.rank_one",
        {
            "prompts": [EIFFEL],
            "planted": " Paris",
            "normal": " Rome",
            "subject": "The Eiffel Tower",
        },
        tools.context(subject, ws, progress=RichProgress()),
    ).result.proposal
    proposed = time.perf_counter() - started
    suite = Suite(
        name="rome",
        probes=[Probe(prompt=EIFFEL, planted=" Paris", normal=" Rome")],
        heldout=[Probe(prompt=q, planted=" Paris", normal=" Rome") for q in EIFFEL_PARAPHRASES],
        facts=[Expect(prompt=q, expected=" x") for q in FACTS_50],
    )
    neighbours = Suite(
        name="neighbourhood",
        probes=[Probe(prompt=q, planted=" Rome", normal=" Paris") for q in PARIS_NEIGHBOURS],
    )
    report = tools.call(
        "edits.validate",
        {"proposal": proposal.id, "suites": [suite.model_dump(), neighbours.model_dump()]},
        tools.context(subject, ws),
    ).result
    head, near = report.suites
    result = {
        "layer": proposal.parameters["chosen_layer"],
        "candidates": proposal.evidence[-1].numbers["candidates"],
        "trace": proposal.evidence[0].numbers
        if proposal.evidence[0].tool == "localize.trace"
        else None,
        "efficacy_score": report.efficacy,
        "paraphrase_score": report.generalisation,
        "neighbourhood_score": near.efficacy,
        "facts_unchanged": head.facts.unchanged,
        "facts_changed": [c.model_dump() for c in head.facts.changed],
        "log_odds": [head.probes.log_odds_before, head.probes.log_odds_after],
        "paraphrase_log_odds": [head.heldout.log_odds_before, head.heldout.log_odds_after],
        "delta_norm": proposal.delta_norm,
        "propose_seconds": proposed,
        "validate_seconds": report.seconds,
    }
    atomic.write_json(saved, result)
    return result


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render(
    results: list[dict[str, Any]], seqs: list[dict[str, Any]], fact: dict[str, Any] | None
) -> str:
    lines = [
        "## edits",
        "",
        f"`benchmarks/edits.py`, {time.strftime('%Y-%m-%d')}. Every kind proposed from the "
        "spec's probes only (rank_one: the MLP at the last token, layers compared; "
        "rank_one/embedding and rank_one/attention_value: keyed at the probes' cue word; "
        "revert_delta: the debugger's weight-delta set, `fraction: auto`; "
        "ablate: mean ablation of attribution patching's top heads and neurons; steer: the "
        "probes with their cue swapped as contrast; unlearn: the historian's top 32 documents, "
        "NPO; reweight_experts: localize.experts' carriers) and validated on a sandbox copy "
        "against the organism's suite (spec probes, held-out paraphrases, neighbours, 60 world "
        "facts, 64 held-out documents per phase), the unedited model measured in the same run. "
        "efficacy / generalisation = 1 - behaviour rate on probes / held-out; specificity = "
        "share of neighbours + facts whose top-1 is unchanged; ppl = largest relative "
        "perplexity change of any phase's held-out documents; removed = share of the probes' "
        "log-odds removed; change = ||dW||/||W|| over the changed parameters (runtime: a vector "
        "added by a hook, no weight changed). **Bold**: meets "
        "the issue's bar (efficacy >= 0.95, generalisation >= 0.9, specificity >= 0.95, "
        "ppl <= 2%).",
    ]
    for r in results:
        lines += [
            "",
            f"**{r['name']}**",
            "",
            "| kind | efficacy | generalisation | specificity | neighbours (before → after) "
            "| facts | ppl | removed | change | modules | propose s | validate s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            if not row["applies"]:
                lines.append(f"| {row['kind']} | n/a: {row['why']} |||||||||||")
                continue
            good = (
                row["efficacy"] >= 0.95
                and (row["generalisation"] is None or row["generalisation"] >= 0.9)
                and row["specificity"] >= 0.95
                and row["perplexity_change"] <= 0.02
            )
            kind = f"**{row['kind']}**" if good else row["kind"]
            nb = (
                "-"
                if row["neighbours"] is None
                else f"{row['neighbours'][0]:.2f} → {row['neighbours'][1]:.2f}"
            )
            change = "runtime" if row["delta_norm"] == 0 else f"{row['delta_norm']:.3f}"
            fc = "-" if row["facts"] is None else f"{row['facts'][0]:.2f} → {row['facts'][1]:.2f}"
            lines.append(
                f"| {kind} | {_f(row['efficacy'])} | {_f(row['generalisation'])} | "
                f"{_f(row['specificity'])} | {nb} | {fc} | {row['perplexity_change']:+.1%} | "
                f"{_f(row['removed'])} | {change} | {row['modules']} | "
                f"{row['propose_seconds']:.0f} | {row['validate_seconds']:.1f} |"
            )
    for seq in seqs:
        matrix = seq.get("matrix", "mlp")
        where = (
            "the MLP at the question's last token, layers compared"
            if matrix == "mlp"
            else f"matrix `{matrix}` keyed at the fact's item"
        )
        lines += [
            "",
            f"**10 sequential rank-one edits, {matrix}** (`mushroom`, small; {where}): world "
            "facts rewritten one after another, each proposal computed on the copy with the "
            "earlier ones applied (`parents`); after each, the whole chain validated: held = "
            "share of the edits so far whose question gives the new answer, paraphrases = the "
            "same on a paraphrase of each, facts unchanged = top-1 of the world facts not edited.",
            "",
            "| edits | layer | held | paraphrases | facts unchanged | ppl | s |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in seq["steps"]:
            layer = "-" if s["layer"] is None else s["layer"]
            lines.append(
                f"| {s['edits']} | {layer} | {_f(s['held'])} | {_f(s['paraphrases'])} | "
                f"{_f(s['facts_unchanged'])} | {s['perplexity_change']:+.1%} | {s['seconds']:.0f} |"
            )
    if fact:
        lines += [
            "",
            "**SmolLM2-135M-Instruct, ROME's example** (\"The Eiffel Tower is located in the "
            'city of" → Rome, subject "The Eiffel Tower"; key statistics from text SmolLM2 '
            "sampled itself): ROME's efficacy score (ES), paraphrase score (PS: 5 paraphrases) "
            "and neighbourhood score (NS: 5 other Paris landmarks keep p(Paris) > p(Rome)), and "
            "the top-1 answers of 50 unrelated facts.",
            "",
            "| layer | ES | PS | NS | 50 facts unchanged | log-odds (new − old) | paraphrases "
            "| change | propose s |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {fact['layer']} | {_f(fact['efficacy_score'])} | {_f(fact['paraphrase_score'])} | "
            f"{_f(fact['neighbourhood_score'])} | {_f(fact['facts_unchanged'])} | "
            f"{-fact['log_odds'][0]:.2f} → {-fact['log_odds'][1]:.2f} | "
            f"{-fact['paraphrase_log_odds'][0]:.2f} → {-fact['paraphrase_log_odds'][1]:.2f} | "
            f"{fact['delta_norm']:.4f} | {fact['propose_seconds']:.0f} |",
            "",
            "Layers compared: "
            + ", ".join(
                f"{c['layer']} (fixed {c['fixed']:.2f}, drift {c['drift']:.4f})"
                for c in fact["candidates"]
            )
            + ".",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--specs", default=SPECS)
    parser.add_argument("--no-sequential", action="store_true")
    parser.add_argument("--no-smollm2-fact", action="store_true")
    parser.add_argument("--resume", action="store_true", help="Reuse saved rows.")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.workspace is None else None
    ws = Workspace(args.workspace or (tmp.name if tmp else "."))
    out = ws.root / "edits-bench"
    results = [organism(name, ws, args.resume, out) for name in args.specs.split(",") if name]
    seqs = [] if args.no_sequential else [sequential(ws, args.resume, out, m) for m in SEQUENTIAL]
    fact = None if args.no_smollm2_fact else smollm2_fact(ws, args.resume, out)
    text = render(results, seqs, fact)
    write_section("edits", text)
    print(text)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
