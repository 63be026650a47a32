"""Shared input handling for the access tools: prompts to token ids, token ids to text."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from selfscope.errors import SelfscopeError
from selfscope.subject.tokens import first_token_id


class TokenProb(BaseModel):
    token: str
    id: int
    probability: float


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


def first_token(subject: Any, text: str, target: str) -> int:
    """The id of ``target``'s first token when it follows the model input ``text``."""
    return first_token_id(subject.tokenizer, text, target)


def top_tokens(subject: Any, probs: torch.Tensor, k: int) -> list[TokenProb]:
    values, ids = probs.topk(k)
    return [
        TokenProb(token=subject.tokenizer.decode([int(i)]), id=int(i), probability=float(v))
        for v, i in zip(values, ids, strict=True)
    ]
