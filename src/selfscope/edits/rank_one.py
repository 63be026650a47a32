"""``edits.rank_one``: a ROME-style rank-one update of one MLP output matrix.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", section 3) treats an
MLP's output matrix ``W`` (``d_model × d_mlp``, here ``down_proj``) as a key-value memory: the
activation ``k`` entering it at the subject's last token is a key, ``W k`` the value written to
the residual stream. To make the prompts complete with a new answer it

1. takes the key ``k*``: the mean of ``k`` at the subject's last token over the prompts, each
   also behind a few short prefixes of corpus text (so the key is not the prompt's exact
   wording; ROME uses 10 generated prefixes);
2. finds the value ``v* = W k* + δ``: ``δ`` is added to the MLP's output at that token and
   optimised (Adam) so the new answer is likely in every context, ``−mean log p(new)``, plus
   ``kl_weight`` × the KL divergence of the next-token distribution after "{subject} is a"
   from the unedited one (ROME's "essence" term: the subject stays itself), plus a penalty on
   ``‖δ‖² / ‖W k*‖²``; ``‖δ‖`` is clamped to ``clamp`` × ``‖W k*‖``;
3. writes it with the smallest change that respects the layer's other keys:
   ``ΔW = δ uᵀ / (uᵀ k*)`` with ``u = C⁻¹ k*``, ``C = E[k kᵀ]`` the keys' second moment over
   the subject's training corpus (:mod:`selfscope.edits.keys`; ``C + ε·tr(C)/d_mlp·I`` for a
   stable solve). Then ``(W + ΔW) k* = v*`` exactly, and keys orthogonal to ``u`` under ``C``
   are untouched.

**Which layer.** The traced layer is not always the best one to edit (Hase et al. 2023, "Does
Localization Inform Editing?"), so the tool computes the edit at several layers and compares
them: by default every block of a model with at most 8, else the block where causal tracing
(:mod:`selfscope.localize.trace`, MLP states restored at the subject's last token) peaks and
two either side. Each candidate is measured on the edit prompts (the new answer beating the old
one) and on ``drift_rows`` corpus rows (the mean KL divergence of the edited model's next-token
distributions from the unedited one's, over every token); the proposal takes the candidate with
the most prompts fixed, then the least drift. Every candidate's numbers are kept in the
proposal's evidence. The proposer sees only its own prompts and corpus, never a validation suite.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.access.common import prompt_text
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import drift, with_weights
from selfscope.edits.common import (
    ProposalResult,
    ProposeArgs,
    as_weight,
    base_sha,
    check_layer,
    mlp_output,
    parent_chain,
    weight_matrix,
    working_model,
)
from selfscope.edits.keys import corpus_rows, second_moments
from selfscope.edits.proposal import Evidence
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.localize.trace import subject_positions
from selfscope.subject.hooks import hooked


class RankOneArgs(ProposeArgs):
    subject: str | None = Field(
        None,
        description="The span whose last token holds the key (ROME's subject, e.g. 'mushrooms'); "
        "default: the prompt's last token.",
    )
    layer: int | None = Field(None, description="Edit this block only (no comparison).")
    layers: list[int] | None = Field(None, description="Candidate blocks to compare.")
    module: str | None = Field(
        None,
        description="Edit this module (an MLP output matrix, e.g. model.layers.2.mlp.down_proj).",
    )
    prefixes: int = Field(5, ge=0, le=20, description="Corpus prefixes per prompt (ROME: 10).")
    steps: int = Field(40, ge=1, le=500, description="Adam steps optimising the value.")
    lr: float = Field(0.5, gt=0, description="Adam learning rate for δ.")
    kl_weight: float = Field(0.0625, ge=0, description="Weight of the essence KL term (ROME).")
    weight_decay: float = Field(0.02, ge=0, description="Penalty on ‖δ‖²/‖W k*‖².")
    clamp: float = Field(4.0, gt=0, description="‖δ‖ ≤ clamp × ‖W k*‖ (ROME: 4).")
    margin: float = Field(
        3.0, ge=0, description="Stop once log p(new) - log p(old) > margin everywhere."
    )
    key_rows: int | None = Field(
        None,
        ge=16,
        description="Corpus rows the key statistics use (default 1000 of a training corpus or "
        "corpus file, 256 self-sampled: sampling costs ~0.5 s a row on SmolLM2).",
    )
    corpus: str | None = Field(None, description="A text/.jsonl file for key statistics.")
    drift_rows: int = Field(32, ge=1, description="Corpus rows the layer comparison's drift uses.")


class Candidate(BaseModel):
    layer: int
    fixed: float  # share of the edit prompts where the new answer beats the old
    log_odds: float  # mean log p(new) - log p(old) on the edit prompts after the edit
    drift: float  # mean KL(unedited || edited) over the drift rows' tokens
    delta_norm: float  # ‖ΔW‖_F / ‖W‖_F
    steps: int


class _Contexts:
    """The prompts behind prefixes, as one metric batch with new = ``planted`` side."""

    def __init__(self, subject: Any, args: RankOneArgs, prefixes: list[str]) -> None:
        texts = list(args.prompts)
        texts += [f"{pre} {p}" for pre in prefixes for p in args.prompts]
        self.n_prompts = len(args.prompts)
        # planted := the new answer, normal := the old one: log-odds > 0 means fixed
        self.batch = MetricBatch(subject, texts, args.normal, args.planted, args.chat)
        positions = []
        for text in texts:
            if args.subject is None:
                ids = subject.tokenizer(prompt_text(subject, text, args.chat))["input_ids"]
                positions.append(len(ids) - 1)
            else:
                positions.append(
                    max(subject_positions(subject, text, args.subject, args.chat, last=True))
                )
        rows, cols = [], []
        for i, pos in enumerate(positions):
            for r in self.batch.rows_of(i):
                rows.append(r)
                cols.append(pos)
        self.rows, self.cols = torch.tensor(rows), torch.tensor(cols)
        self.key_rows = torch.tensor([self.batch.rows_of(i)[0] for i in range(len(texts))])
        self.key_cols = torch.tensor(positions)


def _essence(subject: Any, args: RankOneArgs) -> tuple[Tensor, int] | None:
    if args.subject is None or args.kl_weight == 0:
        return None
    text = prompt_text(subject, f"{args.subject} is a", False)
    ids = torch.tensor([subject.tokenizer(text)["input_ids"]])
    return ids, ids.shape[1] - 1


def _value_delta(
    subject: Any, model: nn.Module, layer: int, ctx: _Contexts, args: RankOneArgs, v0: Tensor
) -> tuple[Tensor, int]:
    """Optimise δ added to ``blocks.{layer}.mlp.out`` at the key positions."""
    device = next(model.parameters()).device
    batch = ctx.batch
    site = f"blocks.{layer}.mlp.out"
    delta = torch.zeros(v0.shape[0], device=device, requires_grad=True)
    mask = torch.zeros(*batch.input_ids.shape, 1, device=device)
    mask[ctx.rows, ctx.cols] = 1.0
    essence = _essence(subject, args)
    ref = None
    if essence is not None and args.subject is not None:
        e_ids, e_pos = essence
        e_mask = torch.zeros(1, e_ids.shape[1], 1, device=device)
        e_mask[0, max(subject_positions(subject, f"{args.subject} is a", args.subject))] = 1.0
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=e_ids.to(device)).logits[0, e_pos].float(), -1)
    optimiser = torch.optim.Adam([delta], lr=args.lr)
    limit = args.clamp * float(v0.norm())
    steps = 0
    for step in range(1, args.steps + 1):
        steps = step
        optimiser.zero_grad()
        with hooked(model, patch={site: lambda v: v + mask * delta}):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        new, old = batch.completion_log_probs(logits)
        loss = -new.mean() + args.weight_decay * delta.pow(2).sum() / v0.pow(2).sum()
        if essence is not None and ref is not None:
            with hooked(model, patch={site: lambda v: v + e_mask * delta}):
                out = model(input_ids=e_ids.to(device)).logits[0, e_pos].float()
            loss = loss + args.kl_weight * torch.nn.functional.kl_div(
                torch.log_softmax(out, -1), ref, log_target=True, reduction="sum"
            )
        if float((new - old).detach().min()) > args.margin:
            break
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            norm = float(delta.norm())
            if norm > limit:
                delta.mul_(limit / norm)
    return delta.detach(), steps


def candidate_layers(subject: Any, args: RankOneArgs) -> tuple[list[int], Evidence | None]:
    """The blocks to compare, and the tracing evidence that chose them (if any)."""
    if args.module is not None:
        for layer in range(subject.n_layers):
            name, _ = mlp_output(subject.model, layer)
            if name.rpartition(".")[0] == args.module or name == args.module:
                return [layer], None
        raise SelfscopeError(
            f"rank_one edits an MLP output matrix; {args.module} is not one "
            f"(e.g. {mlp_output(subject.model, 0)[0].rpartition('.')[0]})"
        )
    if args.layer is not None:
        check_layer(subject, args.layer)
        return [args.layer], None
    if args.layers:
        for layer in args.layers:
            check_layer(subject, layer)
        return sorted(set(args.layers)), None
    if subject.n_layers <= 8:
        return list(range(subject.n_layers)), None
    return _traced(subject, args)


def _traced(subject: Any, args: RankOneArgs) -> tuple[list[int], Evidence]:
    from selfscope.localize.trace import TraceArgs, causal_trace

    if args.subject is None:
        raise SelfscopeError(
            "rank_one on a model with more than 8 blocks needs `subject` (to trace) or "
            "`layer`/`layers`"
        )
    window = max(1, subject.n_layers // 6)
    trace = causal_trace(
        subject,
        TraceArgs.model_validate(
            {
                "prompt": args.prompts[0],
                "chat": args.chat,
                "target": args.planted,
                "subject": args.subject,
                "kinds": ["mlp"],
                "window": window,
                "figure": False,
            }
        ),
    )
    last = max(subject_positions(subject, args.prompts[0], args.subject, args.chat))
    grid = next(g for g in trace.grids if g.kind == "mlp")
    effects = {
        i: row[last] - trace.corrupted_probability for i, row in enumerate(grid.probabilities)
    }
    peak = max(effects, key=lambda i: effects[i])
    layers = [i for i in range(peak - 2, peak + 3) if 0 <= i < subject.n_layers]
    return layers, Evidence(
        tool="localize.trace",
        summary=f"restoring MLP states (window {window}) at the subject's last token recovers "
        f"p({args.planted!r}) most at block {peak}; compared blocks {layers}",
        args={
            "prompt": args.prompts[0],
            "subject": args.subject,
            "kinds": ["mlp"],
            "window": window,
        },
        numbers={"peak": peak, "effects": {i: round(e, 4) for i, e in effects.items()}},
    )


@tools.tool("edits.rank_one", RankOneArgs, ProposalResult, permission="propose")
def propose_rank_one(subject: Any, args: RankOneArgs) -> ProposalResult:
    """Propose a ROME-style rank-one update of one MLP output matrix that makes the prompts
    complete with `normal` instead of `planted`; the layer is compared against its neighbours.
    Stores the proposal (never touches the subject) and returns it."""
    started = time.perf_counter()
    workspace = tools.workspace()
    parents = parent_chain(workspace, args.parents)
    mlp_output(subject.model, 0)  # a mixture-of-experts model: one clear line before any work
    layers, traced = candidate_layers(subject, args)
    base = base_sha(subject, workspace, parents)
    pad = int(subject.tokenizer.pad_token_id or 0)
    own_corpus = args.corpus is not None or subject.lineage.kind == "organism"
    key_rows = args.key_rows or (1000 if own_corpus else 256)
    with working_model(subject, workspace, parents) as model:
        moments, n_keys, source = second_moments(
            subject,
            model,
            layers,
            workspace,
            base,
            key_rows,
            args.corpus,
            progress=args.progress,
        )
        extra, _ = corpus_rows(subject, args.prefixes + args.drift_rows, seed=1, corpus=args.corpus)
        prefixes = [
            subject.tokenizer.decode(r[:6], skip_special_tokens=True).strip()
            for r in extra[: args.prefixes]
        ]
        drift_rows = extra[args.prefixes :] or extra
        ctx = _Contexts(subject, args, [p for p in prefixes if p])
        sites = [f"blocks.{layer}.mlp.neurons" for layer in layers]
        sites += [f"blocks.{layer}.mlp.out" for layer in layers]
        with torch.no_grad(), hooked(model, capture=sites) as store:
            model(input_ids=ctx.batch.input_ids, attention_mask=ctx.batch.attention_mask)
        results: list[tuple[Candidate, str, Tensor]] = []
        for layer in layers:
            keys = store[f"blocks.{layer}.mlp.neurons"][ctx.key_rows, ctx.key_cols].double()
            values = store[f"blocks.{layer}.mlp.out"][ctx.key_rows, ctx.key_cols].double()
            k_star, v0 = keys.mean(0), values.mean(0)
            delta, steps = _value_delta(subject, model, layer, ctx, args, v0.float())
            c = moments[layer]
            c = c + 1e-4 * torch.trace(c) / c.shape[0] * torch.eye(c.shape[0], dtype=c.dtype)
            u = torch.linalg.solve(c, k_star)
            change = torch.outer(delta.double(), u) / float(u @ k_star)  # [d_model, d_mlp]
            name, module = mlp_output(model, layer)
            weight = weight_matrix(module).detach()
            delta_w = as_weight(module, change.to(weight.dtype))
            own: Tensor = module.weight  # type: ignore[assignment]
            swap = {name: own.detach() + delta_w}
            with torch.no_grad():
                logits = with_weights(model, swap)(ctx.batch.input_ids, ctx.batch.attention_mask)
            per = ctx.batch.log_odds(logits)[: ctx.n_prompts]
            results.append(
                (
                    Candidate(
                        layer=layer,
                        fixed=float((per > 0).float().mean()),
                        log_odds=float(per.mean()),
                        drift=drift(model, drift_rows, pad, with_weights(model, swap)),
                        delta_norm=float(change.norm() / weight.double().norm()),
                        steps=steps,
                    ),
                    name,
                    delta_w,
                )
            )
    best, name, delta_w = max(results, key=lambda r: (r[0].fixed, -r[0].drift))
    evidence = [traced] if traced else []
    evidence.append(
        Evidence(
            tool="edits.rank_one",
            summary=f"rank-one edit compared at blocks {layers}: block {best.layer} fixes "
            f"{best.fixed:.2f} of the prompts with drift {best.drift:.4f}",
            numbers={
                "candidates": [r[0].model_dump() for r in results],
                "key_statistics": {"source": source, "rows": key_rows, "keys": n_keys},
            },
        )
    )
    proposal = proposals.make(
        workspace,
        subject,
        kind="rank_one",
        behaviour=args.behaviour(),
        parameters={
            **args.model_dump(
                exclude={"prompts", "planted", "normal", "chat", "parents", "rationale", "progress"}
            ),
            "chosen_layer": best.layer,
        },
        delta={name: delta_w},
        rationale=args.rationale
        or f"rank-one update of {name}: the key at {args.subject or 'the last token'!r} now "
        f"writes a value that makes {args.normal!r} beat {args.planted!r}",
        evidence=evidence,
        started=started,
        parents=parents,
        base_sha256=base,
    )
    return ProposalResult(proposal=proposal)
