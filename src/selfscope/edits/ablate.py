"""``edits.ablate``: remove given attention heads or MLP neurons by editing weights.

Zero-ablating head ``h`` of block ``i`` zeroes the columns of the attention output projection
that read that head (``o_proj[:, h·d_head:(h+1)·d_head]``), so the head writes nothing; zeroing
neuron ``n`` of block ``i`` zeroes column ``n`` of the MLP output matrix (``down_proj[:, n]``).
Both are exactly the activation ablations of :mod:`selfscope.subject.hooks` turned into weights
(``tests/test_edits.py`` checks the edited copy against the hooked forward).

Mean ablation replaces the component's output by its mean over ``reference_rows`` corpus rows
(every token): the weights are zeroed as above and the mean output — a constant vector — is
added back. A constant needs a bias; where the output projection has one it is folded in, else
(Llama-family models have none) it is stored as a runtime intervention at
``blocks.{i}.attn.out`` / ``blocks.{i}.mlp.out`` that the sandbox applies with a hook.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from selfscope import tools
from selfscope.behaviour import Evidence
from selfscope.edits import proposal as proposals
from selfscope.edits.batching import batches
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
from selfscope.edits.keys import corpus_rows
from selfscope.edits.proposal import RUNTIME
from selfscope.edits.sandbox import add_delta, runtime_of, runtime_patches
from selfscope.errors import SelfscopeError
from selfscope.localize.metric import MetricBatch
from selfscope.subject.adapters import resolve
from selfscope.subject.hooks import hooked
from selfscope.tools import ToolContext

_UNIT = re.compile(r"^(\d+)\.(\d+)$")


class AblateArgs(ProposeArgs):
    heads: list[str] = Field(default_factory=list, description="Heads as 'block.head', e.g. '2.1'.")
    neurons: list[str] = Field(
        default_factory=list, description="MLP neurons as 'block.neuron', e.g. '1.37'."
    )
    mode: Literal["zero", "mean"] = Field("zero", description="Zero or mean ablation.")
    reference_rows: int = Field(64, ge=1, description="Corpus rows the means are taken over.")


def _units(subject: Any, items: list[str], what: str, size: int) -> list[tuple[int, int]]:
    out = []
    for item in items:
        match = _UNIT.match(item)
        if not match:
            raise SelfscopeError(f"{what} {item!r}: write 'block.index', e.g. '1.3'")
        block, index = int(match[1]), int(match[2])
        check_layer(subject, block)
        if not 0 <= index < size:
            raise SelfscopeError(f"{what} {item!r}: index out of range, {what}s are 0..{size - 1}")
        out.append((block, index))
    return list(dict.fromkeys(out))


def _means(
    subject: Any, model: nn.Module, sites: list[str], rows: list[list[int]]
) -> dict[str, Tensor]:
    pad = int(subject.tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    count = 0
    for ids, mask in batches(rows, pad, device):
        with torch.no_grad(), hooked(model, capture=sites) as store:
            model(input_ids=ids, attention_mask=mask)
        for site in sites:
            part = store[site][mask.bool()].double().sum(0)
            sums[site] = part if site not in sums else sums[site] + part
        count += int(mask.sum())
    return {site: (s / count).float() for site, s in sums.items()}


@tools.tool("edits.ablate", AblateArgs, ProposalResult, permission="propose")
def propose_ablate(ctx: ToolContext, args: AblateArgs) -> ProposalResult:
    """Propose zero- or mean-ablating attention heads ('block.head') and MLP neurons
    ('block.neuron') by editing the output projections' weights (a mean goes into a bias, or a
    runtime intervention where the architecture has none). Stores the proposal."""
    subject = ctx.subject
    started = time.perf_counter()
    if not args.heads and not args.neurons:
        raise SelfscopeError(
            "give heads ('block.head') or neurons ('block.neuron') to ablate, e.g. the top "
            "components of localize.attribution_patching"
        )
    workspace = ctx.workspace
    parents = begin(ctx, args)
    config: Any = subject.model.config
    n_heads = int(config.num_attention_heads)
    # o_proj reads n_heads x head_dim columns (Qwen3: head_dim is not d_model / n_heads)
    d_head = int(getattr(config, "head_dim", None) or subject.d_model // n_heads)
    with working_model(subject, workspace, parents) as model:
        heads = _units(subject, args.heads, "head", n_heads)
        width = 0
        if args.neurons:
            _, module0 = mlp_output(model, 0)
            width = weight_matrix(module0).shape[1]
        neurons = _units(subject, args.neurons, "neuron", width)
        delta: dict[str, Tensor] = {}
        biases: dict[str, Tensor] = {}  # site or bias parameter -> constant to add
        sites = sorted(
            {f"blocks.{b}.attn.heads" for b, _ in heads}
            | {f"blocks.{b}.mlp.neurons" for b, _ in neurons}
        )
        means = {}
        if args.mode == "mean":
            rows, _ = corpus_rows(subject, ctx.workspace, args.reference_rows, seed=2)
            means = _means(subject, model, sites, rows)
        for block, head in heads:
            site = resolve(model, f"blocks.{block}.attn.heads")
            module = model.get_submodule(site.module)
            w = weight_matrix(module).detach()
            cols = slice(head * d_head, (head + 1) * d_head)
            change = torch.zeros_like(w)
            change[:, cols] = -w[:, cols]
            name = f"{site.module}.weight"
            delta[name] = delta.get(name, 0) + as_weight(module, change)
            if args.mode == "mean":
                mean = means[f"blocks.{block}.attn.heads"].reshape(n_heads, d_head)[head]
                _add_constant(
                    model,
                    biases,
                    module,
                    site.module,
                    f"blocks.{block}.attn.out",
                    w[:, cols] @ mean,
                )
        for block, neuron in neurons:
            name, module = mlp_output(model, block)
            w = weight_matrix(module).detach()
            change = torch.zeros_like(w)
            change[:, neuron] = -w[:, neuron]
            delta[name] = delta.get(name, 0) + as_weight(module, change)
            if args.mode == "mean":
                mean = means[f"blocks.{block}.mlp.neurons"][neuron]
                _add_constant(
                    model,
                    biases,
                    module,
                    name.rpartition(".")[0],
                    f"blocks.{block}.mlp.out",
                    w[:, neuron] * mean,
                )
        delta.update(biases)
        batch = MetricBatch(subject, args.prompts, args.planted, args.normal, args.chat)
        trial = copy.deepcopy(model)
        add_delta(trial, delta)
        with hooked(trial, patch=runtime_patches(trial, runtime_of(delta))):
            after = batch.measure(trial)
        before = batch.measure(model)
    proposal = proposals.make(
        ctx,
        cited=args.evidence,
        kind="ablate",
        behaviour=args.behaviour(),
        parameters={"heads": args.heads, "neurons": args.neurons, "mode": args.mode},
        delta=delta,
        rationale=args.rationale
        or f"{args.mode}-ablate {len(heads)} heads and {len(neurons)} neurons that carry the "
        "behaviour",
        evidence=[
            Evidence(
                tool="edits.ablate",
                summary=f"on the prompts: log-odds {before.log_odds:.2f} -> {after.log_odds:.2f}, "
                f"rate {before.rate:.2f} -> {after.rate:.2f}",
                numbers={"before": before.log_odds, "after": after.log_odds},
            )
        ],
        started=started,
        parents=parents,
        base_sha256=base_sha(subject, workspace, parents),
    )
    return ProposalResult(proposal=proposal)


def _add_constant(
    model: nn.Module, out: dict[str, Tensor], module: nn.Module, path: str, site: str, value: Tensor
) -> None:
    """Add constant ``value`` [d_model] to ``module``'s output: into its bias when it has one,
    else as a runtime vector at ``site``."""
    bias = getattr(module, "bias", None)
    key = f"{path}.bias" if bias is not None else f"{RUNTIME}{site}"
    out[key] = out.get(key, torch.zeros_like(value)) + value
