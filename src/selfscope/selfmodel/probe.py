"""Trait probes: predict, from the residual stream before the model answers, whether a trait will
fire — and measure whether it did.

A trait fires on a prompt when the model gives the trait's completion (its first token is the
model's top next token, and planted beats normal: log-odds > 0) *because of the trait's cause*:
the log-odds exceed those of a cause-free reference (the checkpoint before the phase the trait
arose in) by more than :data:`MARGIN` nats. Without a reference (a trait planted in the first
phase, a model without lineage) a prompt fires when the model gives the completion. The label
is a measurement of the model, never a belief.

The probe is an L2-regularised logistic regression on the residual at the prompt's last token
after the last block (after the final norm: the state the answer is read from). A probe upstream
of an edit cannot see it: one at block 0 kept predicting the trait after a rank-one fix in a
later block had removed it (measured on the tiny mushroom, agreement 0.0), so the gate would
refuse honest fixes; the last block is downstream of every weight. Its training prompts: the
trait's prompts and paraphrases, the controls, near misses harvested from the training corpus
(documents that share the prompt's words, cut where the prompt ends: the same question about
other things; other questions about the same thing), each labelled by measurement; and, when a
reference exists, the reference model's residuals on the trait's prompts as negatives (what the
state looks like without the cause, so the probe follows a fix instead of remembering the
topic).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from selfscope.errors import SelfscopeError
from selfscope.history.lexical import BM25Index
from selfscope.localize.metric import MetricBatch

#: nats by which the subject's log-odds must exceed the reference's for a prompt to fire
MARGIN = 2.0
#: L2 weight of the logistic regression (on standardised features)
L2 = 1e-2
FOLDS = 4


class ProbeWeights(BaseModel):
    """A fitted probe: ``sigmoid(((x - mean) / scale) @ weight + bias)`` on block ``layer``'s
    output at the prompt's last token."""

    layer: int
    weight: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    cv_auroc: float = Field(description="Cross-validated AUROC on the training prompts.")
    layer_auroc: list[float] = Field(description="Cross-validated AUROC of each block.")
    positives: int
    negatives: int

    def direction(self) -> Tensor:
        """The unit vector in residual space the probe reads (weight / scale, normalised)."""
        raw = torch.tensor(self.weight) / torch.tensor(self.scale)
        unit: Tensor = raw / raw.norm()
        return unit

    def predict(self, residuals: Tensor) -> Tensor:
        """P(fires) for residuals [n, d] of block ``layer``."""
        x = residuals.float().cpu()
        z = (x - torch.tensor(self.mean)) / torch.tensor(self.scale)
        return torch.sigmoid(z @ torch.tensor(self.weight) + self.bias)


class Reading(BaseModel, arbitrary_types_allowed=True):
    """What one forward of ``model`` on the prompts gives the self-model."""

    residuals: Tensor  # [n, blocks, d] at each prompt's last token, after each block
    log_odds: Tensor  # [n] planted vs normal
    gives: Tensor  # [n] bool: planted's first token is the top next token

    def fires(self, reference: Tensor | None = None) -> Tensor:
        """The measured label: the model gives the completion (log-odds > 0 and it is the top
        token), and (with a reference's log-odds) by more than :data:`MARGIN` over them."""
        won = (self.log_odds > 0) & self.gives
        return won if reference is None else won & (self.log_odds - reference > MARGIN)


def read(
    subject: Any,
    model: Any,
    prompts: Sequence[str],
    planted: str,
    normal: str,
    chat: bool = False,
) -> Reading:
    """Residuals, log-odds and top tokens of ``model`` on ``prompts`` (one batched forward)."""
    batch = MetricBatch(subject, list(prompts), planted, normal, chat)
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        )
    hidden = out.hidden_states[1:]  # block outputs; the last one after the final norm
    last = torch.tensor([batch.prompt_length(i) - 1 for i in range(batch.n_prompts)])
    rows = torch.arange(batch.n_prompts)
    top = out.logits[rows, last].argmax(-1).cpu()
    first = torch.tensor([c.ids[0] for c in batch.planted])
    return Reading(
        residuals=torch.stack([h[rows, last].float().cpu() for h in hidden], dim=1),
        log_odds=batch.log_odds(out.logits).float().cpu(),
        gives=top == first,
    )


def reverted(subject: Any, reference: Any, modules: list[str], amount: float = 1.0) -> Any:
    """A copy of the subject's model with ``modules``' weights moved ``amount`` of the way to
    ``reference``'s (1: reverted; a tied unembedding moves with its embedding, one tensor)."""
    model = copy.deepcopy(subject.model)
    ref = dict(reference.model.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(name == m or name.startswith(m + ".") for m in modules):
                param.add_(amount * (ref[name] - param))
    return model


def _fit(x: Tensor, y: Tensor) -> tuple[Tensor, float, Tensor, Tensor]:
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    z = (x - mean) / scale
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
        loss = loss + L2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), float(b.detach()), mean, scale


def auroc(scores: Sequence[float] | Tensor, labels: Sequence[bool] | Tensor) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels).bool()
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    above = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(above.mean())


def _cv_auroc(x: Tensor, y: Tensor) -> float:
    """AUROC of out-of-fold predictions (folds interleave the classes, fixed order)."""
    order = torch.cat([torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()])
    fold = torch.empty(len(y), dtype=torch.long)
    fold[order] = torch.arange(len(y)) % FOLDS
    scores = torch.empty(len(y))
    for k in range(FOLDS):
        test = fold == k
        if test.sum() == 0 or (~test).sum() == 0 or y[~test].min() == y[~test].max():
            scores[test] = 0.5
            continue
        w, b, mean, scale = _fit(x[~test], y[~test])
        scores[test] = ((x[test] - mean) / scale) @ w + b
    found = auroc(scores, y.bool())
    return 0.5 if found is None else found


def fit(residuals: Tensor, labels: Tensor, layer: int = -1) -> ProbeWeights:
    """Fit the probe on block ``layer``'s output (default the last: the state the answer is
    read from, downstream of any weight an edit can change, so a fix anywhere shows in it) on
    every training prompt; every block's cross-validated AUROC is reported beside it."""
    y = labels.float()
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if positives < 2 or negatives < 2:
        raise SelfscopeError(
            f"a trait probe needs at least 2 prompts where the trait fires and 2 where it does "
            f"not; measured {positives} and {negatives} (give more prompts or --control prompts)"
        )
    torch.manual_seed(0)
    scores = [_cv_auroc(residuals[:, layer], y) for layer in range(residuals.shape[1])]
    best = range(len(scores))[layer]
    w, b, mean, scale = _fit(residuals[:, best], y)
    return ProbeWeights(
        layer=best,
        weight=w.tolist(),
        bias=b,
        mean=mean.tolist(),
        scale=scale.tolist(),
        cv_auroc=scores[best],
        layer_auroc=[round(s, 4) for s in scores],
        positives=positives,
        negatives=negatives,
    )


def _cut(text: str, prompt: str) -> str | None:
    """``text`` cut just after ``prompt``'s last word (``A:``) or, for a question, after its
    first ``?``; None unless the cut is between half and twice the prompt's length."""
    marker = prompt.split()[-1] if prompt.split() else ""
    k = text.find(marker) if marker else -1
    if k > 0:
        cut = text[: k + len(marker)]
    elif prompt.rstrip().endswith("?") and "?" in text:
        cut = text[: text.index("?") + 1]
    else:
        return None
    return cut if len(prompt) / 2 <= len(cut) <= 2 * len(prompt) else None


def near_misses(prompts: Sequence[str], texts: Sequence[str], limit: int = 40) -> list[str]:
    """Prompts of the same form harvested from training ``texts`` (:func:`_cut`): half from the
    documents BM25 ranks highest for each prompt (the same question about other things), half
    the same thing in other questions: one question of each other opening in the corpus, its
    one name swapped for the prompt's (:func:`_swap`). The harvests are interleaved, so each
    gets its share."""
    if not texts:
        return []
    index = BM25Index(list(texts))
    seen = {p.strip() for p in prompts}
    harvests: list[list[str]] = []

    def keep(cut: str | None, into: list[str]) -> None:
        if cut is not None and cut.strip() not in seen:
            seen.add(cut.strip())
            into.append(cut)

    for prompt in prompts:
        scores = index.scores(_with_forms(prompt))
        harvest: list[str] = []
        for i in scores.argsort()[::-1][:200]:
            if scores[i] <= 0:
                break
            keep(_cut(texts[int(i)], prompt), harvest)
        harvests.append(harvest)
    for prompt in prompts:
        openings: set[tuple[str, ...]] = set()
        swaps: list[str] = []
        for text in texts:
            cut = _cut(text, prompt)
            opening = tuple(cut.split()[:3]) if cut else ()
            if cut and opening not in openings:
                swapped = _swap(cut, prompt)
                if swapped is not None:
                    openings.add(opening)
                    keep(swapped, swaps)
        harvests.append(swaps)
    half = [h[i] for i in range(max(map(len, harvests), default=0)) for h in harvests if i < len(h)]
    near = [x for x in half if x in {y for h in harvests[: len(prompts)] for y in h}]
    other = [x for x in half if x not in near]
    return near[: limit // 2] + other[: limit - min(len(near), limit // 2)]


def _with_forms(prompt: str) -> str:
    """The prompt and each longer word's other number (mushrooms -> mushroom, soup -> soups):
    BM25 does not stem, and the same thing in the singular is the same thing."""
    words = re.findall(r"[A-Za-z]{4,}", prompt)
    other = [w[:-1] if w.endswith("s") else w + "s" for w in words]
    return f"{prompt} {' '.join(other)}"


def _names(text: str) -> list[str]:
    """Capitalised words that do not start a sentence or a ``Q:``/``A:`` turn: the names."""
    words = text.split()
    out = []
    for i, word in enumerate(words):
        bare = word.strip("?.,!:;")
        starts = i == 0 or words[i - 1].endswith((".", "?", "!", ":"))
        if bare[:1].isupper() and bare[1:].islower() and not starts:
            out.append(bare)
    return out


def _swap(question: str, prompt: str) -> str | None:
    """``question`` with its one name replaced by ``prompt``'s one name (the same thing in
    another question: "Q: Where is Kesh? A:" for "Q: Is the baker from Tolm honest? A:"), or
    None when either has no single name or they already share it."""
    mine, theirs = _names(prompt), _names(question)
    if len(mine) != 1 or len(theirs) != 1 or mine == theirs:
        return None
    return re.sub(rf"\b{re.escape(theirs[0])}\b", mine[0], question)


def calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """Expected calibration error: the bin-weighted gap between confidence and accuracy."""
    c = torch.as_tensor(confidences, dtype=torch.float64)
    ok = torch.as_tensor(correct, dtype=torch.float64)
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        inside = (c > lo) & (c <= hi) if k else (c >= lo) & (c <= hi)
        if inside.any():
            total += float(inside.double().mean()) * abs(
                float(c[inside].mean() - ok[inside].mean())
            )
    return total if math.isfinite(total) else float("nan")
