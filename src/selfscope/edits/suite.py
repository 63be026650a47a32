"""Validation suites: what a proposal is measured on, passed in by the caller.

A suite holds the four things an edit's side effects are judged by (the measures of the editing
literature: ROME's efficacy / paraphrase / neighbourhood scores, plus fluency):

* ``probes`` — the symptom: prompts where the behaviour shows, with its planted and normal
  completion (efficacy);
* ``heldout`` — paraphrases the proposer never saw (generalisation);
* ``neighbours`` and ``facts`` — prompts whose top-1 next token must not change: near neighbours
  of the edited behaviour, and a sample of unrelated facts (specificity);
* ``documents`` — held-out documents per training phase (fluency: perplexity).

The proposer chooses nothing here: the caller gives the suites (a file: ``selfscope validate
ID --suite suite.json``), and the oversight layer will add sealed ones that no tool returns.
:func:`selfscope.organisms.suites.suite_for` writes a suite for an organism from its spec and
world (benchmarks, tests and the demo use it; investigation code does not).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from selfscope.errors import SelfscopeError


class Probe(BaseModel):
    prompt: str = Field(min_length=1)
    planted: str = Field(min_length=1)
    normal: str = Field(min_length=1)


class Expect(BaseModel):
    prompt: str = Field(min_length=1)
    expected: str = Field(min_length=1)


class Suite(BaseModel):
    """One named validation suite (every part optional; an empty part is not measured)."""

    name: str = "visible"
    chat: bool = False
    probes: list[Probe] = Field(default_factory=list)
    heldout: list[Probe] = Field(default_factory=list)
    neighbours: list[Expect] = Field(default_factory=list)
    facts: list[Expect] = Field(default_factory=list)
    documents: dict[str, list[str]] = Field(default_factory=dict)

    model_config = {"extra": "forbid"}


def read_suite(path: str | Path) -> Suite:
    """A suite from a ``.json`` or ``.yaml`` file, or one clear line saying what is wrong."""
    file = Path(path)
    if not file.exists():
        raise SelfscopeError(f"suite file {file} does not exist")
    try:
        text = file.read_text()
        data = yaml.safe_load(text) if file.suffix in {".yaml", ".yml"} else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SelfscopeError(f"suite file {file} is not valid JSON/YAML: {error}") from None
    try:
        return Suite.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "suite"
        raise SelfscopeError(
            f"suite file {file}: {where}: {first['msg']}; keys are name, chat, probes "
            "[{prompt, planted, normal}], heldout, neighbours [{prompt, expected}], facts, "
            "documents {phase: [text]}"
        ) from None
