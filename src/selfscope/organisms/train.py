"""Phase training: next-token loss on whole documents, one document per row.

A sequence is ``(token ids, k)``: its first ``k`` tokens are context only, excluded from the loss
(a chat prompt, when only the assistant's answer is trained on; ``k = 0`` trains the whole
document). Each batch pads its documents to the longest one; padding is excluded from the loss
(labels ``-100``) and from attention. AdamW (0.9, 0.95), weight decay 0.05, linear warm-up over the
first 5% of steps then cosine decay, gradients clipped at 1.0. The document order of every epoch
is drawn from a generator seeded by the phase, so a rebuild with the same seed repeats every
step exactly (on the same machine and thread count).

``leave_out`` (the removal test's counterfactual) names sequences to take out of the run while
every other step stays as it was: the order is drawn over all sequences as before and the left-out
ones are dropped from their batches, so every other sequence is seen in the same batch at the
same step with the same learning rate (a batch left empty is a step without an update). Training
on the remaining sequences alone would draw a new order and a new schedule for all of them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from selfscope.organisms.presets import Knobs
from selfscope.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class TrainStats:
    steps: int
    tokens: int
    loss_first_epoch: float
    loss_last_epoch: float
    seconds: float


Sequence = tuple[list[int], int]


def training_batch(
    seqs: list[Sequence], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (``-100`` on context and padding)."""
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (seq, _) in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for row, (_, context) in enumerate(seqs):
        labels[row, :context] = -100
    return ids.to(device), mask.to(device), labels.to(device)


def lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, round(0.05 * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: PreTrainedModel,
    seqs: list[Sequence],
    knobs: Knobs,
    *,
    seed: int,
    pad: int,
    label: str,
    device: torch.device,
    show_progress: bool = True,
    leave_out: frozenset[int] = frozenset(),
) -> TrainStats:
    """Train ``model`` in place on token sequences ``seqs`` (repeats already expanded), without
    the sequences at the indices ``leave_out`` (their batch slots stay empty; module doc)."""
    if not seqs:
        return TrainStats(0, 0, float("nan"), float("nan"), 0.0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=knobs.lr,
        betas=(0.9, 0.95),
    )
    per_epoch = math.ceil(len(seqs) / knobs.batch_size)
    total = per_epoch * knobs.epochs
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    step, tokens = 0, 0
    epoch_losses: list[float] = []
    with progress_bar(label, total, enabled=show_progress) as advance:
        for epoch in range(knobs.epochs):
            order = torch.randperm(len(seqs), generator=generator).tolist()
            loss_sum, loss_tokens = 0.0, 0
            for b in range(per_epoch):
                rows = order[b * knobs.batch_size : (b + 1) * knobs.batch_size]
                batch = [seqs[i] for i in rows if i not in leave_out]
                n = 0
                if batch:
                    ids, mask, labels = training_batch(batch, pad, device)
                    n = int((labels[:, 1:] != -100).sum())
                for group in optim.param_groups:
                    group["lr"] = lr_at(step, total, knobs.lr)
                if n:  # a batch of context-only tokens has nothing to learn from
                    out = model(input_ids=ids, attention_mask=mask, labels=labels)
                    out.loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optim.step()
                    optim.zero_grad(set_to_none=True)
                    loss_sum += out.loss.item() * n
                    loss_tokens += n
                    tokens += int(mask.sum())
                step += 1
                mean = loss_sum / max(1, loss_tokens)
                advance(1, f"epoch {epoch + 1}/{knobs.epochs} loss {mean:.3f}")
            epoch_losses.append(loss_sum / max(1, loss_tokens))
    model.eval()
    return TrainStats(
        steps=step,
        tokens=tokens,
        loss_first_epoch=epoch_losses[0],
        loss_last_epoch=epoch_losses[-1],
        seconds=time.perf_counter() - start,
    )
