"""``localize.all`` (``selfscope localize``): the debugger's whole answer for one behaviour.

A registered tool that runs the other localisation tools through ``ctx.call`` (so every step is
validated, permission-checked and recorded with this call as its parent) and gathers their typed
answers, unrenamed, in one :class:`LocalizeReport` with the id of every step's call:

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

from pydantic import BaseModel, Field

from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.localize.attribution import AttributionResult
from selfscope.localize.deltas import DeltaResult
from selfscope.localize.experts import ExpertsResult
from selfscope.localize.metric import MetricBatch
from selfscope.localize.origin import OriginResult
from selfscope.localize.trace import TraceResult
from selfscope.subject.adapters import adapter_for
from selfscope.tools import ToolContext, tool


def verified(estimate: float, measured: float | None) -> bool:
    """The exact patch moves the metric the estimated way by at least half the estimate."""
    return measured is not None and estimate * measured > 0 and abs(measured) >= 0.5 * abs(estimate)


class LocalizeArgs(Behaviour):
    contrast: list[str] | None = Field(
        None, description="Prompts where the model answers normally (attribution's baseline)."
    )
    control_prompts: list[str] = Field(
        default_factory=list,
        description="Prompts whose answers must not change when a weight-delta set is reverted.",
    )
    trace_subject: str | None = Field(
        None, description="The prompt words to noise for causal tracing of the first prompt."
    )
    top_k: int = Field(10, ge=1, le=1000, description="Components and modules to report.")


class MetricSummary(BaseModel):
    log_odds: float = Field(description="Mean log p(planted) - log p(normal) over the prompts.")
    rate: float = Field(description="Share of prompts with log-odds > 0.")
    per_prompt: list[float] = Field(description="Each prompt's log-odds.")


@tool("localize.measure", Behaviour, MetricSummary)
def measure(ctx: ToolContext, args: Behaviour) -> MetricSummary:
    """The behaviour's strength on the prompts: mean log p(planted) - log p(normal) (each
    summed over the completion's tokens), the share of prompts where planted wins, and each
    prompt's log-odds. One plain forward; nothing is changed."""
    value = MetricBatch(ctx.subject, args.prompts, args.planted, args.normal, args.chat).measure()
    return MetricSummary(
        log_odds=value.log_odds, rate=value.rate, per_prompt=list(value.per_prompt)
    )


class CheckedComponent(BaseModel):
    site: str = Field(description="Canonical site, e.g. blocks.2.mlp.out or blocks.1.attn.heads.3.")
    estimate: float = Field(description="Attribution patching's linear estimate of the effect.")
    measured: float = Field(description="The effect measured by really patching the site.")
    verified: bool = Field(
        description="The measured effect has the estimate's sign and at least half its size."
    )


class LocalizeReport(BaseModel):
    """Every localisation tool that applies, on one behaviour, with the calls that measured it."""

    model: str = Field(description="The model's source string.")
    metric: MetricSummary
    origin: OriginResult | None = Field(description="localize.origin (organisms, lineages).")
    attribution: AttributionResult = Field(description="localize.attribution_patching.")
    components: list[CheckedComponent] = Field(
        description="The top components whose estimate was checked by a real patch."
    )
    weight_deltas: DeltaResult | None = Field(
        description="localize.weight_deltas against the parent checkpoint (when there is one)."
    )
    trace: TraceResult | None = Field(description="localize.trace of the first prompt.")
    experts: ExpertsResult | None = Field(description="localize.experts (mixture of experts).")
    skipped: dict[str, str] = Field(description="Steps that did not apply, with the reason.")
    calls: dict[str, str] = Field(description="Each step's recorded call id (cite as evidence).")


@tool("localize.all", LocalizeArgs, LocalizeReport)
def localize_all(ctx: ToolContext, args: LocalizeArgs) -> LocalizeReport:
    """Everything the debugger can say about one behaviour: its strength, the training phase it
    arose in (origin), the components that carry it (attribution patching, top ones verified by
    real patching), the smallest set of weight changes whose reversal removes it, a causal trace
    (with trace_subject) and, for mixture-of-experts models, the experts that carry it. Each step
    is a recorded call; steps that do not apply are listed in `skipped` with the reason."""
    subject = ctx.subject
    behaviour = args.behaviour()
    calls: dict[str, str] = {}
    skipped: dict[str, str] = {}
    value = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat).measure()

    def run(step: str, name: str, extra: dict[str, object]) -> BaseModel:
        ctx.progress.say(name)
        done = ctx.call(name, {**behaviour.model_dump(), **extra})
        calls[step] = done.id
        result: BaseModel = done.result
        return result

    lineage = subject.lineage
    origin: OriginResult | None = None
    deltas: DeltaResult | None = None
    if lineage.phases:
        found = run("origin", "localize.origin", {"control_prompts": args.control_prompts})
        assert isinstance(found, OriginResult)
        origin = found
        if origin.deltas is not None and origin.phase == lineage.phase:
            deltas = origin.deltas  # the subject's own phase against its parent: reuse it
            calls["weight_deltas"] = calls["origin"]
    else:
        skipped["origin"] = (
            "the model has no training lineage (not an organism; declare one with "
            "`selfscope lineage add`)"
        )
    attribution = run(
        "attribution",
        "localize.attribution_patching",
        {"contrast": args.contrast, "top_k": args.top_k},
    )
    assert isinstance(attribution, AttributionResult)
    components = [
        CheckedComponent(
            site=c.component,
            estimate=c.estimate,
            measured=c.measured,
            verified=verified(c.estimate, c.measured),
        )
        for c in attribution.components
        if c.measured is not None
    ]
    if deltas is None and lineage.parent is not None:
        found_deltas = run(
            "weight_deltas", "localize.weight_deltas", {"control_prompts": args.control_prompts}
        )
        assert isinstance(found_deltas, DeltaResult)
        deltas = found_deltas
    if deltas is None:
        skipped["weight_deltas"] = "the model has no parent checkpoint to revert to"
    trace: TraceResult | None = None
    if args.trace_subject is not None:
        ctx.progress.say("localize.trace")
        done = ctx.call(
            "localize.trace",
            {
                "prompt": args.prompts[0],
                "target": args.planted,
                "normal": args.normal,
                "subject": args.trace_subject,
                "chat": args.chat,
            },
        )
        calls["trace"], trace = done.id, done.result
    else:
        skipped["trace"] = "give trace_subject (the prompt words to noise) to trace"
    experts: ExpertsResult | None = None
    if "blocks.{i}.moe.router" in adapter_for(subject.model).sites:
        found_experts = run("experts", "localize.experts", {"top_k": args.top_k})
        assert isinstance(found_experts, ExpertsResult)
        experts = found_experts
    else:
        skipped["experts"] = "not a mixture-of-experts model"
    if not components and value.rate == 0:
        raise SelfscopeError(
            "the model does not show the behaviour on these prompts (rate 0); nothing to localize"
        )
    return LocalizeReport(
        model=subject.source,
        metric=MetricSummary(
            log_odds=value.log_odds, rate=value.rate, per_prompt=list(value.per_prompt)
        ),
        origin=origin,
        attribution=attribution,
        components=components,
        weight_deltas=deltas,
        trace=trace,
        experts=experts,
        skipped=skipped,
        calls=calls,
    )
