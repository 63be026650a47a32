"""``selfscope localize``: the debugger's whole answer for one behaviour, in one call.

It runs the registered tools through :func:`selfscope.tools.call` (so every step is validated
and recorded like any other call) and gathers their answers:

* ``metric`` — the behaviour's mean log-odds and rate on the prompts;
* ``origin`` — the training phase it arose in (an organism or a declared lineage: every
  checkpoint of the lineage and the phase's weight deltas; ``localize.origin``);
* ``components`` — attribution patching over heads, attention and MLP outputs, with the top
  ones patched for real (``localize.attribution_patching``): the estimate, the measured effect
  and whether the measurement confirms the estimate;
* ``weight_deltas`` — the smallest module set whose reverted weight changes remove the target
  share of the behaviour (``localize.weight_deltas``; needs a parent checkpoint);
* ``trace`` — causal tracing of the first prompt when ``trace_subject`` names the tokens to
  noise (``localize.trace``);
* ``experts`` — for mixture-of-experts models, each expert's measured effect
  (``localize.experts``).

A step that does not apply (no parent checkpoint, no lineage, a dense model) is reported in
``skipped`` with the reason, never silently left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject.adapters import adapter_for


def _verified(estimate: float, measured: float | None) -> bool:
    """The exact patch moves the metric the estimated way by at least half the estimate."""
    return measured is not None and estimate * measured > 0 and abs(measured) >= 0.5 * abs(estimate)


def localize(
    subject: Any,
    prompts: Sequence[str],
    planted: str,
    normal: str,
    *,
    chat: bool = False,
    contrast: Sequence[str] | None = None,
    control_prompts: Sequence[str] = (),
    trace_subject: str | None = None,
    top_k: int = 10,
    workspace: Any = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every localisation tool that applies to ``subject``, on one behaviour."""
    behaviour = {"prompts": list(prompts), "planted": planted, "normal": normal, "chat": chat}
    say = on_step or (lambda step: None)

    def call(name: str, args: dict[str, Any]) -> BaseModel:
        say(name)
        return tools.call(name, subject, args, workspace)

    value = MetricBatch(subject, prompts, planted, normal, chat).measure()
    out: dict[str, Any] = {
        "model": subject.source,
        "metric": {"log_odds": value.log_odds, "rate": value.rate, "per_prompt": value.per_prompt},
        "skipped": {},
    }
    lineage = subject.lineage
    deltas: Any = None
    if lineage is not None and lineage.phases:  # an organism's, or a declared lineage
        origin: Any = call(
            "localize.origin", {**behaviour, "control_prompts": list(control_prompts)}
        )
        out["origin"] = {
            "phase": origin.phase,
            "confidence": origin.confidence,
            "evidence": origin.evidence,
            "checkpoints": [c.model_dump() for c in origin.checkpoints],
        }
        if origin.deltas is not None and origin.phase == lineage.phase:
            deltas = origin.deltas  # the subject's own phase against its parent: reuse it
    else:
        out["origin"] = None
        out["skipped"]["origin"] = (
            "the model has no training lineage (not an organism; declare one with "
            "`selfscope lineage add`)"
        )
    attribution: Any = call(
        "localize.attribution_patching",
        {**behaviour, "contrast": list(contrast) if contrast else None, "top_k": top_k},
    )
    out["components"] = [
        {
            "site": c.component,
            "estimate": c.estimate,
            "measured": c.measured,
            "verified": _verified(c.estimate, c.measured),
        }
        for c in attribution.components
        if c.measured is not None
    ]
    out["attribution"] = {
        "baseline": attribution.baseline,
        "removed_share": attribution.removed_share,
        "joint": attribution.joint,
    }
    if deltas is None and lineage is not None and lineage.parent is not None:
        deltas = call(
            "localize.weight_deltas", {**behaviour, "control_prompts": list(control_prompts)}
        )
    if deltas is not None:
        out["weight_deltas"] = {
            "against": deltas.against,
            "set": deltas.module_set,
            "removed_share": deltas.set_share,
            "reached_target": deltas.reached,
            "search": deltas.search,
            "removed_log_odds_share": deltas.set_log_odds_share,
            "control_agreement": deltas.control.agreement if deltas.control else None,
            "specific": (
                None
                if deltas.specific is None
                else {
                    "set": deltas.specific.modules,
                    "removed_share": deltas.specific.share,
                    "removed_log_odds_share": deltas.specific.log_odds_share,
                }
            ),
            "directions": (
                None
                if deltas.directions is None
                else {
                    "n_directions": deltas.directions.n_directions,
                    "of": deltas.directions.units,
                    "per_parameter": {
                        k: len(v) for k, v in deltas.directions.per_parameter.items()
                    },
                    "removed_share": deltas.directions.share,
                    "removed_log_odds_share": deltas.directions.log_odds_share,
                    "control_agreement": (
                        deltas.directions.control.agreement if deltas.directions.control else None
                    ),
                }
            ),
            "modules": [
                {"module": m.module, "share": m.revert_share, "ig_share": m.ig_share}
                for m in deltas.modules[:top_k]
            ],
        }
    else:
        out["weight_deltas"] = None
        out["skipped"]["weight_deltas"] = "the model has no parent checkpoint to revert to"
    if trace_subject is not None:
        trace: Any = call(
            "localize.trace",
            {
                "prompt": prompts[0],
                "target": planted,
                "normal": normal,
                "subject": trace_subject,
                "chat": chat,
            },
        )
        out["trace"] = trace.model_dump()
    else:
        out["trace"] = None
        out["skipped"]["trace"] = "give --trace-subject (the prompt words to noise) to trace"
    if "blocks.{i}.moe.router" in adapter_for(subject.model).sites:
        experts: Any = call("localize.experts", {**behaviour, "top_k": top_k})
        out["experts"] = [e.model_dump() for e in experts.experts]
    else:
        out["experts"] = None
        out["skipped"]["experts"] = "not a mixture-of-experts model"
    if not out["components"] and value.rate == 0:
        raise SelfscopeError(
            "the model does not show the behaviour on these prompts (rate 0); nothing to localize"
        )
    return out
