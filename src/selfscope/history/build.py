"""``history.index_build``: build (or complete) a model's training-data index.

The index (:mod:`selfscope.history.index`) holds projected per-document and per-token gradients
of every training document at every phase checkpoint; ``history.trace`` ranks documents with
it. Building is resumable: finished shards are kept, missing or corrupt ones are (re)built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from selfscope.history.index import IndexConfig, TrainingIndex
from selfscope.tools import ToolContext, tool


class IndexBuildArgs(BaseModel):
    rank: int = Field(8, ge=1, le=64, description="Projection rank per layer.")
    seed: int = Field(0, ge=0, description="Seed of the random projections.")
    scope: Literal["all", "tokens"] = Field(
        "all",
        description="'all': every shard (document rows at every phase end, token rows at every "
        "phase start); 'tokens': only what history.trace's default reads (the token rows and "
        "the document rows at the same checkpoints: one document pass per phase start).",
    )
    token_rows: Literal["positions", "prefixes"] = Field(
        "positions",
        description="Token rows from each trained token's position in the document pass "
        "('positions', one pass) or from its own prefix ('prefixes': exact, ~T/2 passes).",
    )


class IndexBuildReport(BaseModel):
    path: str = Field(description="The index folder.")
    documents: int = Field(description="Training documents indexed (all phases).")
    checkpoints: int = Field(description="Checkpoints the gradients are taken at.")
    shards_built: int = Field(description="Shards computed by this call (0: already complete).")
    shards_total: int = Field(description="Shards the index has in this scope.")
    rows_built: int = Field(description="Document rows computed by this call.")
    token_rows_built: int = Field(description="Per-token rows computed by this call.")
    seconds: float = Field(description="Wall time of this call.")
    documents_per_second: float | None = Field(description="Throughput (None: nothing built).")


@tool("history.index_build", IndexBuildArgs, IndexBuildReport)
def index_build(ctx: ToolContext, args: IndexBuildArgs) -> IndexBuildReport:
    """Index every training document of every phase of the model's lineage, and every trained
    token of it (resumable: finished shards are kept, corrupt ones rebuilt)."""
    config = IndexConfig(rank=args.rank, seed=args.seed, token_rows=args.token_rows)
    index = TrainingIndex(ctx.subject, config, ctx.workspace)
    report = index.build(progress=ctx.progress, scope=args.scope)
    return IndexBuildReport(path=str(index.root), checkpoints=len(index.checkpoints), **report)
