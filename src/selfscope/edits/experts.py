"""``edits.reweight_experts``: route a behaviour's tokens away from the experts that carry it.

In a mixture-of-experts layer the router scores expert ``e`` on a token's hidden state ``x`` as
``w_eᵀ x`` (``gate.weight[e]``). Mixtral's router has no bias, so a plain "expert bias" cannot
be stored as weights; and a bias would move the expert for every token anyway. This edit lowers
the expert's router logit by ``b`` *on the behaviour's tokens* and as little as possible
elsewhere, the way ROME writes a key: with ``K`` the router inputs at the prompts' last tokens
and ``C = E[x xᵀ]`` their second moment over corpus text, ``Δw_e = −b · 1ᵀ (Kᵀ C⁻¹ K)⁻¹ Kᵀ C⁻¹``
— the change of least ``C``-norm that lowers ``w_eᵀ k`` by exactly ``b`` for every key ``k`` in
``K``. The experts are those ``localize.experts`` measured as carrying the behaviour (disabling
them lowers its log-odds; verified estimates), unless given; ``bias: "auto"`` takes the smallest
of 1, 2, 4, 8, 16 that removes ``target`` of the log-odds on the prompts.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.access.common import prompt_text
from selfscope.behaviour import Evidence
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import batches, with_weights
from selfscope.edits.common import (
    ProposalResult,
    ProposeArgs,
    base_sha,
    begin,
    check_layer,
    working_model,
)
from selfscope.edits.keys import corpus_rows
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject.adapters import n_experts, resolve
from selfscope.tools import ToolContext

BIASES = (1.0, 2.0, 4.0, 8.0, 16.0)
_UNIT = re.compile(r"^(\d+)\.(\d+)$")


class ReweightArgs(ProposeArgs):
    experts: list[str] | None = Field(
        None, description="Experts as 'block.expert' (default: localize.experts' carriers)."
    )
    top: int = Field(2, ge=1, description="How many carriers to take when experts are not given.")
    bias: float | Literal["auto"] = Field("auto", description="Router logit decrease b.")
    target: float = Field(0.8, gt=0, le=1, description="Share of the log-odds 'auto' removes.")
    key_rows: int = Field(256, ge=8, description="Corpus rows for the router inputs' C.")


def _gate(model: nn.Module, block: int) -> tuple[str, nn.Module]:
    try:
        site = resolve(model, f"blocks.{block}.moe.router")
    except SelfscopeError:
        raise SelfscopeError(
            "reweight_experts needs a mixture-of-experts model; this one is dense (use "
            "rank_one, revert_delta or ablate)"
        ) from None
    return f"{site.module}.weight", model.get_submodule(site.module)


def _router_inputs(
    model: nn.Module, gates: dict[int, nn.Module], ids: Tensor, mask: Tensor
) -> dict[int, Tensor]:
    """Each gate's input [batch, positions, d_model] on one forward."""
    seen: dict[int, Tensor] = {}
    handles = []
    for block, gate in gates.items():

        def hook(module: nn.Module, inputs: tuple[Any, ...], block: int = block) -> None:
            seen[block] = inputs[0].detach().reshape(*ids.shape, -1)

        handles.append(gate.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return seen


@tools.tool("edits.reweight_experts", ReweightArgs, ProposalResult, permission="propose")
def propose_reweight(ctx: ToolContext, args: ReweightArgs) -> ProposalResult:
    """Propose lowering the router logits of the experts that carry a behaviour (MoE models),
    on the behaviour's tokens only (a least-norm change of the router rows under the router
    inputs' second moment). Stores the proposal (never touches the subject)."""
    subject = ctx.subject
    started = time.perf_counter()
    _gate(subject.model, 0)  # dense model: one clear line before any work
    workspace = ctx.workspace
    parents = begin(ctx, args)
    evidence: list[Evidence] = []
    if args.experts is None:
        from selfscope.localize.experts import ExpertsResult

        located = ctx.call("localize.experts", args.behaviour())
        found: ExpertsResult = located.result
        carriers = [e for e in found.experts if e.verified and e.measured < 0][: args.top]
        if not carriers:
            raise SelfscopeError(
                "localize.experts found no expert that carries the behaviour; give `experts`"
            )
        units = [(e.block, e.expert) for e in carriers]
        evidence.append(
            Evidence(
                tool="localize.experts",
                call_id=located.id,
                summary="disabling "
                + ", ".join(f"{e.block}.{e.expert} ({e.measured:+.2f})" for e in carriers)
                + " lowers the log-odds",
                numbers={"experts": [e.model_dump() for e in carriers]},
            )
        )
    else:
        units = []
        for item in args.experts:
            match = _UNIT.match(item)
            if not match:
                raise SelfscopeError(f"expert {item!r}: write 'block.expert', e.g. '1.3'")
            block, expert = int(match[1]), int(match[2])
            check_layer(subject, block)
            _gate(subject.model, block)
            if not 0 <= expert < n_experts(subject.model, block):
                raise SelfscopeError(
                    f"expert {item!r}: block {block} has experts "
                    f"0..{n_experts(subject.model, block) - 1}"
                )
            units.append((block, expert))
    pad = int(subject.tokenizer.pad_token_id or 0)
    with working_model(subject, workspace, parents) as model:
        gates = {b: _gate(model, b)[1] for b, _ in units}
        device = next(model.parameters()).device
        rows, _ = corpus_rows(subject, ctx.workspace, args.key_rows, seed=4)
        second: dict[int, Tensor] = {}
        count = 0
        for ids, mask in batches(rows, pad, device):
            for b, x in _router_inputs(model, gates, ids, mask).items():
                x = x[mask.bool()].double()
                second[b] = second.get(b, 0) + x.T @ x
            count += int(mask.sum())
        keys: dict[int, Tensor] = {}
        for p in args.prompts:
            ids = torch.tensor(
                [subject.tokenizer(prompt_text(subject, p, args.chat))["input_ids"]], device=device
            )
            for b, x in _router_inputs(model, gates, ids, torch.ones_like(ids)).items():
                keys[b] = torch.cat(
                    [keys.get(b, torch.empty(0, x.shape[-1], device=device)), x[0, -1:]]
                )
        directions: dict[tuple[int, int], Tensor] = {}
        for b, e in units:
            c = second[b] / count
            c = c + 1e-4 * torch.trace(c) / c.shape[0] * torch.eye(c.shape[0], dtype=c.dtype)
            k = keys[b].double().T  # [d, n]
            ck = torch.linalg.solve(c, k)  # C⁻¹ K
            gram = k.T @ ck  # Kᵀ C⁻¹ K
            ones = torch.ones(k.shape[1], dtype=k.dtype)
            directions[(b, e)] = -(
                ck @ torch.linalg.lstsq(gram, ones.unsqueeze(1)).solution.squeeze(1)
            ).float()
        batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
        before = batch.measure(model)
        biases = BIASES if args.bias == "auto" else (float(args.bias),)
        tried = {}
        chosen = biases[-1]
        delta: dict[str, Tensor] = {}
        for bias in biases:
            delta = {}
            for (b, e), d in directions.items():
                name, gate = _gate(model, b)
                own: Tensor = gate.weight  # type: ignore[assignment]
                change = delta.get(name, torch.zeros_like(own.detach()))
                change[e] += bias * d
                delta[name] = change
            params = dict(model.named_parameters())
            swap = {n: params[n].detach() + d for n, d in delta.items()}
            value = batch.measure_with(with_weights(model, swap))
            tried[bias] = {"rate": value.rate, "log_odds": value.log_odds}
            chosen = bias
            if value.log_odds <= (1 - args.target) * before.log_odds:
                break
    evidence.append(
        Evidence(
            tool="edits.reweight_experts",
            summary=f"router logit -{chosen:g} for experts "
            f"{', '.join(f'{b}.{e}' for b, e in units)} on the prompts' last tokens: log-odds "
            f"{before.log_odds:.2f} -> {tried[chosen]['log_odds']:.2f}",
            numbers={"biases": tried, "before": before.log_odds},
        )
    )
    proposal = proposals.make(
        ctx,
        cited=args.evidence,
        kind="reweight_experts",
        behaviour=args.behaviour(),
        parameters={
            "experts": [f"{b}.{e}" for b, e in units],
            "bias": chosen,
            "target": args.target,
        },
        delta=delta,
        rationale=args.rationale
        or "route the behaviour's tokens away from the experts that carry it",
        evidence=evidence,
        started=started,
        parents=parents,
        base_sha256=base_sha(subject, workspace, parents),
    )
    return ProposalResult(proposal=proposal)
