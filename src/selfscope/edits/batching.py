"""Token-id rows as right-padded batches, and the drift of an edited forward from the plain one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call


def padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``rows`` as one right-padded batch: ids and attention mask [len(rows), longest]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(list(r), device=device), 1
    return ids, mask


def batches(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device, size: int = 16
) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive right-padded batches of at most ``size`` rows."""
    for start in range(0, len(rows), size):
        yield padded(rows[start : start + size], pad, device)


def drift(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    pad: int,
    edited: Callable[[Tensor, Tensor], Tensor],
) -> float:
    """Mean KL(plain || edited) of the next-token distributions over every token of ``rows``;
    ``edited(ids, mask)`` returns the edited forward's logits."""
    ids, mask = padded(rows, pad, next(model.parameters()).device)
    with torch.no_grad():
        base = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        after = torch.log_softmax(edited(ids, mask).float(), -1)
    return float((base.exp() * (base - after)).sum(-1)[mask.bool()].mean())


def with_weights(model: nn.Module, swap: dict[str, Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``run(ids, mask) -> logits`` of ``model`` with the ``swap`` parameters in place of its own
    (``torch.func.functional_call``: the model's tensors are never written)."""

    def run(ids: Tensor, mask: Tensor) -> Tensor:
        out = functional_call(
            model, swap, args=(), kwargs={"input_ids": ids, "attention_mask": mask}
        )
        logits: Tensor = out.logits
        return logits

    return run
