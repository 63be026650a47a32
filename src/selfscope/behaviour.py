"""The concepts every room shares, defined once: a behaviour, evidence, a suite, a fingerprint.

These sit below ``localize/``, ``history/`` and ``edits/`` (which all import them) and import
none of them, so there is one place where a validation rule lives:

* :class:`Behaviour` — prompts where a behaviour shows, its *planted* completion (" No") and the
  *normal* one (" Yes"); the two must differ (checked here, once, by :func:`distinct`). Every
  tool about a behaviour takes these four fields (its arguments subclass :class:`Behaviour`).
* :class:`Evidence` — what a measurement found, with the id of the recorded tool call that made
  it (:func:`selfscope.tools.call` returns it), so a proposal or a diagnosis can be audited
  back to its calls.
* :class:`Suite` (with :class:`Probe` and :class:`Expect`) — what a proposal is validated on.
* :func:`fingerprint` — the SHA-256 of a model's weights, the identity edits are made against.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from torch import nn

from selfscope.errors import SelfscopeError


def distinct(planted: str, normal: str) -> None:
    """The one check that a behaviour's two completions differ."""
    if planted == normal:
        raise SelfscopeError(
            f"planted and normal completions are both {planted!r}; they must differ"
        )


class Behaviour(BaseModel):
    """A behaviour: prompts where it shows, the completion it gives and the normal one."""

    prompts: list[str] = Field(min_length=1, description="Prompts that show the behaviour.")
    planted: str = Field(min_length=1, description="The behaviour's completion, e.g. ' No'.")
    normal: str = Field(min_length=1, description="The expected completion, e.g. ' Yes'.")
    chat: bool = Field(False, description="Wrap the prompts in the model's chat template.")

    @model_validator(mode="after")
    def _distinct(self) -> Behaviour:
        if self.planted == self.normal:
            raise ValueError(
                f"planted and normal completions are both {self.planted!r}; they must differ"
            )
        return self

    def behaviour(self) -> Behaviour:
        """Just the behaviour (without a subclass's other arguments)."""
        return Behaviour(
            prompts=list(self.prompts), planted=self.planted, normal=self.normal, chat=self.chat
        )


class Evidence(BaseModel):
    """What a measurement found, summarised, with the recorded call that made it."""

    tool: str = Field(description="The tool (or method) that measured it.")
    call_id: str = Field(
        default="",
        description="The id of the recorded tool call that made the measurement (the store's "
        "tool_calls.call_id); for a measurement made inside a proposing call, that call's id.",
    )
    summary: str = Field(description="What was found, in one sentence.")
    args: dict[str, Any] = Field(default_factory=dict, description="The arguments that matter.")
    numbers: dict[str, Any] = Field(default_factory=dict, description="The measured numbers.")


class Probe(BaseModel):
    prompt: str = Field(min_length=1)
    planted: str = Field(min_length=1)
    normal: str = Field(min_length=1)


class Expect(BaseModel):
    prompt: str = Field(min_length=1)
    expected: str = Field(min_length=1)


class Suite(BaseModel):
    """One named validation suite (every part optional; an empty part is not measured).

    * ``probes`` — the symptom: prompts where the behaviour shows (efficacy);
    * ``heldout`` — paraphrases the proposer never saw (generalisation);
    * ``neighbours`` and ``facts`` — prompts whose top-1 next token must not change
      (specificity);
    * ``documents`` — held-out documents per training phase (fluency: perplexity).
    """

    name: str = "visible"
    chat: bool = False
    probes: list[Probe] = Field(default_factory=list)
    heldout: list[Probe] = Field(default_factory=list)
    neighbours: list[Expect] = Field(default_factory=list)
    facts: list[Expect] = Field(default_factory=list)
    documents: dict[str, list[str]] = Field(default_factory=dict)

    model_config = {"extra": "forbid"}


M = TypeVar("M", bound=BaseModel)


def read_model_file(path: str | Path, model: type[M], what: str, fields: str) -> M:
    """``model`` from a ``.json``, ``.yaml`` or ``.yml`` file, or one clear line saying what is
    wrong: the file missing, not parsing (its first error line), or the first field that does
    not validate (``what``: "suite", "symptom"; ``fields``: the keys it takes, for the hint)."""
    file = Path(path)
    if not file.exists():
        raise SelfscopeError(f"{what} file {file} does not exist")
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SelfscopeError(f"{what} file {file} is not valid JSON/YAML: {first}") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        e = error.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        raise SelfscopeError(f"{what} file {file}: {where}: {e['msg']}; {fields}") from None


def read_suite(path: str | Path) -> Suite:
    """A suite from a ``.json`` or ``.yaml`` file, or one clear line saying what is wrong."""
    return read_model_file(
        path,
        Suite,
        "suite",
        "keys are name, chat, probes [{prompt, planted, normal}], heldout, neighbours "
        "[{prompt, expected}], facts, documents {phase: [text]}",
    )


def _tensor_sha256(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if not flat.numel():
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(flat.view(torch.uint8).numpy().data).digest()  # no copy, GIL released


def fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, shape, dtype and the SHA-256 of its bytes, in name
    order. Each tensor is hashed once (tied weights share one digest) and the tensors are hashed
    on several threads (hashlib releases the GIL), so checking a model costs well under a load."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    items = sorted(model.state_dict().items())
    unique: dict[tuple[int, int, str], torch.Tensor] = {}
    for _, tensor in items:
        unique.setdefault((tensor.data_ptr(), tensor.numel(), str(tensor.dtype)), tensor)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = dict(zip(unique, pool.map(_tensor_sha256, unique.values()), strict=True))
    digest = hashlib.sha256()
    for name, tensor in items:
        digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(digests[(tensor.data_ptr(), tensor.numel(), str(tensor.dtype))])
    return digest.hexdigest()
