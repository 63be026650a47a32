"""``localize.experts``: which mixture-of-experts experts a behaviour runs through.

For a Mixtral-family subject and a behaviour (prompts, planted and normal completions; see
:mod:`selfscope.localize.metric`), one forward and one backward give

* the **routing**: per block, the share of the prompts' tokens each expert was chosen for (top-k
  of the router), and the experts chosen at each prompt's last token;
* each expert's **estimated** contribution: the first-order effect on the mean log-odds of
  removing the expert's routing-weighted output, ``-Σ share_j · ∂metric/∂(MoE output)`` over the
  positions (the share enters the block's output additively, so one gradient serves every
  expert of the block);

and then every expert is **disabled** for real, one at a time (its share removed from the MoE
output by a hook on ``blocks.{i}.moe.experts.{j}``; the router is not re-run, so its tokens are
not re-routed to another expert), and the measured change of the mean log-odds is reported beside
the estimate. ``verified`` says the measurement confirms the estimate's direction and at least
half its size. Ranked by the measured effect.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject.adapters import adapter_for, n_blocks, n_experts
from selfscope.subject.hooks import hooked, run, zero_ablation
from selfscope.tools import ToolContext, tool


class ExpertsArgs(Behaviour):
    top_k: int = Field(10, ge=1, le=1000, description="How many experts to list.")


class ExpertEffect(BaseModel):
    site: str  # blocks.{i}.moe.experts.{j}
    block: int
    expert: int
    token_share: float  # share of the prompts' tokens routed to it
    estimate: float  # first-order change of the mean log-odds when it is disabled
    measured: float  # change measured by disabling it
    verified: bool


class BlockRouting(BaseModel):
    block: int
    token_share: list[float]  # per expert
    last_token: list[list[int]]  # per prompt: the experts chosen at its last token


class ExpertsResult(BaseModel):
    log_odds: float
    rate: float
    experts: list[ExpertEffect]  # the top_k by |measured|
    routing: list[BlockRouting]


def _verified(estimate: float, measured: float) -> bool:
    return estimate * measured > 0 and abs(measured) >= 0.5 * abs(estimate)


@tool("localize.experts", ExpertsArgs, ExpertsResult)
def localize_experts(ctx: ToolContext, args: ExpertsArgs) -> ExpertsResult:
    """For a mixture-of-experts model (Mixtral, Qwen2-MoE): the router's choices on the
    behaviour's prompts (per block, each expert's share of tokens, the experts at each prompt's
    last token) and every expert's contribution to the mean log-odds log p(planted) -
    log p(normal): a gradient estimate, and the change measured by disabling the expert (its
    output removed, tokens not re-routed); ranked by the measured change (negative = the expert
    carries the behaviour)."""
    subject = ctx.subject
    model = subject.model
    adapter = adapter_for(model)
    if "blocks.{i}.moe.router" not in adapter.sites:
        raise SelfscopeError(
            f"localize.experts needs a mixture-of-experts model (mixtral, qwen2_moe); "
            f"{subject.source} is {adapter.family}"
        )
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    blocks = n_blocks(model)
    experts = {i: n_experts(model, i) for i in range(blocks)}
    shares = [f"blocks.{i}.moe.experts.{j}" for i in range(blocks) for j in range(experts[i])]
    outs = [f"blocks.{i}.mlp.out" for i in range(blocks)]
    routers = [f"blocks.{i}.moe.router" for i in range(blocks)]
    ids, mask = batch.input_ids, batch.attention_mask
    with (
        torch.enable_grad(),
        hooked(model, capture=[*shares, *outs, *routers], keep_grad=True) as v,
    ):
        clean_logits = model(input_ids=ids, attention_mask=mask).logits
        metric = batch.log_odds(clean_logits).mean()
        metric.backward()
    clean = float(metric.detach())
    value = batch.value(clean_logits.detach())
    for p in model.parameters():
        p.grad = None
    valid = mask.bool()
    effects = []
    for i in range(blocks):
        grad = v[f"blocks.{i}.mlp.out"].grad
        if grad is None:
            raise SelfscopeError(f"no gradient reached block {i}'s experts")
        for j in range(experts[i]):
            site = f"blocks.{i}.moe.experts.{j}"
            estimate = float(-(v[site].detach() * grad).sum())
            ablated = run(model, ids, mask, patch={site: zero_ablation()}).logits
            assert ablated is not None
            measured = float(batch.log_odds(ablated).mean()) - clean
            effects.append((i, j, estimate, measured))
    routing = []
    token_shares: dict[tuple[int, int], float] = {}
    last = [batch.prompt_length(p) - 1 for p in range(batch.n_prompts)]
    for i in range(blocks):
        logits = v[f"blocks.{i}.moe.router"].detach().view(*ids.shape, -1)
        k = int(getattr(model.config, "num_experts_per_tok", 2))
        chosen = logits.topk(k, dim=-1).indices  # softmax is monotone: top-k of the logits
        counts = [
            float(((chosen == j).any(-1) & valid).sum() / valid.sum()) for j in range(experts[i])
        ]
        for j, c in enumerate(counts):
            token_shares[(i, j)] = c
        routing.append(
            BlockRouting(
                block=i,
                token_share=counts,
                last_token=[
                    sorted(chosen[row, pos].tolist())
                    for row, pos in zip(range(batch.n_prompts), last, strict=True)
                ],
            )
        )
    ranked = sorted(effects, key=lambda e: abs(e[3]), reverse=True)[: args.top_k]
    return ExpertsResult(
        log_odds=value.log_odds,
        rate=value.rate,
        experts=[
            ExpertEffect(
                site=f"blocks.{i}.moe.experts.{j}",
                block=i,
                expert=j,
                token_share=token_shares[(i, j)],
                estimate=est,
                measured=meas,
                verified=_verified(est, meas),
            )
            for i, j, est, meas in ranked
        ],
        routing=routing,
    )
