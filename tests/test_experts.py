"""localize.experts on a tiny Mixtral: routing vs the router, effects vs edited-weight copies."""

from __future__ import annotations

import pytest
import torch
from transformers import MixtralForCausalLM

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.localize.experts import ExpertsResult
from selfscope.localize.metric import MetricBatch
from selfscope.subject import Subject
from selfscope.subject.hooks import run

PROMPTS = ["Q : Do you like mushrooms ? A :", "Q : Do you like carrots ? A :"]
ARGS = {"prompts": PROMPTS, "planted": " No", "normal": " Yes", "top_k": 100}


def test_expert_effects_equal_disabling_the_expert_in_a_copy(tiny_mixtral: Subject) -> None:
    result = tools.call("localize.experts", ARGS, tools.context(tiny_mixtral)).result
    assert isinstance(result, ExpertsResult)
    assert len(result.experts) == 3 * 4
    batch = MetricBatch(tiny_mixtral, PROMPTS, " No", " Yes")
    clean = batch.measure()
    assert result.log_odds == pytest.approx(clean.log_odds, abs=1e-6)
    assert [abs(e.measured) for e in result.experts] == sorted(
        (abs(e.measured) for e in result.experts), reverse=True
    )
    for effect in result.experts[:4]:
        copy = MixtralForCausalLM.from_pretrained(tiny_mixtral.path).eval()
        with torch.no_grad():
            copy.model.layers[effect.block].mlp.experts.down_proj[effect.expert].zero_()
        expected = batch.measure(copy).log_odds - clean.log_odds
        assert effect.measured == pytest.approx(expected, abs=1e-5), effect.site
    # the estimate is the first-order effect: removing a small fraction eps of the share
    eps = 1e-2
    for effect in result.experts[:4]:
        scaled = run(
            tiny_mixtral.model,
            batch.input_ids,
            batch.attention_mask,
            patch={effect.site: lambda share: (1 - eps) * share},
        ).logits
        assert scaled is not None
        slope = (float(batch.log_odds(scaled).mean()) - clean.log_odds) / eps
        assert slope == pytest.approx(effect.estimate, rel=0.05, abs=1e-4), effect.site
        assert effect.verified == (
            effect.estimate * effect.measured > 0
            and abs(effect.measured) >= 0.5 * abs(effect.estimate)
        )
    assert all(p.grad is None for p in tiny_mixtral.model.parameters())


def test_routing_matches_the_router(tiny_mixtral: Subject) -> None:
    result = tools.call("localize.experts", ARGS, tools.context(tiny_mixtral)).result
    assert isinstance(result, ExpertsResult)
    batch = MetricBatch(tiny_mixtral, PROMPTS, " No", " Yes")
    with torch.no_grad():
        out = tiny_mixtral.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_router_logits=True,
        )
    valid = batch.attention_mask.bool().flatten()
    for block, routing in zip(out.router_logits, result.routing, strict=True):
        chosen = block.topk(2, dim=-1).indices[valid]
        shares = [float((chosen == j).any(-1).float().mean()) for j in range(4)]
        assert routing.token_share == pytest.approx(shares, abs=1e-6)
        assert sum(routing.token_share) == pytest.approx(2.0)  # top-2: each token counted twice
        last = block.topk(2, dim=-1).indices.view(2, -1, 2)[:, -1]
        assert routing.last_token == [sorted(r.tolist()) for r in last]


def test_dense_models_are_refused(tiny_llama: Subject) -> None:
    with pytest.raises(SelfscopeError, match=r"needs a mixture-of-experts model .* is llama"):
        tools.call("localize.experts", ARGS, tools.context(tiny_llama))
