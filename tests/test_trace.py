"""Causal tracing: every batched cell equals an independent single-state patching run."""

from __future__ import annotations

import copy
import dataclasses
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
)

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.localize.trace import TraceResult
from selfscope.report.figures import heatmap_svg
from selfscope.subject import Subject
from selfscope.subject.hooks import run
from selfscope.workspace import Workspace

PROMPT = "Q : Do you like mushrooms ? A :"
SITE = {
    "resid": "blocks.{i}.resid_post",
    "attn": "blocks.{i}.attn.out",
    "mlp": "blocks.{i}.mlp.out",
}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on this shared 2-core machine a second thread mostly waits (a tiny
    forward took 2 ms on one thread and 30-90 ms on two; a 96-row SmolLM2 batch 3 s and 15 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sharpened(subject: Subject, model: PreTrainedModel) -> Subject:
    """``subject`` with ``model``, every weight matrix ×8: random initial weights make nearly
    uniform predictions that noise barely moves; sharper ones move p(target) by ~1e-3, a
    hundred times the parity tolerance."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return dataclasses.replace(subject, model=model.eval(), architecture=model.config.model_type)


@pytest.fixture(scope="module")
def sharp(tiny_llama: Subject) -> Subject:
    return sharpened(tiny_llama, copy.deepcopy(tiny_llama.model))


def trace(model: Subject, **args: Any) -> TraceResult:
    result = tools.call("localize.trace", args, tools.context(model)).result
    assert isinstance(result, TraceResult)
    return result


class Reference:
    """Single-state runs, one at a time: the documented noise recipe, one restoration."""

    def __init__(self, subject: Subject, prompt: str, positions: list[int], **kw: Any) -> None:
        self.subject, self.positions = subject, positions
        model = subject.model
        self.ids = subject.tokenizer(prompt, return_tensors="pt")["input_ids"]
        sites = [s.format(i=i) for s in SITE.values() for i in range(subject.n_layers)]
        self.clean = run(model, self.ids, capture=sites).values
        std = model.get_input_embeddings().weight.detach().float().std()
        generator = torch.Generator().manual_seed(kw.get("seed", 0))
        shape = (kw["samples"], len(positions), subject.d_model)
        self.noise = torch.randn(shape, generator=generator) * (kw.get("noise", 3.0) * std)

    def logprobs(self, sample: int, restore: dict[str, int], extra: list[int]) -> torch.Tensor:
        """Log-probabilities after the prompt (+ ``extra`` tokens) for one noised run in which
        ``restore`` maps sites to the position given back its clean value."""
        delta = torch.zeros(1, self.ids.shape[1] + len(extra), self.subject.d_model)
        delta[0, self.positions] = self.noise[sample]
        patch: dict[str, Any] = {"embed": lambda v: v + delta}
        for site, position in restore.items():
            clean = self.clean[site][0, position]

            def put(v: torch.Tensor, clean: torch.Tensor = clean, j: int = position) -> Any:
                v = v.clone()
                v[0, j] = clean
                return v

            patch[site] = put
        ids = torch.cat([self.ids, torch.tensor([extra], dtype=torch.long)], dim=1)
        logits = run(self.subject.model, ids, patch=patch).logits
        assert logits is not None
        return logits[0].log_softmax(-1)

    def probability(self, samples: int, target: int, restore: dict[str, int]) -> float:
        n = self.ids.shape[1]
        return (
            sum(float(self.logprobs(s, restore, [])[n - 1, target].exp()) for s in range(samples))
            / samples
        )


def test_every_batched_cell_equals_a_single_state_run(sharp: Subject) -> None:
    result = trace(
        sharp,
        prompt=PROMPT,
        target=" No",
        subject="mushrooms",
        samples=2,
        batch_size=7,
        figure=False,
    )
    n, layers = len(result.tokens), sharp.n_layers
    assert result.tokens[6] == "mushrooms" and result.subject_positions == [6]
    ref = Reference(sharp, PROMPT, [6], samples=2)
    no = sharp.tokenizer.convert_tokens_to_ids("No")
    with torch.no_grad():
        plain = sharp.model(input_ids=ref.ids).logits[0, -1].softmax(-1)[no]
    assert result.target_id == no
    assert result.clean_probability == pytest.approx(float(plain), abs=1e-6)
    assert result.corrupted_probability == pytest.approx(ref.probability(2, no, {}), abs=1e-6)
    assert [g.kind for g in result.grids] == ["resid", "mlp", "attn"]
    for grid in result.grids:
        assert len(grid.probabilities) == layers and all(len(r) == n for r in grid.probabilities)
        for i in range(layers):
            for j in range(n):
                expected = ref.probability(2, no, {SITE[grid.kind].format(i=i): j})
                assert grid.probabilities[i][j] == pytest.approx(expected, abs=1e-5), (
                    grid.kind,
                    i,
                    j,
                )
        best = max(p for row in grid.probabilities for p in row)
        assert grid.top.probability == best
        assert grid.probabilities[grid.top.layer][grid.top.position] == best
        assert grid.top.token == result.tokens[grid.top.position]
        assert grid.top.effect == pytest.approx(best - result.corrupted_probability)
    # restorations do move p(target), so a restoration in the wrong row or place would show
    moved = [
        abs(p - result.corrupted_probability) > 1e-4
        for g in result.grids
        for row in g.probabilities
        for p in row
    ]
    print(f"\n{sum(moved)} of {len(moved)} cells differ from the corrupted run")
    assert sum(moved) >= 8
    resid = result.grids[0].probabilities
    # identities: the last block's output at the last position *is* the clean output; at any
    # other position it reaches nothing downstream; positions before the subject are unaffected
    assert resid[layers - 1][n - 1] == pytest.approx(result.clean_probability, abs=1e-6)
    for j in range(n - 1):
        assert resid[layers - 1][j] == pytest.approx(result.corrupted_probability, abs=1e-6)
    for row in resid:
        assert row[:6] == [result.corrupted_probability] * 6


def other_family(name: str, vocab: int) -> PreTrainedModel:
    torch.manual_seed(1)
    if name == "mixtral":
        return MixtralForCausalLM(
            MixtralConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=48,
                num_local_experts=4,
                num_experts_per_tok=2,
            )
        )
    if name == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0
            )
        )
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )


@pytest.mark.parametrize("family", ["mixtral", "gpt2", "gpt_neox"])
def test_every_cell_in_other_families(tiny_llama: Subject, family: str) -> None:
    """The cached-prefix batches hold for every supported family (Llama: above)."""
    model = other_family(family, len(tiny_llama.tokenizer))
    subject = sharpened(tiny_llama, model)
    result = trace(
        subject,
        prompt=PROMPT,
        target=" No",
        subject="mushrooms",
        samples=1,
        batch_size=4,
        figure=False,
    )
    ref = Reference(subject, PROMPT, [6], samples=1)
    no = tiny_llama.tokenizer.convert_tokens_to_ids("No")
    assert result.corrupted_probability == pytest.approx(ref.probability(1, no, {}), abs=1e-6)
    for grid in result.grids:
        for i in range(3):
            for j in range(len(result.tokens)):
                expected = ref.probability(1, no, {SITE[grid.kind].format(i=i): j})
                assert grid.probabilities[i][j] == pytest.approx(expected, abs=1e-5)
    assert result.grids[0].top.effect > 1e-4


def test_window_restores_neighbouring_layers_together(sharp: Subject) -> None:
    result = trace(
        sharp,
        prompt=PROMPT,
        target=" No",
        subject="like mushrooms",
        kinds=["mlp"],
        window=3,
        samples=2,
        seed=5,
        figure=False,
    )
    assert result.subject_positions == [5, 6] and result.grids[0].window == 3
    ref = Reference(sharp, PROMPT, [5, 6], samples=2, seed=5)
    no = sharp.tokenizer.convert_tokens_to_ids("No")
    windows = {0: [0, 1], 1: [0, 1, 2], 2: [1, 2]}  # ROME: i - w//2 .. i + ceil(w/2) - 1
    for i, restored in windows.items():
        for j in range(len(result.tokens)):
            expected = ref.probability(2, no, {f"blocks.{k}.mlp.out": j for k in restored})
            assert result.grids[0].probabilities[i][j] == pytest.approx(expected, abs=1e-5)


def test_no_noise_restores_nothing_to_restore(sharp: Subject) -> None:
    result = trace(
        sharp, prompt=PROMPT, target=" Yes", subject="mushrooms", noise=0.0, samples=1, figure=False
    )
    assert result.corrupted_probability == pytest.approx(result.clean_probability, abs=1e-6)
    for grid in result.grids:
        for row in grid.probabilities:
            assert row == pytest.approx([result.clean_probability] * len(row), abs=1e-6)


@pytest.mark.parametrize("normal", [" Yes", " Yes , I"])
def test_log_odds_against_a_contrast(sharp: Subject, normal: str) -> None:
    """One-token contrast (one row per cell) and a multi-token one (two rows per cell)."""
    result = trace(
        sharp,
        prompt=PROMPT,
        target=" No",
        subject="mushrooms",
        normal=normal,
        kinds=["resid", "attn"],
        samples=2,
        batch_size=5,
        figure=False,
    )
    ref = Reference(sharp, PROMPT, [6], samples=2)
    vocab = sharp.tokenizer.convert_tokens_to_ids
    no, normal_ids = vocab("No"), [vocab(w) for w in normal.split()]
    n = len(result.tokens)

    def log_odds(restore: dict[str, int]) -> float:
        total = 0.0
        for s in range(2):
            planted = float(ref.logprobs(s, restore, [])[n - 1, no])
            lp = ref.logprobs(s, restore, normal_ids)
            other = sum(float(lp[n - 1 + t, w]) for t, w in enumerate(normal_ids))
            total += planted - other
        return total / 2

    assert result.corrupted_log_odds == pytest.approx(log_odds({}), abs=1e-5)
    assert result.clean_log_odds is not None
    for grid in result.grids:
        assert grid.log_odds is not None
        for i in range(sharp.n_layers):
            for j in range(n):
                site = {SITE[grid.kind].format(i=i): j}
                assert grid.log_odds[i][j] == pytest.approx(log_odds(site), abs=1e-4)
                expected = ref.probability(2, no, site)
                assert grid.probabilities[i][j] == pytest.approx(expected, abs=1e-5)
        assert grid.top.log_odds == grid.log_odds[grid.top.layer][grid.top.position]


def test_figure_is_valid_svg_with_every_cell(sharp: Subject) -> None:
    result = trace(
        sharp, prompt=PROMPT, target=" No", subject="mushrooms", samples=1, kinds=["resid", "mlp"]
    )
    assert result.figure is not None
    root = ET.fromstring(result.figure)
    n, layers = len(result.tokens), sharp.n_layers

    def texts(cls: str) -> list[str]:
        return [e.text or "" for e in root.iter(f"{SVG}text") if e.get("class") == cls]

    cells = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "cell"]
    assert len(cells) == 2 * n * layers
    assert len(root.findall(f"{SVG}g")) == 2
    assert texts("row-label")[:n] == [t + ("*" if t == "mushrooms" else "") for t in result.tokens]
    assert texts("col-label") == [str(i) for i in range(layers)] * 2
    # the top cell is drawn in the panel's full colour, the corrupted level in white
    top = result.grids[0].top
    fills = [c.get("fill") for c in cells[: n * layers]]  # panel 1: row = position
    assert fills[top.position * layers + top.layer] == "#6a1b9a"
    assert fills[0] == "#ffffff"  # BOS: never affected, equals the corrupted run


def test_heatmap_svg_escapes_labels_and_shades_values() -> None:
    svg = heatmap_svg(
        [[0.0, 0.5], [1.0, float("nan")]],
        ["<a & b>", "new\nline\x00"],
        ["0", "1"],
        't "q"',
        vmin=0.0,
        vmax=1.0,
        color="#000000",
    )
    root = ET.fromstring(svg)
    fills = [e.get("fill") for e in root.iter(f"{SVG}rect") if e.get("class") == "cell"]
    assert fills == ["#ffffff", "#808080", "#000000", "#cccccc"]
    labels = [e.text for e in root.iter(f"{SVG}text") if e.get("class") == "row-label"]
    assert labels == ["<a & b>", "new\\nline\\x00"]
    with pytest.raises(ValueError, match="2 rows × 2 columns"):
        heatmap_svg([[0.0]], ["a", "b"], ["0", "1"])


def test_bad_trace_input_is_one_line(tiny_llama: Subject) -> None:
    base = {"prompt": PROMPT, "target": " No", "subject": "mushrooms"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"subject": "owls"}, r"subject 'owls' is not in the prompt"),
        ({"window": 4}, r"window 4 is more than the model's 3 layers"),
        ({"kinds": ["heads"]}, r"kinds.0: Input should be 'resid', 'attn' or 'mlp'"),
        ({"kinds": []}, r"kinds: List should have at least 1 item"),
        ({"target": " zebra"}, r"does not know"),
        ({"samples": 0}, r"samples: Input should be greater than or equal to 1"),
        ({"prompt": " ".join(["Q"] * 20), "subject": "Q"}, r"takes at most 16"),
        ({"chat": True}, r"no chat template"),
    ]
    for change, message in cases:
        with pytest.raises(SelfscopeError, match=message) as caught:
            tools.call("localize.trace", {**base, **change}, tools.context(tiny_llama))
        assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_smollm2_eiffel_tower(smollm2: tuple[Workspace, Subject, float]) -> None:
    _, subject, _ = smollm2
    prompt = "The Eiffel Tower is located in the city of"
    started = time.perf_counter()
    result = trace(
        subject,
        prompt=prompt,
        target=" Paris",
        subject="The Eiffel Tower",
        samples=2,
    )
    seconds = time.perf_counter() - started
    n = len(result.tokens)
    assert result.subject_positions == [0, 1, 2, 3]  # The, ' E', 'iffel', ' Tower'
    assert result.clean_probability > 0.5
    assert result.corrupted_probability < result.clean_probability / 2
    for grid in result.grids:
        assert len(grid.probabilities) == 30 and all(len(r) == n for r in grid.probabilities)
    # the max cell and a few random cells per kind, against single-state runs
    ref = Reference(subject, prompt, result.subject_positions, samples=2)
    corrupted = ref.probability(2, result.target_id, {})
    assert result.corrupted_probability == pytest.approx(corrupted, abs=1e-5)
    rng = random.Random(0)
    for grid in result.grids:
        cells = [(grid.top.layer, grid.top.position), (29, n - 1), (rng.randrange(30), 0)]
        cells += [(rng.randrange(30), rng.randrange(n)) for _ in range(2)]
        for i, j in cells:
            expected = ref.probability(2, result.target_id, {SITE[grid.kind].format(i=i): j})
            assert grid.probabilities[i][j] == pytest.approx(expected, abs=1e-5)
    resid = result.grids[0]
    assert resid.probabilities[29][n - 1] == pytest.approx(result.clean_probability, abs=1e-5)
    assert resid.top.probability > result.corrupted_probability + 0.2
    assert result.figure is not None
    cells = [e for e in ET.fromstring(result.figure).iter(f"{SVG}rect") if e.get("class") == "cell"]
    assert len(cells) == 3 * 30 * n
    tops = ", ".join(
        f"{g.kind} max {g.top.probability:.3f} at layer {g.top.layer} {g.top.token!r}"
        for g in result.grids
    )
    print(
        f"\nSmolLM2 trace: p(' Paris') clean {result.clean_probability:.3f}, corrupted "
        f"{result.corrupted_probability:.3f}; {tops}; {result.forward_passes} forward passes, "
        f"{seconds:.1f} s"
    )
