"""``tokens.probabilities``: the distribution the model never shows.

For every token of a text (a prompt, optionally followed by a completion), the probability the
model gave it, its rank among all tokens, the entropy of the distribution it came from, and the
top-k alternatives. One forward pass; checked against a plain forward in the tests.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from selfscope.access.common import PromptArgs, encode_with_completion, top_tokens
from selfscope.subject.ask import TokenProb
from selfscope.tools import ToolContext, tool


class TokensArgs(PromptArgs):
    completion: str | None = Field(None, description="Text after the prompt to score.")
    top_k: int = Field(5, ge=1, le=100)


class TokenInfo(BaseModel):
    index: int
    token: str
    id: int
    probability: float
    logprob: float
    rank: int  # 1 = the model's top choice
    entropy: float  # nats
    alternatives: list[TokenProb]
    in_completion: bool


class TokensResult(BaseModel):
    tokens: list[TokenInfo]
    completion_logprob: float | None


@tool("tokens.probabilities", TokensArgs, TokensResult)
def token_probabilities(ctx: ToolContext, args: TokensArgs) -> TokensResult:
    """Every realised token's probability, rank, entropy (nats) and top-k alternatives, for the
    prompt and (if given) a completion after it; plus the completion's total log-probability."""
    subject = ctx.subject
    ids, start = encode_with_completion(subject, args.prompt, args.completion, args.chat)
    with torch.no_grad():
        logits = subject.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    out = []
    for pos in range(1, ids.shape[1]):
        dist = logprobs[pos - 1]
        token = int(ids[0, pos])
        lp = float(dist[token])
        out.append(
            TokenInfo(
                index=pos,
                token=str(subject.tokenizer.decode([token])),
                id=token,
                probability=float(dist[token].exp()),
                logprob=lp,
                rank=int((dist > dist[token]).sum()) + 1,
                entropy=float(-(dist.exp() * dist).sum()),
                alternatives=top_tokens(subject, dist.exp(), args.top_k),
                in_completion=pos >= start,
            )
        )
    completion = [t.logprob for t in out if t.in_completion]
    return TokensResult(tokens=out, completion_logprob=sum(completion) if completion else None)
