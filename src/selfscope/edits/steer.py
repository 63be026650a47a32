"""``edits.steer``: subtract a behaviour's direction from the residual stream.

The steering direction at block ``i`` is the difference of mean activations (Turner et al.
2023, "activation addition"; Rimsky et al. 2024, contrastive activation addition): the mean
residual ``blocks.{i}.resid_post`` at the last token of the prompts that show the behaviour,
minus the mean over ``contrast_prompts`` where the model answers normally. The edit adds
``−α ·`` that direction at every position after block ``i``. A constant added after a block is
a bias on the block's MLP output: folded into ``down_proj.bias`` / ``c_proj.bias`` where the
architecture has one; Llama-family models have none, so there it is stored as a runtime
intervention at ``blocks.{i}.mlp.out`` that the sandbox applies with a hook (and a later
version will carry).

``alpha: "auto"`` takes the smallest of 0.25, 0.5, 1, 1.5, 2, 3, 4 that fixes every prompt;
``layer`` unset compares every block (at most 8; else the middle third) and keeps the one whose
α fixes the prompts with the least drift on corpus text (mean KL of next-token distributions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.access.common import prompt_text
from selfscope.behaviour import Evidence
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import drift
from selfscope.edits.common import (
    ProposalResult,
    ProposeArgs,
    base_sha,
    begin,
    check_layer,
    working_model,
)
from selfscope.edits.keys import corpus_rows
from selfscope.edits.proposal import RUNTIME
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject.adapters import resolve
from selfscope.subject.hooks import hooked
from selfscope.tools import ToolContext

ALPHAS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


class SteerArgs(ProposeArgs):
    contrast_prompts: list[str] = Field(
        default_factory=list, description="Prompts where the model answers normally."
    )
    layer: int | None = Field(None, description="The block after which to steer.")
    alpha: float | Literal["auto"] = Field("auto", description="Scale of the direction.")
    drift_rows: int = Field(32, ge=1, description="Corpus rows for the layer comparison.")


def _last_resid(
    subject: Any, model: nn.Module, prompts: list[str], chat: bool, layers: list[int]
) -> dict[int, Tensor]:
    sites = [f"blocks.{i}.resid_post" for i in layers]
    out: dict[int, list[Tensor]] = {i: [] for i in layers}
    device = next(model.parameters()).device
    for p in prompts:
        ids = torch.tensor(
            [subject.tokenizer(prompt_text(subject, p, chat))["input_ids"]], device=device
        )
        with torch.no_grad(), hooked(model, capture=sites) as store:
            model(input_ids=ids)
        for i in layers:
            out[i].append(store[f"blocks.{i}.resid_post"][0, -1])
    return {i: torch.stack(v).mean(0) for i, v in out.items()}


def _hooked(model: nn.Module, patch: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    def run(ids: Tensor, mask: Tensor) -> Tensor:
        with hooked(model, patch=patch):
            logits: Tensor = model(input_ids=ids, attention_mask=mask).logits
        return logits

    return run


@tools.tool("edits.steer", SteerArgs, ProposalResult, permission="propose")
def propose_steer(ctx: ToolContext, args: SteerArgs) -> ProposalResult:
    """Propose subtracting the behaviour's steering direction (mean last-token residual on the
    prompts minus on contrast prompts) after one block, folded into the MLP output bias where
    the architecture has one, else as a runtime intervention. Stores the proposal."""
    subject = ctx.subject
    started = time.perf_counter()
    if not args.contrast_prompts:
        raise SelfscopeError(
            "steer needs contrast_prompts: prompts where the model answers normally"
        )
    if args.alpha != "auto" and args.alpha <= 0:
        raise SelfscopeError(f"alpha must be positive or 'auto', not {args.alpha}")
    workspace = ctx.workspace
    parents = begin(ctx, args)
    if args.layer is not None:
        check_layer(subject, args.layer)
        layers = [args.layer]
    elif subject.n_layers <= 8:
        layers = list(range(subject.n_layers))
    else:
        third = subject.n_layers // 3
        layers = list(range(third, 2 * third))
    pad = int(subject.tokenizer.pad_token_id or 0)
    rows, _ = corpus_rows(subject, ctx.workspace, args.drift_rows, seed=3)
    alphas = ALPHAS if args.alpha == "auto" else (float(args.alpha),)
    with working_model(subject, workspace, parents) as model:
        plus = _last_resid(subject, model, args.prompts, args.chat, layers)
        minus = _last_resid(subject, model, args.contrast_prompts, args.chat, layers)
        batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
        tried: list[dict[str, Any]] = []
        for layer in layers:
            direction = plus[layer] - minus[layer]
            for alpha in alphas:
                vector = -alpha * direction
                patch = {f"blocks.{layer}.mlp.out": lambda v, vec=vector: v + vec}
                with hooked(model, patch=patch):
                    value = batch.measure(model)
                if value.rate == 0 or alpha == alphas[-1]:
                    tried.append(
                        {
                            "layer": layer,
                            "alpha": alpha,
                            "rate": value.rate,
                            "log_odds": value.log_odds,
                            "drift": drift(model, rows, pad, _hooked(model, patch)),
                            "vector": vector,
                        }
                    )
                    break
        best = min(tried, key=lambda t: (t["rate"], t["drift"]))
        site = resolve(model, f"blocks.{best['layer']}.mlp.out")
        module = model.get_submodule(site.module)
        bias_module = None
        for child_name in ("down_proj", "c_proj", "dense_4h_to_h"):  # llama, gpt2, gpt_neox
            child = getattr(module, child_name, None)
            if child is not None and getattr(child, "bias", None) is not None:
                bias_module = f"{site.module}.{child_name}.bias"
    chosen: Tensor = best["vector"]
    key = bias_module or f"{RUNTIME}blocks.{best['layer']}.mlp.out"
    proposal = proposals.make(
        ctx,
        cited=args.evidence,
        kind="steer",
        behaviour=args.behaviour(),
        parameters={
            "layer": best["layer"],
            "alpha": best["alpha"],
            "contrast_prompts": args.contrast_prompts,
            "stored_as": "bias" if bias_module else "runtime",
        },
        delta={key: chosen},
        rationale=args.rationale
        or f"subtract {best['alpha']:g} x the behaviour direction after block {best['layer']}",
        evidence=[
            Evidence(
                tool="edits.steer",
                summary=f"blocks compared {layers}: block {best['layer']} with alpha "
                f"{best['alpha']:g} "
                f"leaves rate {best['rate']:.2f} on the prompts, drift {best['drift']:.4f}",
                numbers={
                    "candidates": [{k: v for k, v in t.items() if k != "vector"} for t in tried]
                },
            )
        ],
        started=started,
        parents=parents,
        base_sha256=base_sha(subject, workspace, parents),
    )
    return ProposalResult(proposal=proposal)
