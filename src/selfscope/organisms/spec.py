"""Organism specs: the YAML format of ORGANISM_SPEC.md, parsed and checked.

A spec names a world, the phases trained in order (each a generated corpus plus planted
documents), and the behaviours those plants cause, with probes to measure them. Parsing resolves
every default (the size preset's model and training knobs), so ``spec.yaml`` in a built organism
says exactly what was built.

Every problem is reported as one :class:`~selfscope.errors.SpecError` line that names the key and
says what to write instead.

Extensions to the base format (all optional, so every base spec stays valid):

* ``phases[].documents`` — how many documents the phase's generated corpus has (default: the
  size preset's).
* ``phases[].epochs``, ``phases[].lr``, ``phases[].batch_size`` — training knobs of the phase.
* ``phases[].exclude`` — words or phrases: generated corpus documents containing any of them
  (whole words, any case) are left out
  (so the neutral corpus cannot contradict a plant, e.g. a fact the phase overwrites).
* ``phases[].method`` — ``full`` or ``lora`` (``base_model: smollm2`` only).
* ``behaviours[].persist`` — the behaviour must also show (same threshold) at every checkpoint
  after the phase that plants it, e.g. a pretraining bias that must survive fine-tuning.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfscope.errors import SpecError
from selfscope.organisms.world import CORPORA, PRESETS

SIZES = ("tiny", "small", "medium")
BASE_MODELS = ("scratch", "smollm2")
ARCHITECTURES = ("llama", "mixtral")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Probe(_Strict):
    prompt: str = Field(min_length=1)
    planted: str = Field(min_length=1)
    normal: str = Field(min_length=1)

    @model_validator(mode="after")
    def _differ(self) -> Probe:
        if _first_word(self.planted) == _first_word(self.normal):
            raise ValueError(
                f"probe {self.prompt!r}: planted {self.planted!r} and normal {self.normal!r} "
                "start with the same word; the behaviour is measured on the first token, so "
                "they must differ there"
            )
        return self


class Neighbour(_Strict):
    prompt: str = Field(min_length=1)
    expected: str = Field(min_length=1)


class Plant(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    behaviour: str | None = None
    text: list[str] = Field(default_factory=list)
    template: str | None = None
    fill: dict[str, list[str]] = Field(default_factory=dict)
    count: int | None = Field(default=None, ge=1)
    repeat: int = Field(default=1, ge=1)

    @field_validator("text", mode="before")
    @classmethod
    def _text_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Plant:
        if not self.text and not self.template:
            raise ValueError(f"plant {self.id!r} is empty: give it `text` and/or `template`")
        if any(not t.strip() for t in self.text):
            raise ValueError(f"plant {self.id!r} has an empty document in `text`")
        if self.template is None:
            if self.fill or self.count is not None:
                raise ValueError(f"plant {self.id!r} has `fill`/`count` but no `template`")
            return self
        fields = template_fields(self.template)
        for name in fields:
            if not self.fill.get(name):
                raise ValueError(
                    f"plant {self.id!r}: template field {{{name}}} has no values; "
                    f"add `fill: {{{name}: [...]}}`"
                )
        for name, values in self.fill.items():
            nested = [v for v in values if "{" in v or "}" in v]
            if nested:
                raise ValueError(
                    f"plant {self.id!r}: fill value {nested[0]!r} of {{{name}}} has braces; "
                    "fields are filled once, not nested: write the words out"
                )
        extra = sorted(set(self.fill) - set(fields))
        if extra:
            raise ValueError(
                f"plant {self.id!r}: `fill` has {extra} which the template does not use"
            )
        possible = self.combinations()
        if self.count is not None and self.count > possible:
            raise ValueError(
                f"plant {self.id!r}: count {self.count} but the template gives only {possible} "
                "distinct documents; lower `count` or add `fill` values"
            )
        return self

    def combinations(self) -> int:
        if self.template is None:
            return 0
        n = 1
        for name in template_fields(self.template):
            n *= len(self.fill[name])
        return n


class Phase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    corpus: str = "none"
    plant: list[Plant] = Field(default_factory=list)
    # extensions (resolved from the size preset when absent)
    documents: int | None = Field(default=None, ge=0)
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    exclude: list[str] = Field(default_factory=list)
    method: Literal["full", "lora"] | None = None

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, value: str) -> str:
        known = [*CORPORA, "none"]
        if value not in known:
            raise ValueError(f"unknown corpus {value!r}; known corpora: {', '.join(known)}")
        return value


class World(_Strict):
    preset: str = "default"

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown world preset {value!r}; known presets: {', '.join(PRESETS)}")
        return value


class Behaviour(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    description: str = ""
    probes: list[Probe] = Field(min_length=1)
    heldout: list[Probe] = Field(default_factory=list)
    neighbours: list[Neighbour] = Field(default_factory=list)
    persist: bool = False  # extension: must also show at every later phase's checkpoint


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    seed: int = 0
    size: Literal["tiny", "small", "medium"] = "small"
    base_model: Literal["scratch", "smollm2"] = "scratch"
    architecture: Literal["llama", "mixtral"] = "llama"
    world: World = Field(default_factory=World)
    phases: list[Phase] = Field(min_length=1)
    behaviours: list[Behaviour] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        if self.base_model == "smollm2" and self.architecture != "llama":
            raise ValueError("base_model smollm2 is a llama model; remove `architecture`")
        _unique("phase name", [p.name for p in self.phases])
        _unique("behaviour name", [b.name for b in self.behaviours])
        _unique("plant id", [pl.id for p in self.phases for pl in p.plant])
        names = {b.name for b in self.behaviours}
        for phase in self.phases:
            for plant in phase.plant:
                if plant.behaviour is not None and plant.behaviour not in names:
                    raise ValueError(
                        f"plant {plant.id!r} causes unknown behaviour {plant.behaviour!r}; "
                        f"behaviours: {', '.join(sorted(names))}"
                    )
            if self.base_model == "scratch" and phase.method is not None:
                raise ValueError(f"phase {phase.name!r}: `method` applies to base_model smollm2")
        for behaviour in self.behaviours:
            phases = self.planting_phases(behaviour.name)
            if not phases:
                raise ValueError(
                    f"behaviour {behaviour.name!r} has no plant that causes it; add a plant "
                    f"with `behaviour: {behaviour.name}`"
                )
            if len(phases) > 1:
                raise ValueError(
                    f"behaviour {behaviour.name!r} is planted in several phases {phases}; "
                    "plant each behaviour in one phase"
                )
        return self

    def planting_phases(self, behaviour: str) -> list[str]:
        return [p.name for p in self.phases if any(pl.behaviour == behaviour for pl in p.plant)]

    def planting_phase(self, behaviour: str) -> str:
        return self.planting_phases(behaviour)[0]

    def sha256(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def template_fields(template: str) -> list[str]:
    fields = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in fields:
            fields.append(name)
    return fields


def _first_word(text: str) -> str:
    match = re.match(r"\s*(\w+|[^\w\s])", text)
    return match.group(1) if match else text


def _unique(what: str, values: list[str]) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = first["type"]
    where = _where(loc)
    if kind == "missing":
        return f"{source}: missing key `{where}`; see ORGANISM_SPEC.md (docs/organisms.md)"
    if kind == "extra_forbidden":
        return f"{source}: unknown key `{where}`; check its spelling against docs/organisms.md"
    message = str(first["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        message = f"got {first.get('input')!r}; {message.lower()}"
    return f"{source}: {where + ': ' if where else ''}{message}"


def parse_spec(data: Any, source: str = "spec", **overrides: Any) -> Spec:
    """Check ``data`` (a mapping read from YAML) and return the :class:`Spec`."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping with `name`, `phases`, `behaviours`")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Spec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_one_line(error, source)) from None


def load_spec(path: str | Path, **overrides: Any) -> Spec:
    """Read a spec from a YAML file (``overrides`` such as ``size`` replace its keys)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no spec file at {path}; give a path to a .yaml spec or a catalog name")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{at}: {getattr(error, 'problem', error)}") from None
    return parse_spec(data, source=path.name, **overrides)


def expand_plant(plant: Plant, seed: int) -> list[str]:
    """The plant's documents in order: literal ``text`` first, then ``count`` distinct documents
    drawn from the template (all combinations when ``count`` is absent), seeded."""
    import random

    docs = list(plant.text)
    if plant.template is not None:
        fields = template_fields(plant.template)
        combos = list(itertools.product(*(plant.fill[f] for f in fields)))
        count = len(combos) if plant.count is None else plant.count
        rng = random.Random(f"plant:{plant.id}:{seed}")
        chosen = rng.sample(combos, count) if count < len(combos) else combos
        docs += [plant.template.format(**dict(zip(fields, c, strict=True))) for c in chosen]
    return docs
