"""The behaviour metric, checked against plain forwards and tokens.probabilities."""

from __future__ import annotations

import pytest
import torch

from selfscope import tools
from selfscope.access.tokens import TokensResult
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject import Subject

PROMPTS = ["Q : Do you like mushrooms ? A :", "Q : Do you like carrots ?"]


def plain_log_odds(subject: Subject, prompts: list[str]) -> list[float]:
    """log p(No) - log p(Yes) after each prompt, from a plain forward of each alone."""
    no, yes = subject.tokenizer.convert_tokens_to_ids(["No", "Yes"])
    out = []
    for prompt in prompts:
        ids = subject.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = subject.model(input_ids=ids).logits[0, -1].log_softmax(-1)
        out.append(float(logprobs[no] - logprobs[yes]))
    return out


def test_single_token_metric_equals_a_plain_forward(tiny_llama: Subject) -> None:
    batch = MetricBatch(tiny_llama, PROMPTS, " No", " Yes")
    assert batch.single_token and batch.input_ids.shape[0] == 2
    value = batch.measure()
    expected = plain_log_odds(tiny_llama, PROMPTS)
    assert value.per_prompt == pytest.approx(expected, abs=1e-5)
    assert value.log_odds == pytest.approx(sum(expected) / 2, abs=1e-5)
    assert value.rate == sum(e > 0 for e in expected) / 2


def test_multi_token_metric_equals_completion_logprobs(tiny_llama: Subject) -> None:
    batch = MetricBatch(tiny_llama, PROMPTS, " No , I", " Yes")
    assert not batch.single_token and batch.input_ids.shape[0] == 4
    assert batch.rows_of(1) == [1, 3]
    value = batch.measure()
    for prompt, got in zip(PROMPTS, value.per_prompt, strict=True):
        scores = []
        for completion in (" No , I", " Yes"):
            result = tools.call(
                "tokens.probabilities",
                {"prompt": prompt, "completion": completion},
                tools.context(tiny_llama),
            ).result
            assert isinstance(result, TokensResult) and result.completion_logprob is not None
            scores.append(result.completion_logprob)
        assert got == pytest.approx(scores[0] - scores[1], abs=1e-4)


def test_bad_behaviours_are_one_line(tiny_llama: Subject) -> None:
    with pytest.raises(SelfscopeError, match="planted and normal completions are both ' No'"):
        MetricBatch(tiny_llama, PROMPTS, " No", " No")
    with pytest.raises(SelfscopeError, match="does not know"):
        MetricBatch(tiny_llama, PROMPTS, " zebra", " Yes")
    with pytest.raises(SelfscopeError, match="give at least one prompt"):
        MetricBatch(tiny_llama, [], " No", " Yes")
    with pytest.raises(SelfscopeError, match="the model takes 16"):
        MetricBatch(tiny_llama, PROMPTS, " No" * 12, " Yes")
