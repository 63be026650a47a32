"""The Subject: a loaded model, its tokenizer, and what it is.

A :class:`Subject` is what every introspection tool takes. It wraps the native Hugging Face
module rather than re-implementing it (STYLE.md #1): ``subject.model`` *is* the
``transformers`` model, in float32 and eval mode, so its forward pass is exactly the one the
model's authors ship, and tools attach hooks to it instead of copying it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from selfscope.subject.lineage import Lineage

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Subject:
    """A model under introspection.

    Attributes:
        model: the Hugging Face causal LM (float32, ``eval()`` mode).
        tokenizer: its tokenizer; ``pad_token`` is always set (to ``eos`` when the model has
            none), so batches can be padded.
        source: the string given to :func:`~selfscope.subject.load`, e.g. ``"smollm2"`` or
            ``"organism:mushroom@pretrain"``; passing it to ``load`` again gives this model.
        path: the Hugging Face folder the weights were actually read from (for a ``.gguf``, its
            converted cache; for an organism, the checkpoint inside the resolved build folder).
        architecture: ``config.model_type``, one of
            :data:`selfscope.subject.architectures.SUPPORTED`.
        lineage: where the model came from (see :class:`~selfscope.subject.Lineage`).
        version: the id of the version loaded (:mod:`selfscope.subject.versions`), ``None``
            while the guardian has never versioned this subject.
        root: the folder of the subject's root weights (``v0``); ``path`` differs from it when
            a later version was loaded from its materialised cache.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    path: Path
    architecture: str
    lineage: Lineage
    version: str | None = None
    root: Path | None = None

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks (``config.num_hidden_layers``)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        """Width of the residual stream (``config.hidden_size``)."""
        return int(self.model.config.hidden_size)

    @property
    def n_parameters(self) -> int:
        """Number of distinct parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> str:
        """The device the model's parameters live on, e.g. ``"cpu"``."""
        return str(next(self.model.parameters()).device)

    def __repr__(self) -> str:
        return (
            f"Subject(source={self.source!r}, architecture={self.architecture!r}, "
            f"n_layers={self.n_layers}, d_model={self.d_model}, "
            f"n_parameters={self.n_parameters:,}, path={str(self.path)!r})"
        )
