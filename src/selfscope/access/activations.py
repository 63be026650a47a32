"""``activations.read`` and ``attention.read``: what the network computed on a prompt.

Both are one hooked forward pass (:func:`selfscope.subject.hooks.run`) that captures only the
requested sites and stops after the last of them. ``activations.read`` returns, per site and
position, the vector there (optional), its norm and mean, and its top-k components (for
``mlp.neurons`` these are the most active neurons; for ``attn.heads`` the index is
``[head, dim]`` and per-head norms are added). ``attention.read`` returns the attention weights
of one layer (all heads or one) over the prompt's tokens, with each head's most attended keys
for one query. Attention weights need eager attention; the model switches to it only for that
pass (the hooks restore the fused kernel after).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field

from selfscope.access.common import (
    PromptArgs,
    encode,
    per_position,
    position_index,
    token_strings,
)
from selfscope.errors import SelfscopeError
from selfscope.subject.adapters import resolve
from selfscope.subject.hooks import run
from selfscope.tools import ToolContext, tool


class ActivationsArgs(PromptArgs):
    sites: list[str] = Field(
        min_length=1,
        max_length=64,
        description="Canonical sites, e.g. 'blocks.3.mlp.neurons', 'blocks.0.resid_post'.",
    )
    positions: list[int] | None = Field(
        None, description="Token positions to read (negative counts from the end); all if null."
    )
    top_k: int = Field(5, ge=0, le=100, description="Top components per position (0: none).")
    rank_by: Literal["value", "abs"] = Field(
        "value", description="Rank components by signed value (most active) or |value|."
    )
    values: bool = Field(True, description="Include the full vectors (flattened).")


class Component(BaseModel):
    index: list[int]  # index within the per-position value ([neuron], or [head, dim], ...)
    value: float


class PositionActivation(BaseModel):
    position: int
    token: str
    norm: float
    mean: float
    top: list[Component]
    head_norms: list[float] | None = None  # attn.heads only
    values: list[float] | None = None  # flattened, row-major over `shape`


class SiteActivation(BaseModel):
    site: str
    shape: list[int]  # of one position's value
    positions: list[PositionActivation]


class ActivationsResult(BaseModel):
    tokens: list[str]
    sites: list[SiteActivation]


def _top(vector: torch.Tensor, k: int, by_abs: bool) -> list[Component]:
    if k == 0:
        return []
    flat = vector.flatten()
    order = (flat.abs() if by_abs else flat).topk(min(k, flat.numel())).indices
    shape = vector.shape
    out = []
    for i in order.tolist():
        index = [int(x) for x in torch.unravel_index(torch.tensor(i), shape)] if shape else [i]
        out.append(Component(index=index, value=float(flat[i])))
    return out


@tool("activations.read", ActivationsArgs, ActivationsResult)
def read_activations(ctx: ToolContext, args: ActivationsArgs) -> ActivationsResult:
    """Values at canonical sites (see `selfscope tool list`; e.g. blocks.{i}.resid_post,
    blocks.{i}.mlp.neurons, blocks.{i}.attn.heads, blocks.{i}.moe.experts.{j}) for chosen
    prompt positions: norm, mean, top-k components (the most active neurons for mlp.neurons),
    per-head norms for attn.heads, and optionally the full vectors."""
    subject = ctx.subject
    model = subject.model
    ids = encode(subject, args.prompt, args.chat)
    n = ids.shape[1]
    for site in args.sites:
        resolve(model, site)  # one clear error for a bad site before any work
    positions = (
        list(range(n)) if args.positions is None else [position_index(p, n) for p in args.positions]
    )
    captured = run(model, ids, capture=args.sites, need_logits=False).values
    tokens = token_strings(subject, ids)
    sites = []
    for name in args.sites:
        rows_of = per_position(name, captured[name].float(), n)
        rows = []
        for p in positions:
            vector = rows_of[p]
            rows.append(
                PositionActivation(
                    position=p,
                    token=tokens[p],
                    norm=float(vector.norm()),
                    mean=float(vector.mean()),
                    top=_top(vector, args.top_k, args.rank_by == "abs"),
                    head_norms=vector.norm(dim=-1).tolist()
                    if name.endswith(".attn.heads")
                    else None,
                    values=vector.flatten().tolist() if args.values else None,
                )
            )
        sites.append(SiteActivation(site=name, shape=list(rows_of.shape[1:]), positions=rows))
    return ActivationsResult(tokens=tokens, sites=sites)


class AttentionArgs(PromptArgs):
    layer: int = Field(description="Block index (0-based).")
    head: int | None = Field(None, description="One head; all heads of the layer if null.")
    query: int = Field(-1, description="Query position whose top attended keys are listed.")
    top_k: int = Field(5, ge=1, le=100)
    full: bool = Field(True, description="Include the whole [query, key] matrix per head.")


class Attended(BaseModel):
    position: int
    token: str
    weight: float


class HeadPattern(BaseModel):
    head: int
    top: list[Attended]  # for `query`
    entropy: float  # nats, of the `query` row
    pattern: list[list[float]] | None  # [query][key]; zero above the diagonal (causal)


class AttentionResult(BaseModel):
    tokens: list[str]
    layer: int
    query: int
    heads: list[HeadPattern]


@tool("attention.read", AttentionArgs, AttentionResult)
def read_attention(ctx: ToolContext, args: AttentionArgs) -> AttentionResult:
    """Attention weights of one layer (one head or all) over the prompt's tokens: for a query
    position (default the last) each head's top-k attended tokens and the row's entropy, and
    optionally the full [query][key] pattern. Runs eager attention for this one pass."""
    subject = ctx.subject
    model = subject.model
    site = f"blocks.{args.layer}.attn.pattern"
    resolve(model, site)
    ids = encode(subject, args.prompt, args.chat)
    n = ids.shape[1]
    query = position_index(args.query, n, "query")
    pattern = run(model, ids, capture=[site], need_logits=False).values[site][0].float()
    count = pattern.shape[0]
    if args.head is not None and not 0 <= args.head < count:
        raise SelfscopeError(
            f"head {args.head} is out of range; layer {args.layer} has heads 0..{count - 1}"
        )
    tokens = token_strings(subject, ids)
    heads = []
    for h in range(count) if args.head is None else [args.head]:
        row = pattern[h, query]
        k = min(args.top_k, query + 1)
        weights, keys = row.topk(k)
        heads.append(
            HeadPattern(
                head=h,
                top=[
                    Attended(position=int(j), token=tokens[int(j)], weight=float(w))
                    for w, j in zip(weights, keys, strict=True)
                ],
                entropy=float(-(row * row.clamp_min(1e-30).log()).sum()),
                pattern=pattern[h].tolist() if args.full else None,
            )
        )
    return AttentionResult(tokens=tokens, layer=args.layer, query=query, heads=heads)
