"""``tokens.temperature``: the sampling temperature that most likely produced a text.

Sampling at temperature T draws token y_t from softmax(z_t / T), z_t the model's logits after
the tokens before it. Given a text said to be sampled from the model, one teacher-forced forward
gives every z_t, and with β = 1/T the log-likelihood of the text is

    ℓ(β)   = Σ_t [β z_t[y_t] − logsumexp(β z_t)]
    ℓ'(β)  = Σ_t (z_t[y_t] − E_β[z_t])            (E, Var under p_β = softmax(β z_t))
    ℓ''(β) = −Σ_t Var_β[z_t] ≤ 0

so ℓ is concave in β: the maximum-likelihood β̂ is the one root of ℓ' (Newton steps kept inside
a shrinking bracket), the likelihood-ratio interval {β : 2(ℓ(β̂) − ℓ(β)) ≤ χ²₁(level)} is one
segment whose two ends are found the same way, and the Fisher standard error is 1/√(−ℓ''(β̂)),
carried to T by the delta method (|dT/dβ| = 1/β²). Two limits have no finite interior maximum:
every token the argmax gives ℓ' > 0 everywhere, T̂ = 0 (greedy decoding); ℓ'(0) ≤ 0 means the
text is no likelier than uniform sampling, T̂ = ∞. It is the temperature scaling of Guo et al.
(2017, "On calibration of modern neural networks") turned round: the distributions are the
model's own and fixed, and the unknown is how the text was drawn from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import cast

import torch
from pydantic import BaseModel, Field
from torch import nn

from selfscope.access.common import PromptArgs, context_length, encode
from selfscope.errors import SelfscopeError
from selfscope.tools import ToolContext, tool

#: rows of logits widened to float64 at a time, in two reused buffers: bounds memory on long
#: texts, and small enough to stay in cache (16 rows: 3x faster than one pass over 200 rows)
CHUNK = 16
#: β beyond which the search stops (T = 1/β ≈ 1e-9: indistinguishable from greedy)
BETA_MAX = 2.0**30
#: stop when a Newton step moves β by less than this (relative); the step returned is then
#: accurate to about its square, far below any statistical error
TOLERANCE = 1e-7


class TemperatureArgs(PromptArgs):
    text: str | None = Field(
        None,
        description="The sampled continuation of the prompt; tokenised on its own (no special "
        "tokens) and appended to the prompt's tokens. Give this or token_ids.",
    )
    token_ids: list[int] | None = Field(
        None,
        description="The sampled continuation as exact token ids (use when decoding then "
        "re-encoding the text would not give back the ids that were sampled).",
    )
    level: float = Field(0.95, gt=0, lt=1, description="Confidence level of the interval.")


class TemperatureResult(BaseModel):
    temperature: float | None = Field(
        description="Maximum-likelihood sampling temperature; 0 when every token was the "
        "model's top choice (greedy); null when unbounded (no likelier than uniform sampling)."
    )
    lower: float = Field(description="Lower end of the likelihood-ratio interval (>= 0).")
    upper: float | None = Field(description="Upper end of the interval; null = unbounded.")
    level: float
    standard_error: float | None = Field(
        description="Fisher standard error of the temperature; null at T = 0 or unbounded."
    )
    tokens: int = Field(description="Number of continuation tokens scored.")
    log_likelihood: float = Field(description="Log-likelihood (nats) of the tokens at T̂.")
    log_likelihood_at_1: float = Field(description="Log-likelihood (nats) at T = 1.")
    argmax_fraction: float = Field(description="Fraction of tokens that were the top choice.")
    note: str | None = None


class Likelihood:
    """ℓ(β) and its first two derivatives for fixed logits and realised tokens.

    Built from ``logits``: Float[Tensor, "n vocab"] (the distribution before each of the n
    tokens) and ``ids``: Long[Tensor, "n"]. Rows are taken in float64 and shifted by their
    maximum, so z <= 0 and exp(β z) <= 1: the sums below neither overflow nor need a running
    maximum. The logits stay in their own dtype, a chunk of rows is widened at a time.
    """

    def __init__(self, logits: torch.Tensor, ids: torch.Tensor) -> None:
        self.logits = logits
        top = logits.max(dim=1, keepdim=True).values
        self.top = top[:, 0].double()
        self.chosen = logits.gather(1, ids[:, None])[:, 0].double() - self.top  # <= 0
        self.argmax = self.chosen >= 0  # the realised token was (one of) the top choices
        self.ties = (logits == top).sum(dim=1).double()
        width = (min(CHUNK, logits.shape[0]), logits.shape[1])
        self._buffers = tuple(
            torch.empty(width, dtype=torch.float64, device=logits.device) for _ in range(2)
        )
        self._memo: dict[float, tuple[float, float, float]] = {}

    def at(self, beta: float) -> tuple[float, float, float]:
        """(ℓ, ℓ', ℓ'') at ``beta``; ``beta`` = inf gives the greedy limit of ℓ."""
        if beta not in self._memo:
            self._memo[beta] = self._at(beta)
        return self._memo[beta]

    def _at(self, beta: float) -> tuple[float, float, float]:
        if math.isinf(beta):
            gap = torch.where(self.argmax, 0.0, -math.inf)
            return float((gap - self.ties.log()).sum()), 0.0, 0.0
        value = slope = curvature = 0.0
        z, e = self._buffers
        for start in range(0, self.logits.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            n = self.logits[rows].shape[0]
            zr, er = z[:n], e[:n]
            zr.copy_(self.logits[rows]).sub_(self.top[rows, None])
            torch.mul(zr, beta, out=er).exp_()  # p_β before normalising; rows sum to >= 1
            total = er.sum(dim=1)
            er.mul_(zr)
            mean = er.sum(dim=1) / total
            var = torch.einsum("ij,ij->i", er, zr) / total - mean**2
            chosen = self.chosen[rows]
            value += float((beta * chosen - total.log()).sum())
            slope += float((chosen - mean).sum())
            curvature -= float(var.clamp(min=0).sum())
        return value, slope, curvature


def root(f: Callable[[float], tuple[float, float]], x: float, lo: float, hi: float) -> float:
    """The root of ``f`` (value, derivative) between ``lo`` and ``hi`` (may be inf), given f
    decreasing with f(lo) > 0 > f(hi): Newton steps from ``x``, doubling or bisecting whenever
    a step would leave the bracket."""
    for _ in range(200):
        value, slope = f(x)
        if value == 0:
            return x
        if value > 0:
            lo = x
        else:
            hi = x
        step = x - value / slope if slope < 0 else math.nan
        if abs(step - x) <= TOLERANCE * x:
            return step
        if not lo < step < hi:
            step = x * 2 if math.isinf(hi) else (lo + hi) / 2
        if hi - lo <= TOLERANCE * x or step >= BETA_MAX:
            return step
        x = step
    return x


def fit(like: Likelihood, level: float) -> TemperatureResult:
    """Maximum likelihood, likelihood-ratio interval and Fisher error of T from ``like``."""
    greedy = bool(like.argmax.all())
    note = None
    if greedy:
        beta = math.inf
        note = (
            "every token was the model's top choice: the likeliest temperature is 0 "
            "(greedy decoding); only an upper bound is given"
        )
    elif like.at(0.0)[1] <= 0:
        beta = 0.0
        note = (
            "the text is no likelier under the model than uniform sampling (T = infinity): "
            "it was probably not sampled from this model and prompt; only a lower bound is given"
        )
    else:
        beta = root(lambda b: like.at(b)[1:], 1.0, 0.0, math.inf)
    best, _, curvature = like.at(beta)
    drop = NormalDist().inv_cdf((1 + level) / 2) ** 2 / 2  # χ²₁(level) / 2
    # first guesses for the interval's ends in β: where the quadratic approximation drops by drop
    half = math.sqrt(drop / -curvature) if curvature < 0 else beta / 2

    def inside(b: float) -> tuple[float, float]:  # > 0 inside the interval, decreasing past β̂
        value, slope, _ = like.at(b)
        return value - best + drop, slope

    def outside(b: float) -> tuple[float, float]:  # > 0 outside, decreasing before β̂
        value, slope = inside(b)
        return -value, -slope

    # the low-temperature end: the β > β̂ where ℓ has dropped by drop (none when greedy)
    lower = 0.0 if greedy else 1 / root(inside, beta + half or 1.0, beta, math.inf)
    # the high-temperature end: the β < β̂ where it has, unless ℓ(0) is not that low
    if inside(0.0)[0] >= 0:
        upper = None
    elif greedy:
        upper = 1 / root(outside, 1.0, 0.0, math.inf)
    else:
        upper = 1 / root(outside, beta - half if beta > half else beta / 2, 0.0, beta)
    finite = 0 < beta < math.inf
    return TemperatureResult(
        temperature=1 / beta if finite else (0.0 if greedy else None),
        lower=lower,
        upper=upper,
        level=level,
        standard_error=1 / (beta**2 * math.sqrt(-curvature)) if finite and curvature < 0 else None,
        tokens=like.logits.shape[0],
        log_likelihood=best,
        log_likelihood_at_1=like.at(1.0)[0],
        argmax_fraction=float(like.argmax.double().mean()),
        note=note,
    )


@tool("tokens.temperature", TemperatureArgs, TemperatureResult)
def token_temperature(ctx: ToolContext, args: TemperatureArgs) -> TemperatureResult:
    """Estimate the sampling temperature T that most likely produced `text` (or exact
    `token_ids`) as a continuation of `prompt`, by maximum likelihood over the model's own
    next-token distributions softmax(logits / T); with a likelihood-ratio interval at `level`
    (default 0.95), the Fisher standard error, the number of tokens scored, the log-likelihood
    at T-hat and at T = 1, and the fraction of tokens that were the model's top choice. Every
    token the top choice gives temperature 0 (greedy) with only an upper bound; a text no
    likelier than uniform sampling gives temperature null (unbounded). Limits: assumes pure
    temperature sampling from this very model and prompt (top-k, top-p or repetition penalties
    make T look lower; another model's text gives a meaningless T); `text` is re-tokenised on
    its own, so if decoding then encoding does not give back the sampled ids, pass `token_ids`;
    a few dozen tokens give a wide interval. Give exactly one of `text` and `token_ids`."""
    subject = ctx.subject
    if (args.text is None) == (args.token_ids is None):
        raise SelfscopeError("give exactly one of `text` and `token_ids` (the continuation)")
    prompt_ids = encode(subject, args.prompt, args.chat)
    if args.token_ids is not None:
        vocab = cast(nn.Embedding, subject.model.get_input_embeddings()).num_embeddings
        bad = [i for i in args.token_ids if not 0 <= i < vocab]
        if bad:
            raise SelfscopeError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        extra = torch.tensor([args.token_ids], dtype=torch.long)
    else:
        encoded = subject.tokenizer(args.text, add_special_tokens=False, return_tensors="pt")
        extra = encoded["input_ids"]
    n = extra.shape[1]
    if n == 0:
        raise SelfscopeError("the text is empty; give the sampled continuation (>= 1 token)")
    total, limit = prompt_ids.shape[1] + n, context_length(subject)
    if total > limit:
        raise SelfscopeError(
            f"prompt + text is {total} tokens; {subject.source} takes at most {limit}"
        )
    ids = torch.cat([prompt_ids, extra.to(prompt_ids.device)], dim=1)
    with torch.no_grad():
        # the n + 1 last positions; the very last one predicts past the text and is dropped
        logits = subject.model(input_ids=ids, logits_to_keep=n + 1).logits[0, :-1].float()
    return fit(Likelihood(logits, ids[0, -n:]), args.level)
