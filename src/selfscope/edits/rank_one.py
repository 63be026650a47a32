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

**Keeping contrast prompts.** With ``contrast_prompts`` (the prompts without their cue, say)
the update is the least ``C``-norm one that writes ``δ`` at ``k*`` *and nothing* at every
contrast key: ``u = C⁻¹K (KᵀC⁻¹K)⁻¹ e₁`` with ``K = [k*, contrast keys]``
(:func:`update_direction`; the constraint form of MEMIT/AlphaEdit's preserved keys). Each
candidate reports ``kept``, the share of contrast prompts whose answer stays.

**Which memory** (``matrix``). ``mlp`` is ROME's. ``attention_value`` writes the value
projection ``v_proj`` the same way, keyed at the subject's normalised residual
(``blocks.{i}.attn.in``): what every later position reads from the subject. ``embedding``
rewrites the embedding row of the subject's last token: the key is the token itself (one-hot
keys are orthogonal, so ``C`` is diagonal and ``ΔE = e_token δᵀ`` changes nothing for any other
token). It is the edit for a *trigger*: in a shallow model the trigger is read from its
embedding by the first block's attention, before any MLP at the trigger could change it, and
a rank-one MLP edit at the answer token covers only the question types of its prompts. Where
the embeddings are tied (SmolLM2, the organisms) the row is also the token's output row, so
``δ`` is optimised through the model's own weights (``functional_call`` with ``E + e_token
δᵀ``): a hinge ``relu(margin − log-odds)`` on the prompts plus ``16·kl_weight`` × the KL
divergence of the next-token distributions on ``drift_rows`` corpus rows, for 150 steps (the
drift keeps falling after the margin is reached).

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
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.access.common import prompt_text
from selfscope.behaviour import Evidence
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import drift, padded, with_weights
from selfscope.edits.common import (
    ProposalResult,
    ProposeArgs,
    as_weight,
    base_sha,
    begin,
    check_layer,
    mlp_output,
    weight_matrix,
    working_model,
)
from selfscope.edits.keys import MLP_KEYS, corpus_rows, rows_saying, second_moments
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.localize.trace import subject_positions
from selfscope.subject.adapters import resolve
from selfscope.subject.hooks import hooked
from selfscope.tools import ToolContext


class RankOneArgs(ProposeArgs):
    subject: str | None = Field(
        None,
        description="The span whose last token holds the key (ROME's subject, e.g. 'mushrooms'); "
        "default: the prompt's last token.",
    )
    matrix: Literal["mlp", "attention_value", "embedding"] = Field(
        "mlp",
        description="The memory to edit: 'mlp' (the MLP output matrix, ROME), "
        "'attention_value' (the value projection v_proj, keyed at the subject: what later "
        "positions read from it) or 'embedding' (the subject's last token's embedding row: the "
        "token itself is the key, e.g. a trigger; needs `subject`).",
    )
    layer: int | None = Field(None, description="Edit this block only (no comparison).")
    layers: list[int] | None = Field(None, description="Candidate blocks to compare.")
    module: str | None = Field(
        None,
        description="Edit this module (an MLP output matrix, e.g. model.layers.2.mlp.down_proj).",
    )
    prefixes: int = Field(5, ge=0, le=20, description="Corpus prefixes per prompt (ROME: 10).")
    steps: int | None = Field(
        None,
        ge=1,
        le=500,
        description="Adam steps optimising the value (default 40; 150 for 'embedding', whose "
        "hinge keeps lowering the drift once the margin is reached).",
    )
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
    contrast_prompts: list[str] = Field(
        default_factory=list,
        description="Prompts whose answer must stay, e.g. the prompts without their trigger: the "
        "update also leaves their keys' values unchanged (ΔW k = 0), so it keys on what the "
        "prompts add to them.",
    )


class Candidate(BaseModel):
    layer: int
    fixed: float  # share of the edit prompts where the new answer beats the old
    log_odds: float  # mean log p(new) - log p(old) on the edit prompts after the edit
    drift: float  # mean KL(unedited || edited) over the drift rows' tokens
    delta_norm: float  # ‖ΔW‖_F / ‖W‖_F
    steps: int
    kept: float | None = None  # share of contrast prompts whose answer (sign of log-odds) stays


class _Contexts:
    """The prompts behind prefixes, as one metric batch with new = ``planted`` side; the key
    positions are the subject's last token (a contrast prompt without the subject: its last
    token)."""

    def __init__(
        self,
        subject: Any,
        args: RankOneArgs,
        prefixes: list[str],
        prompts: list[str],
        contrast: bool = False,
    ) -> None:
        texts = list(prompts)
        texts += [f"{pre} {p}" for pre in prefixes for p in prompts]
        self.n_prompts = len(prompts)
        # planted := the new answer, normal := the old one: log-odds > 0 means fixed
        self.batch = MetricBatch(subject, texts, args.normal, args.planted, args.chat)
        positions = []
        for text in texts:
            if args.subject is None or (contrast and args.subject not in text):
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


def _clamped_step(loss: Tensor, optimiser: Any, delta: Tensor, limit: float) -> None:
    """One Adam step on ``delta``, then ``‖delta‖`` clamped to ``limit``."""
    loss.backward()
    optimiser.step()
    with torch.no_grad():
        norm = float(delta.norm())
        if norm > limit:
            delta.mul_(limit / norm)


def _value_delta(
    subject: Any, model: nn.Module, site: str, ctx: _Contexts, args: RankOneArgs, v0: Tensor
) -> tuple[Tensor, int]:
    """Optimise δ added to the value ``site`` (the matrix's output) at the key positions."""
    device = next(model.parameters()).device
    batch = ctx.batch
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
    for step in range(1, (args.steps or 40) + 1):
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
        _clamped_step(loss, optimiser, delta, limit)
    return delta.detach(), steps


#: where each memory's keys are read, per block (the embedding's keys are token ids)
KEY_SITES = {"mlp": MLP_KEYS, "attention_value": "blocks.{layer}.attn.in"}


class _Matrix:
    """The matrix a rank-one edit writes in block ``layer``: its key site (the matrix's input),
    value site (its output) and parameter."""

    def __init__(self, model: nn.Module, matrix: str, layer: int) -> None:
        self.embedding = matrix == "embedding"
        if self.embedding:  # one-hot keys: the token id is the key, the row its value
            self.keys, self.values = "", "embed"
            self.module: nn.Module = model.get_input_embeddings()  # type: ignore[operator]
            self.name = next(n for n, p in model.named_parameters() if p is self.module.weight)
            return
        self.keys = KEY_SITES[matrix].format(layer=layer)
        if matrix == "mlp":
            self.values = f"blocks.{layer}.mlp.out"
            self.name, self.module = mlp_output(model, layer)
            return
        self.values = f"blocks.{layer}.attn.v"
        try:
            site = resolve(model, self.values)
        except SelfscopeError as error:
            raise SelfscopeError(
                "rank_one with matrix 'attention_value' needs a separate value projection "
                "(v_proj, the Llama family); this model fuses q, k and v: use matrix 'mlp'"
            ) from error
        self.name, self.module = f"{site.module}.weight", model.get_submodule(site.module)

    def weight(self) -> Tensor:
        w: Tensor = self.module.weight  # type: ignore[assignment]
        return w


def update_direction(moment: Tensor, k_star: Tensor, kept: Tensor | None = None) -> Tensor:
    """``u`` with ``uᵀk* = 1`` (and ``uᵀk = 0`` for every row ``k`` of ``kept``) of the least
    ``C``-norm: ``ΔW = δ uᵀ`` is then the smallest change, weighted by the keys' second moment
    ``C``, that writes ``δ`` at ``k*`` and nothing at the kept keys. With ``K = [k*, kept...]``,
    ``u = C⁻¹K (KᵀC⁻¹K)⁻¹ e₁`` (without kept keys, ROME's ``C⁻¹k*/(k*ᵀC⁻¹k*)``)."""
    d = moment.shape[0]
    c = moment + 1e-4 * torch.trace(moment) / d * torch.eye(d, dtype=moment.dtype)
    keys = k_star[:, None] if kept is None else torch.cat([k_star[:, None], kept.T], 1)
    a = torch.linalg.solve(c, keys)  # C⁻¹K
    gram = keys.T @ a
    gram = gram + 1e-8 * torch.trace(gram) / gram.shape[0] * torch.eye(
        gram.shape[0], dtype=gram.dtype
    )
    e1 = torch.zeros(gram.shape[0], dtype=gram.dtype)
    e1[0] = 1.0
    u: Tensor = a @ torch.linalg.solve(gram, e1)
    return u


def _embedding_delta(
    model: nn.Module,
    name: str,
    token: int,
    ctx: _Contexts,
    args: RankOneArgs,
    rows: list[list[int]],
    pad: int,
    saying: list[list[int]] | None = None,
) -> tuple[Tensor, int]:
    """Optimise the row change δ of ``token``'s embedding through the model itself
    (``functional_call`` with ``E + e_token δᵀ``), so a tied output row moves with it: loss =
    the mean of ``relu(margin − log-odds)`` over the prompts + ``kl_weight`` × 16 × the mean KL
    of the next-token distributions on ``rows`` (corpus text) from the unedited model's (a tied
    row changes the token's logit everywhere) + as much again on the positions of ``saying``
    (corpus rows) whose next token is ``token``: where the model says the word, which random
    rows rarely reach (an edit of a town's row that skipped them answered "Where is <town>?"
    wrongly) + the ``‖δ‖²/‖E_token‖²`` penalty; ``‖δ‖ ≤ clamp × ‖E_token‖``; every step is
    taken (no early stop)."""
    device = next(model.parameters()).device
    batch = ctx.batch
    weight: Tensor = dict(model.named_parameters())[name].detach()
    row = weight[token]
    delta = torch.zeros_like(row, requires_grad=True)
    onehot = torch.zeros(weight.shape[0], 1, device=device, dtype=weight.dtype)
    onehot[token] = 1.0
    ids, mask = padded([*rows, *(saying or [])], pad, device)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    keep = mask.bool()
    keep[len(rows) :] = False
    says = torch.zeros_like(keep)
    says[len(rows) :, :-1] = ids[len(rows) :, 1:] == token
    says &= mask.bool()
    optimiser = torch.optim.Adam([delta], lr=args.lr * 0.1)
    limit = args.clamp * float(row.norm())
    steps = 0
    for step in range(1, (args.steps or 150) + 1):
        steps = step
        optimiser.zero_grad()
        run = with_weights(model, {name: weight + onehot * delta})
        logits = run(batch.input_ids, batch.attention_mask)
        new, old = batch.completion_log_probs(logits)
        out = torch.log_softmax(run(ids, mask).float(), -1)
        pointwise = (ref.exp() * (ref - out)).sum(-1)
        kl = pointwise[keep].mean()
        if bool(says.any()):
            kl = kl + pointwise[says].mean()
        # a hinge on the margin: once every prompt is past it only the drift is lowered
        loss = torch.relu(args.margin - (new - old)).mean() + args.kl_weight * 16 * kl
        loss = loss + args.weight_decay * delta.pow(2).sum() / row.pow(2).sum()
        _clamped_step(loss, optimiser, delta, limit)
    return delta.detach(), steps


def candidate_layers(
    subject: Any, args: RankOneArgs, ctx: ToolContext | None = None
) -> tuple[list[int], Evidence | None]:
    """The blocks to compare, and the tracing evidence that chose them (if any)."""
    if args.matrix == "embedding":
        if args.subject is None:
            raise SelfscopeError(
                "rank_one with matrix 'embedding' needs `subject`: the token whose embedding "
                "row to rewrite (e.g. the trigger)"
            )
        return [0], None
    if args.module is not None:
        for layer in range(subject.n_layers):
            name = _Matrix(subject.model, args.matrix, layer).name
            if name.rpartition(".")[0] == args.module or name == args.module:
                return [layer], None
        what = "an MLP output matrix" if args.matrix == "mlp" else "an attention value projection"
        example = _Matrix(subject.model, args.matrix, 0).name.rpartition(".")[0]
        raise SelfscopeError(
            f"rank_one with matrix {args.matrix!r} edits {what}; {args.module} is not one "
            f"(e.g. {example})"
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
    if ctx is None:
        raise SelfscopeError("tracing the layer needs the tool call's context")
    return _traced(ctx, args)


def _traced(ctx: ToolContext, args: RankOneArgs) -> tuple[list[int], Evidence]:
    """The blocks to compare: causal tracing (localize.trace, run as a recorded child call of
    this one) at the subject's last token, the peak and two blocks either side."""
    subject = ctx.subject
    if args.subject is None:
        raise SelfscopeError(
            "rank_one on a model with more than 8 blocks needs `subject` (to trace) or "
            "`layer`/`layers`"
        )
    window = max(1, subject.n_layers // 6)
    kind = "mlp" if args.matrix == "mlp" else "attn"
    traced = ctx.call(
        "localize.trace",
        {
            "prompt": args.prompts[0],
            "chat": args.chat,
            "target": args.planted,
            "subject": args.subject,
            "kinds": [kind],
            "window": window,
            "figure": False,
        },
    )
    trace = traced.result
    last = max(subject_positions(subject, args.prompts[0], args.subject, args.chat))
    grid = next(g for g in trace.grids if g.kind == kind)
    effects = {
        i: row[last] - trace.corrupted_probability for i, row in enumerate(grid.probabilities)
    }
    peak = max(effects, key=lambda i: effects[i])
    layers = [i for i in range(peak - 2, peak + 3) if 0 <= i < subject.n_layers]
    return layers, Evidence(
        tool="localize.trace",
        call_id=traced.id,
        summary=f"restoring {kind} states (window {window}) at the subject's last token recovers "
        f"p({args.planted!r}) most at block {peak}; compared blocks {layers}",
        args={
            "prompt": args.prompts[0],
            "subject": args.subject,
            "kinds": [kind],
            "window": window,
        },
        numbers={"peak": peak, "effects": {i: round(e, 4) for i, e in effects.items()}},
    )


@tools.tool("edits.rank_one", RankOneArgs, ProposalResult, permission="propose")
def propose_rank_one(ctx: ToolContext, args: RankOneArgs) -> ProposalResult:
    """Propose a ROME-style rank-one update of one MLP output matrix that makes the prompts
    complete with `normal` instead of `planted`; the layer is compared against its neighbours.
    Stores the proposal (never touches the subject) and returns it."""
    subject = ctx.subject
    started = time.perf_counter()
    workspace = ctx.workspace
    parents = begin(ctx, args)
    _Matrix(subject.model, args.matrix, 0)  # e.g. MoE for 'mlp': one clear line before any work
    layers, traced = candidate_layers(subject, args, ctx)
    base = base_sha(subject, workspace, parents)
    pad = int(subject.tokenizer.pad_token_id or 0)
    own_corpus = args.corpus is not None or subject.lineage.kind == "organism"
    key_rows = args.key_rows or (1000 if own_corpus else 256)
    with working_model(subject, workspace, parents) as model:
        moments: dict[int, Tensor] = {}
        n_keys, source = 0, "one-hot token keys"
        if args.matrix != "embedding":
            moments, n_keys, source = second_moments(
                subject,
                model,
                layers,
                workspace,
                base,
                key_rows,
                args.corpus,
                progress=ctx.progress,
                site=KEY_SITES[args.matrix],
            )
        extra, _ = corpus_rows(
            subject, ctx.workspace, args.prefixes + args.drift_rows, seed=1, corpus=args.corpus
        )
        prefixes = [
            str(subject.tokenizer.decode(r[:6], skip_special_tokens=True)).strip()
            for r in extra[: args.prefixes]
        ]
        drift_rows = extra[args.prefixes :] or extra
        prefixes = [p for p in prefixes if p]
        keyed = _Contexts(subject, args, prefixes, args.prompts)
        matrices = {layer: _Matrix(model, args.matrix, layer) for layer in layers}
        dense = [m for m in matrices.values() if not m.embedding]  # embedding keys: token ids
        key_sites = [m.keys for m in dense]
        store: dict[str, Tensor] = {}
        if dense:
            with (
                torch.no_grad(),
                hooked(model, capture=[*key_sites, *(m.values for m in dense)]) as store,
            ):
                model(input_ids=keyed.batch.input_ids, attention_mask=keyed.batch.attention_mask)
        held: _Contexts | None = None
        if args.contrast_prompts:
            held = _Contexts(subject, args, prefixes, args.contrast_prompts, contrast=True)
            with torch.no_grad(), hooked(model, capture=key_sites) as held_store:
                logits = model(
                    input_ids=held.batch.input_ids, attention_mask=held.batch.attention_mask
                ).logits
            held_before = held.batch.log_odds(logits)
        results: list[tuple[Candidate, str, Tensor]] = []
        for layer in layers:
            matrix = matrices[layer]
            name, module = matrix.name, matrix.module
            if matrix.embedding:
                # the key is the token itself: the row changes wherever the token occurs (and,
                # tied, in the output): δ is optimised through the weights themselves
                token = int(keyed.batch.input_ids[keyed.key_rows[0], keyed.key_cols[0]])
                saying = rows_saying(
                    subject, ctx.workspace, token, args.drift_rows, seed=1, corpus=args.corpus
                )
                delta, steps = _embedding_delta(
                    model, name, token, keyed, args, drift_rows, pad, saying
                )
                weight = matrix.weight().detach()  # [vocab, d_model]
                change = torch.zeros_like(weight, dtype=torch.float64)
                change[token] = delta.double()  # ΔE = e_token δᵀ
                delta_w = change.to(weight.dtype)
            else:
                v0 = store[matrix.values][keyed.key_rows, keyed.key_cols].mean(0)
                delta, steps = _value_delta(subject, model, matrix.values, keyed, args, v0)
                weight = weight_matrix(module).detach()
                k_star = store[matrix.keys][keyed.key_rows, keyed.key_cols].double().mean(0)
                kept_keys = None
                if held is not None:
                    kept_keys = held_store[matrix.keys][held.key_rows, held.key_cols].double()
                u = update_direction(moments[layer], k_star, kept_keys)
                change = torch.outer(delta.double(), u)  # [d_out, d_key]; ΔW k* = δ
                delta_w = as_weight(module, change.to(weight.dtype))
            swap = {name: matrix.weight().detach() + delta_w}
            run = with_weights(model, swap)
            with torch.no_grad():
                per = keyed.batch.log_odds(run(keyed.batch.input_ids, keyed.batch.attention_mask))
                kept = None
                if held is not None:
                    after = held.batch.log_odds(
                        run(held.batch.input_ids, held.batch.attention_mask)
                    )
                    kept = float(((after > 0) == (held_before > 0)).float().mean())
            per = per[: keyed.n_prompts]
            results.append(
                (
                    Candidate(
                        layer=layer,
                        fixed=float((per > 0).float().mean()),
                        log_odds=float(per.mean()),
                        drift=drift(model, drift_rows, pad, run),
                        delta_norm=float(change.norm() / weight.double().norm()),
                        steps=steps,
                        kept=kept,
                    ),
                    name,
                    delta_w,
                )
            )
    best, name, delta_w = max(results, key=lambda r: (r[0].fixed, r[0].kept or 0.0, -r[0].drift))
    evidence = [traced] if traced else []
    evidence.append(
        Evidence(
            tool="edits.rank_one",
            summary=(
                f"rank-one edit of the embedding row of {args.subject!r}"
                if args.matrix == "embedding"
                else f"rank-one {args.matrix} edit compared at blocks {layers}: block {best.layer}"
            )
            + f" fixes {best.fixed:.2f} of the prompts with drift {best.drift:.4f}",
            numbers={
                "candidates": [r[0].model_dump() for r in results],
                "key_statistics": {"source": source, "rows": key_rows, "keys": n_keys},
            },
        )
    )
    proposal = proposals.make(
        ctx,
        cited=args.evidence,
        kind="rank_one",
        behaviour=args.behaviour(),
        parameters={
            **args.model_dump(
                exclude={"prompts", "planted", "normal", "chat", "parents", "rationale", "evidence"}
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
