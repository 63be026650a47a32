"""``weights.stats`` and ``weights.diff``: what the parameters are, and what training changed.

``weights.diff`` compares the subject with another version of the same architecture — by
default its parent checkpoint (for an organism's fine-tuned phase, the pretrained one; for a
folder with a declared lineage, the declared parent), loaded in the call's workspace. For
every weight matrix it reports the relative change ‖ΔW‖_F / ‖W_parent‖_F and the rank needed
to hold 90% of ‖ΔW‖_F² (from the singular values of ΔW): a fine-tune that wrote a few
directions into a module shows a large relative change at a low rank. Modules are ranked by
relative change; this is the first answer to "which weights did fine-tuning move?".
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from selfscope.errors import SelfscopeError
from selfscope.subject.checkpoints import load_parent
from selfscope.tools import ToolContext, tool


class StatsArgs(BaseModel):
    modules: list[str] = Field(default_factory=list, description="Parameter names (all if empty).")
    singular_values: int = Field(3, ge=1, le=32, description="Top singular values per matrix.")


class ParamStats(BaseModel):
    name: str
    shape: list[int]
    frobenius: float
    spectral: float | None  # largest singular value (matrices only)
    top_singular_values: list[float]
    sparsity: float  # share of exact zeros


class StatsResult(BaseModel):
    parameters: list[ParamStats]
    total_parameters: int


def _named(model: torch.nn.Module, only: list[str]) -> dict[str, torch.Tensor]:
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    if only:
        unknown = [n for n in only if n not in params]
        if unknown:
            raise SelfscopeError(
                f"unknown parameter {unknown[0]!r}; e.g. {', '.join(list(params)[:4])}, ..."
            )
        return {n: params[n] for n in only}
    return params


@tool("weights.stats", StatsArgs, StatsResult)
def weight_stats(ctx: ToolContext, args: StatsArgs) -> StatsResult:
    """Per parameter: shape, Frobenius norm, spectral norm and top singular values (matrices),
    and sparsity (share of exact zeros)."""
    subject = ctx.subject
    out = []
    with torch.no_grad():
        for name, p in _named(subject.model, args.modules).items():
            w = p.detach().float()
            singular: list[float] = []
            if w.ndim == 2:
                singular = torch.linalg.svdvals(w)[: args.singular_values].tolist()
            out.append(
                ParamStats(
                    name=name,
                    shape=list(w.shape),
                    frobenius=float(torch.linalg.norm(w)),
                    spectral=singular[0] if singular else None,
                    top_singular_values=singular,
                    sparsity=float((w == 0).float().mean()),
                )
            )
    total = sum(p.numel() for p in subject.model.parameters())
    return StatsResult(parameters=out, total_parameters=total)


class DiffArgs(BaseModel):
    against: str | None = Field(
        None, description="A model source to compare with (default: the subject's parent)."
    )
    top_k: int = Field(10, ge=1, le=1000)
    energy: float = Field(0.9, gt=0, le=1, description="Share of ||dW||^2 the rank must hold.")


class ModuleDiff(BaseModel):
    name: str
    shape: list[int]
    relative_change: float  # ||dW|| / ||W_against||
    delta_norm: float
    rank_for_energy: int | None  # matrices only


class DiffResult(BaseModel):
    against: str
    modules: list[ModuleDiff]  # sorted by relative change, largest first
    top: list[str]
    unchanged: int
    caveats: list[str] = Field(
        default_factory=list,
        description="What the subject's lineage does not record that this answer relied on; "
        "empty when nothing was missing.",
    )


@tool("weights.diff", DiffArgs, DiffResult)
def weight_diff(ctx: ToolContext, args: DiffArgs) -> DiffResult:
    """Per weight: the relative change ||dW||/||W|| against another version (default: the
    subject's parent checkpoint), and the rank holding 90% of ||dW||^2; modules ranked by
    relative change."""
    subject = ctx.subject
    against, parent = load_parent(subject, ctx.workspace, against=args.against)
    other = parent.model.state_dict()
    mine = subject.model.state_dict()
    if mine.keys() != other.keys():
        raise SelfscopeError(f"{against} has other parameters than {subject.source}")
    rows = []
    with torch.no_grad():
        for name, w in mine.items():
            base = other[name].float()
            if base.shape != w.shape:
                raise SelfscopeError(f"{name}: shape {list(w.shape)} vs {list(base.shape)}")
            delta = w.float() - base
            norm = float(torch.linalg.norm(delta))
            rank = None
            if delta.ndim == 2 and norm > 0:
                energy = torch.linalg.svdvals(delta) ** 2
                share = energy.cumsum(0) / energy.sum()
                rank = int((share < args.energy - 1e-9).sum()) + 1
            rel = norm / max(float(torch.linalg.norm(base)), 1e-12)
            rows.append(
                ModuleDiff(
                    name=name,
                    shape=list(w.shape),
                    relative_change=rel,
                    delta_norm=norm,
                    rank_for_energy=rank,
                )
            )
    rows.sort(key=lambda r: r.relative_change, reverse=True)
    return DiffResult(
        against=against,
        modules=rows,
        top=[r.name for r in rows[: args.top_k]],
        unchanged=sum(r.delta_norm == 0 for r in rows),
        caveats=(
            [] if args.against else subject.lineage.caveats("start", phases=[subject.lineage.phase])
        ),
    )
