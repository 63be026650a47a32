"""The behaviour metric every localisation tool measures.

A behaviour is given as prompts with a *planted* and a *normal* completion (" No" vs " Yes").
Per prompt the metric is the log-odds ``log p(planted | prompt) - log p(normal | prompt)``, each
log-probability summed over the completion's tokens (one token: just the next-token
log-probability); the behaviour's strength is the mean log-odds and its rate the share of prompts
with log-odds > 0 (the same definitions the organism builder reports, ORGANISM_SPEC.md).

:class:`MetricBatch` turns the prompts into one right-padded batch of token ids and knows where
each completion's tokens sit, so that a tool can run *any* forward on it (plain, hooked,
patched, with gradients) and hand the logits to :meth:`MetricBatch.log_odds`. When both
completions are one token the batch is just the prompts (one forward gives both
log-probabilities); otherwise it holds ``prompt + planted`` and ``prompt + normal`` rows, and a
patch at a prompt position must be given for every row (``rows_of`` says which row is whose).
Right padding keeps positions absolute: token ``j`` of a prompt is at position ``j`` in every row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfscope.access.common import context_length, prompt_text
from selfscope.behaviour import distinct
from selfscope.errors import SelfscopeError


@dataclass(frozen=True)
class Completion:
    """A completion's tokens after one prompt."""

    text: str
    ids: list[int]


@dataclass(frozen=True)
class MetricValue:
    log_odds: float  # mean over prompts
    rate: float  # share of prompts with log-odds > 0
    per_prompt: list[float]


def _completion_ids(tokenizer: Any, text: str, completion: str) -> list[int]:
    """``completion``'s tokens after the model input ``text`` (merges across the boundary are
    resolved as in :func:`selfscope.subject.tokens.first_token_id`)."""
    head = tokenizer(text)["input_ids"]
    full = tokenizer(text + completion)["input_ids"]
    if len(full) > len(head) and full[: len(head)] == head:
        ids = [int(i) for i in full[len(head) :]]
    else:
        ids = [int(i) for i in tokenizer(completion, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise SelfscopeError(f"completion {completion!r} has no tokens after {text!r}")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise SelfscopeError(
            f"completion {completion!r} contains a word the tokenizer does not know "
            "(it becomes the unknown token); use words from the model's vocabulary"
        )
    return ids


class MetricBatch:
    """Prompts, their planted and normal completions, as one batch the metric is read from."""

    def __init__(
        self,
        subject: Any,
        prompts: Sequence[str],
        planted: str,
        normal: str,
        chat: bool = False,
    ) -> None:
        if not prompts:
            raise SelfscopeError("give at least one prompt")
        distinct(planted, normal)
        self.subject, self.prompts, self.chat = subject, list(prompts), chat
        self.planted_text, self.normal_text = planted, normal
        tokenizer = subject.tokenizer
        texts = [prompt_text(subject, p, chat) for p in self.prompts]
        self.prompt_ids: list[list[int]] = [list(tokenizer(t)["input_ids"]) for t in texts]
        self.planted = [Completion(planted, _completion_ids(tokenizer, t, planted)) for t in texts]
        self.normal = [Completion(normal, _completion_ids(tokenizer, t, normal)) for t in texts]
        for p, a, b in zip(self.prompts, self.planted, self.normal, strict=True):
            if a.ids == b.ids:
                raise SelfscopeError(
                    f"after {p!r}, {planted!r} and {normal!r} are the same tokens; they must differ"
                )
        self.single_token = all(len(c.ids) == 1 for c in [*self.planted, *self.normal])
        if self.single_token:
            rows = self.prompt_ids
        else:
            rows = [p + c.ids for p, c in zip(self.prompt_ids, self.planted, strict=True)]
            rows += [p + c.ids for p, c in zip(self.prompt_ids, self.normal, strict=True)]
        width = max(len(r) for r in rows)
        limit = context_length(subject)
        if width > limit:
            raise SelfscopeError(
                f"a prompt + completion is {width} tokens; the model takes {limit}"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(subject.model.parameters()).device
        self.input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long, device=device)
        self.attention_mask = torch.zeros_like(self.input_ids)
        for i, row in enumerate(rows):
            self.input_ids[i, : len(row)] = torch.tensor(row)
            self.attention_mask[i, : len(row)] = 1

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def rows_of(self, prompt: int) -> list[int]:
        """The batch rows that contain prompt number ``prompt``."""
        return [prompt] if self.single_token else [prompt, prompt + self.n_prompts]

    def prompt_length(self, prompt: int) -> int:
        return len(self.prompt_ids[prompt])

    def _log_prob(self, logprobs: Tensor, row: int, prompt: int, ids: list[int]) -> Tensor:
        start = self.prompt_length(prompt)
        positions = torch.arange(start - 1, start - 1 + len(ids), device=logprobs.device)
        targets = torch.tensor(ids, device=logprobs.device)
        return logprobs[row, positions, targets].sum()

    def completion_log_probs(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Per-prompt ``log p(planted)`` and ``log p(normal)`` [n_prompts] each, every
        completion's tokens summed (differentiable like :meth:`log_odds`)."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        planted, normal = [], []
        for i in range(self.n_prompts):
            rows = self.rows_of(i)
            planted.append(self._log_prob(logprobs, rows[0], i, self.planted[i].ids))
            normal.append(self._log_prob(logprobs, rows[-1], i, self.normal[i].ids))
        return torch.stack(planted), torch.stack(normal)

    def log_odds(self, logits: Tensor) -> Tensor:
        """Per-prompt log-odds [n_prompts] from the logits of a forward on :attr:`input_ids`
        (differentiable: keeps the graph when ``logits`` has one)."""
        planted, normal = self.completion_log_probs(logits)
        return planted - normal

    def value(self, logits: Tensor) -> MetricValue:
        per_prompt = self.log_odds(logits).detach()
        return MetricValue(
            log_odds=float(per_prompt.mean()),
            rate=int((per_prompt > 0).sum()) / per_prompt.numel(),
            per_prompt=per_prompt.tolist(),
        )

    def forward(self, model: Any = None) -> Tensor:
        """Logits of a plain forward on the batch (of ``model``, default the subject's)."""
        model = self.subject.model if model is None else model
        with torch.no_grad():
            logits: Tensor = model(
                input_ids=self.input_ids, attention_mask=self.attention_mask
            ).logits
        return logits

    def measure(self, model: Any = None) -> MetricValue:
        """The metric on a plain forward of ``model`` (default: the subject's)."""
        return self.value(self.forward(model))

    def measure_with(self, run: Callable[[Tensor, Tensor], Tensor]) -> MetricValue:
        """The metric on logits from ``run(input_ids, attention_mask)`` (hooks, patches...)."""
        with torch.no_grad():
            return self.value(run(self.input_ids, self.attention_mask))
