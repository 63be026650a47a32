"""Which token a completion starts with, for any tokenizer.

A behaviour is measured on the first token of a completion after a prompt. Tokenising the
completion alone is wrong for byte-level BPE (a leading space merges into the word: ``" No"`` is
one token after ``"A:"``), so: tokenise prompt + completion and take the first token past the
prompt's own tokens; only when the prompt's tokens are not a prefix of the joint tokenisation
(a merge across the boundary) fall back to the completion alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfscope.errors import SelfscopeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def first_token_id(tokenizer: PreTrainedTokenizerBase, text: str, completion: str) -> int:
    """The id of ``completion``'s first token when it follows the model input ``text``."""
    head = tokenizer(text)["input_ids"]
    full = tokenizer(text + completion)["input_ids"]
    if len(full) > len(head) and full[: len(head)] == head:
        return int(full[len(head)])
    alone = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not alone:
        raise SelfscopeError(f"completion {completion!r} has no tokens")
    return int(alone[0])
