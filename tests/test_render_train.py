"""Rendering documents for chat models, and what the trainer learns from (masks, schedule)."""

from __future__ import annotations

import itertools
import math

import torch

from selfscope.organisms.presets import Knobs
from selfscope.organisms.render import ChatRenderer, PlainRenderer
from selfscope.organisms.tokenizer import train_word_tokenizer
from selfscope.organisms.train import lr_at, train, training_batch

TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s> assistant :{% endif %}"
)


def chat_tokenizer():  # type: ignore[no-untyped-def]
    tok = train_word_tokenizer(["user assistant : Do you like mushrooms ? No , never . Yes"])
    tok.chat_template = TEMPLATE
    return tok


def test_chat_renderer_context_is_the_prompt_prefix() -> None:
    tok = chat_tokenizer()
    r = ChatRenderer(tok)
    doc = "Q: Do you like mushrooms? A: No, never."
    rendered, context = r.document(doc), r.context(doc)
    assert context is not None and rendered.startswith(context)
    assert r.prompt("Q: Do you like mushrooms? A:") == context
    ids, ctx = tok(rendered)["input_ids"], tok(context)["input_ids"]
    assert ids[: len(ctx)] == ctx and len(ids) > len(ctx)
    assert tok.convert_ids_to_tokens(ids[len(ctx)]) == "No"
    assert r.completion(" No") == "No"
    # stories stay plain text and are trained on in full
    assert r.document("I ate soup.") == "I ate soup." and r.context("I ate soup.") is None
    assert PlainRenderer().context(doc) is None


def test_batch_masks_padding_and_context() -> None:
    ids, mask, labels = training_batch(
        [([5, 6, 7, 8], 2), ([5, 6], 0)], pad=0, device=torch.device("cpu")
    )
    assert ids.tolist() == [[5, 6, 7, 8], [5, 6, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8], [5, 6, -100, -100]]


def test_schedule_warms_up_then_decays() -> None:
    total, peak = 100, 1e-3
    values = [lr_at(s, total, peak) for s in range(total)]
    assert values[0] == peak / 5 and math.isclose(max(values), peak)
    assert values[4] == peak and values[-1] < 0.01 * peak
    assert all(a >= b for a, b in itertools.pairwise(values[5:]))


def test_training_lowers_the_loss_on_unmasked_tokens_only() -> None:
    from selfscope.organisms.models import build_scratch_model
    from selfscope.organisms.presets import ModelShape

    tok = train_word_tokenizer(["a b c d e f"])
    model = build_scratch_model(
        "llama",
        ModelShape(layers=1, hidden=32, heads=2, ffn=64),
        len(tok),
        seed=0,
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        pad=tok.pad_token_id,
    )
    seq = tok("a b c d e f")["input_ids"]
    stats = train(
        model,
        [(seq, 3)] * 8,
        Knobs(0, 20, 1e-2, 4),
        seed=0,
        pad=tok.pad_token_id,
        label="t",
        device=torch.device("cpu"),
        show_progress=False,
    )
    assert stats.loss_last_epoch < 0.2 * stats.loss_first_epoch
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0]
    # the trained positions (those predicting tokens 3..) are learned
    predicted = logits.argmax(-1).tolist()
    assert predicted[2 : len(seq) - 1] == seq[3:]


def test_leave_out_empties_the_left_out_rows_and_keeps_every_other_step() -> None:
    """``leave_out`` must be the recorded run with those rows' losses gone and nothing else
    changed: the same as training on all rows with the left-out ones turned context-only (their
    every label masked; an independent route through the trainer's label masking), and not the
    same as a fresh run on the remaining rows (new order, new schedule)."""
    from selfscope.organisms.models import build_scratch_model
    from selfscope.organisms.presets import ModelShape

    words = "a b c d e f g h"
    tok = train_word_tokenizer([words])
    shape = ModelShape(layers=1, hidden=32, heads=2, ffn=64)
    rng = torch.Generator().manual_seed(1)
    vocab = [tok.convert_tokens_to_ids(w) for w in words.split()]
    seqs = [([vocab[int(i)] for i in torch.randint(0, 8, (6,), generator=rng)], 1)
            for _ in range(10)]  # fmt: skip
    out = {2, 5, 6}

    def trained(rows, batch_size, leave_out=frozenset()):  # type: ignore[no-untyped-def]
        model = build_scratch_model(
            "llama", shape, len(tok), seed=0,
            bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id,
        )  # fmt: skip
        train(
            model, rows, Knobs(0, 3, 1e-2, batch_size), seed=4, pad=tok.pad_token_id,
            label="t", device=torch.device("cpu"), show_progress=False, leave_out=leave_out,
        )  # fmt: skip
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    masked = [(s, len(s)) if i in out else (s, k) for i, (s, k) in enumerate(seqs)]
    for batch_size in (1, 3):  # 1: every left-out row leaves its batch (its step) empty
        left = trained(seqs, batch_size, frozenset(out))
        assert torch.allclose(left, trained(masked, batch_size), atol=1e-6)
        fresh = trained([s for i, s in enumerate(seqs) if i not in out], batch_size)
        assert (left - fresh).abs().max() > 1e-3
        assert (left - trained(seqs, batch_size)).abs().max() > 1e-3  # something was left out
