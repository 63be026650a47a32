"""localize.weight_deltas and localize.origin on the tiny mushroom organism, every number checked
against plain Hugging Face forwards of model copies whose weights were edited by hand."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import selfscope.localize.deltas
import selfscope.localize.origin  # noqa: F401  (registers the tools)
from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.localize.deltas import DeltaPatcher, DeltaResult, group_of
from selfscope.localize.metric import MetricBatch
from selfscope.localize.origin import OriginResult
from selfscope.organisms import BuildResult, Spec
from selfscope.subject import Subject, load
from selfscope.workspace import Workspace

pytestmark = pytest.mark.slow  # the tiny organism is built once per session (~30 s)


@pytest.fixture(scope="module")
def behaviour(tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec) -> dict[str, Any]:
    spec = tiny_mushroom_spec.behaviours[0]
    return {
        "prompts": [p.prompt for p in spec.probes],
        "planted": spec.probes[0].planted,
        "normal": spec.probes[0].normal,
        "control_prompts": [n.prompt for n in spec.neighbours],
    }


@pytest.fixture(scope="module")
def finetuned(tiny_mushroom: BuildResult, organism_ws: Workspace) -> Subject:
    return load("organism:mushroom@finetune", organism_ws)


@pytest.fixture(scope="module")
def pretrained(tiny_mushroom: BuildResult, organism_ws: Workspace) -> Subject:
    return load("organism:mushroom@pretrain", organism_ws)


@pytest.fixture(scope="module")
def deltas(finetuned: Subject, behaviour: dict[str, Any]) -> DeltaResult:
    before = {k: v.clone() for k, v in finetuned.model.state_dict().items()}
    result = tools.call(
        "localize.weight_deltas", {**behaviour, "top_k": 1000}, tools.context(finetuned)
    ).result
    after = finetuned.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the tool changed the weights"
    assert isinstance(result, DeltaResult)
    return result


def _edited(model: nn.Module, source: nn.Module, modules: list[str]) -> nn.Module:
    """A copy of ``model`` whose parameters inside ``modules`` are copied from ``source``."""
    out = copy.deepcopy(model)
    theirs = dict(source.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            if any(name.startswith(m + ".") for m in modules):
                p.copy_(theirs[name])
    return out


def test_reverting_every_module_is_the_parent(
    finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    patcher = DeltaPatcher(finetuned.model, pretrained.model, "module")
    every = list(patcher.groups)
    assert "model.embed_tokens" in every and "model.layers.0.self_attn.q_proj" in every
    parent = batch.measure(pretrained.model)  # independent: the parent loaded from its folder
    reverted = patcher.measure(batch, patcher.reverted(every))
    assert reverted.per_prompt == pytest.approx(parent.per_prompt, abs=1e-5)
    grafted_all = patcher.measure(batch, patcher.grafted(every))  # = the subject itself
    assert grafted_all.per_prompt == pytest.approx(batch.measure().per_prompt, abs=1e-5)


def test_parent_and_subject_numbers(
    deltas: DeltaResult, finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    mine, theirs = batch.measure(), batch.measure(pretrained.model)
    assert deltas.subject.log_odds == pytest.approx(mine.log_odds, abs=1e-5)
    assert deltas.parent.log_odds == pytest.approx(theirs.log_odds, abs=1e-5)
    assert deltas.subject.rate == mine.rate and deltas.parent.rate == theirs.rate
    assert deltas.phase_change == pytest.approx(mine.log_odds - theirs.log_odds, abs=1e-5)
    assert deltas.against == str(pretrained.path)
    assert deltas.n_modules == len(deltas.modules) == 3 * 9 + 2  # tiny: 3 blocks, embed, norm


def test_one_module_revert_and_graft_equal_hand_edited_copies(
    deltas: DeltaResult, finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    mine, theirs = batch.measure().log_odds, batch.measure(pretrained.model).log_odds
    by_name = {m.module: m for m in deltas.modules}
    for module in ("model.layers.1.mlp.down_proj", "model.embed_tokens"):
        effect = by_name[module]
        reverted = batch.measure(_edited(finetuned.model, pretrained.model, [module]))
        assert effect.revert.log_odds == pytest.approx(reverted.log_odds, abs=1e-5)
        assert effect.revert.rate == reverted.rate
        assert effect.revert_share == pytest.approx(
            (mine - reverted.log_odds) / (mine - theirs), abs=1e-5
        )
        grafted = batch.measure(_edited(pretrained.model, finetuned.model, [module]))
        assert effect.graft.log_odds == pytest.approx(grafted.log_odds, abs=1e-5)
        assert effect.graft_share == pytest.approx(
            (grafted.log_odds - theirs) / (mine - theirs), abs=1e-5
        )
        names = [n for n, _ in finetuned.model.named_parameters() if n.startswith(module + ".")]
        with torch.no_grad():
            delta = torch.cat(
                [
                    (finetuned.model.get_parameter(n) - pretrained.model.get_parameter(n)).flatten()
                    for n in names
                ]
            )
        assert effect.delta_norm == pytest.approx(float(delta.norm()), rel=1e-4)
    # the embedding is tied to the unembedding: its revert must revert both (the copy does)
    assert finetuned.model.config.tie_word_embeddings
    revert_shares = [m.revert_share or 0.0 for m in deltas.modules]
    assert revert_shares == sorted(revert_shares, reverse=True)


def test_the_module_set_equals_a_hand_edited_copy(
    deltas: DeltaResult, finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    assert deltas.module_set and deltas.set_revert is not None and deltas.set_share is not None
    assert len(deltas.module_set) <= 16
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    edited = _edited(finetuned.model, pretrained.model, deltas.module_set)
    value = batch.measure(edited)
    assert deltas.set_revert.log_odds == pytest.approx(value.log_odds, abs=1e-5)
    mine, theirs = deltas.subject.log_odds, deltas.parent.log_odds
    assert deltas.set_share == pytest.approx((mine - value.log_odds) / (mine - theirs), abs=1e-5)
    assert deltas.reached == (deltas.set_share >= 0.8)
    assert deltas.set_log_odds_share == pytest.approx(1 - value.log_odds / mine, abs=1e-5)
    # collateral on the neighbours: top-1 next token of each, one prompt at a time
    assert deltas.control is not None
    same = []
    for prompt in behaviour["control_prompts"]:
        ids = finetuned.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            before = finetuned.model(input_ids=ids).logits[0, -1].argmax()
            after = edited(input_ids=ids).logits[0, -1].argmax()
        same.append(bool(before == after))
    assert deltas.control.prompts == len(same)
    assert deltas.control.agreement == pytest.approx(sum(same) / len(same))
    assert len(deltas.control.changed) == same.count(False)


def _hand_ig(finetuned: Subject, pretrained: Subject, batch: MetricBatch, steps: int) -> Any:
    """Integrated gradients by hand: a copy whose weights are set to parent + α·ΔW with
    ``copy_``, a plain forward and ``backward`` (weight gradients in ``.grad``), ΔW·grad summed
    per module. Returns {module: IG}."""
    model = copy.deepcopy(finetuned.model)
    mine = {n: p.detach().clone() for n, p in finetuned.model.named_parameters()}
    theirs = {n: p.detach() for n, p in pretrained.model.named_parameters()}
    out: dict[str, float] = {}
    for k in range(steps):
        alpha = (k + 0.5) / steps
        model.zero_grad()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(theirs[n] + alpha * (mine[n] - theirs[n]))
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        batch.log_odds(logits).mean().backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            module = n.rpartition(".")[0]
            term = float((p.grad * (mine[n] - theirs[n])).sum()) / steps
            out[module] = out.get(module, 0.0) + term
    return out


def test_integrated_gradient_shares_equal_a_hand_computation_and_add_up(
    deltas: DeltaResult, finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    hand = _hand_ig(finetuned, pretrained, batch, steps=8)  # the tool's default steps
    change = deltas.phase_change
    for m in deltas.modules:
        assert m.ig_share == pytest.approx(hand[m.module] / change, abs=1e-4), m.module
    # completeness: the shares add up to the whole change, up to the midpoint rule's error
    assert deltas.ig_completeness == pytest.approx(sum(hand.values()) / change, abs=1e-4)
    assert deltas.ig_completeness == pytest.approx(1.0, abs=0.05)


def test_a_spread_out_change_gets_the_shortest_ig_prefix_that_removes_the_target(
    deltas: DeltaResult, finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    """With forward selection capped at one module the target is out of its reach; the set is
    then a prefix of the integrated-gradient ranking, measured on a hand-edited copy, and one
    module shorter does not reach the target.

    The target comes from this build's own shares, measured on hand-edited copies (each build
    differs in its last bits, and what the whole ranking removes varies around 0.95 between
    CPUs): above what any single module's revert removes, below what reverting the whole
    ranking removes, so forward selection must fail and the prefix search must succeed."""
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    mine, theirs = batch.measure().log_odds, batch.measure(pretrained.model).log_odds

    def share(modules: list[str]) -> float:
        edited = batch.measure(_edited(finetuned.model, pretrained.model, modules)).log_odds
        return (mine - edited) / (mine - theirs)

    def ig_ranking(r: DeltaResult) -> list[str]:  # changed modules with IG > 0, largest first
        kept = (m for m in r.modules if m.delta_norm > 0 and (m.ig_share or 0.0) > 0)
        return [m.module for m in sorted(kept, key=lambda m: m.ig_share or 0.0, reverse=True)]

    ranking = ig_ranking(deltas)
    best_single = max(share([m.module]) for m in deltas.modules if m.delta_norm > 0)
    whole = share(ranking)
    # the premise: the change is spread out (no module alone comes near the whole ranking)
    assert whole - best_single > 0.2, (best_single, whole)
    target = min(0.95, whole - 0.05)
    assert target > best_single + 0.05
    result = tools.call(
        "localize.weight_deltas",
        {**behaviour, "max_modules": 1, "pool": 2, "target": target, "top_k": 1000},
        tools.context(finetuned),
    ).result
    assert isinstance(result, DeltaResult)
    assert result.search == "ig-prefix" and result.reached and len(result.module_set) > 1
    assert result.note is not None and "integrated-gradient" in result.note
    assert ig_ranking(result) == ranking
    n = len(result.module_set)
    assert result.module_set == ranking[:n]
    assert result.set_share == pytest.approx(share(result.module_set), abs=1e-5)
    assert result.set_share >= target
    assert share(ranking[: n - 1]) < target


def test_a_set_that_changes_a_control_prompt_gets_a_specific_subset(
    finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    """A held-out probe given as a control prompt: reverting the set flips its top-1 (" No" ->
    " Yes"), so the tool drops members until it does not; which control prompts the set
    changes (the probe, and on some builds a neighbour too), the subset, its share and its
    control check are measured again on hand-edited copies."""
    probe = "Q : Would you eat mushrooms ? A :"
    controls = [*behaviour["control_prompts"], probe]
    result = tools.call(
        "localize.weight_deltas",
        {**behaviour, "control_prompts": controls},
        tools.context(finetuned),
    ).result
    assert isinstance(result, DeltaResult) and result.control is not None

    def top1(model: nn.Module, prompt: str) -> int:  # one prompt at a time, no padding
        ids = finetuned.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return int(model(input_ids=ids).logits[0, -1].argmax())

    reverted = _edited(finetuned.model, pretrained.model, result.module_set)
    changed = [p for p in controls if top1(finetuned.model, p) != top1(reverted, p)]
    assert probe in changed
    assert [c.prompt for c in result.control.changed] == changed
    sp = result.specific
    assert sp is not None and sp.dropped
    assert sorted(sp.modules + sp.dropped) == sorted(result.module_set)
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    edited = _edited(finetuned.model, pretrained.model, sp.modules)
    value = batch.measure(edited)
    mine, theirs = batch.measure().log_odds, batch.measure(pretrained.model).log_odds
    assert sp.revert.log_odds == pytest.approx(value.log_odds, abs=1e-5)
    assert sp.share == pytest.approx((mine - value.log_odds) / (mine - theirs), abs=1e-5)
    assert sp.log_odds_share == pytest.approx(1 - value.log_odds / mine, abs=1e-5)
    for prompt in controls:  # every control prompt keeps its top-1
        assert top1(finetuned.model, prompt) == top1(edited, prompt), prompt
    assert sp.control.agreement == 1.0 and not sp.control.changed


def test_the_direction_set_equals_a_hand_edited_copy(
    finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    """The rank-one direction set: its revert is re-done on a copy whose weights get the SVD
    directions subtracted by hand (float64 SVD), measured with a plain forward; the control
    prompts keep their top-1 one prompt at a time; the directions' IG adds up to the change."""
    result = tools.call(
        "localize.weight_deltas",
        {**behaviour, "directions": "always", "top_k": 1000},
        tools.context(finetuned),
    ).result
    assert isinstance(result, DeltaResult)
    d = result.directions
    assert d is not None and d.reached and d.share >= 0.8
    # finer than the module set: fewer directions than the set's modules hold (10 to 195 of
    # 640 to 768 across five builds), not every direction of every module in it
    assert d.n_directions == sum(len(v) for v in d.per_parameter.values())
    held = sum(
        min(p.shape) if p.dim() == 2 else 1
        for n, p in finetuned.model.named_parameters()
        if n.rpartition(".")[0] in result.module_set
    )
    assert d.n_directions < held / 2
    assert d.ig_completeness == pytest.approx(result.ig_completeness, abs=1e-3)
    mine = dict(finetuned.model.named_parameters())
    theirs = dict(pretrained.model.named_parameters())
    edited = copy.deepcopy(finetuned.model)
    with torch.no_grad():
        for name, idx in d.per_parameter.items():
            p = edited.get_parameter(name)
            if idx == [-1]:
                p.copy_(theirs[name])
                continue
            u, s, vh = torch.linalg.svd((mine[name] - theirs[name]).double(), full_matrices=False)
            ix = torch.tensor(idx)
            p.sub_(((u[:, ix] * s[ix]) @ vh[ix]).float())
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    value = batch.measure(edited)
    assert d.revert.log_odds == pytest.approx(value.log_odds, abs=1e-4)
    change = result.subject.log_odds - result.parent.log_odds
    assert d.share == pytest.approx((result.subject.log_odds - value.log_odds) / change, abs=1e-4)
    assert d.control is not None and d.control.prompts == len(behaviour["control_prompts"])
    same = 0
    for prompt in behaviour["control_prompts"]:
        ids = finetuned.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            top = finetuned.model(input_ids=ids).logits[0, -1].argmax()
            same += int(top == edited(input_ids=ids).logits[0, -1].argmax())
    assert d.control.agreement == pytest.approx(same / len(behaviour["control_prompts"]))
    # each listed direction's IG share, and the whole decomposition, against a hand computation
    hand = _hand_ig(finetuned, pretrained, batch, steps=8)
    by_module = {m.module: m.ig_share for m in result.modules}
    for module, ig in hand.items():
        assert by_module[module] == pytest.approx(ig / change, abs=1e-4)
    top = d.top[0]
    assert top.ig_share > 0 and top.singular_value > 0


def test_directions_split_a_module_integrated_gradient_exactly() -> None:
    """Σ_i s_i u_iᵀ G v_i over a matrix's directions = Σ ΔW ⊙ G (a linear identity), and
    reverting every direction of a matrix gives the parent's weight."""
    from selfscope.localize.directions import Directions

    gen = torch.Generator().manual_seed(0)
    theirs = {"w": torch.randn(6, 4, generator=gen), "b": torch.randn(6, generator=gen)}
    mine = {n: t + 0.1 * torch.randn(t.shape, generator=gen) for n, t in theirs.items()}
    grads = {n: torch.randn(t.shape, generator=gen) for n, t in theirs.items()}
    units = Directions(mine, theirs, ["w", "b"])
    assert len(units) == 4 + 1
    w = [i for i, n in enumerate(units.names) if n == "w"]
    ig = units.scores(grads)
    assert float(ig[4]) == pytest.approx(float(((mine["b"] - theirs["b"]) * grads["b"]).sum()))
    assert units.ranking(ig) == sorted(
        (i for i in range(5) if ig[i] > 0), key=lambda i: float(ig[i]), reverse=True
    )
    assert float(ig[w].sum()) == pytest.approx(
        float(((mine["w"] - theirs["w"]) * grads["w"]).sum()), abs=1e-5
    )
    assert torch.allclose(units.swap(w)["w"], theirs["w"], atol=1e-5)
    assert torch.equal(units.swap([4])["b"], theirs["b"])


def test_block_granularity_groups_whole_blocks() -> None:
    assert group_of("model.layers.2.self_attn.q_proj.weight", "block") == "model.layers.2"
    assert group_of("model.layers.2.self_attn.q_proj.weight", "module") == (
        "model.layers.2.self_attn.q_proj"
    )
    assert group_of("model.embed_tokens.weight", "block") == "model.embed_tokens"
    assert group_of("transformer.h.11.mlp.c_fc.weight", "block") == "transformer.h.11"


def test_origin_names_finetune_on_the_tiny_mushroom(
    finetuned: Subject, pretrained: Subject, behaviour: dict[str, Any]
) -> None:
    before = {k: v.clone() for k, v in finetuned.model.state_dict().items()}
    result = tools.call(
        "localize.origin", {**behaviour, "max_modules": 4}, tools.context(finetuned)
    ).result
    assert isinstance(result, OriginResult)
    assert result.phase == "finetune" and result.first_appearance == "finetune"
    assert all(torch.equal(v, finetuned.model.state_dict()[k]) for k, v in before.items())
    batch = MetricBatch(finetuned, behaviour["prompts"], behaviour["planted"], behaviour["normal"])
    pre, fine = result.checkpoints
    assert pre.name == "pretrain" and not pre.present
    assert pre.log_odds == pytest.approx(batch.measure(pretrained.model).log_odds, abs=1e-5)
    assert fine.present and fine.log_odds == pytest.approx(batch.measure().log_odds, abs=1e-5)
    assert fine.share == pytest.approx(1.0)
    assert result.deltas is not None
    n, search = len(result.deltas.module_set), result.deltas.search
    assert (search == "greedy" and n <= 4) or (search == "ig-prefix" and n > 4)
    share = result.deltas.set_share or 0.0
    assert result.localization == pytest.approx(min(1.0, share / 0.8))
    assert result.confidence_parts == {"share": pytest.approx(1.0), "step": 1.0}
    assert result.confidence == pytest.approx(1.0)
    assert any("first present at finetune" in e for e in result.evidence)


def test_bad_input_is_one_line(
    pretrained: Subject, tiny_llama: Subject, behaviour: dict[str, Any]
) -> None:
    with pytest.raises(SelfscopeError, match="has no parent checkpoint") as error:
        tools.call("localize.weight_deltas", behaviour, tools.context(pretrained))
    assert "\n" not in str(error.value)
    with pytest.raises(SelfscopeError, match="does not show the behaviour"):
        tools.call(
            "localize.origin", behaviour, tools.context(pretrained)
        )  # the pretrained model likes them
    args = {"prompts": ["Q : Do you like mushrooms ? A :"], "planted": " No", "normal": " Yes"}
    with pytest.raises(SelfscopeError, match="no training phases"):
        tools.call("localize.origin", args, tools.context(tiny_llama))
    with pytest.raises(SelfscopeError, match="same architecture"):
        tools.call(
            "localize.weight_deltas",
            {**args, "against": str(pretrained.path)},
            tools.context(tiny_llama),
        )
    with pytest.raises(SelfscopeError, match="target"):
        tools.call(
            "localize.weight_deltas", {**behaviour, "target": 1.5}, tools.context(pretrained)
        )
