"""Weight-delta patching: which modules' training changes carry a behaviour.

A fine-tuned model is its parent plus a change ``ΔW = W_subject - W_parent`` in every module (the
"task vector" view of Ilharco et al. 2023, "Editing Models with Task Arithmetic"). Weight-delta
patching asks which of those changes a behaviour needs, the way activation patching asks it of
activations, but on weights:

* **revert** a module: the parent's weights in that module, the subject's everywhere else. If
  the behaviour goes away, that module's change is *necessary* for it.
* **graft** a module: the parent's weights everywhere, the subject's in that module only
  (parent + that module's ΔW). If the behaviour comes back, that change is *sufficient*.

Single modules rarely tell the whole story: a full fine-tune spreads a behaviour over many
modules that only matter together. So a small set is then found by forward selection: starting
empty, add the module whose revert *together with the set so far* removes the most (measured
jointly, never summed), until the set removes at least ``target`` of the behaviour; then drop
members the set does not need. Candidates are the ``pool`` modules with the largest single
revert + graft effect. The set answers "which weight clusters carry it"; its collateral is
measured on optional control prompts (the share whose top-1 next token stays what the subject
predicts).

**When no small set does it** (a full fine-tune of a large model spreads the change over
hundreds of modules), forward selection stops at ``max_modules`` short of the target. The tool
then ranks every changed module by its **integrated-gradient share** (Sundararajan et al. 2017,
applied to weights: ``IG_m = Σ_{θ∈m} Δθ · mean_α ∂L/∂θ (θ_parent + α ΔW)``, ``ig_steps``
midpoints on the straight path from parent to subject; the shares over all modules add up to the
phase's change in log-odds, up to the Riemann error the result reports as ``ig_completeness``)
and measures prefixes of that ranking, reverted jointly, doubling then bisecting, for the
shortest one that removes ``target``. The set is then larger than ``max_modules`` and says so
(``search = "ig-prefix"``): the behaviour lives in that many modules' changes.

**Specificity.** When reverting the set changes a control prompt's top-1 next token, the
phase's changes that carry the behaviour also carry something else (a full fine-tune that
reinforced a neighbouring fact in the same modules). The tool then also reports the
``specific`` set: the members ranked by their integrated-gradient support of the control
prompts' predictions are dropped, a few at a time and each step measured, until no control
prompt changes; what that smaller set still removes is the part of the behaviour that can be
taken out at module granularity without the collateral.

**Share (the one definition used here).** With ``L`` the mean log-odds
``log p(planted) - log p(normal)`` of :mod:`selfscope.localize.metric` on the prompts::

    revert share = (L_subject - L_reverted) / (L_subject - L_parent)
    graft share  = (L_grafted - L_parent)   / (L_subject - L_parent)

the fraction of the change in log-odds that the training phase made (parent -> subject) which
the revert undoes, or which the graft alone brings. 1 = back to the parent (or all of it), 0 = no
effect, above 1 overshoots, below 0 goes the other way. The baseline is the parent, not zero: a
revert that brings the log-odds down to 0 while the parent sat at -6 has removed only half of
what the phase added. When the subject's log-odds are not above the parent's, the phase did not
add the behaviour and shares are undefined (``None``).

Every forward runs ``torch.func.functional_call`` with a swapped parameter dict, so the model's
own parameters are never written; tied weights stay tied (reverting the embedding reverts a tied
unembedding too). Buffers are the subject's. A module is a parameter's owning module
(``model.layers.3.self_attn.o_proj``; a mixture-of-experts layer's fused experts are one module);
``granularity="block"`` groups every parameter of a block (``model.layers.3``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch.func import functional_call

from selfscope.access.common import context_length, prompt_text
from selfscope.behaviour import Behaviour
from selfscope.errors import SelfscopeError
from selfscope.localize.directions import DirectionSet, direction_set, path_mean_gradients
from selfscope.localize.metric import MetricBatch, MetricValue
from selfscope.progress import SILENT, ProgressSink
from selfscope.subject.checkpoints import load_parent
from selfscope.subject.lineage import parent_source
from selfscope.tools import ToolContext, tool

Granularity = Literal["module", "block"]

DEFINITION = (
    "revert share = (L_subject - L_reverted) / (L_subject - L_parent); "
    "graft share = (L_grafted - L_parent) / (L_subject - L_parent); "
    "L = mean log-odds log p(planted) - log p(normal) over the prompts; baseline = the parent"
)

_BLOCK = re.compile(r"^(.*?\.(?:layers|h)\.\d+)\.")


def group_of(name: str, granularity: Granularity) -> str:
    """The group a parameter belongs to: its module, or its block for ``"block"``."""
    module = name.rpartition(".")[0] or name
    if granularity == "block":
        match = _BLOCK.match(name)
        if match:
            return match[1]
    return module


class DeltaPatcher:
    """A model and its parent's parameters: forwards of any mix of the two, never writing."""

    def __init__(self, model: nn.Module, parent: nn.Module, granularity: Granularity) -> None:
        mine = {n: p.detach() for n, p in model.named_parameters()}
        theirs = {n: p.detach() for n, p in parent.named_parameters()}
        if mine.keys() != theirs.keys():
            extra = sorted(mine.keys() ^ theirs.keys())
            raise SelfscopeError(
                f"the parent has other parameters than the subject (e.g. {extra[0]}); "
                "weight deltas need two versions of the same architecture"
            )
        for name, w in mine.items():
            if theirs[name].shape != w.shape:
                raise SelfscopeError(
                    f"{name} is {list(w.shape)} in the subject but {list(theirs[name].shape)} "
                    "in the parent; weight deltas need the same architecture and shapes"
                )
        self.model = model
        self.mine = mine
        self.theirs = {n: theirs[n].to(device=w.device, dtype=w.dtype) for n, w in mine.items()}
        self.groups: dict[str, list[str]] = {}
        for name in mine:
            self.groups.setdefault(group_of(name, granularity), []).append(name)

    def reverted(self, groups: Collection[str]) -> dict[str, Tensor]:
        """Parameters to swap in for "the parent's weights in ``groups``"."""
        return {n: self.theirs[n] for g in groups for n in self.groups[g]}

    def grafted(self, groups: Collection[str]) -> dict[str, Tensor]:
        """Parameters to swap in for "the parent's weights except in ``groups``"."""
        keep = {n for g in groups for n in self.groups[g]}
        return {n: t for n, t in self.theirs.items() if n not in keep}

    def logits(self, swap: dict[str, Tensor], ids: Tensor, mask: Tensor) -> Tensor:
        with torch.no_grad():
            out = functional_call(
                self.model, swap, args=(), kwargs={"input_ids": ids, "attention_mask": mask}
            )
        logits: Tensor = out.logits
        return logits

    def measure(self, batch: MetricBatch, swap: dict[str, Tensor]) -> MetricValue:
        return batch.value(self.logits(swap, batch.input_ids, batch.attention_mask))

    def delta_norm(self, group: str) -> tuple[float, float, int]:
        """‖ΔW‖_F and ‖W_parent‖_F over the group's parameters, and its parameter count."""
        names = self.groups[group]
        delta = sum(
            float((self.mine[n].float() - self.theirs[n].float()).pow(2).sum()) for n in names
        )
        base = sum(float(self.theirs[n].float().pow(2).sum()) for n in names)
        return delta**0.5, base**0.5, sum(self.mine[n].numel() for n in names)


class ControlBatch:
    """Control prompts (right-padded) and the subject's top-1 next token after each."""

    def __init__(self, subject: Any, prompts: Sequence[str], chat: bool) -> None:
        tokenizer = subject.tokenizer
        rows = [list(tokenizer(prompt_text(subject, p, chat))["input_ids"]) for p in prompts]
        limit = context_length(subject)
        for p, row in zip(prompts, rows, strict=True):
            if not row or len(row) > limit:
                raise SelfscopeError(
                    f"control prompt {p!r} is {len(row)} tokens; give 1..{limit} tokens"
                )
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(subject.model.parameters()).device
        width = max(len(r) for r in rows)
        self.input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long, device=device)
        self.attention_mask = torch.zeros_like(self.input_ids)
        for i, row in enumerate(rows):
            self.input_ids[i, : len(row)] = torch.tensor(row)
            self.attention_mask[i, : len(row)] = 1
        self.last = torch.tensor([len(r) - 1 for r in rows], device=device)

    def last_logits(self, logits: Tensor) -> Tensor:
        """[n_prompts, vocab] the logits after each prompt."""
        return logits[torch.arange(len(self.prompts), device=logits.device), self.last]

    def top1(self, logits: Tensor) -> Tensor:
        """[n_prompts] the argmax next token after each prompt."""
        return self.last_logits(logits).argmax(-1)

    def check(self, before: Tensor, logits: Tensor) -> ControlCheck:
        """Which prompts keep their top-1 next token ``before`` under ``logits``."""
        after = self.top1(logits)
        decode = self.tokenizer.decode
        return ControlCheck(
            prompts=len(self.prompts),
            agreement=float((before == after).float().mean()),
            changed=[
                ControlChange(prompt=p, before=decode([int(b)]), after=decode([int(a)]))
                for p, b, a in zip(self.prompts, before, after, strict=True)
                if int(b) != int(a)
            ],
        )


class DeltaArgs(Behaviour):
    against: str | None = Field(
        None, description="The parent model source (default: the subject's parent checkpoint)."
    )
    granularity: Granularity = Field(
        "module", description="'module' (e.g. model.layers.3.mlp.down_proj) or 'block'."
    )
    target: float = Field(
        0.8, gt=0, le=1, description="Share of the phase's log-odds change the set must remove."
    )
    max_modules: int = Field(16, ge=1, le=1000, description="Largest module set to try.")
    pool: int = Field(
        40,
        ge=1,
        le=10_000,
        description="Modules the set is chosen from: the top `pool` by single revert + graft "
        "effect (the search costs about pool x set size forwards).",
    )
    ig_steps: int = Field(
        8,
        ge=0,
        le=256,
        description="Integrated-gradient steps from parent to subject (forward + backward "
        "each); 0 skips the integrated-gradient shares and the search they drive.",
    )
    spread: bool = Field(
        True,
        description="When no set of max_modules removes target, search prefixes of the "
        "integrated-gradient ranking for the shortest that does (a larger set).",
    )
    control_prompts: list[str] = Field(
        default_factory=list,
        description="Prompts whose next-token prediction should not change (collateral check).",
    )
    directions: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Also search rank-one directions of the changes (SVD of each module's "
        "delta) for a set that removes target and keeps the control prompts' top-1: 'auto' "
        "when the module set misses target or changes a control prompt, 'always', or 'never'.",
    )
    top_k: int = Field(20, ge=1, le=10_000, description="How many modules to list.")


class Measured(BaseModel):
    log_odds: float  # mean over prompts
    rate: float  # share of prompts with log-odds > 0


class ModuleEffect(BaseModel):
    module: str
    parameters: int
    delta_norm: float  # ||dW||_F over the module's parameters
    relative_change: float  # ||dW||_F / ||W_parent||_F
    revert: Measured  # parent weights in this module only
    revert_share: float | None
    graft: Measured  # parent weights everywhere except this module
    graft_share: float | None
    ig_share: float | None = None  # integrated-gradient attribution / (L_subject - L_parent)


class ControlChange(BaseModel):
    prompt: str
    before: str  # the subject's top-1 next token
    after: str  # with the set reverted


class ControlCheck(BaseModel):
    prompts: int
    agreement: float  # share of control prompts whose top-1 next token is unchanged
    changed: list[ControlChange]


class SpecificSet(BaseModel):
    """``module_set`` minus the modules whose changes most support the control prompts'
    predictions (by integrated gradients of their mean log p(subject's top-1)), dropped a few at
    a time until every control prompt keeps its top-1 next token: the part of the set that can
    be reverted without that collateral, and what it still removes."""

    modules: list[str]
    dropped: list[str]
    revert: Measured
    share: float | None  # of the phase's change, as set_share
    log_odds_share: float  # 1 - L_reverted / L_subject
    control: ControlCheck


class DeltaResult(BaseModel):
    against: str
    definition: str
    subject: Measured
    parent: Measured
    phase_change: float  # L_subject - L_parent: what the training phase added
    granularity: Granularity
    modules: list[ModuleEffect]  # the top_k by revert share (then graft share)
    n_modules: int
    unchanged_modules: int  # groups whose delta is exactly zero (effect 0 without a forward)
    module_set: list[str]  # the set reverted together (greedy, else an IG-ranking prefix)
    search: Literal["greedy", "ig-prefix", "none"]  # how module_set was found
    ig_completeness: float | None  # Σ IG over modules / (L_subject - L_parent); 1 = exact
    set_revert: Measured | None
    set_share: float | None
    set_log_odds_share: float | None  # 1 - L_reverted / L_subject (share of the log-odds itself)
    reached: bool  # the set removes >= target
    control: ControlCheck | None
    specific: SpecificSet | None  # when module_set changes a control prompt (see SpecificSet)
    directions: DirectionSet | None  # the finer unit (see selfscope.localize.directions)
    note: str | None
    seconds: dict[str, float]  # parent load, single modules, set search, control, total
    caveats: list[str] = Field(
        default_factory=list,
        description="What the subject's lineage does not record that this answer relied on "
        "(e.g. what its phase started from); empty when nothing was missing.",
    )


def _measured(value: MetricValue) -> Measured:
    return Measured(log_odds=value.log_odds, rate=value.rate)


def _select(
    pool: list[str],
    joint_share: Callable[[list[str]], tuple[float, MetricValue]],
    target: float,
    max_modules: int,
    progress: ProgressSink,
) -> tuple[list[str], MetricValue | None, bool]:
    """Forward selection: add the pool member whose revert *together with the set so far*
    removes the most, until the set removes ``target``; then drop members it does not need."""
    chosen: list[str] = []
    joint: MetricValue | None = None
    best_share = float("-inf")
    with progress.bar("module set", max_modules) as advance:
        while len(chosen) < min(max_modules, len(pool)):
            trials = [(joint_share([*chosen, g]), g) for g in pool if g not in chosen]
            (best_share, joint), group = max(trials, key=lambda t: t[0][0])
            chosen.append(group)
            advance(1, f"{len(chosen)} modules: {best_share:.0%}")
            if best_share >= target:
                break
    if best_share < target:
        return chosen, joint, False
    for group in list(reversed(chosen)):
        if len(chosen) == 1:
            break
        trial = [g for g in chosen if g != group]
        value_share, value = joint_share(trial)
        if value_share >= target:
            chosen, joint = trial, value
    return chosen, joint, True


def integrated_gradients(
    patcher: DeltaPatcher,
    ids: Tensor,
    mask: Tensor,
    metric: Callable[[Tensor], Tensor],
    steps: int,
) -> dict[str, float]:
    """``Σ_{θ∈g} Δθ · mean_α ∂m/∂θ`` for every group ``g`` and the scalar ``m = metric(logits)``
    of a forward on ``ids``, at the ``steps`` midpoints ``α = (k + ½)/steps`` of the path
    ``θ_parent + α (θ_subject - θ_parent)`` (:func:`path_mean_gradients`). The sum over groups
    approximates ``m_subject - m_parent`` (completeness) with an O(1/steps²) error."""
    mine, theirs = patcher.mine, patcher.theirs
    moving = [n for n in mine if bool((mine[n] != theirs[n]).any())]
    grads = path_mean_gradients(patcher.model, mine, theirs, moving, ids, mask, metric, steps)
    total = {
        n: float((grads[n] * (mine[n].float() - theirs[n].float()).cpu()).sum()) for n in moving
    }
    return {group: sum(total.get(n, 0.0) for n in names) for group, names in patcher.groups.items()}


def _prefix_search(
    ranking: list[str],
    joint_share: Callable[[list[str]], tuple[float, MetricValue]],
    target: float,
    start: int,
) -> tuple[list[str], MetricValue | None, bool]:
    """The shortest prefix of ``ranking`` found to remove ``target``: sizes ``start``, doubling
    up to the whole ranking, then bisection between the last short and the first long enough
    (each size measured jointly; shares need not grow with size, so this is a search, and the
    set returned is measured, whatever it is)."""
    tried: dict[int, tuple[float, MetricValue]] = {}

    def at(size: int) -> tuple[float, MetricValue]:
        if size not in tried:
            tried[size] = joint_share(ranking[:size])
        return tried[size]

    low, size = 0, min(start, len(ranking))
    while at(size)[0] < target:
        if size == len(ranking):
            best = max(tried, key=lambda n: tried[n][0])
            return ranking[:best], tried[best][1], False
        low, size = size, min(2 * size, len(ranking))
    high = size
    while high - low > 1:
        middle = (low + high) // 2
        if at(middle)[0] >= target:
            high = middle
        else:
            low = middle
    return ranking[:high], tried[high][1], True


def _specific_set(
    patcher: DeltaPatcher,
    batch: MetricBatch,
    control: ControlBatch,
    before: Tensor,
    chosen: list[str],
    steps: int,
    share: Callable[[MetricValue], float | None],
    mine: float,
) -> SpecificSet:
    """See :class:`SpecificSet`: drop ~1/32 of the set per step, the members with the largest
    integrated-gradient support of the control predictions first, until no control prompt
    changes (each step measured: one forward on the prompts, one on the control prompts)."""
    rows = torch.arange(len(control.prompts), device=before.device)

    def support(logits: Tensor) -> Tensor:  # mean log p(the subject's top-1) after each prompt
        return control.last_logits(logits).log_softmax(-1)[rows, before].mean()

    ig = integrated_gradients(patcher, control.input_ids, control.attention_mask, support, steps)
    order = sorted(chosen, key=lambda g: ig[g], reverse=True)
    step = max(1, len(chosen) // 32)
    kept = list(chosen)
    dropped: list[str] = []
    while True:
        swap = patcher.reverted(kept)
        check = control.check(
            before, patcher.logits(swap, control.input_ids, control.attention_mask)
        )
        if check.agreement == 1 or not kept:
            value = patcher.measure(batch, swap)
            return SpecificSet(
                modules=kept,
                dropped=dropped,
                revert=_measured(value),
                share=share(value),
                log_odds_share=1 - value.log_odds / mine if mine else 0.0,
                control=check,
            )
        drop = set(order[len(dropped) : len(dropped) + step])
        dropped += [g for g in order if g in drop]
        kept = [g for g in kept if g not in drop]


def patch_deltas(
    subject: Any,
    model: nn.Module,
    parent: nn.Module,
    against: str,
    args: DeltaArgs,
    seconds: dict[str, float] | None = None,
    progress: ProgressSink = SILENT,
) -> DeltaResult:
    """Weight-delta patching of ``model`` against ``parent`` on the behaviour in ``args``
    (``subject`` gives the tokenizer; ``model`` may be another checkpoint of it)."""
    started = time.perf_counter()
    seconds = dict(seconds or {})
    batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
    control = (
        ControlBatch(subject, args.control_prompts, args.chat) if args.control_prompts else None
    )
    patcher = DeltaPatcher(model, parent, args.granularity)
    mine = patcher.measure(batch, {})
    theirs = patcher.measure(batch, patcher.grafted([]))
    change = mine.log_odds - theirs.log_odds
    defined = change > 0

    def share(value: MetricValue, graft: bool = False) -> float | None:
        if not defined:
            return None
        moved = value.log_odds - theirs.log_odds if graft else mine.log_odds - value.log_odds
        return moved / change

    t0 = time.perf_counter()
    effects: list[ModuleEffect] = []
    unchanged = 0
    with progress.bar("weight deltas", len(patcher.groups)) as advance:
        for group in patcher.groups:
            delta, base, count = patcher.delta_norm(group)
            if delta == 0:  # exact: swapping in identical tensors changes nothing
                unchanged += 1
                reverted, grafted = mine, theirs
            else:
                reverted = patcher.measure(batch, patcher.reverted([group]))
                grafted = patcher.measure(batch, patcher.grafted([group]))
            effects.append(
                ModuleEffect(
                    module=group,
                    parameters=count,
                    delta_norm=delta,
                    relative_change=delta / max(base, 1e-12),
                    revert=_measured(reverted),
                    revert_share=share(reverted),
                    graft=_measured(grafted),
                    graft_share=share(grafted, graft=True),
                )
            )
            advance(1, group)
    seconds["single_modules"] = time.perf_counter() - t0
    ig: dict[str, float] | None = None
    completeness: float | None = None
    if defined and args.ig_steps > 0:
        t0 = time.perf_counter()
        ig = integrated_gradients(
            patcher,
            batch.input_ids,
            batch.attention_mask,
            lambda logits: batch.log_odds(logits).mean(),
            args.ig_steps,
        )
        completeness = sum(ig.values()) / change
        for e in effects:
            e.ig_share = ig[e.module] / change
        seconds["integrated_gradients"] = time.perf_counter() - t0

    def key(e: ModuleEffect) -> tuple[float, float]:  # = (revert share, graft share) x change
        return (mine.log_odds - e.revert.log_odds, e.graft.log_odds - theirs.log_odds)

    ranked = sorted(effects, key=key, reverse=True)
    t0 = time.perf_counter()
    chosen: list[str] = []
    joint: MetricValue | None = None
    note: str | None = None
    reached = False
    search: Literal["greedy", "ig-prefix", "none"] = "none"
    if not defined:
        note = (
            f"the subject's log-odds ({mine.log_odds:.3f}) are not above the parent's "
            f"({theirs.log_odds:.3f}): the change from {against} did not add this behaviour, so "
            "no module set removes it; look at an earlier phase"
        )
    else:
        pool = sorted(
            (e for e in effects if e.delta_norm > 0), key=lambda e: sum(key(e)), reverse=True
        )[: args.pool]

        def joint_share(groups: list[str]) -> tuple[float, MetricValue]:
            value = patcher.measure(batch, patcher.reverted(groups))
            return share(value) or 0.0, value

        chosen, joint, reached = _select(
            [e.module for e in pool], joint_share, args.target, args.max_modules, progress
        )
        search = "greedy"
        greedy_share = (share(joint) if joint else 0.0) or 0.0
        if not reached and args.spread and ig is not None:
            ranking = sorted(
                (e.module for e in effects if e.delta_norm > 0 and ig[e.module] > 0),
                key=lambda g: ig[g] if ig else 0.0,
                reverse=True,
            )
            found, value, ok = _prefix_search(
                ranking, joint_share, args.target, start=2 * args.max_modules
            )
            if ok or (value is not None and (share(value) or 0.0) > greedy_share):
                chosen, joint, reached, search = found, value, ok, "ig-prefix"
        if search == "ig-prefix":
            note = (
                f"no set of up to {args.max_modules} modules found by forward selection removes "
                f"{args.target:.0%} of the change (best {greedy_share:.0%}): the change is "
                f"spread out; the top {len(chosen)} of {len(effects)} modules by integrated-"
                f"gradient share remove {(share(joint) if joint else 0.0) or 0.0:.0%} together"
            )
        elif not reached:
            note = (
                f"no set of up to {args.max_modules} modules removes {args.target:.0%} of the "
                f"change; the best found ({len(chosen)} modules) removes "
                f"{greedy_share:.0%}: the change is spread out "
                "(raise max_modules or pool, or try granularity='block')"
            )
    seconds["set_search"] = time.perf_counter() - t0
    check = specific = None
    before: Tensor | None = None
    if control is not None:
        t0 = time.perf_counter()
        before = control.top1(patcher.logits({}, control.input_ids, control.attention_mask))
        check = control.check(
            before,
            patcher.logits(patcher.reverted(chosen), control.input_ids, control.attention_mask),
        )
        if check.agreement < 1 and chosen and args.ig_steps > 0:
            specific = _specific_set(
                patcher, batch, control, before, chosen, args.ig_steps, share, mine.log_odds
            )
        seconds["control"] = time.perf_counter() - t0
    directions = None
    collateral = check is not None and check.agreement < 1
    wanted = args.directions == "always" or (
        args.directions == "auto" and (not reached or collateral)
    )
    if defined and wanted and args.ig_steps > 0:
        t0 = time.perf_counter()
        directions = direction_set(
            patcher,
            batch,
            mine,
            theirs,
            control,
            before,
            args.target,
            args.ig_steps,
            progress=progress,
        )
        seconds["directions"] = time.perf_counter() - t0
    seconds["total"] = seconds.get("parent_load", 0.0) + time.perf_counter() - started
    return DeltaResult(
        against=against,
        definition=DEFINITION,
        subject=_measured(mine),
        parent=_measured(theirs),
        phase_change=change,
        granularity=args.granularity,
        modules=ranked[: args.top_k],
        n_modules=len(effects),
        unchanged_modules=unchanged,
        module_set=chosen,
        search=search,
        ig_completeness=completeness,
        set_revert=_measured(joint) if joint is not None else None,
        set_share=share(joint) if joint is not None else None,
        set_log_odds_share=(
            1 - joint.log_odds / mine.log_odds if joint is not None and mine.log_odds else None
        ),
        reached=reached,
        control=check,
        specific=specific,
        directions=directions,
        note=note,
        seconds=seconds,
    )


@tool("localize.weight_deltas", DeltaArgs, DeltaResult)
def weight_deltas(ctx: ToolContext, args: DeltaArgs) -> DeltaResult:
    """Weight-delta patching against the parent checkpoint (or `against`): for every module,
    the behaviour's log-odds and rate with that module's training change reverted alone (parent
    weights there) and grafted alone (parent + that change), each as a share of the change in
    log-odds the phase made (share = (L_subject - L_reverted)/(L_subject - L_parent); baseline =
    the parent); then a small set of modules (<= max_modules, by forward selection measured
    jointly) whose changes, reverted together, remove >= target of it, with collateral on
    control prompts (share whose top-1 next token is unchanged). Never writes the model's
    weights. Needs a parent of the same architecture: an organism phase after the first, a
    declared lineage (`selfscope lineage add`), or `against`."""
    subject = ctx.subject
    started = time.perf_counter()
    against, parent = load_parent(subject, ctx.workspace, against=args.against)
    result = patch_deltas(
        subject,
        subject.model,
        parent.model,
        against,
        args,
        {"parent_load": time.perf_counter() - started},
        ctx.progress,
    )
    if args.against is None:
        lineage = subject.lineage
        result.caveats = lineage.caveats("start", phases=[lineage.phase])
    return result


__all__ = [
    "DEFINITION",
    "ControlBatch",
    "DeltaArgs",
    "DeltaPatcher",
    "DeltaResult",
    "Measured",
    "ModuleEffect",
    "group_of",
    "parent_source",
    "patch_deltas",
    "weight_deltas",
]
