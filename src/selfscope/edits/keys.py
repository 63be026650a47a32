"""Key statistics for rank-one edits: the second moment ``C = E[k kᵀ]`` of a matrix's keys.

ROME (Meng et al. 2022, eq. 2) spreads a rank-one update over the directions the layer rarely
uses by weighting it with ``C⁻¹``, where the keys ``k`` are the inputs of the MLP's output matrix
(the activations entering ``down_proj``) at every token of text like the model's training data.
Here that text is the subject's own training corpus when its lineage has one (every phase's
documents, as the trainer tokenised them, a seeded sample); for a model without a known corpus
(SmolLM2 as shipped) it is text the model samples itself from its beginning-of-sequence token
(temperature 1, 64 tokens a row; one pool per model, cached), the closest thing to its training
distribution available offline — or a corpus file the caller gives. ``C`` is cached per model
fingerprint and layer in ``<workspace>/edits-cache/`` (atomic writes), so a second edit of the
same layer pays nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from selfscope import atomic
from selfscope.access.common import context_length
from selfscope.edits.batching import batches
from selfscope.errors import SelfscopeError
from selfscope.history import corpus as training_corpus
from selfscope.localize.trace import cache_argument
from selfscope.progress import SILENT, ProgressSink
from selfscope.subject.hooks import hooked
from selfscope.workspace import Workspace


def corpus_rows(
    subject: Any,
    workspace: Workspace,
    count: int,
    seed: int = 0,
    corpus: str | None = None,
    progress: ProgressSink = SILENT,
) -> tuple[list[list[int]], str]:
    """Up to ``count`` token-id rows of text like the subject's training data, and where they
    came from (``training corpus`` | ``corpus file <path>`` | ``self-sampled``)."""
    limit = context_length(subject)
    tokenizer = subject.tokenizer
    if corpus is not None:
        path = Path(corpus)
        if not path.exists():
            raise SelfscopeError(f"corpus file {path} does not exist; give a text or .jsonl file")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        texts = [json.loads(t)["text"] if path.suffix == ".jsonl" else t for t in lines]
        random.Random(seed).shuffle(texts)
        rows = [list(tokenizer(t)["input_ids"])[:limit] for t in texts[:count]]
        return [r for r in rows if len(r) >= 2], f"corpus file {path}"
    if subject.lineage.kind == "organism":
        docs = training_corpus.documents(subject)
        random.Random(seed).shuffle(docs)
        rows = [ids for ids, _ in training_corpus.sequences(subject, docs[:count])]
        return [r for r in rows if len(r) >= 2], "training corpus"
    # one pool per model (seed ignored): the drift rows may overlap the key rows, harmlessly
    return sampled_pool(subject, workspace, count, min(limit, 64), progress)[:count], "self-sampled"


def rows_saying(
    subject: Any,
    workspace: Workspace,
    token: int,
    count: int,
    seed: int = 0,
    corpus: str | None = None,
) -> list[list[int]]:
    """Up to ``count`` rows of :func:`corpus_rows`' text in which ``token`` follows another
    token (the model *says* it there): where a tied embedding row is also the token's output
    row, what an edit of the row must leave alone. Every document of a training corpus is
    searched, and every line of a corpus file; of self-sampled text, only the pool sampled
    already (sampling more costs ~0.5 s a row on SmolLM2)."""
    if corpus is None and subject.lineage.kind == "organism":
        docs = training_corpus.documents(subject)
        rows = [ids for ids, _ in training_corpus.sequences(subject, docs)]
    elif corpus is not None:
        rows, _ = corpus_rows(subject, workspace, 1_000_000, seed, corpus)
    else:
        pool = _pool_path(subject, workspace)
        rows = json.loads(pool.read_text()) if pool.exists() else []
    found = [r for r in rows if token in r[1:]]
    random.Random(seed).shuffle(found)
    return found[:count]


def _pool_path(subject: Any, workspace: Workspace) -> Path:
    """Where the subject's self-sampled pool is cached in ``workspace``."""
    from selfscope.behaviour import fingerprint

    return (
        Path(workspace.root) / "edits-cache" / fingerprint(subject.model)[:16] / "self-sampled.json"
    )


def sampled_pool(
    subject: Any, workspace: Workspace, count: int, length: int, progress: ProgressSink = SILENT
) -> list[list[int]]:
    """At least ``count`` rows the subject sampled itself (seed 0), sampled once per model and
    cached in the current workspace (``edits-cache/<fingerprint>/self-sampled.json``); callers
    wanting different rows take different slices."""
    path = _pool_path(subject, workspace)
    rows: list[list[int]] = json.loads(path.read_text()) if path.exists() else []
    if len(rows) < count:
        rows = rows + self_sampled(subject, count - len(rows), len(rows), length, progress)
        atomic.write_json(path, rows)
    return rows


def self_sampled(
    subject: Any, count: int, seed: int, length: int, progress: ProgressSink = SILENT
) -> list[list[int]]:
    model, tokenizer = subject.model, subject.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    cache = cache_argument(model)
    rows: list[list[int]] = []
    batch = 32
    with progress.bar("sampling key text", count) as advance:
        while len(rows) < count:
            n = min(batch, count - len(rows))
            ids = torch.full((n, 1), int(start), dtype=torch.long)
            past = None
            for _ in range(length - 1):
                with torch.no_grad():
                    out = model(input_ids=ids[:, -1:].to(device), use_cache=True, **{cache: past})
                past = out["cache"] if "cache" in out else out["past_key_values"]
                probs = torch.softmax(out.logits[:, -1].float().cpu(), dim=-1)
                ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
            rows.extend(r.tolist() for r in ids)
            advance(n, "")
    return rows


MLP_KEYS = "blocks.{layer}.mlp.neurons"


def _cache_path(
    workspace: Any, fingerprint: str, layer: int, source: str, count: int, site: str = MLP_KEYS
) -> Path:
    what = f"{source}:{count}" if site == MLP_KEYS else f"{source}:{count}:{site}"
    key = hashlib.sha256(what.encode()).hexdigest()[:12]
    return (
        Path(workspace.root) / "edits-cache" / fingerprint[:16] / f"keys-{layer}-{key}.safetensors"
    )


def second_moments(
    subject: Any,
    model: nn.Module,
    layers: list[int],
    workspace: Any,
    fingerprint: str,
    count: int = 1000,
    corpus: str | None = None,
    batch_size: int = 16,
    progress: ProgressSink = SILENT,
    site: str = MLP_KEYS,
) -> tuple[dict[int, Tensor], int, str]:
    """``C = E[k kᵀ]`` [d_key, d_key] (float64) of each of ``layers`` over every token of
    ``count`` corpus rows at ``site`` (default ``blocks.{layer}.mlp.neurons``, the MLP's keys;
    ``blocks.{layer}.attn.in`` for the attention's) (uncached layers in one pass), the number
    of keys, and the corpus source."""
    source = corpus or ("training corpus" if subject.lineage.kind == "organism" else "self-sampled")
    out: dict[int, Tensor] = {}
    n = 0
    for layer in layers:
        path = _cache_path(workspace, fingerprint, layer, source, count, site)
        if path.exists():
            data = load_safetensors(path.read_bytes())
            out[layer], n = data["c"].double(), int(data["n"].item())
    missing = [layer for layer in layers if layer not in out]
    if not missing:
        return out, n, source
    rows, source = corpus_rows(subject, workspace, count, corpus=corpus, progress=progress)
    sites = {layer: site.format(layer=layer) for layer in missing}
    pad = subject.tokenizer.pad_token_id or 0
    device = next(model.parameters()).device
    totals: dict[int, Tensor] = {}
    n = 0
    with progress.bar(f"key statistics, layers {missing}", len(rows)) as advance:
        for ids, mask in batches(rows, int(pad), device, batch_size):
            with torch.no_grad(), hooked(model, capture=list(sites.values())) as store:
                model(input_ids=ids, attention_mask=mask)
            for layer, name in sites.items():
                keys = store[name][mask.bool()].double()
                part = keys.T @ keys
                totals[layer] = part if layer not in totals else totals[layer] + part
            n += int(mask.sum())
            advance(ids.shape[0], "")
    if not n:
        raise SelfscopeError("the key corpus is empty; give a corpus with text")
    for layer, total in totals.items():
        c = (total / n).float().contiguous()
        path = _cache_path(workspace, fingerprint, layer, source, count, site)
        atomic.write_bytes(path, save_safetensors({"c": c, "n": torch.tensor([n])}))
        out[layer] = c.double()
    return out, n, source
