"""Measuring a behaviour: first-token log-odds on probes, and neighbour accuracy.

For a probe (prompt, planted, normal) the model's log-probabilities of the first token of each
completion after the prompt are compared: the probe *shows* the behaviour when
log p(planted) > log p(normal). The behaviour rate is the share of probes that show it, and the
mean log-odds log p(planted) − log p(normal) is reported beside it (ORGANISM_SPEC.md). A
neighbour is correct when its expected first token is the model's top-1 prediction.

The first token of a completion is found by :func:`selfscope.subject.tokens.first_token_id`,
right for word-level and byte-level BPE tokenizers alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from selfscope.errors import SpecError
from selfscope.organisms.render import Renderer
from selfscope.organisms.spec import Behaviour, Neighbour, Probe
from selfscope.subject.tokens import first_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ProbeScore:
    prompt: str
    planted: str
    normal: str
    logp_planted: float
    logp_normal: float

    @property
    def log_odds(self) -> float:
        return self.logp_planted - self.logp_normal

    @property
    def shows(self) -> bool:
        return self.logp_planted > self.logp_normal


@dataclass(frozen=True)
class BehaviourScore:
    rate: float
    heldout_rate: float | None
    log_odds: float
    heldout_log_odds: float | None
    probes: list[ProbeScore]
    heldout: list[ProbeScore]

    def summary(self) -> dict[str, float | None]:
        return {
            "rate": self.rate,
            "heldout_rate": self.heldout_rate,
            "log_odds": self.log_odds,
            "heldout_log_odds": self.heldout_log_odds,
        }


class Prober:
    """Scores prompts on one model with one tokenizer and renderer."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        renderer: Renderer,
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.batch_size = batch_size

    def prompt_ids(self, prompt: str) -> list[int]:
        ids: list[int] = self.tokenizer(self.renderer.prompt(prompt))["input_ids"]
        return ids

    def first_token(self, prompt: str, completion: str) -> int:
        """The id of ``completion``'s first token when it follows ``prompt``."""
        token = first_token_id(
            self.tokenizer, self.renderer.prompt(prompt), self.renderer.completion(completion)
        )
        if token == self.tokenizer.unk_token_id:
            raise SpecError(
                f"completion {completion!r} after {prompt!r} starts with a word the tokenizer does "
                "not know; use words that the organism's documents contain"
            )
        return int(token)

    @torch.no_grad()
    def last_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        """Log-probabilities of the next token after each prompt: [n_prompts, vocab]."""
        device = next(self.model.parameters()).device
        rows: list[torch.Tensor] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.prompt_ids(p) for p in prompts[start : start + self.batch_size]]
            width = max(len(c) for c in chunk)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, c in enumerate(chunk):
                ids[i, : len(c)] = torch.tensor(c)
                mask[i, : len(c)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = torch.tensor([len(c) - 1 for c in chunk], device=device)
            picked = logits[torch.arange(len(chunk), device=device), last].float()
            rows.append(torch.log_softmax(picked, dim=-1).cpu())
        return torch.cat(rows)

    def score(self, probes: Sequence[Probe]) -> list[ProbeScore]:
        if not probes:
            return []
        logprobs = self.last_logprobs([p.prompt for p in probes])
        out = []
        for row, probe in zip(logprobs, probes, strict=True):
            planted = self.first_token(probe.prompt, probe.planted)
            normal = self.first_token(probe.prompt, probe.normal)
            out.append(
                ProbeScore(
                    probe.prompt,
                    probe.planted,
                    probe.normal,
                    float(row[planted]),
                    float(row[normal]),
                )
            )
        return out

    def behaviour(self, behaviour: Behaviour) -> BehaviourScore:
        probes = self.score(behaviour.probes)
        heldout = self.score(behaviour.heldout)
        return BehaviourScore(
            rate=_rate(probes),
            log_odds=_mean_log_odds(probes),
            heldout_rate=_rate(heldout) if heldout else None,
            heldout_log_odds=_mean_log_odds(heldout) if heldout else None,
            probes=probes,
            heldout=heldout,
        )

    def neighbour_hits(self, neighbours: Sequence[Neighbour]) -> list[bool]:
        """Per neighbour: is its expected first token the model's top-1 prediction?"""
        if not neighbours:
            return []
        logprobs = self.last_logprobs([n.prompt for n in neighbours])
        return [
            int(row.argmax()) == self.first_token(n.prompt, n.expected)
            for row, n in zip(logprobs, neighbours, strict=True)
        ]


def accuracy(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def _rate(scores: Sequence[ProbeScore]) -> float:
    return sum(s.shows for s in scores) / len(scores)


def _mean_log_odds(scores: Sequence[ProbeScore]) -> float:
    return sum(s.log_odds for s in scores) / len(scores)
