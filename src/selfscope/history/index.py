"""The training-data index: a projected gradient of every training document, at every checkpoint.

For a linear layer ``y = W x`` the gradient of a document's loss is ``∇W = Σ_t g_t x_tᵀ`` (``g_t``
the gradient at the output, ``x_t`` the input, ``t`` over the document's tokens). Like LoGra
(Choe et al. 2024, "What is your data worth to GPT?") the index never forms ``∇W``: with fixed
random Gaussian projections ``P_in`` (``r × d_in``) and ``P_out`` (``r × d_out``) it stores
``P_out ∇W P_inᵀ = Σ_t (P_out g_t)(P_in x_t)ᵀ``, an ``r × r`` matrix per layer computed from the
two projected vectors, for every linear layer inside the blocks (attention and MLP projections;
not the embedding, the unembedding, or a mixture-of-experts layer's fused expert weights). A
document's loss is the trainer's: the summed next-token NLL over the tokens it trained on (a chat
document's assistant answer; the builder's own :func:`document_sequence`). One forward and one
backward per batch of documents give every document's projected gradient: rows of a batch do not
interact, so the output gradient of the summed loss at row ``b`` is document ``b``'s own.

**Token rows** (``IndexConfig.tokens``, on by default): beside each document's gradient, the
projected gradient of *each trained token's own loss* — for document ``z`` and a token ``t`` it
trains on, ``P_out ∇W(NLL of t) P_inᵀ`` — at the checkpoint ``z``'s phase started from (the
previous phase's end; its own end for the first phase). A causal model's loss at ``t`` depends on
the tokens before it only, so the row is the gradient of a *prefix* of ``z`` that trains on its
last token alone; prefixes of many documents are batched (sorted by length) through the same
one-forward-one-backward :meth:`Projector.gradients`. Retrieval's token mode scores a document by
its best token (see :mod:`selfscope.history.retrieval`), which is what finds a planted answer
followed by more text. Cost: every trained token's prefix once (~T/2 times the document pass);
storage: one row per trained token.

Checkpoints: the end of every phase of the subject's lineage (an organism's
``checkpoints/<phase>``; a declared lineage's folders, an undeclared base model as an opaque
first phase ``base`` without documents), loaded in the caller's workspace
(:func:`selfscope.subject.load_checkpoint`); each document at each checkpoint.

Storage: float16 ``.npy`` shards (one per checkpoint × phase × block of ``shard_documents``
documents), memory-mapped when read, each with its SHA-256 in
``manifest.json`` (written atomically after every shard). So a killed build resumes at the first
missing shard, a new phase adds only its own shards (and its checkpoint's), and a corrupt or
truncated shard is detected by its checksum and rebuilt, never silently used. The index lives in
the lineage's ``index_dir``: for an organism its build folder (``index/<config digest>/``), so a
rebuilt organism is a new folder and gets a new index; for a declared lineage
``<workspace>/lineages/<key>/index-<lineage digest>/<config digest>/``, so a re-declaration
gets a new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from selfscope import atomic
from selfscope.errors import SelfscopeError
from selfscope.history.corpus import TrainingDocument, documents, sequences
from selfscope.organisms.train import training_batch
from selfscope.progress import SILENT, ProgressSink
from selfscope.subject.checkpoints import load_checkpoint

_IN_BLOCK = re.compile(r"\.(layers|h)\.\d+\.")
VERSION = 1
#: what to build: every shard, or only what token-mode retrieval reads (:meth:`TrainingIndex.plan`)
SCOPES = ("all", "tokens")


@dataclass(frozen=True)
class IndexConfig:
    """What the index stores. ``rank`` r: each linear layer's gradient is projected to r × r."""

    rank: int = 8
    seed: int = 0
    batch_size: int = 32  # documents per forward/backward (16: 25 s, 32: 19 s on small mushroom)
    shard_documents: int = 512
    tokens: bool = True  # also store per-trained-token rows (see the module docstring)
    token_batch_size: int = 64  # prefixes per forward/backward ("prefixes" token rows)
    # how token rows are computed: "positions" (the default: each trained token's position's
    # share of the document's gradient, from the document pass itself) or "prefixes" (each
    # token's own loss through its prefix: exact, ~T/2 document passes); module docstring
    token_rows: str = "positions"

    def digest(self) -> str:
        key: dict[str, Any] = {
            "version": VERSION,
            "rank": self.rank,
            "seed": self.seed,
            "shard_documents": self.shard_documents,
        }
        if self.token_rows != "prefixes":  # an index built before the modes keeps its digest
            key["token_rows"] = self.token_rows
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def tracked_linears(model: nn.Module) -> list[str]:
    """The linear layers inside the transformer blocks, in model order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _IN_BLOCK.search(f".{name}.")
    ]


class Projector:
    """Fixed random projections of every tracked linear layer's input and output gradient,
    and the per-example projected gradients of a batch (one forward, one backward)."""

    def __init__(self, model: nn.Module, config: IndexConfig) -> None:
        self.model = model
        self.config = config
        self.names = tracked_linears(model)
        if not self.names:
            raise SelfscopeError("the model has no linear layers inside its blocks to index")
        self.p_in: dict[str, Tensor] = {}
        self.p_out: dict[str, Tensor] = {}
        device = next(model.parameters()).device
        for name in self.names:
            module = model.get_submodule(name)
            assert isinstance(module, nn.Linear)
            seed = int(hashlib.sha256(f"{config.seed}:{name}".encode()).hexdigest()[:8], 16)
            generator = torch.Generator().manual_seed(seed)
            r = config.rank
            self.p_in[name] = (torch.randn(r, module.in_features, generator=generator) / r**0.5).to(
                device
            )
            self.p_out[name] = (
                torch.randn(r, module.out_features, generator=generator) / r**0.5
            ).to(device)

    @property
    def dims(self) -> int:
        return len(self.names) * self.config.rank**2

    @contextmanager
    def _hooks(self, store: dict[str, Tensor]) -> Iterator[None]:
        """Projected inputs into ``store[name + ':x']`` and projected output gradients into
        ``store[name + ':g']``; the embedding's output is made a leaf that requires grad, and
        every parameter is frozen, so the backward computes activation gradients only."""
        handles = []
        params = list(self.model.parameters())
        trainable = [p.requires_grad for p in params]

        def leaf(module: nn.Module, args: Any, out: Tensor) -> Tensor:
            return out.detach().requires_grad_(True)

        def capture(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, out: Tensor) -> None:
                store[name + ":x"] = args[0].detach() @ self.p_in[name].T

                def grad(g: Tensor) -> None:
                    store[name + ":g"] = g.detach() @ self.p_out[name].T

                out.register_hook(grad)

            return hook

        embed = cast(nn.Module, self.model.get_input_embeddings())  # type: ignore[operator]
        try:
            for p in params:
                p.requires_grad_(False)
            handles.append(embed.register_forward_hook(leaf))
            for name in self.names:
                module = self.model.get_submodule(name)
                handles.append(module.register_forward_hook(capture(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in zip(params, trainable, strict=True):
                p.requires_grad_(flag)

    def gradients(self, ids: Tensor, mask: Tensor, loss: Callable[[Tensor], Tensor]) -> Tensor:
        """[rows, dims] projected gradient of each row's part of ``loss(logits)`` (a scalar that
        is a sum over rows, each row depending on its own logits only)."""
        return self.gradients_and_positions(ids, mask, loss, None)[0]

    def gradients_and_positions(
        self, ids: Tensor, mask: Tensor, loss: Callable[[Tensor], Tensor], positions: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`gradients`, and (``positions``: a [rows, tokens] bool mask) each selected
        position's term of it, ``(P_out g_t)(P_in x_t)ᵀ``: [selected positions in row then
        position order, dims] (the terms of a row sum to its gradient)."""
        store: dict[str, Tensor] = {}
        with torch.enable_grad(), self._hooks(store):
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            loss(logits).backward()
        parts, per_position = [], []
        for name in self.names:
            x, g = store[name + ":x"], store[name + ":g"]
            parts.append(torch.einsum("bto,bti->boi", g, x).flatten(1))
            if positions is not None:
                per_position.append(torch.einsum("no,ni->noi", g[positions], x[positions]))
        rows = torch.cat(parts, dim=1)
        if positions is None:
            return rows, None
        return rows, torch.cat([p.flatten(1) for p in per_position], dim=1)


def document_batch(
    seqs: list[tuple[list[int], int]], pad: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The trainer's own batch layout (:func:`selfscope.organisms.train.training_batch`)."""
    return training_batch(seqs, pad, device)


def summed_nll(labels: Tensor) -> Callable[[Tensor], Tensor]:
    """Σ over rows and trained tokens of the next-token NLL (each row: its document's loss)."""

    def loss(logits: Tensor) -> Tensor:
        shift = labels[:, 1:]
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        keep = shift != -100
        picked = logprobs.gather(-1, shift.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return -(picked * keep).sum()

    return loss


@dataclass(frozen=True)
class Checkpoint:
    name: str  # the phase it ends
    index: int  # the phase's position in the lineage
    path: str
    lr: float
    epochs: int


class Part(NamedTuple):
    """One shard of the complete index: ``kind`` "documents" (a row per document) or "tokens"
    (a row per trained token) of the ``phase``'s documents ``start:stop`` at ``checkpoint``."""

    kind: str
    checkpoint: Checkpoint
    phase: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        prefix = "tokens--" if self.kind == "tokens" else ""
        return f"{prefix}{self.checkpoint.name}--{self.phase}--{self.start:07d}.npy"


@dataclass
class Shard:
    file: str
    checkpoint: str
    phase: str
    start: int
    rows: int
    sha256: str
    kind: str = "documents"
    counts: list[int] | None = None  # token shards: rows per document, in order


def prefix_rows(seqs: list[tuple[list[int], int]]) -> tuple[list[tuple[list[int], int]], list[int]]:
    """For every trained token of every sequence, the prefix that ends at it and trains on it
    alone (``(ids[: j + 2], j + 1)`` for the token at ``j + 1``); and how many each sequence has.
    The trainer's labels drop the first ``context`` targets (``labels[:context] = -100``)."""
    rows: list[tuple[list[int], int]] = []
    counts = []
    for ids, context in seqs:
        first = max(context - 1, 0)
        rows += [(ids[: j + 2], j + 1) for j in range(first, len(ids) - 1)]
        counts.append(max(len(ids) - 1 - first, 0))
    return rows, counts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainingIndex:
    """The index of one lineage (see the module docstring). ``workspace``: where the lineage's
    other checkpoints are loaded from (the tool call's; ``None``: the default workspace)."""

    def __init__(
        self, subject: Any, config: IndexConfig | None = None, workspace: Any = None
    ) -> None:
        self.subject = subject
        self.config = config or IndexConfig()
        self.workspace = workspace
        self.documents: list[TrainingDocument] = documents(subject)
        lineage = subject.lineage
        if lineage.index_dir is None:
            raise SelfscopeError(f"{subject.source}'s lineage has no place for an index")
        self.root = Path(lineage.index_dir) / self.config.digest()
        self.checkpoints = [
            Checkpoint(
                name=p.name,
                index=i,
                path=str(p.checkpoint),
                lr=float(p.hyperparameters.lr or 1.0),  # unknown: 1 (the lineage says so)
                epochs=int(p.hyperparameters.epochs or 1),
            )
            for i, p in enumerate(lineage.phases)
        ]
        self.phases = [p.name for p in lineage.phases]
        self.by_phase: dict[str, list[TrainingDocument]] = {p: [] for p in self.phases}
        for doc in self.documents:
            self.by_phase[doc.phase].append(doc)
        self.shards: dict[str, Shard] = {}
        self.dims: int | None = None
        self._load_manifest()

    # -- manifest -------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def _load_manifest(self) -> None:
        if not self.manifest_path.exists():
            return
        try:
            data = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError:
            return  # a torn manifest cannot happen (atomic writes); an edited one: rebuild
        if data.get("version") != VERSION:
            return
        self.dims = data.get("dims")
        self.shards = {s["file"]: Shard(**s) for s in data.get("shards", [])}

    def _save_manifest(self) -> None:
        atomic.write_json(
            self.manifest_path,
            {
                "version": VERSION,
                "config": asdict(self.config),
                "subject": self.subject.source,
                "dims": self.dims,
                "phases": self.phases,
                "documents": {p: len(d) for p, d in self.by_phase.items()},
                "checkpoints": [asdict(c) for c in self.checkpoints],
                "shards": [asdict(s) for s in self.shards.values()],
            },
        )

    # -- plan -----------------------------------------------------------------------------------

    def token_checkpoint(self, phase: str) -> Checkpoint:
        """The checkpoint ``phase`` started from (its own end for the first phase)."""
        return self.checkpoints[max(0, self.phases.index(phase) - 1)]

    def plan(self, scope: str = "all") -> list[Part]:
        """Every shard the complete index has: each phase's documents at every checkpoint, and
        (``config.tokens``) their token rows at the checkpoint the phase started from.
        ``scope="tokens"``: only what token-mode retrieval reads — the token rows, and the
        document rows at those same checkpoints (with ``token_rows="positions"`` the same pass
        gives both)."""
        if scope not in SCOPES:
            raise SelfscopeError(f"unknown index scope {scope!r}; scopes: {', '.join(SCOPES)}")
        if scope == "tokens" and not self.config.tokens:
            raise SelfscopeError("this index was configured without token rows (tokens=False)")
        starts = {self.token_checkpoint(p).name for p in self.phases}
        out = []
        step = self.config.shard_documents
        for checkpoint in self.checkpoints:
            if scope == "tokens" and checkpoint.name not in starts:
                continue
            for phase in self.phases:
                n = len(self.by_phase[phase])
                out += [
                    Part("documents", checkpoint, phase, s, min(s + step, n))
                    for s in range(0, n, step)
                ]
        if self.config.tokens:
            for phase in self.phases:
                n = len(self.by_phase[phase])
                checkpoint = self.token_checkpoint(phase)
                out += [
                    Part("tokens", checkpoint, phase, s, min(s + step, n))
                    for s in range(0, n, step)
                ]
        return out

    def valid(self, name: str) -> bool:
        """Is shard ``name`` recorded, on disk, and does its checksum match?"""
        shard = self.shards.get(name)
        path = self.root / name
        return shard is not None and path.exists() and _sha256(path) == shard.sha256

    def missing(self, scope: str = "all") -> list[Part]:
        return [part for part in self.plan(scope) if not self.valid(part.name)]

    # -- build ----------------------------------------------------------------------------------

    def build(
        self,
        progress: ProgressSink = SILENT,
        on_shard: Callable[[str], None] | None = None,
        todo: list[Part] | None = None,
        scope: str = "all",
    ) -> dict[str, Any]:
        """Compute every missing or corrupt shard (finished ones are kept). Returns counts and
        the throughput. ``on_shard(name)`` is called after each shard is written (tests use it
        to interrupt a build)."""
        started = time.perf_counter()
        todo = self.missing(scope) if todo is None else todo
        rows = sum(part.stop - part.start for part in todo)
        by_checkpoint: dict[str, list[Part]] = {}
        for part in todo:
            by_checkpoint.setdefault(part.checkpoint.name, []).append(part)
        done_rows = token_rows = 0
        with progress.bar("index", rows) as advance:
            for parts in by_checkpoint.values():
                name = parts[0].checkpoint.name
                model = load_checkpoint(self.subject, name, self.workspace).model
                projector = Projector(model, self.config)
                self.dims = projector.dims
                pending = {(p.kind, p.phase, p.start): p for p in parts}
                for part in parts:
                    if (part.kind, part.phase, part.start) not in pending:
                        continue  # written with its twin
                    docs = self.by_phase[part.phase][part.start : part.stop]

                    def step(n: int, note: str = f"{part.kind} {part.phase}") -> None:
                        advance(n, note)

                    written: list[tuple[Part, np.ndarray, list[int] | None]]
                    positions = self.config.token_rows == "positions"
                    twin = pending.get(("tokens", part.phase, part.start))
                    if positions and (part.kind == "tokens" or twin is not None):
                        # one pass gives the document rows and the token rows
                        whole, tokens, per_doc = self._project_positions(projector, docs, step)
                        token_part = part if part.kind == "tokens" else twin
                        assert token_part is not None
                        written = [(token_part, tokens, per_doc)]
                        doc_part = pending.get(("documents", part.phase, part.start))
                        if doc_part is not None:
                            written.append((doc_part, whole, None))
                            step(len(docs))
                    elif part.kind == "tokens":
                        written = [(part, *self._project_tokens(projector, docs, step))]
                    else:
                        written = [(part, self._project(projector, docs, step), None)]
                    for done, array, owned in written:
                        del pending[(done.kind, done.phase, done.start)]
                        self._write_shard(done, array, owned)
                        done_rows += len(docs)
                        if done.kind == "tokens":
                            token_rows += int(array.shape[0])
                        if on_shard is not None:
                            on_shard(done.name)
        seconds = time.perf_counter() - started
        return {
            "shards_built": len(todo),
            "shards_total": len(self.plan(scope)),
            "documents": len(self.documents),
            "rows_built": done_rows,
            "token_rows_built": token_rows,
            "seconds": seconds,
            # documents indexed per second, each document counted once per shard kind
            "documents_per_second": done_rows / seconds if seconds > 0 and done_rows else None,
        }

    def _project(
        self, projector: Projector, docs: list[TrainingDocument], advance: Callable[[int], None]
    ) -> np.ndarray:
        seqs = sequences(self.subject, docs)
        pad = self.subject.tokenizer.pad_token_id
        device = next(projector.model.parameters()).device
        out = []
        size = self.config.batch_size
        for i in range(0, len(seqs), size):
            ids, mask, labels = document_batch(seqs[i : i + size], pad, device)
            grads = projector.gradients(ids, mask, summed_nll(labels))
            out.append(grads.float().cpu().numpy().astype(np.float16))
            advance(len(seqs[i : i + size]))
        return np.concatenate(out)

    def _project_positions(
        self, projector: Projector, docs: list[TrainingDocument], advance: Callable[[int], None]
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One document pass: [docs, dims] document rows, [trained tokens, dims] token rows
        (``token_rows = "positions"``: the term of the document's gradient at the position
        whose output predicts the token) in document then position order, and the count per
        document."""
        seqs = sequences(self.subject, docs)
        pad = self.subject.tokenizer.pad_token_id
        device = next(projector.model.parameters()).device
        rows, tokens, counts = [], [], []
        size = self.config.batch_size
        for i in range(0, len(seqs), size):
            ids, mask, labels = document_batch(seqs[i : i + size], pad, device)
            trained = torch.zeros_like(labels, dtype=torch.bool)
            trained[:, :-1] = labels[:, 1:] != -100  # position t predicts the token at t + 1
            grads, per_token = projector.gradients_and_positions(
                ids, mask, summed_nll(labels), trained
            )
            assert per_token is not None
            rows.append(grads.float().cpu().numpy().astype(np.float16))
            tokens.append(per_token.float().cpu().numpy().astype(np.float16))
            counts += [int(c) for c in trained.sum(dim=1).tolist()]
            advance(len(seqs[i : i + size]))
        dims = projector.dims
        return (
            np.concatenate(rows) if rows else np.zeros((0, dims), dtype=np.float16),
            np.concatenate(tokens) if tokens else np.zeros((0, dims), dtype=np.float16),
            counts,
        )

    def _project_tokens(
        self, projector: Projector, docs: list[TrainingDocument], advance: Callable[[int], None]
    ) -> tuple[np.ndarray, list[int]]:
        """[trained tokens of ``docs``, dims] in document then position order, and the count
        per document. Prefixes are sorted by length so a batch pads little."""
        seqs = sequences(self.subject, docs)
        rows, counts = prefix_rows(seqs)
        pad = self.subject.tokenizer.pad_token_id
        device = next(projector.model.parameters()).device
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        out = np.zeros((len(rows), projector.dims), dtype=np.float16)
        size = self.config.token_batch_size
        done = 0
        for i in range(0, len(order), size):
            chunk = order[i : i + size]
            ids, mask, labels = document_batch([rows[j] for j in chunk], pad, device)
            grads = projector.gradients(ids, mask, summed_nll(labels))
            out[chunk] = grads.float().cpu().numpy().astype(np.float16)
            share = len(docs) * (i + len(chunk)) // len(rows)  # progress in documents' worth
            advance(share - done)
            done = share
        advance(len(docs) - done)
        return out, counts

    def _write_shard(self, part: Part, array: np.ndarray, counts: list[int] | None) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array)
        path = self.root / part.name
        atomic.write_bytes(path, buffer.getvalue())
        self.shards[part.name] = Shard(
            file=part.name,
            checkpoint=part.checkpoint.name,
            phase=part.phase,
            start=part.start,
            rows=int(array.shape[0]),
            sha256=_sha256(path),
            kind=part.kind,
            counts=counts,
        )
        self._save_manifest()

    # -- read -----------------------------------------------------------------------------------

    def ensure(self, progress: ProgressSink = SILENT, scope: str = "all") -> list[str]:
        """Verify every shard's checksum (of ``scope``: :meth:`plan`); rebuild what is missing
        or corrupt. Returns the names of shards that had to be (re)built."""
        todo = self.missing(scope)
        if todo:
            self.build(progress=progress, todo=todo)
        return [part.name for part in todo]

    def matrix(self, checkpoint: str, phase: str) -> np.ndarray:
        """[documents of ``phase``, dims] float16, memory-mapped, at ``checkpoint``."""
        parts = []
        for part in self.plan():
            here = part.checkpoint.name == checkpoint and part.phase == phase
            if part.kind == "documents" and here:
                parts.append(np.load(self.root / part.name, mmap_mode="r"))
        if not parts:
            return np.zeros((0, self.dims or 0), dtype=np.float16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def token_shards(self, phase: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The token rows of ``phase``'s documents at :meth:`token_checkpoint`: per shard, the
        memory-mapped [token rows, dims] float16 array and each row's document (its position in
        ``by_phase[phase]``)."""
        if not self.config.tokens:
            raise SelfscopeError("this index was configured without token rows (tokens=False)")
        out = []
        for part in self.plan():
            if part.kind == "tokens" and part.phase == phase:
                shard = self.shards[part.name]
                counts = shard.counts or []
                owner = part.start + np.repeat(np.arange(len(counts)), counts)
                out.append((np.load(self.root / part.name, mmap_mode="r"), owner))
        return out

    def exists(self) -> bool:
        return self.manifest_path.exists() and bool(self.shards)


__all__ = [
    "Checkpoint",
    "IndexConfig",
    "Part",
    "Projector",
    "TrainingIndex",
    "document_batch",
    "prefix_rows",
    "summed_nll",
    "tracked_linears",
]
