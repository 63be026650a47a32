"""``lens.logit``: the logit lens (nostalgebraist 2020).

Apply the model's own final normalisation and unembedding to the residual stream after every
block, as if the network stopped there, and read the next-token distribution each layer
"believes". Where a target token's probability jumps tells at which depth the answer forms. At
the last block the lens *is* the model's output (tested). Cheap: one forward pass with every
``resid_post`` captured.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from selfscope.access.common import (
    PromptArgs,
    encode,
    first_token,
    position_index,
    prompt_text,
    top_tokens,
)
from selfscope.subject.adapters import resolve
from selfscope.subject.ask import TokenProb
from selfscope.subject.hooks import run
from selfscope.tools import ToolContext, tool


class LensArgs(PromptArgs):
    targets: list[str] = Field(default_factory=list, description="Tokens to follow, e.g. ' No'.")
    top_k: int = Field(5, ge=1, le=100)
    position: int = Field(-1, description="Which prompt position to read (default: the last).")


class LensLayer(BaseModel):
    layer: int
    top: list[TokenProb]
    targets: dict[str, float]


class LensResult(BaseModel):
    prompt_tokens: int
    position: int
    target_ids: dict[str, int]
    layers: list[LensLayer]


@tool("lens.logit", LensArgs, LensResult)
def logit_lens(ctx: ToolContext, args: LensArgs) -> LensResult:
    """Logit lens: for every block, the next-token distribution obtained by applying the final
    norm and unembedding to that block's output residual; top-k tokens and the probability of
    each target token per layer."""
    subject = ctx.subject
    model = subject.model
    ids = encode(subject, args.prompt, args.chat)
    n = ids.shape[1]
    position = position_index(args.position, n)
    layers = subject.n_layers
    sites = [f"blocks.{i}.resid_post" for i in range(layers)]
    values = run(model, ids, capture=sites, need_logits=False).values
    norm = model.get_submodule(resolve(model, "final_norm").module)
    unembed = model.get_submodule(resolve(model, "unembed").module)
    text = prompt_text(subject, args.prompt, args.chat)
    targets = {t: first_token(subject, text, t) for t in args.targets}
    out = []
    with torch.no_grad():
        for i in range(layers):
            resid = values[f"blocks.{i}.resid_post"][0, position]
            probs = torch.softmax(unembed(norm(resid)).float(), dim=-1)
            out.append(
                LensLayer(
                    layer=i,
                    top=top_tokens(subject, probs, args.top_k),
                    targets={t: float(probs[j]) for t, j in targets.items()},
                )
            )
    return LensResult(prompt_tokens=n, position=position, target_ids=targets, layers=out)
