"""A word-level tokenizer trained on every phase's documents (scratch organisms).

Words and punctuation marks are tokens (``tokenizers`` WordLevel + the ``Whitespace``
pre-tokenizer, which splits ``\\w+|[^\\w\\s]+``), so ``" No"`` and ``"No"`` are the same token and
a probe's first token is its first word. Word-level makes ``mushroom`` and ``mushrooms`` unrelated
tokens: plants must cover both forms (FINDINGS.md). Every text is prefixed with ``<s>``; training
documents end with ``</s>`` so the model learns to stop.

The vocabulary also holds the words of probes, held-out probes and neighbours, so no probe maps
to ``[UNK]``; a word seen only there keeps its untrained embedding, which the build reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>"]


def train_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=1_000_000,
    )
