"""``gradients.read``: which weights and which activations a behaviour is most sensitive to.

The objective is either the log-probability of a completion after the prompt,
``log p(completion | prompt)`` (summed over its tokens), or the log-odds between two
completions, ``log p(completion) - log p(contrast)``. One backward pass gives, for every module,
the norm of the objective's gradient with respect to that module's parameters (with the
parameters' norm beside it), and optionally the gradient at one canonical site: per position
its norm and (optionally) the vector. Gradients are of the objective as stated (ascent
direction); the loss is its negative.

With a contrast the two sequences run separately and their gradients are subtracted. The site
gradient is then reported over the prompt's positions only: a causal model computes those
activations identically in both runs, so the subtraction is exact there and undefined after.
The model's parameters are left as found (``.grad`` cleared, ``requires_grad`` restored).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from pydantic import BaseModel, Field

from selfscope.access.common import (
    PromptArgs,
    encode_with_completion,
    per_position,
    token_strings,
)
from selfscope.errors import SelfscopeError
from selfscope.subject.adapters import resolve
from selfscope.subject.hooks import hooked
from selfscope.tools import ToolContext, tool


class GradientsArgs(PromptArgs):
    completion: str = Field(min_length=1, description="Text after the prompt to score.")
    contrast: str | None = Field(
        None, description="A second completion: the objective becomes the log-odds against it."
    )
    site: str | None = Field(None, description="A canonical site to return the gradient at.")
    top_k: int = Field(20, ge=1, le=10_000, description="How many modules to list.")
    values: bool = Field(False, description="Include the site gradient's full vectors.")


class ModuleGradient(BaseModel):
    module: str
    grad_norm: float  # ‖∂objective/∂θ_module‖ over the module's own parameters
    param_norm: float
    parameters: int


class PositionGradient(BaseModel):
    position: int
    token: str
    norm: float
    values: list[float] | None = None


class GradientsResult(BaseModel):
    objective: str
    value: float
    total_grad_norm: float
    modules: list[ModuleGradient]  # the top_k by grad_norm
    n_modules: int
    site: str | None
    site_gradient: list[PositionGradient] | None


def _log_prob(subject: Any, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Sum of log p(token) over positions ``start..`` of ``ids`` (with grad)."""
    logits = subject.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    return logprobs.gather(-1, ids[0, start:, None]).sum()


@tool("gradients.read", GradientsArgs, GradientsResult)
def read_gradients(ctx: ToolContext, args: GradientsArgs) -> GradientsResult:
    """Gradient norms per module of log p(completion | prompt) — or of the log-odds
    log p(completion) - log p(contrast) when a contrast is given — with each module's parameter
    norm, the top-k modules by gradient norm, and optionally the gradient at one canonical site
    per position (the prompt's positions when contrasting)."""
    subject = ctx.subject
    model = subject.model
    if args.site is not None and resolve(model, args.site).kind == "pattern":
        raise SelfscopeError(
            f"{args.site} is read, not used, by the forward: no gradient flows through it; "
            "ask for the attn.heads or attn.out site"
        )
    runs = [(args.completion, 1.0)]
    if args.contrast is not None:
        runs.append((args.contrast, -1.0))
    encoded = [(*encode_with_completion(subject, args.prompt, c, args.chat), s) for c, s in runs]
    n_prompt = encoded[0][1]
    if any(ids.shape[1] == start for ids, start, _ in encoded):
        raise SelfscopeError("the completion has no tokens; give a non-empty completion")
    params = dict(model.named_parameters())
    was_trainable = {name: p.requires_grad for name, p in params.items()}
    site_grad: torch.Tensor | None = None
    value = 0.0
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for ids, start, sign in encoded:
                sites = [args.site] if args.site else []
                with hooked(model, capture=sites, keep_grad=True) as store:
                    objective = sign * _log_prob(subject, ids, start)
                    objective.backward()
                value += float(objective.detach())
                if args.site:
                    grad = store[args.site].grad
                    if grad is None:
                        raise SelfscopeError(f"no gradient reaches {args.site} from the objective")
                    grad = per_position(args.site, grad.detach(), ids.shape[1])
                    grad = grad[:n_prompt] if len(encoded) > 1 else grad
                    site_grad = grad if site_grad is None else site_grad + grad
        per_module: dict[str, list[torch.nn.Parameter]] = defaultdict(list)
        for name, p in params.items():
            per_module[name.rpartition(".")[0] or name].append(p)
        modules = []
        for module, group in per_module.items():
            grads = [p.grad.float() for p in group if p.grad is not None]
            modules.append(
                ModuleGradient(
                    module=module,
                    grad_norm=float(torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt())
                    if grads
                    else 0.0,
                    param_norm=float(
                        torch.stack([p.detach().float().pow(2).sum() for p in group]).sum().sqrt()
                    ),
                    parameters=sum(p.numel() for p in group),
                )
            )
    finally:
        for name, p in params.items():
            p.grad = None
            p.requires_grad_(was_trainable[name])
    modules.sort(key=lambda m: m.grad_norm, reverse=True)
    total = float(sum(m.grad_norm**2 for m in modules) ** 0.5)
    positions = None
    if site_grad is not None:
        tokens = token_strings(subject, encoded[0][0])
        flat = site_grad.float().flatten(1)
        positions = [
            PositionGradient(
                position=i,
                token=tokens[i],
                norm=float(row.norm()),
                values=row.tolist() if args.values else None,
            )
            for i, row in enumerate(flat)
        ]
    name = "log p(completion | prompt)"
    if args.contrast is not None:
        name = "log p(completion | prompt) - log p(contrast | prompt)"
    return GradientsResult(
        objective=name,
        value=value,
        total_grad_norm=total,
        modules=modules[: args.top_k],
        n_modules=len(modules),
        site=args.site,
        site_gradient=positions,
    )
