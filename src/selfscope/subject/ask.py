"""Ask a Subject a question: its greedy answer and its first-token probabilities.

The plainest way to see what a model does. Greedy decoding takes the single most probable token
at every step (argmax of the logits) and stops at an end-of-sequence token, so the answer is
deterministic and is *the* behaviour that introspection tools then explain. The probabilities
of the first answer token show how sure the model was, and what else it nearly said (the
quantity organism probes compare: ``log p(" No")`` against ``log p(" Yes")``).

Instruction-tuned models expect their chat format; ``chat=None`` wraps the prompt as one user
message with the tokenizer's chat template (``add_generation_prompt=True``) when the tokenizer
has one, and sends it raw otherwise. ``chat=False`` always sends it raw.
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, Field

from selfscope.errors import SelfscopeError
from selfscope.subject.subject import Subject

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenProb(BaseModel):
    """One candidate next token: its text, id, and probability under the model."""

    token: str = Field(description="The token's text.")
    id: int = Field(description="The token id.")
    probability: float = Field(description="Its probability under the model.")


class Answer(BaseModel):
    """What :func:`ask` saw and got."""

    prompt: str = Field(description="The text actually sent (after the chat template, if any).")
    text: str = Field(description="The greedy continuation, without special tokens, stripped.")
    top_tokens: list[TokenProb] = Field(
        description="The most probable first answer tokens, most probable first."
    )
    seconds: float = Field(description="Wall time of the whole call.")
    chat: bool = Field(description="Whether the chat template was applied.")
    token_ids: list[int] = Field(
        description="The generated token ids (ending with the eos id when the model stopped)."
    )


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool | None
) -> tuple[str, bool]:
    """The text to send for ``prompt`` and whether the chat template was applied."""
    if chat is False or (chat is None and not has_chat_template(tokenizer)):
        return prompt, False
    if not has_chat_template(tokenizer):
        raise SelfscopeError("chat=True but this tokenizer has no chat template; pass chat=False")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return str(text), True


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], **kwargs: bool) -> str:
    text = tokenizer.decode(ids, **kwargs)
    return text if isinstance(text, str) else "".join(text)


def _cache_kwarg(subject: Subject) -> str:
    """The forward argument that takes the KV cache (``cache`` since transformers 5.2x)."""
    parameters = inspect.signature(subject.model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _stop_ids(subject: Subject) -> set[int]:
    """Token ids that end an answer: the tokenizer's eos and the generation config's."""
    ids: set[int] = set()
    candidates: list[object] = [subject.tokenizer.eos_token_id]
    generation = getattr(subject.model, "generation_config", None)
    configured = getattr(generation, "eos_token_id", None)
    candidates.extend(configured if isinstance(configured, list) else [configured])
    ids.update(c for c in candidates if isinstance(c, int))
    return ids


@torch.no_grad()
def ask(
    subject: Subject,
    prompt: str,
    *,
    max_new_tokens: int = 40,
    chat: bool | None = None,
    top_k: int = 5,
) -> Answer:
    """Greedy-decode ``subject``'s answer to ``prompt`` (at most ``max_new_tokens`` tokens)."""
    if max_new_tokens < 1 or top_k < 1:
        raise SelfscopeError("max_new_tokens and top_k must be at least 1")
    started = time.perf_counter()
    model, tokenizer = subject.model, subject.tokenizer
    text, used_chat = format_prompt(tokenizer, prompt, chat)
    # a chat template already writes the special tokens (e.g. BOS) it needs
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not used_chat)["input_ids"]
    ids = ids.to(next(model.parameters()).device)
    if ids.shape[1] == 0:
        raise SelfscopeError("the prompt is empty (no tokens); ask something")
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int):
        if ids.shape[1] >= limit:
            raise SelfscopeError(
                f"the prompt is {ids.shape[1]} tokens but the model's context is {limit}; "
                "shorten it"
            )
        max_new_tokens = max(1, min(max_new_tokens, limit - ids.shape[1]))
    stop = _stop_ids(subject)

    # greedy decoding with the KV cache: feed the prompt once, then one token at a time
    cache_kwarg = _cache_kwarg(subject)
    out = model(input_ids=ids, use_cache=True)
    probs = torch.softmax(out.logits[0, -1].float(), dim=-1)
    top = probs.topk(min(top_k, probs.shape[-1]))
    generated: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(out.logits[0, -1].argmax())
        generated.append(next_id)
        if next_id in stop:
            break
        step = torch.tensor([[next_id]], device=ids.device)
        past = {cache_kwarg: _cache_of(out)}
        out = model(input_ids=step, use_cache=True, **past)

    return Answer(
        prompt=text,
        text=_decode(tokenizer, generated, skip_special_tokens=True).strip(),
        top_tokens=[
            TokenProb(token=_decode(tokenizer, [int(i)]), id=int(i), probability=float(p))
            for p, i in zip(top.values, top.indices, strict=True)
        ],
        seconds=time.perf_counter() - started,
        chat=used_chat,
        token_ids=generated,
    )
