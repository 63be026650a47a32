"""The diagnosis: a causal chain whose every link carries an effect an intervention measured.

Each link is ``{"claim", "effect", "measure", "confidence", "evidence"}``: the sentence, the
number, what that number is (which intervention, on what), a confidence in [0, 1] and the
recorded call ids that measured it. A finding that no intervention confirmed is not a link: it
goes to ``not_found`` with the reason (e.g. top documents by retrieval when the removal test was
not run), as does anything looked for and not found.
"""

from __future__ import annotations

from typing import Any


def _link(
    claim: str, effect: float, measure: str, confidence: float, evidence: list[str]
) -> dict[str, Any]:
    return {
        "claim": claim,
        "effect": round(float(effect), 4),
        "measure": measure,
        "confidence": round(max(0.0, min(1.0, float(confidence))), 3),
        "evidence": [e for e in evidence if e],
    }


def diagnose(state: dict[str, Any]) -> dict[str, Any]:
    """The chain from the investigation's finished steps (``state``: step name → result)."""
    symptom, char = state["symptom"], state["characterise"]
    localised, origin, removal = state["localise"], state["origin"], state["removal"]
    calls = localised.get("calls", {})
    observed, desired = symptom["observed"], symptom["desired"]
    links: list[dict[str, Any]] = []
    not_found: list[str] = []

    m = char["prompts"]
    para = char.get("on_paraphrases")
    spread = "" if not para else f"; on {len(char['paraphrases'])} paraphrases {para['rate']:.2f}"
    links.append(
        _link(
            f"The model answers {observed!r} rather than {desired!r}: rate {m['rate']:.2f} on "
            f"the {len(symptom['prompts'])} prompt(s){spread}.",
            m["log_odds"],
            f"mean log p({observed!r}) - log p({desired!r}) on the prompts (a plain forward)",
            m["rate"],
            [m["call"], para["call"] if para else ""],
        )
    )

    cues = char.get("cues")
    if cues and cues.get("cue"):
        word = cues["words"][0]
        links.append(
            _link(
                f"The word {word['word']!r} cues it: deleting it from the prompt turns the "
                f"answer to {desired!r} (log-odds {cues['log_odds']:.2f} -> "
                f"{word['log_odds']:.2f}).",
                cues["log_odds"] - word["log_odds"],
                "change in log-odds when the word is deleted from the first prompt",
                1.0,
                [cues.get("call", "")],
            )
        )
    elif cues:
        not_found.append(
            "cue: no single word's deletion turns the answer "
            f"(the most: {cues['words'][0]['word']!r}, log-odds {cues['log_odds']:.2f} -> "
            f"{cues['words'][0]['log_odds']:.2f})"
        )

    found_origin = localised.get("origin")
    if found_origin is not None:
        points = found_origin["checkpoints"]
        phase = found_origin["phase"]
        at = next((i for i, c in enumerate(points) if c["name"] == phase), None)
        if at is not None and at > 0:
            before, after = points[at - 1], points[at]
            links.append(
                _link(
                    f"It arose in training phase {phase}: the log-odds went from "
                    f"{before['log_odds']:.2f} at {before['name']} to {after['log_odds']:.2f} "
                    f"after {phase}.",
                    after["log_odds"] - before["log_odds"],
                    "log-odds measured at each checkpoint of the lineage (the change across "
                    "the phase)",
                    found_origin["confidence"],
                    [calls.get("origin", "")],
                )
            )
        else:
            not_found.append(f"origin: {phase} (no checkpoint before it to measure a change)")
        if origin.get("agree") is False and origin.get("note"):
            not_found.append(f"origin: retrieval disagrees: {origin['note']}")
    else:
        reason = localised.get("skipped", {}).get("origin", "no lineage")
        not_found.append(f"origin phase: not measured ({reason})")

    deltas = localised.get("weight_deltas")
    if deltas is not None and deltas.get("set_share") is not None:
        modules = deltas["module_set"]
        shown = ", ".join(modules[:4]) + (
            f" and {len(modules) - 4} more" if len(modules) > 4 else ""
        )
        links.append(
            _link(
                f"Its weight changes in {len(modules)} module(s) ({shown}) carry it: reverting "
                f"them to the parent checkpoint removes {deltas['set_share']:.0%} of what the "
                f"phase added (log-odds {deltas['subject']['log_odds']:.2f} -> "
                f"{deltas['set_revert']['log_odds']:.2f}).",
                deltas["set_share"],
                "share of the phase's log-odds change removed by reverting the set together",
                min(1.0, deltas["set_share"]),
                [calls.get("weight_deltas", "")],
            )
        )
        if not deltas.get("reached"):
            not_found.append("weight deltas: no module set reached the target share")
    elif deltas is None:
        reason = localised.get("skipped", {}).get("weight_deltas", "no parent checkpoint")
        not_found.append(f"weight-delta set: not measured ({reason})")

    verified = [c for c in localised.get("components", []) if c["verified"]]
    for c in verified[:3]:
        links.append(
            _link(
                f"Component {c['site']} carries part of it: patching it moves the log-odds by "
                f"{c['measured']:+.2f} (attribution estimated {c['estimate']:+.2f}).",
                c["measured"],
                "change in mean log-odds when the site is patched with its baseline value",
                min(1.0, abs(c["measured"]) / max(abs(m["log_odds"]), 1e-6)),
                [calls.get("attribution", "")],
            )
        )
    if not verified:
        not_found.append("components: no attributed component was confirmed by real patching")

    if "runs" in removal:
        given = next((r for r in removal["runs"] if r["kind"] == "given"), None)
        random = next((r for r in removal["runs"] if r["kind"] == "random"), None)
        base = removal["subject"]["log_odds"]
        if given is not None:
            drop = base - given["log_odds"]
            control = base - random["log_odds"] if random else 0.0
            links.append(
                _link(
                    f"Training documents of {removal['phase']} taught it: retraining the phase "
                    f"without the top {len(removal['removed'])} traced documents lowers the "
                    f"log-odds from {base:.2f} to {given['log_odds']:.2f} (rate "
                    f"{given['rate']:.2f}); without as many random documents: "
                    f"{random['log_odds'] if random else float('nan'):.2f}.",
                    drop,
                    "log-odds drop when the phase is retrained without the documents (the "
                    "random removal is the control)",
                    0.0 if drop <= 0 else max(0.0, min(1.0, (drop - max(control, 0)) / drop)),
                    [removal.get("call", "")],
                )
            )
    else:
        ranked = state.get("ranked") or state["documents"].get("trace") or {}
        top = ", ".join(d["key"] for d in ranked.get("documents", [])[:3])
        not_found.append(
            "documents: not confirmed by the removal test "
            f"({removal.get('skipped', 'not run')}); top by gradient retrieval: {top or 'none'}"
        )
    return {"links": links, "not_found": not_found}
