"""Weight-delta patching below the module: the rank-one directions of each module's change.

A module's training change is a matrix ``ΔW = W_subject - W_parent``, and every matrix is a sum
of rank-one directions, its singular value decomposition ``ΔW = Σ_i s_i u_i v_iᵀ``. A full
fine-tune of a pretrained model moves every module a little, and what the phase taught is
spread over many modules *and* shares them: the same ``down_proj`` change that makes the model
dislike mushrooms may also reinforce its dislike of olives. Reverting whole modules then takes
both out. Reverting *directions* (subtracting ``s_i u_i v_iᵀ`` from the subject's weight) can
take one out and leave the other, when they live in different directions — LoRA's observation
(Hu et al. 2021) that fine-tuning changes have a low intrinsic rank is what makes this work.

**Attribution.** Integrated gradients on the straight path from parent to subject, as in
:mod:`selfscope.localize.deltas`, decomposed by direction: with ``Ḡ`` the gradient of the
metric averaged over the path's midpoints, direction ``i`` of a matrix gets
``IG_i = s_i u_iᵀ Ḡ v_i``. This is an exact linear split of the module's own integrated
gradient (``Σ_i IG_i = Σ ΔW ⊙ Ḡ``), so the directions' shares add up to the phase's change just
as the modules' do. A 1-D parameter (a norm scale, a bias) is one unit, reverted whole.
**Selection.** Directions with a positive share, ranked by it; the shortest prefix found to
remove ``target`` of the phase's change, reverted jointly and measured (doubling, then
bisection). When that set changes a control prompt's top-1 next token, the direction it shares
with the behaviour is named by the same split of *that prompt's* integrated gradient (of
``log p(its top-1)``): the set's members that prompt leans on most (a sixteenth of the set, per
prompt that flipped) are left out of the ranking and the shortest prefix is searched again, for
up to ``rounds`` rounds. The answer is the first set that keeps every control prompt's top-1,
else the one that keeps the most. Every number reported is a measured forward of the subject
with the directions subtracted (``torch.func.functional_call``; the model is never written).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor
from torch.func import functional_call

from selfscope.localize.metric import MetricBatch, MetricValue
from selfscope.progress import SILENT, ProgressSink

DEFINITION = (
    "direction i of a parameter's change dW = sum_i s_i u_i v_i^T (SVD); reverting it subtracts "
    "s_i u_i v_i^T from the subject's weight (a 1-D parameter is one unit, reverted to the "
    "parent); ig = s_i u_i^T G v_i with G the metric's gradient averaged over the path parent -> "
    "subject (shares add up to the phase's change); the set = the shortest prefix of the ranking "
    "by ig that removes the target, leaving out the directions control prompts that flipped "
    "lean on"
)


class Direction(BaseModel):
    parameter: str  # e.g. model.layers.3.mlp.down_proj.weight
    index: int  # position in the SVD of its change (0 = the largest singular value); -1: 1-D
    singular_value: float  # s_i (for a 1-D parameter: ||dW||)
    ig_share: float  # IG_i / (L_subject - L_parent)


class DirectionCheck(BaseModel):
    prompts: int
    agreement: float  # share of control prompts whose top-1 next token is unchanged
    changed: list[str]  # the control prompts whose top-1 changed


class DirectionSet(BaseModel):
    """The smallest set of rank-one directions found whose joint revert removes ``target`` of
    the phase's change, preferring one that leaves the control prompts' predictions alone."""

    definition: str
    units: int  # directions considered (every direction of every changed parameter)
    ig_completeness: float  # Σ IG_i / (L_subject - L_parent)
    n_directions: int
    per_parameter: dict[str, list[int]]  # the set: SVD indices reverted in each parameter
    excluded: int  # directions left out because a control prompt that flipped leaned on them
    top: list[Direction]  # the set's first directions by the ranking (at most 20)
    revert: MetricValue
    share: float  # of the phase's change, (L_subject - L_reverted) / (L_subject - L_parent)
    log_odds_share: float  # 1 - L_reverted / L_subject
    reached: bool
    control: DirectionCheck | None
    tried: list[dict[str, float]]  # per round: size, excluded, share, control agreement
    seconds: float


def path_mean_gradients(
    model: Any,
    mine: dict[str, Tensor],
    theirs: dict[str, Tensor],
    names: Sequence[str],
    ids: Tensor,
    mask: Tensor,
    metric: Callable[[Tensor], Tensor],
    steps: int,
) -> dict[str, Tensor]:
    """``mean_α ∂m/∂θ`` at the midpoints ``α = (k + ½)/steps`` of ``θ_parent + α ΔW`` for the
    parameters ``names`` (float32), ``m = metric(logits)`` of a forward on ``ids``."""
    total = {n: torch.zeros(mine[n].shape, dtype=torch.float32) for n in names}
    for k in range(steps):
        alpha = (k + 0.5) / steps
        point = {n: (theirs[n] + alpha * (mine[n] - theirs[n])).requires_grad_(True) for n in names}
        with torch.enable_grad():
            out = functional_call(
                model, point, args=(), kwargs={"input_ids": ids, "attention_mask": mask}
            )
            grads = torch.autograd.grad(
                metric(out.logits), [point[n] for n in names], allow_unused=True
            )
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                total[n] += g.detach().float().cpu() / steps
    return total


class Directions:
    """Every rank-one direction of every changed parameter (SVD of its change), and the split of
    any gradient over them: ``scores(G)[i] = s_i u_iᵀ G v_i`` (a 1-D parameter: ``Σ ΔW ⊙ G``)."""

    def __init__(
        self, mine: dict[str, Tensor], theirs: dict[str, Tensor], names: Sequence[str]
    ) -> None:
        self.mine, self.theirs = mine, theirs
        self.svd: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.flat: dict[str, Tensor] = {}  # 1-D changes
        self.parameters = list(names)
        unit_names: list[str] = []
        index: list[Tensor] = []
        singular: list[Tensor] = []
        for n in self.parameters:
            delta = mine[n].detach().float().cpu() - theirs[n].detach().float().cpu()
            if delta.dim() == 2:
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                self.svd[n] = (u, s, vh)
                unit_names += [n] * len(s)
                index.append(torch.arange(len(s)))
                singular.append(s)
            else:
                self.flat[n] = delta
                unit_names.append(n)
                index.append(torch.tensor([-1]))
                singular.append(delta.norm().reshape(1))
        self.names = unit_names
        self.index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
        self.singular = torch.cat(singular) if singular else torch.zeros(0)

    def __len__(self) -> int:
        return len(self.names)

    def scores(self, grads: dict[str, Tensor]) -> Tensor:
        """[units] float64: each direction's share of ``Σ ΔW ⊙ G`` for the gradients ``G``."""
        parts = []
        for n in self.parameters:
            g = grads[n].float().cpu()
            if n in self.svd:
                u, s, vh = self.svd[n]
                parts.append(s * ((u.T @ g) * vh).sum(1))
            else:
                parts.append((self.flat[n] * g).sum().reshape(1))
        return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)

    def ranking(self, ig: Tensor, exclude: Collection[int] = ()) -> list[int]:
        """Units with positive ``ig``, largest first, without ``exclude``."""
        keep = torch.nonzero(ig > 0).flatten()
        order = keep[torch.argsort(ig[keep], descending=True, stable=True)]
        return [int(i) for i in order if int(i) not in exclude]

    def grouped(self, units: Sequence[int]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i in units:
            out.setdefault(self.names[i], []).append(int(self.index[i]))
        return out

    def swap(self, units: Sequence[int]) -> dict[str, Tensor]:
        """Parameters with the directions ``units`` subtracted from the subject's."""
        out: dict[str, Tensor] = {}
        for name, idx in self.grouped(units).items():
            w = self.mine[name]
            if idx == [-1]:
                out[name] = self.theirs[name]
                continue
            u, s, vh = self.svd[name]
            ix = torch.tensor(sorted(idx))
            part = (u[:, ix] * s[ix]) @ vh[ix]
            out[name] = (w.detach().float() - part.to(w.device)).to(w.dtype)
        return out


def _shortest_prefix(
    ranking: list[int], share_of: Callable[[list[int]], float], target: float, start: int
) -> tuple[int, dict[int, float]]:
    """The shortest prefix size found whose joint revert removes ``target`` (0 if none does):
    ``start``, doubling to the whole ranking, then bisection; every size measured."""
    tried: dict[int, float] = {}

    def at(size: int) -> float:
        if size not in tried:
            tried[size] = share_of(ranking[:size])
        return tried[size]

    if not ranking:
        return 0, tried
    low, size = 0, min(start, len(ranking))
    while at(size) < target:
        if size == len(ranking):
            return 0, tried
        low, size = size, min(2 * size, len(ranking))
    high = size
    while high - low > 1:
        middle = (low + high) // 2
        if at(middle) >= target:
            high = middle
        else:
            low = middle
    return high, tried


def direction_set(
    patcher: Any,
    batch: MetricBatch,
    subject: MetricValue,
    parent: MetricValue,
    control: Any | None,
    before: Tensor | None,
    target: float,
    steps: int,
    rounds: int = 12,
    progress: ProgressSink = SILENT,
) -> DirectionSet:
    """See the module docstring. ``patcher`` is the caller's
    :class:`selfscope.localize.deltas.DeltaPatcher` (its model, both weight sets and its
    forward), ``subject`` / ``parent`` the metric it measured on ``batch`` for each; ``control``
    a :class:`selfscope.localize.deltas.ControlBatch` and ``before`` the subject's top-1 next
    tokens on it (or both ``None``)."""
    started = time.perf_counter()
    model, mine, theirs, logits = patcher.model, patcher.mine, patcher.theirs, patcher.logits
    names = [n for n in mine if bool((mine[n] != theirs[n]).any())]
    change = subject.log_odds - parent.log_odds
    units = Directions(mine, theirs, names)
    grads = path_mean_gradients(
        model,
        mine,
        theirs,
        names,
        batch.input_ids,
        batch.attention_mask,
        lambda lg: batch.log_odds(lg).mean(),
        steps,
    )
    ig = units.scores(grads)
    del grads

    support: dict[int, Tensor] = {}  # control prompt -> IG of log p(its top-1) per direction

    def support_of(j: int) -> Tensor:
        if j not in support:
            assert control is not None and before is not None
            ids = control.input_ids[j : j + 1]
            mask = control.attention_mask[j : j + 1]
            last, token = int(control.last[j]), int(before[j])

            def held(lg: Tensor) -> Tensor:
                out: Tensor = lg[0, last].log_softmax(-1)[token]
                return out

            g = path_mean_gradients(model, mine, theirs, names, ids, mask, held, steps)
            support[j] = units.scores(g)
        return support[j]

    measured: dict[tuple[int, ...], tuple[MetricValue, DirectionCheck | None, list[int]]] = {}

    def measure(chosen: list[int]) -> tuple[MetricValue, DirectionCheck | None, list[int]]:
        key = tuple(sorted(chosen))
        if key not in measured:
            swap = units.swap(chosen)
            value = batch.value(logits(swap, batch.input_ids, batch.attention_mask))
            check, flipped = None, []
            if control is not None and before is not None:
                after = control.top1(logits(swap, control.input_ids, control.attention_mask))
                flipped = [
                    j for j in range(len(control.prompts)) if int(after[j]) != int(before[j])
                ]
                check = DirectionCheck(
                    prompts=len(control.prompts),
                    agreement=1 - len(flipped) / len(control.prompts),
                    changed=[control.prompts[j] for j in flipped],
                )
            measured[key] = (value, check, flipped)
        return measured[key]

    def share_of(chosen: list[int]) -> float:
        return (subject.log_odds - measure(chosen)[0].log_odds) / change

    excluded: set[int] = set()
    tried: list[dict[str, float]] = []
    best: tuple[float, list[int]] | None = None  # (control agreement, set)
    with progress.bar("directions", rounds) as advance:
        for _ in range(rounds):
            ranking = units.ranking(ig, excluded)
            size, _ = _shortest_prefix(ranking, share_of, target, start=16)
            if not size:
                break
            chosen = ranking[:size]
            _, check, flipped = measure(chosen)
            agreement = check.agreement if check is not None else 1.0
            tried.append(
                {
                    "size": float(size),
                    "excluded": float(len(excluded)),
                    "share": share_of(chosen),
                    "control_agreement": agreement,
                }
            )
            advance(1, f"{size} directions, controls {agreement:.0%}")
            if best is None or agreement > best[0]:
                best = (agreement, chosen)
            if not flipped:
                break
            step, known = max(1, size // 16), len(excluded)
            for j in flipped:  # leave out the set's directions that this prompt leans on most
                lean = support_of(j)
                members = sorted(chosen, key=lambda i: float(lean[i]), reverse=True)
                excluded.update(i for i in members[:step] if float(lean[i]) > 0)
            if len(excluded) == known:  # the flipped prompts lean on none of the set
                break
    reached = best is not None
    chosen = best[1] if best is not None else units.ranking(ig)
    value, check, _ = measure(chosen)
    top = [
        Direction(
            parameter=units.names[i],
            index=int(units.index[i]),
            singular_value=float(units.singular[i]),
            ig_share=float(ig[i]) / change,
        )
        for i in chosen[:20]
    ]
    return DirectionSet(
        definition=DEFINITION,
        units=len(units),
        ig_completeness=float(ig.sum()) / change,
        n_directions=len(chosen),
        per_parameter=units.grouped(chosen),
        excluded=len(excluded),
        top=top,
        revert=value,
        share=(subject.log_odds - value.log_odds) / change,
        log_odds_share=1 - value.log_odds / subject.log_odds if subject.log_odds else 0.0,
        reached=reached,
        control=check,
        tried=tried,
        seconds=time.perf_counter() - started,
    )


__all__ = ["DEFINITION", "Direction", "DirectionCheck", "DirectionSet", "direction_set"]
