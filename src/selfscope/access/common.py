"""Shared input handling for the access tools: prompts to token ids, token ids to text."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from selfscope.errors import SelfscopeError
from selfscope.subject.ask import TokenProb
from selfscope.subject.tokens import first_token_id


class PromptArgs(BaseModel):
    prompt: str = Field(min_length=1, description="The text to run the model on.")
    chat: bool = Field(False, description="Wrap the prompt in the model's chat template.")


def context_length(subject: Any) -> int:
    config = subject.model.config
    return int(getattr(config, "max_position_embeddings", None) or config.n_positions)


def prompt_text(subject: Any, prompt: str, chat: bool = False) -> str:
    """The text actually fed to the model (through the chat template when ``chat``)."""
    tokenizer = subject.tokenizer
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise SelfscopeError(f"{subject.source} has no chat template; call with chat=false")
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return str(out)


def encode(subject: Any, prompt: str, chat: bool = False) -> torch.Tensor:
    """``prompt`` as a [1, n] id tensor, refused when longer than the model's context."""
    ids = subject.tokenizer(prompt_text(subject, prompt, chat), return_tensors="pt")["input_ids"]
    limit = context_length(subject)
    if ids.shape[1] > limit:
        raise SelfscopeError(
            f"the prompt is {ids.shape[1]} tokens; {subject.source} takes at most {limit}"
        )
    if ids.shape[1] == 0:
        raise SelfscopeError("the prompt is empty; give at least one token")
    out: torch.Tensor = ids.to(next(subject.model.parameters()).device)
    return out


def encode_with_completion(
    subject: Any, prompt: str, completion: str | None, chat: bool = False
) -> tuple[torch.Tensor, int]:
    """``prompt`` (through the chat template when ``chat``) followed by ``completion``'s tokens,
    as a [1, n] id tensor, and the number of prompt tokens; refused beyond the context."""
    prompt_ids = encode(subject, prompt, chat)
    if not completion:
        return prompt_ids, prompt_ids.shape[1]
    extra = subject.tokenizer(completion, add_special_tokens=False, return_tensors="pt")
    ids = torch.cat([prompt_ids, extra["input_ids"].to(prompt_ids.device)], dim=1)
    limit = context_length(subject)
    if ids.shape[1] > limit:
        raise SelfscopeError(
            f"prompt + completion are {ids.shape[1]} tokens; {subject.source} takes at most {limit}"
        )
    return ids, prompt_ids.shape[1]


def position_index(position: int, n: int, what: str = "position") -> int:
    """A position in ``0..n-1`` (negative counts from the end), or a one-line error."""
    index = position if position >= 0 else n + position
    if not 0 <= index < n:
        raise SelfscopeError(f"{what} {position} is outside the {n} tokens (valid: {-n}..{n - 1})")
    return index


def per_position(site: str, value: torch.Tensor, n: int) -> torch.Tensor:
    """A value captured at ``site`` on a batch of one, as [n, ...]: one entry per position."""
    if site.endswith(".attn.pattern"):  # [1, head, query, key] -> [query, head, key]
        return value[0].transpose(0, 1)
    if site.endswith(".moe.router"):  # [tokens, experts], tokens flattened over the batch
        return value.view(n, -1)
    return value[0]


def token_strings(subject: Any, ids: torch.Tensor) -> list[str]:
    """Each token of a [1, n] id tensor, decoded on its own."""
    return [subject.tokenizer.decode([int(i)]) for i in ids[0]]


def first_token(subject: Any, text: str, target: str) -> int:
    """The id of ``target``'s first token when it follows the model input ``text``."""
    return first_token_id(subject.tokenizer, text, target)


def top_tokens(subject: Any, probs: torch.Tensor, k: int) -> list[TokenProb]:
    values, ids = probs.topk(k)
    return [
        TokenProb(token=subject.tokenizer.decode([int(i)]), id=int(i), probability=float(v))
        for v, i in zip(values, ids, strict=True)
    ]
