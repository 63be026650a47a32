"""``localize.trace``: causal tracing — which hidden states carry a fact (Meng et al. 2022).

Causal tracing (ROME, "Locating and Editing Factual Associations in GPT", section 2.1) asks
which states inside the network carry the information that makes the model complete a prompt
with a target ("The Eiffel Tower is located in the city of" → " Paris"). Three kinds of run:

1. **clean** — the prompt as it is: p(target) is high;
2. **corrupted** — Gaussian noise is added to the token embeddings (the ``embed`` site) of the
   *subject* ("The Eiffel Tower"), so the model no longer knows what the prompt is about and
   p(target) drops;
3. **restored** — the corrupted run again, with one state set back to its clean value: the
   output of block ``i`` at position ``j`` (``resid``: ``blocks.{i}.resid_post``), or the output
   of its attention (``attn``: ``blocks.{i}.attn.out``) or MLP (``mlp``: ``blocks.{i}.mlp.out``).
   Where p(target) recovers, that state carries what the corruption destroyed.

The restored probabilities over layers × positions form the trace. ROME found two sites in GPT
models: MLPs of early-middle layers at the subject's last token, and late layers at the last
token. Following ROME, ``attn``/``mlp`` can restore a *window* of consecutive layers at once
(layers ``i - window//2 .. i + ceil(window/2) - 1``, clipped; ROME uses 10) because one layer's
MLP alone often changes little; ``resid`` always restores the single state. Noise: scale
``noise`` × the standard deviation of the embedding matrix's entries (ROME: 3 × the embeddings'
standard deviation); draw ``s`` of ``samples`` is
``torch.randn(samples, len(subject_positions), d_model, generator=torch.Generator()
.manual_seed(seed))[s] * scale``, added at the subject positions. Every number is the mean over
the samples (probabilities, and log-odds when a contrast is given).

Batched: a batch holds the restorations at one position ``j`` under one noise sample (every
kind and layer, at most ``batch_size`` rows), and each site gets one patch function that writes
the clean value only into the rows that restore it. A causal model computes nothing before
``j`` differently, so the corrupted prompt's first ``j`` tokens run once, on one row, and the
batch runs positions ``j..`` only, on their key/value cache. Cells before the subject's first
token equal the corrupted run (nothing noised has been read yet) and are filled in without
running them. The batched grid is checked cell by cell against independent single-state runs
on Llama, Mixtral, GPT-2 and GPT-NeoX models (``tests/test_trace.py``).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope.access.common import (
    PromptArgs,
    encode,
    first_token,
    prompt_text,
    token_strings,
)
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.report.figures import Heatmap, heatmaps_svg
from selfscope.subject.hooks import Patch, hooked
from selfscope.tools import ToolContext, tool

Kind = Literal["resid", "attn", "mlp"]
#: the site each kind restores, per layer
SITES: dict[str, str] = {
    "resid": "blocks.{i}.resid_post",
    "attn": "blocks.{i}.attn.out",
    "mlp": "blocks.{i}.mlp.out",
}
_ALL_KINDS: tuple[Kind, ...] = ("resid", "mlp", "attn")
_COLORS = {"resid": "#6a1b9a", "mlp": "#1b7837", "attn": "#b2182b"}  # ROME's purple, green, red


class TraceArgs(PromptArgs):
    target: str = Field(
        min_length=1,
        description="The completion traced, e.g. ' Paris': its first token's probability.",
    )
    subject: str = Field(
        min_length=1,
        description="A substring of the prompt whose tokens are noised (its first occurrence), "
        "e.g. 'The Eiffel Tower'.",
    )
    normal: str | None = Field(
        None,
        description="A contrast completion: every cell also gets the behaviour log-odds "
        "log p(target) - log p(normal) (summed over each completion's tokens).",
    )
    kinds: list[Kind] = Field(
        default_factory=lambda: list(_ALL_KINDS),
        min_length=1,
        description="Which states to restore: resid (block output), mlp, attn.",
    )
    noise: float = Field(
        3.0, ge=0, le=100, description="Noise scale in standard deviations of the embeddings."
    )
    samples: int = Field(3, ge=1, le=64, description="Noise draws averaged over.")
    seed: int = Field(0, description="Seed of the noise.")
    window: int = Field(
        1, ge=1, description="attn/mlp: restore this many consecutive layers (ROME: 10)."
    )
    batch_size: int = Field(64, ge=1, le=1024, description="Rows per forward pass.")
    figure: bool = Field(True, description="Include the heatmap as an SVG document.")


class TraceCell(BaseModel):
    kind: Kind
    layer: int
    position: int
    token: str
    probability: float  # p(target) with this state restored (mean over samples)
    effect: float  # probability - corrupted probability
    log_odds: float | None = None


class TraceGrid(BaseModel):
    kind: Kind
    site: str  # e.g. blocks.{i}.mlp.out
    window: int  # layers restored together (1 for resid)
    probabilities: list[list[float]]  # [layer][position]
    log_odds: list[list[float]] | None  # [layer][position], when a contrast is given
    top: TraceCell  # the cell with the highest restored probability


class TraceResult(BaseModel):
    tokens: list[str]
    subject_positions: list[int]
    target: str
    target_id: int
    target_token: str
    normal: str | None
    noise_std: float  # absolute standard deviation of the noise added to the embeddings
    samples: int
    clean_probability: float
    corrupted_probability: float  # mean over samples
    clean_log_odds: float | None
    corrupted_log_odds: float | None
    grids: list[TraceGrid]
    forward_passes: int  # model calls, the one-row prefix runs included
    figure: str | None  # SVG: one heatmap panel per kind, positions × layers


@dataclass(frozen=True)
class _Job:
    """One restored run: sample ``sample``'s noise and, unless ``kind`` is None (the corrupted
    run itself), the clean value of ``kind`` restored around ``layer`` at ``position``."""

    sample: int
    position: int
    kind: Kind | None
    layer: int = 0


def restored_layers(kind: str, layer: int, window: int, n_layers: int) -> range:
    """The layers restored for cell ``layer`` (ROME's window; ``resid`` is always one)."""
    if kind == "resid":
        return range(layer, layer + 1)
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def subject_positions(
    subject: Any, prompt: str, span: str, chat: bool = False, last: bool = False
) -> list[int]:
    """Positions of the model input whose characters overlap ``span``'s first (``last``: last)
    occurrence in ``prompt`` (found through the tokenizer's character offsets)."""
    where = prompt.rfind(span) if last else prompt.find(span)
    if where < 0:
        raise SelfscopeError(f"subject {span!r} is not in the prompt; give a substring of it")
    text = prompt_text(subject, prompt, chat)
    base = text.rfind(prompt)
    if base < 0:
        raise SelfscopeError(
            "the chat template changes the prompt's text, so the subject cannot be located; "
            "trace with chat=false"
        )
    start, end = base + where, base + where + len(span)
    tokenizer = subject.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise SelfscopeError(
            f"{subject.source}'s tokenizer gives no character offsets (not a fast tokenizer), "
            "so the subject cannot be mapped to tokens"
        )
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    positions = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not positions:
        raise SelfscopeError(f"subject {span!r} covers no token of the prompt; give a word of it")
    return positions


def _restorer(values: Tensor, rows: list[int]) -> Patch:
    """A patch writing ``values[r]`` into batch row ``rows[r]`` at the first position."""
    index = torch.tensor(rows, device=values.device)

    def restore(value: Tensor) -> Tensor:
        out = value.clone()
        out[index, 0] = values.to(value.dtype)
        return out

    return restore


def _noiser(noise: Tensor, at: list[int]) -> Patch:
    """A patch adding ``noise`` [len(at), d] at positions ``at`` of every row."""
    index = torch.tensor(at, device=noise.device)

    def add(value: Tensor) -> Tensor:
        out = value.clone()
        out[:, index] += noise.to(value.dtype)
        return out

    return add


def cache_argument(model: nn.Module) -> str:
    """The forward's name for a key/value cache (``cache``; ``past_key_values`` before)."""
    names = inspect.signature(model.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


class _Runner:
    """Forward passes of the trace, counted.

    A restoration at position ``j`` changes nothing before ``j`` (the model is causal), so the
    corrupted prompt's first ``j`` tokens run once, on one row, and their key/value cache is
    shared by the batch that runs positions ``j..`` with the restorations (all rows of a batch
    share the sample and ``j``). Logits are kept for the last position only when no contrast
    needs the completions' positions.
    """

    def __init__(
        self,
        model: nn.Module,
        rows: Tensor,
        mask: Tensor | None,
        noise: Tensor,
        positions: list[int],
        last_only: bool,
    ) -> None:
        self.model, self.rows, self.mask, self.noise = model, rows, mask, noise
        self.positions, self.last_only = positions, last_only
        self.cache_argument = cache_argument(model)
        self.forwards = 0

    def forward(
        self,
        ids: Tensor,
        mask: Tensor | None,
        *,
        patch: Mapping[str, Patch] | None = None,
        capture: Sequence[str] = (),
        cache: Any = None,
        keep_cache: bool = False,
        last_only: bool | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], Any]:
        """Logits (of the last position only when ``last_only``), captured values, cache."""
        last = self.last_only if last_only is None else last_only
        kwargs: dict[str, Any] = {} if cache is None else {self.cache_argument: cache}
        with torch.no_grad(), hooked(self.model, capture=capture, patch=patch) as store:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                use_cache=keep_cache or cache is not None,
                logits_to_keep=1 if last else 0,
                **kwargs,
            )
        self.forwards += 1
        logits: Tensor = out.logits
        new_cache = None
        if keep_cache:
            new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return logits, dict(store), new_cache

    def _noise(self, sample: int, start: int, stop: int) -> dict[str, Patch]:
        """The ``embed`` patch noising the subject positions in ``start..stop-1`` (shifted)."""
        picked = [q for q, p in enumerate(self.positions) if start <= p < stop]
        if not picked:
            return {}
        at = [self.positions[q] - start for q in picked]
        return {"embed": _noiser(self.noise[sample, picked], at)}

    def prefix(self, sample: int, j: int) -> Any:
        """The key/value cache of the corrupted prompt's first ``j`` tokens (None when 0)."""
        if j == 0:
            return None
        mask = None if self.mask is None else self.mask[:1, :j]
        _, _, cache = self.forward(
            self.rows[:1, :j],
            mask,
            patch=self._noise(sample, 0, j),
            keep_cache=True,
            last_only=True,
        )
        return cache

    def restored(
        self, jobs: list[_Job], clean: dict[str, Tensor], window: int, n_layers: int
    ) -> Tensor:
        """Logits of ``jobs`` (one sample, one position ``j``): positions ``j..`` of every row,
        after the cached corrupted prefix."""
        sample, j = jobs[0].sample, jobs[0].position
        k, width = self.rows.shape
        patch = self._noise(sample, j, width)
        restore: dict[str, tuple[list[int], list[Tensor]]] = defaultdict(lambda: ([], []))
        for u, job in enumerate(jobs):
            if job.kind is None:
                continue
            for layer in restored_layers(job.kind, job.layer, window, n_layers):
                site = SITES[job.kind].format(i=layer)
                rows, values = restore[site]
                for r in range(k):
                    rows.append(u * k + r)
                    values.append(clean[site][r, j])
        for site, (rows, values) in restore.items():
            patch[site] = _restorer(torch.stack(values), rows)
        cache = self.prefix(sample, j)
        if cache is not None:
            cache.batch_repeat_interleave(len(jobs) * k)  # the prefix is the same in every row
        mask = None if self.mask is None else self.mask.repeat(len(jobs), 1)
        ids = self.rows[:, j:].repeat(len(jobs), 1)
        logits, _, _ = self.forward(ids, mask, patch=patch, cache=cache)
        return logits


class _Scorer:
    """p(target's first token) and the behaviour log-odds of each row group of a forward."""

    def __init__(
        self, n: int, width: int, target_id: int, metric: MetricBatch | None, k: int
    ) -> None:
        self.n, self.width, self.target_id, self.metric, self.k = n, width, target_id, metric, k

    def __call__(self, logits: Tensor) -> list[tuple[float, float | None]]:
        offset = self.width - logits.shape[1]  # logits cover positions offset..width-1
        probs = torch.softmax(logits[:: self.k, self.n - 1 - offset].float(), dim=-1)
        out: list[tuple[float, float | None]] = []
        for u, p in enumerate(probs[:, self.target_id].tolist()):
            lo = None
            if self.metric is not None:
                unit = logits[u * self.k : (u + 1) * self.k]
                if offset:  # the metric reads absolute positions; nothing before n-1 is read
                    unit = torch.cat([unit.new_zeros(self.k, offset, unit.shape[2]), unit], 1)
                lo = float(self.metric.log_odds(unit)[0])
            out.append((p, lo))
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@tool("localize.trace", TraceArgs, TraceResult)
def causal_trace(ctx: ToolContext, args: TraceArgs) -> TraceResult:
    """Causal tracing (ROME): noise the subject's token embeddings, then restore one clean
    state at a time — block output (resid), attention output (attn) or MLP output (mlp) at one
    layer and position — and measure how much of p(target's first token) comes back. Returns
    the tokens, the subject's positions, clean and corrupted probabilities, per kind a
    [layer][position] grid of restored probabilities (mean over noise samples) with its top
    cell, optionally the log-odds against a contrast `normal`, and an SVG heatmap. Cost: one
    batch of kinds × layers rows per sample and position from the subject on (each row runs
    only the positions from the restored one on); on CPU about 20 s per sample for SmolLM2-135M
    and an 11-token prompt. Limits: the probability is of the target's first token; the subject
    is located by its first occurrence in the prompt; attn/mlp `window` > 1 restores that many
    layers around each layer at once (ROME used 10), resid always one."""
    subject = ctx.subject
    model = subject.model
    n_layers = subject.n_layers
    if args.window > n_layers:
        raise SelfscopeError(f"window {args.window} is more than the model's {n_layers} layers")
    kinds: list[Kind] = list(dict.fromkeys(args.kinds))
    ids = encode(subject, args.prompt, args.chat)  # [1, n]
    n = ids.shape[1]
    positions = subject_positions(subject, args.prompt, args.subject, args.chat)
    text = prompt_text(subject, args.prompt, args.chat)
    target_id = first_token(subject, text, args.target)
    unk = getattr(subject.tokenizer, "unk_token_id", None)
    if unk is not None and target_id == unk:
        raise SelfscopeError(
            f"target {args.target!r} starts with a word the tokenizer does not know; "
            "use a word from the model's vocabulary"
        )
    metric = None
    rows, mask = ids, None
    if args.normal is not None:
        metric = MetricBatch(subject, [args.prompt], args.target, args.normal, args.chat)
        rows, mask = metric.input_ids, metric.attention_mask  # 1 row, or 2 with their completions
    k, width = rows.shape
    score = _Scorer(n, width, target_id, metric, k)

    embeddings = cast(Tensor, model.get_input_embeddings().weight).detach().float()
    scale = args.noise * float(embeddings.std())
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((args.samples, len(positions), subject.d_model), generator=generator)
    noise = (noise * scale).to(rows.device)
    runner = _Runner(model, rows, mask, noise, positions, last_only=metric is None)

    sites = [SITES[kind].format(i=i) for kind in kinds for i in range(n_layers)]
    logits, clean, _ = runner.forward(rows, mask, capture=sites)
    clean_p, clean_lo = score(logits)[0]

    first = positions[0]
    per_batch = max(1, args.batch_size // k)
    chunks: list[list[_Job]] = []
    for s in range(args.samples):
        for j in range(first, n):
            jobs = [_Job(s, j, None)] if j == first else []
            jobs += [_Job(s, j, kind, i) for kind in kinds for i in range(n_layers)]
            chunks += [jobs[a : a + per_batch] for a in range(0, len(jobs), per_batch)]
    results: dict[_Job, tuple[float, float | None]] = {}
    with ctx.progress.bar("localize.trace", len(chunks)) as advance:
        for chunk in chunks:
            logits = runner.restored(chunk, clean, args.window, n_layers)
            results.update(zip(chunk, score(logits), strict=True))
            advance(1, f"sample {chunk[0].sample}, position {chunk[0].position}")

    corrupted = [results[_Job(s, first, None)] for s in range(args.samples)]
    corrupted_p = _mean([p for p, _ in corrupted])
    corrupted_lo = _mean([lo for _, lo in corrupted if lo is not None]) if metric else None
    tokens = token_strings(subject, ids)

    def cell(kind: Kind, i: int, j: int) -> tuple[float, float | None]:
        if j < first:
            return corrupted_p, corrupted_lo
        got = [results[_Job(s, j, kind, i)] for s in range(args.samples)]
        lo = _mean([v for _, v in got if v is not None]) if metric else None
        return _mean([p for p, _ in got]), lo

    grids = []
    for kind in kinds:
        values = [[cell(kind, i, j) for j in range(n)] for i in range(n_layers)]
        probabilities = [[p for p, _ in row] for row in values]
        log_odds = (
            [[float(lo) for _, lo in row if lo is not None] for row in values] if metric else None
        )
        best = max(
            ((i, j) for i in range(n_layers) for j in range(n)),
            key=lambda c: probabilities[c[0]][c[1]],
        )
        top = TraceCell(
            kind=kind,
            layer=best[0],
            position=best[1],
            token=tokens[best[1]],
            probability=probabilities[best[0]][best[1]],
            effect=probabilities[best[0]][best[1]] - corrupted_p,
            log_odds=values[best[0]][best[1]][1],
        )
        window = 1 if kind == "resid" else args.window
        grids.append(
            TraceGrid(
                kind=kind,
                site=SITES[kind],
                window=window,
                probabilities=probabilities,
                log_odds=log_odds,
                top=top,
            )
        )

    figure = None
    if args.figure:
        figure = _figure(grids, tokens, positions, args.target, clean_p, corrupted_p)
    return TraceResult(
        tokens=tokens,
        subject_positions=positions,
        target=args.target,
        target_id=target_id,
        target_token=str(subject.tokenizer.decode([target_id])),
        normal=args.normal,
        noise_std=scale,
        samples=args.samples,
        clean_probability=clean_p,
        corrupted_probability=corrupted_p,
        clean_log_odds=clean_lo,
        corrupted_log_odds=corrupted_lo,
        grids=grids,
        forward_passes=runner.forwards,
        figure=figure,
    )


def _figure(
    grids: list[TraceGrid],
    tokens: list[str],
    positions: list[int],
    target: str,
    clean: float,
    corrupted: float,
) -> str:
    """One panel per kind: positions (rows, subject tokens starred) × layers (columns)."""
    rows = [f"{t}*" if j in positions else t for j, t in enumerate(tokens)]
    panels = []
    for grid in grids:
        layers = len(grid.probabilities)
        by_position = [
            [grid.probabilities[i][j] for i in range(layers)] for j in range(len(tokens))
        ]
        what = grid.site.replace("{i}", "i")
        window = f", window {grid.window}" if grid.window > 1 else ""
        panels.append(
            Heatmap(
                grid=by_position,
                row_labels=rows,
                col_labels=[str(i) for i in range(layers)],
                title=f"restoring {what}{window}",
                caption=f"p({target!r}): clean {clean:.3f}, corrupted {corrupted:.3f}; * = noised",
                x_label="layer",
                vmin=corrupted,
                vmax=max(max(row) for row in by_position),
                color=_COLORS[grid.kind],
            )
        )
    return heatmaps_svg(panels)
