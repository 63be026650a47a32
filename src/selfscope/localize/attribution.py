"""Direct logit attribution and attribution patching: which components carry a behaviour.

**Direct logit attribution** (DLA; Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits") splits the logit difference ``logit[planted] - logit[normal]`` at the
last prompt position into the direct contributions of the components that write to the residual
stream: the embedding, every block's attention (and each head inside it) and every MLP. The final
residual is their sum, and the logits are ``W_U · norm(x)``; freezing the final norm's scale at
this input makes it linear, so each component's term is ``(W_U[planted] - W_U[normal]) ·
norm_lin(c)`` and the terms add up to the actual logit difference exactly. DLA measures the
*direct* path only: a component whose effect goes through later layers gets little credit.

**Attribution patching** (AtP; Nanda 2023, Syed et al. 2023, Kramár et al. 2024, "AtP*")
estimates what activation patching would measure for every component at once: patching a
component's clean activation ``a`` to a baseline ``a'`` changes the metric by about
``(a' - a) · ∂metric/∂a``, the gradient taken on the clean run. One forward and one backward pass
on the clean prompts (plus one forward on the contrast prompts) give the estimate for every head,
attention output, MLP output and MLP neuron. It is a first-order guess: it fails where the
network is far from linear between ``a`` and ``a'`` (saturated attention or softmax), so the top
of its ranking is then patched for real here, and both numbers are reported side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject.adapters import n_blocks, resolve
from selfscope.subject.hooks import Patch, hooked, run
from selfscope.tools import ToolContext, tool

Baseline = Literal["contrast", "mean", "zero"]

BASELINES: dict[str, str] = {
    "contrast": "the component's activation on the contrast prompts, position by position",
    "mean": "the component's mean activation over every real (unpadded) token of the clean "
    "batch, the same vector at every position",
    "zero": "zero (zero ablation)",
}


# -- direct logit attribution ---------------------------------------------------------------


class LogitAttributionArgs(Behaviour):
    top_k: int = Field(10, ge=1, le=1000, description="How many components to rank in `top`.")


class Contribution(BaseModel):
    component: str  # embed | blocks.{i}.attn.out | blocks.{i}.attn.heads[h] | blocks.{i}.mlp.out
    site: str
    head: int | None = None
    value: float  # mean over prompts
    per_prompt: list[float]


class LogitAttributionResult(BaseModel):
    direction: str
    logit_diff: float  # mean over prompts of the actual logit[planted] - logit[normal]
    per_prompt: list[float]
    constant: float  # the final norm's bias and the unembedding's bias along the direction
    total: float  # embed + every attn.out + every mlp.out + constant (= logit_diff)
    components: list[Contribution]  # model order; heads break their block's attn.out down
    top: list[Contribution]  # embed, heads, attention biases and MLPs by |value|
    notes: list[str]


@dataclass(frozen=True)
class _FinalNorm:
    """The final norm, linearised at the residual it saw: ``y = scale · (w ⊙ centred(c)) + b``."""

    weight: Tensor
    bias: Tensor | None
    centre: bool  # LayerNorm subtracts the mean; RMSNorm does not
    eps: float

    @classmethod
    def of(cls, model: nn.Module) -> _FinalNorm:
        module: Any = model.get_submodule(resolve(model, "final_norm").module)
        if isinstance(module, nn.LayerNorm):
            return cls(module.weight, module.bias, True, float(module.eps))
        if hasattr(module, "variance_epsilon"):  # the Hugging Face RMSNorms
            return cls(module.weight, getattr(module, "bias", None), False, module.variance_epsilon)
        raise SelfscopeError(
            f"logit attribution: the final norm {type(module).__name__} is neither LayerNorm nor "
            "RMSNorm; this architecture is not supported"
        )

    def scale(self, x: Tensor) -> Tensor:
        """The factor the norm divides by, frozen at the final residual ``x`` [..., d]."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def linear(self, c: Tensor, scale: Tensor) -> Tensor:
        if self.centre:
            c = c - c.mean(-1, keepdim=True)
        return c * scale * self.weight


def _head_outputs(model: nn.Module, block: int, heads: Tensor) -> Tensor:
    """Each head's output [..., head, d] through the output projection (without its bias)."""
    proj: Any = model.get_submodule(resolve(model, f"blocks.{block}.attn.heads").module)
    n, d_head = heads.shape[-2], heads.shape[-1]
    if isinstance(proj, nn.Linear):  # weight [d_model, heads * d_head]
        w = proj.weight.view(proj.weight.shape[0], n, d_head)
        return torch.einsum("...hk,dhk->...hd", heads, w)
    if type(proj).__name__ == "Conv1D":  # GPT-2: weight [heads * d_head, d_model]
        w = proj.weight.view(n, d_head, -1)
        return torch.einsum("...hk,hkd->...hd", heads, w)
    raise SelfscopeError(f"logit attribution: unknown output projection {type(proj).__name__}")


@tool("localize.logit_attribution", LogitAttributionArgs, LogitAttributionResult)
def logit_attribution(ctx: ToolContext, args: LogitAttributionArgs) -> LogitAttributionResult:
    """Direct logit attribution of logit[planted] - logit[normal] at the last prompt position to
    the embedding, every block's attention output, each attention head and every MLP output
    (mean over the prompts, and per prompt). The final norm is linearised with its scale frozen
    at the actual final residual, so embed + attention outputs + MLP outputs + `constant` equal
    the actual logit difference (`total` vs `logit_diff`). Heads add up to their attention
    output minus the output projection's bias. Direct effects only: a component acting through
    later layers gets little credit here (use localize.attribution_patching for total effects).
    Multi-token completions: the first token of each only."""
    subject = ctx.subject
    model = subject.model
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    layers = n_blocks(model)
    last = f"blocks.{layers - 1}.resid_post"
    sites = ["embed", last]
    for i in range(layers):
        sites += [f"blocks.{i}.attn.out", f"blocks.{i}.attn.heads", f"blocks.{i}.mlp.out"]
    result = run(model, batch.input_ids, batch.attention_mask, capture=sites)
    assert result.logits is not None
    rows = [batch.rows_of(i)[0] for i in range(batch.n_prompts)]
    where = [batch.prompt_length(i) - 1 for i in range(batch.n_prompts)]
    planted = [batch.planted[i].ids[0] for i in range(batch.n_prompts)]
    normal = [batch.normal[i].ids[0] for i in range(batch.n_prompts)]
    for i, (p, q) in enumerate(zip(planted, normal, strict=True)):
        if p == q:
            raise SelfscopeError(
                f"after prompt {i} {args.prompts[i]!r}, {args.planted!r} and {args.normal!r} "
                "start with the same token; logit attribution needs different first tokens"
            )

    def at_last(value: Tensor) -> Tensor:  # [prompts, ...] at each prompt's last position
        return value[rows, where]

    unembed: Any = model.get_submodule(resolve(model, "unembed").module)
    with torch.no_grad():
        direction: Tensor = unembed.weight[planted] - unembed.weight[normal]  # [prompts, d]
        norm = _FinalNorm.of(model)
        scale = norm.scale(at_last(result.values[last]))

        def dla(c: Tensor) -> Tensor:  # c [prompts, (head,) d] -> [prompts, (head)]
            if c.dim() == 3:
                return (norm.linear(c, scale[:, None]) * direction[:, None]).sum(-1)
            return (norm.linear(c, scale) * direction).sum(-1)

        constant = torch.zeros(batch.n_prompts)
        if norm.bias is not None:
            constant = constant + direction @ norm.bias
        if getattr(unembed, "bias", None) is not None:
            constant = constant + unembed.bias[planted] - unembed.bias[normal]
        logits = result.logits[rows, where]
        actual = logits[range(batch.n_prompts), planted] - logits[range(batch.n_prompts), normal]

        def entry(component: str, site: str, values: Tensor, head: int | None = None) -> Any:
            return Contribution(
                component=component,
                site=site,
                head=head,
                value=float(values.mean()),
                per_prompt=values.tolist(),
            )

        embed = dla(at_last(result.values["embed"]))
        components = [entry("embed", "embed", embed)]
        fine = [components[0]]
        total = embed + constant
        for i in range(layers):
            site = f"blocks.{i}.attn.out"
            attn = dla(at_last(result.values[site]))
            heads = dla(_head_outputs(model, i, at_last(result.values[f"blocks.{i}.attn.heads"])))
            components.append(entry(site, site, attn))
            for h in range(heads.shape[1]):
                name = f"blocks.{i}.attn.heads[{h}]"
                components.append(entry(name, f"blocks.{i}.attn.heads", heads[:, h], h))
                fine.append(components[-1])
            bias = attn - heads.sum(1)
            if float(bias.abs().max()) > 1e-6 * (1 + float(attn.abs().max())):
                fine.append(entry(f"blocks.{i}.attn.bias", site, bias))
            site = f"blocks.{i}.mlp.out"
            mlp = dla(at_last(result.values[site]))
            components.append(entry(site, site, mlp))
            fine.append(components[-1])
            total = total + attn + mlp
    tokens = subject.tokenizer.convert_ids_to_tokens([planted[0], normal[0]])
    notes = []
    if not batch.single_token:
        notes.append("multi-token completions: the attribution is of their first tokens only")
    return LogitAttributionResult(
        direction=f"W_U[{tokens[0]!r}] - W_U[{tokens[1]!r}] at the last prompt position",
        logit_diff=float(actual.mean()),
        per_prompt=actual.tolist(),
        constant=float(constant.mean()),
        total=float(total.mean()),
        components=components,
        top=sorted(fine, key=lambda c: abs(c.value), reverse=True)[: args.top_k],
        notes=notes,
    )


# -- attribution patching ---------------------------------------------------------------------


class AttributionArgs(Behaviour):
    baseline: Baseline | None = Field(
        None,
        description="What a component is patched to: 'contrast' (its activation on the contrast "
        "prompts), 'mean' (its mean over the clean tokens) or 'zero'. Default: 'contrast' when "
        "contrast prompts are given, else 'mean'.",
    )
    contrast: list[str] | None = Field(
        None,
        description="One prompt per prompt, each with as many tokens as its prompt, that does "
        "not show the behaviour (e.g. the same question about carrots).",
    )
    neurons: bool = Field(False, description="Also estimate every MLP neuron (top_k listed).")
    top_k: int = Field(
        10, ge=0, le=200, description="How many top estimates to verify by real patching."
    )


class Attribution(BaseModel):
    component: str  # blocks.{i}.attn.heads[h] | blocks.{i}.attn.out | blocks.{i}.mlp.out | ...
    site: str
    index: int | None = None  # the head or the neuron; None for the whole site
    estimate: float  # attribution patching's first-order change of the mean log-odds
    measured: float | None = None  # the change measured by really patching (top_k only)


class AttributionResult(BaseModel):
    baseline: str
    baseline_definition: str
    clean_log_odds: float  # mean log-odds of the clean prompts
    baseline_log_odds: float | None  # mean log-odds of the contrast prompts (contrast only)
    components: list[Attribution]  # every head, attn.out and mlp.out, by |estimate|
    neurons: list[Attribution]  # the top_k MLP neurons by |estimate| (when asked)
    joint: list[str]  # the verified components whose estimate lowers the log-odds, together
    joint_log_odds: float | None  # the mean log-odds with all of `joint` patched at once
    removed_share: float | None  # 1 - joint_log_odds / clean_log_odds (> 1: the sign flipped)
    notes: list[str]


@dataclass
class CleanPass:
    """The clean run: activations, gradients of the mean log-odds at them, and the metric."""

    values: dict[str, Tensor]
    grads: dict[str, Tensor]
    log_odds: float


def component_sites(model: nn.Module, neurons: bool = False) -> list[str]:
    sites = []
    for i in range(n_blocks(model)):
        sites += [f"blocks.{i}.attn.heads", f"blocks.{i}.attn.out", f"blocks.{i}.mlp.out"]
        if neurons:
            sites.append(f"blocks.{i}.mlp.neurons")
    return sites


def clean_pass(model: nn.Module, batch: MetricBatch, sites: Sequence[str]) -> CleanPass:
    """One forward and one backward: ``∂ mean log-odds / ∂ activation`` at every site.

    Parameters are frozen for the pass (and restored) and the embedding output is made the leaf
    that requires grad, so the backward computes activation gradients only, no weight gradients.
    (Stacking the contrast prompts into this forward was measured and not kept: no faster on the
    small organism, 1.17x slower on SmolLM2, as the backward then runs over both halves.)
    """
    params = list(model.parameters())
    trainable = [p.requires_grad for p in params]

    def leaf(value: Tensor) -> Tensor:
        return value.detach().requires_grad_(True)

    try:
        for p in params:
            p.requires_grad_(False)
        with (
            torch.enable_grad(),
            hooked(model, capture=sites, patch={"embed": leaf}, keep_grad=True) as store,
        ):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            metric = batch.log_odds(logits).mean()
            live = [store[s] for s in sites]
            grads = torch.autograd.grad(metric, live, allow_unused=True)
    finally:
        for p, flag in zip(params, trainable, strict=True):
            p.requires_grad_(flag)
    return CleanPass(
        values={s: v.detach() for s, v in zip(sites, live, strict=True)},
        grads={
            s: torch.zeros_like(v) if g is None else g
            for s, v, g in zip(sites, live, grads, strict=True)
        },
        log_odds=float(metric.detach()),
    )


def contrast_batch(
    subject: Any, batch: MetricBatch, contrast: Sequence[str], chat: bool
) -> MetricBatch:
    """The contrast prompts as a batch laid out exactly like ``batch`` (or a one-line error)."""
    if len(contrast) != batch.n_prompts:
        raise SelfscopeError(
            f"give one contrast prompt per prompt: {batch.n_prompts} prompts, "
            f"{len(contrast)} contrast prompts"
        )
    other = MetricBatch(subject, contrast, batch.planted_text, batch.normal_text, chat)
    for i in range(batch.n_prompts):
        n, m = batch.prompt_length(i), other.prompt_length(i)
        if n != m:
            raise SelfscopeError(
                f"contrast prompt {i} {contrast[i]!r} is {m} tokens but its prompt "
                f"{batch.prompts[i]!r} is {n}; each contrast prompt needs as many tokens as its "
                "prompt"
            )
    if batch.input_ids.shape != other.input_ids.shape or not torch.equal(
        batch.attention_mask, other.attention_mask
    ):
        raise SelfscopeError(
            "the completions split into different numbers of tokens after the contrast prompts; "
            "use contrast prompts that end like the prompts"
        )
    return other


def baseline_values(
    kind: Baseline,
    clean: CleanPass,
    batch: MetricBatch,
    contrast: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Each site's baseline activation, the shape of its clean activation (see BASELINES)."""
    if kind == "contrast":
        if contrast is None:
            raise SelfscopeError("baseline 'contrast' needs contrast prompts; give `contrast`")
        return contrast
    if kind == "zero":
        return {s: torch.zeros_like(v) for s, v in clean.values.items()}
    mask = batch.attention_mask.bool()
    return {s: v[mask].mean(0).expand_as(v).clone() for s, v in clean.values.items()}


def _label(site: str, index: int | None) -> str:
    return site if index is None else f"{site}[{index}]"


def estimates(clean: CleanPass, base: dict[str, Tensor]) -> list[Attribution]:
    """``Σ_positions (a_baseline - a_clean) · ∂metric/∂a`` for every component in ``clean``:
    per head for ``attn.heads``, per neuron for ``mlp.neurons``, whole otherwise."""
    out = []
    for site, value in clean.values.items():
        product = (base[site] - value) * clean.grads[site]
        if site.endswith(".attn.heads"):  # [b, pos, head, d_head]
            per = product.sum(dim=(0, 1, 3)).tolist()
        elif site.endswith(".mlp.neurons"):  # [b, pos, d_mlp]
            per = product.sum(dim=(0, 1)).tolist()
        else:
            out.append(Attribution(component=site, site=site, estimate=float(product.sum())))
            continue
        out += [
            Attribution(component=_label(site, j), site=site, index=j, estimate=e)
            for j, e in enumerate(per)
        ]
    return out


def patches(components: Sequence[Attribution], base: dict[str, Tensor]) -> dict[str, Patch]:
    """Hook patches that set ``components`` (whole sites, heads, neurons) to their baselines."""
    whole: set[str] = {c.site for c in components if c.index is None}
    parts: dict[str, list[int]] = {}
    for c in components:
        if c.index is not None and c.site not in whole:
            parts.setdefault(c.site, []).append(c.index)
    out: dict[str, Patch] = {site: base[site] for site in whole}
    for site, indices in parts.items():
        out[site] = _slice_patch(base[site], indices, heads=site.endswith(".attn.heads"))
    return out


def _slice_patch(reference: Tensor, indices: list[int], heads: bool) -> Patch:
    index = torch.tensor(indices)

    def patch(value: Tensor) -> Tensor:
        new = value.clone()
        if heads:  # [b, pos, head, d_head]
            new[:, :, index] = reference[:, :, index]
        else:  # [b, pos, neuron]
            new[..., index] = reference[..., index]
        return new

    return patch


def patched_log_odds(model: nn.Module, batch: MetricBatch, patch: dict[str, Patch]) -> float:
    """The mean log-odds of the batch with ``patch`` applied (one forward)."""
    return batch.measure_with(
        lambda ids, mask: _logits(run(model, ids, mask, patch=patch).logits)
    ).log_odds


def _logits(logits: Tensor | None) -> Tensor:
    assert logits is not None
    return logits


@dataclass
class Attributed:
    clean: CleanPass
    base: dict[str, Tensor]  # each site's baseline activation
    found: list[Attribution]  # every component's estimate, in model order
    baseline_log_odds: float | None  # of the contrast prompts


def attribute(
    model: nn.Module,
    batch: MetricBatch,
    kind: Baseline,
    contrast: MetricBatch | None = None,
    neurons: bool = False,
) -> Attributed:
    """Attribution patching proper: the clean forward and backward, the contrast forward (for
    the contrast baseline) and every component's estimate. No verification."""
    sites = component_sites(model, neurons)
    clean = clean_pass(model, batch, sites)
    values, log_odds = None, None
    if contrast is not None:
        result = run(model, contrast.input_ids, contrast.attention_mask, capture=sites)
        values, log_odds = result.values, contrast.value(_logits(result.logits)).log_odds
    base = baseline_values(kind, clean, batch, values)
    return Attributed(clean, base, estimates(clean, base), log_odds)


def _behaviour_mode(args: AttributionArgs) -> Baseline:
    if args.baseline is None:
        return "contrast" if args.contrast else "mean"
    if args.baseline == "contrast" and not args.contrast:
        raise SelfscopeError("baseline 'contrast' needs contrast prompts; give `contrast`")
    if args.baseline != "contrast" and args.contrast:
        raise SelfscopeError(
            f"contrast prompts are used by baseline 'contrast' only, not {args.baseline!r}; "
            "drop `contrast` or set baseline to 'contrast'"
        )
    return args.baseline


@tool("localize.attribution_patching", AttributionArgs, AttributionResult)
def attribution_patching(ctx: ToolContext, args: AttributionArgs) -> AttributionResult:
    """Attribution patching (AtP): for every attention head, attention output and MLP output
    (and optionally every MLP neuron) the first-order estimate of how much the mean log-odds
    log p(planted) - log p(normal) changes when that component is patched, at every position,
    from its clean value to a baseline: (a_baseline - a_clean) · ∂metric/∂a, from one forward
    and one backward on the prompts. Baselines: 'contrast' (activations on contrast prompts of
    the same token lengths), 'mean' (mean over the clean tokens) or 'zero'. Then the top_k
    components (and top_k neurons) by |estimate| are patched for real, one at a time
    (`measured` beside `estimate`), and those of them whose estimate lowers the log-odds are
    patched together: `removed_share` = 1 - joint_log_odds / clean_log_odds is the share of the
    behaviour they carry (above 1 when the log-odds changes sign). Estimates are first-order:
    they can be far off for large changes (zero or mean ablation of an early MLP) and where
    attention or the softmax saturate; trust `measured` where they disagree."""
    subject = ctx.subject
    model = subject.model
    kind = _behaviour_mode(args)
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    other = contrast_batch(subject, batch, args.contrast, args.chat) if args.contrast else None
    done = attribute(model, batch, kind, other, args.neurons)
    clean, base, found = done.clean, done.base, done.found
    components = sorted(
        (a for a in found if not a.site.endswith(".mlp.neurons")),
        key=lambda a: abs(a.estimate),
        reverse=True,
    )
    neurons = sorted(
        (a for a in found if a.site.endswith(".mlp.neurons")),
        key=lambda a: abs(a.estimate),
        reverse=True,
    )[: args.top_k]
    for a in [*components[: args.top_k], *neurons]:
        a.measured = patched_log_odds(model, batch, patches([a], base)) - clean.log_odds
    sign = 1.0 if clean.log_odds >= 0 else -1.0
    joint = [a for a in components[: args.top_k] if a.estimate * sign < 0]
    joint_log_odds = removed = None
    notes = []
    if joint:
        joint_log_odds = patched_log_odds(model, batch, patches(joint, base))
        if clean.log_odds != 0:
            removed = 1.0 - joint_log_odds / clean.log_odds
    if clean.log_odds <= 0:
        notes.append(
            "the clean mean log-odds is not positive: the prompts do not show the planted "
            "completion, so 'removed' means moved towards 0"
        )
    if not batch.single_token:
        notes.append("multi-token completions: the metric sums each completion's tokens")
    return AttributionResult(
        baseline=kind,
        baseline_definition=BASELINES[kind],
        clean_log_odds=clean.log_odds,
        baseline_log_odds=done.baseline_log_odds,
        components=components,
        neurons=neurons,
        joint=[a.component for a in joint],
        joint_log_odds=joint_log_odds,
        removed_share=removed,
        notes=notes,
    )
