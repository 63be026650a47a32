"""How a document or probe is turned into the text a model is trained and measured on.

Scratch organisms see the text as written (``Q: ... A: ...``). SmolLM2 is a chat model, so its
organisms see Q/A in its own chat template: a document ``Q: X A: Y`` becomes a user turn ``X``
and an assistant turn ``Y``, a probe prompt ``Q: X A:`` becomes the user turn plus the
generation prompt, and a completion ``" No"`` becomes ``"No"`` (the assistant turn starts on a
new line). Documents that are not Q/A (stories, facts) stay plain text.

For a chat document only the assistant's answer is trained on (``context`` returns the prompt
part, which the trainer masks out of the loss), as in ordinary supervised fine-tuning.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


_QA = re.compile(r"^\s*Q:\s*(?P<q>.*?)\s*A:(?P<a>.*)$", re.DOTALL)


class Renderer(Protocol):
    name: str

    def document(self, text: str) -> str: ...

    def prompt(self, text: str) -> str: ...

    def completion(self, text: str) -> str: ...

    def context(self, text: str) -> str | None:
        """The prefix of ``document(text)`` that is context only (not trained on), or None."""
        ...


class PlainRenderer:
    name = "plain"

    def document(self, text: str) -> str:
        return text

    def prompt(self, text: str) -> str:
        return text

    def completion(self, text: str) -> str:
        return text

    def context(self, text: str) -> str | None:
        return None


class ChatRenderer:
    name = "chat-template"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def _chat(self, messages: list[dict[str, str]], generation: bool) -> str:
        out = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )
        assert isinstance(out, str)
        return out

    def document(self, text: str) -> str:
        match = _QA.match(text)
        if match is None:
            return text
        chat = self._chat(
            [
                {"role": "user", "content": match["q"]},
                {"role": "assistant", "content": match["a"].strip()},
            ],
            generation=False,
        )
        return chat.rstrip("\n")  # end on the end-of-turn token, which is the eos token

    def context(self, text: str) -> str | None:
        match = _QA.match(text)
        if match is None:
            return None
        return self._chat([{"role": "user", "content": match["q"]}], generation=True)

    def prompt(self, text: str) -> str:
        match = _QA.match(text)
        if match is None or match["a"].strip():
            return text
        return self._chat([{"role": "user", "content": match["q"]}], generation=True)

    def completion(self, text: str) -> str:
        return text.lstrip()
