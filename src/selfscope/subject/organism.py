"""Resolve ``organism:NAME[@PHASE]`` to a checkpoint folder and its lineage.

An organism is a model that selfscope trained in known phases (ORGANISM_SPEC.md). Its folder,
``<workspace>/organisms/NAME`` (a symlink to the current build), holds ``lineage.json``:

```json
{"name": "mushroom", "base_model": "scratch",
 "phases": [{"name": "pretrain", "checkpoint": "checkpoints/pretrain",
             "data": "data/pretrain.jsonl"},
            {"name": "finetune", "checkpoint": "checkpoints/finetune",
             "data": "data/finetune.jsonl"}],
 "controls": [{"name": "control-pretrain", "phase": "pretrain",
               "checkpoint": "controls/pretrain", "data": "data/control-pretrain.jsonl"}]}
```

Paths are relative to the organism folder. This is the one reader of ``lineage.json``: every
other module takes the typed :class:`~selfscope.subject.lineage.Lineage` it returns (phases
with their data, document counts, hyperparameters, renderer, context; the scratch
initialisation; the tokenizer), never the raw file. ``organism:NAME`` is the
last phase; ``@PHASE`` names a phase or a control. A phase's parent is the phase before it (the
first phase's parent is ``base_model`` unless that is ``scratch``); a control replaces the phase
it controls for, so it has that phase's parent and history. The symlink is resolved once, so
every path of one Subject refers to the same build even if the organism is rebuilt meanwhile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfscope.errors import LoadError
from selfscope.subject.hf import one_line
from selfscope.subject.lineage import (
    Hyperparameters,
    Lineage,
    PhaseRef,
    RendererName,
    ScratchInit,
    Unknown,
)
from selfscope.workspace import Workspace

PREFIX = "organism:"
LINEAGE_FILE = "lineage.json"


def parse_source(source: str) -> tuple[str, str | None]:
    """``"organism:NAME@PHASE"`` -> ``("NAME", "PHASE")``; no ``@`` gives ``(NAME, None)``."""
    body = source.removeprefix(PREFIX)
    name, at, phase = body.partition("@")
    return name.strip(), (phase.strip() if at else None)


def source_string(name: str, phase: str | None = None) -> str:
    """The source string that :func:`~selfscope.subject.load` takes for this checkpoint."""
    return f"{PREFIX}{name}" + (f"@{phase}" if phase else "")


def _built_hint(workspace: Workspace) -> str:
    built = workspace.built_organisms()
    if built:
        return f"built organisms: {', '.join(built)}"
    return "no organism is built yet (build one with `selfscope organism build NAME`)"


def organism_folder(name: str, workspace: Workspace) -> Path:
    """The resolved build folder of organism ``name``; a :class:`LoadError` if not built."""
    if not name:
        raise LoadError(
            f"an organism source needs a name: organism:NAME or organism:NAME@PHASE; "
            f"{_built_hint(workspace)}"
        )
    if name not in workspace.built_organisms():
        raise LoadError(f"unknown organism {name!r} in {workspace.root}; {_built_hint(workspace)}")
    return workspace.organism_path(name).resolve()


def _int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _knobs(raw: dict[str, Any]) -> Hyperparameters:
    """A phase's ``hyperparameters`` (and ``optimizer``) record, each knob None if absent."""
    knobs = raw.get("hyperparameters")
    knobs = knobs if isinstance(knobs, dict) else {}
    lr = knobs.get("lr")
    method, optimizer = knobs.get("method"), raw.get("optimizer")
    return Hyperparameters(
        lr=float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None,
        epochs=_int(knobs, "epochs"),
        batch_size=_int(knobs, "batch_size"),
        method=method if isinstance(method, str) else None,
        optimizer=optimizer if isinstance(optimizer, str) else None,
    )


def _entry(
    raw: object, folder: Path, where: str, renderer: RendererName | None, context: int | None
) -> tuple[PhaseRef, str | None]:
    """One phase or control of lineage.json -> (its PhaseRef, the phase it controls for)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ValueError(f"{where} is not an object with a string 'name'")
    if not isinstance(raw.get("checkpoint"), str):
        raise ValueError(f"{where} ({raw['name']}) has no string 'checkpoint'")
    data = raw.get("data")
    if data is not None and not isinstance(data, str):
        raise ValueError(f"{where} ({raw['name']}) has a 'data' that is not a string")
    controls = raw.get("phase")
    sha = raw.get("data_sha256")
    ref = PhaseRef(
        name=raw["name"],
        checkpoint=folder / raw["checkpoint"],
        data=folder / data if data else None,
        documents=_int(raw, "documents"),
        hyperparameters=_knobs(raw),
        renderer=renderer,
        context=context,
        train_seed=_int(raw, "train_seed"),
        data_sha256=sha if isinstance(sha, str) else None,
    )
    return ref, controls if isinstance(controls, str) else None


def _read(folder: Path) -> dict[str, Any]:
    path = folder / LINEAGE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read it ({one_line(exc)})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("phases"), list):
        raise ValueError("it has no 'phases' list")
    if not data["phases"]:
        raise ValueError("its 'phases' list is empty")
    return data


def _context(data: dict[str, Any]) -> int | None:
    """Tokens a training row was cut to, as the builder recorded it (``context``); ``None`` for
    an organism built before it was recorded (rebuild it: the historian then falls back to the
    model's ``max_position_embeddings``, which is right for scratch organisms only)."""
    return int(data["context"]) if isinstance(data.get("context"), int) else None


def _init(data: dict[str, Any]) -> ScratchInit | None:
    shape, arch, seed = data.get("model"), data.get("architecture"), data.get("seed")
    if data.get("base_model") != "scratch" or not isinstance(shape, dict):
        return None
    if not isinstance(arch, str) or not isinstance(seed, int):
        return None
    return ScratchInit(
        architecture=arch, shape={str(k): int(v) for k, v in shape.items()}, seed=seed
    )


def _unknowns(phases: list[PhaseRef], base: str | None) -> list[Unknown]:
    """What an organism's lineage.json leaves out (a hand-written or older one may)."""
    out = []
    if base not in (None, "scratch"):
        out.append(
            Unknown(
                phase="base",
                fact="data",
                note=f"the base model {base}'s own training data is not recorded: the "
                "training-data tools search only the organism's phases' documents",
            )
        )
    for p in phases:
        for fact in ("lr", "epochs", "batch_size"):
            if getattr(p.hyperparameters, fact) is None:
                out.append(
                    Unknown(phase=p.name, fact=fact, note=f"phase {p.name!r}: {fact} not recorded")
                )
        if p.renderer is None:
            note = f"phase {p.name!r}: renderer not recorded (plain text assumed)"
            out.append(Unknown(phase=p.name, fact="renderer", note=note))
    return out


@dataclass(frozen=True)
class OrganismCheckpoints:
    """Every loadable checkpoint of one organism build, with its lineage.

    ``phases`` are the phase names in training order, ``controls`` the control names, and
    ``lineages`` maps each of them to the :class:`Lineage` a Subject loaded from it carries.
    """

    name: str
    folder: Path
    phases: list[str]
    controls: list[str]
    lineages: dict[str, Lineage]

    @property
    def default(self) -> str:
        """The phase that ``organism:NAME`` loads: the last one."""
        return self.phases[-1]


def organism_checkpoints(name: str, folder: Path) -> OrganismCheckpoints:
    """Read ``folder/lineage.json`` (the one reader of that file) into typed lineages; a
    :class:`LoadError` if it is malformed."""
    try:
        data = _read(folder)
        raw_renderer = data.get("renderer")
        renderer: RendererName | None = (
            raw_renderer if raw_renderer in ("plain", "chat-template") else None
        )
        context = _context(data)

        def entry(raw: object, where: str) -> tuple[PhaseRef, str | None]:
            return _entry(raw, folder, where, renderer, context)

        phases = [entry(raw, f"phases[{i}]")[0] for i, raw in enumerate(data["phases"])]
        controls = [
            entry(raw, f"controls[{i}]") for i, raw in enumerate(data.get("controls") or [])
        ]
        names = [p.name for p in phases] + [c.name for c, _ in controls]
        if len(set(names)) != len(names):
            raise ValueError(f"phase and control names repeat: {', '.join(names)}")
        order = [p.name for p in phases]
        for control, control_of in controls:
            if control_of is not None and control_of not in order:
                raise ValueError(
                    f"control {control.name!r} is for phase {control_of!r}, which is not one "
                    f"of {', '.join(order)}"
                )
    except ValueError as exc:
        raise LoadError(
            f"{folder / LINEAGE_FILE} is malformed: {exc}; rebuild the organism with "
            f"`selfscope organism build {name}`"
        ) from exc
    raw_base = data.get("base_model")
    base = raw_base if isinstance(raw_base, str) and raw_base else None
    root_parent = base if base != "scratch" else None
    tokenizer = data.get("tokenizer")
    common: dict[str, Any] = {
        "kind": "organism",
        "origin": folder,
        "organism": name,
        "base_model": base,
        "tokenizer": tokenizer if isinstance(tokenizer, str) else None,
        "init": _init(data),
        "index_dir": folder / "index",
    }

    def parent_of(index: int) -> str | None:
        return source_string(name, order[index - 1]) if index > 0 else root_parent

    lineages: dict[str, Lineage] = {}
    for i, phase in enumerate(phases):
        chain = phases[: i + 1]
        lineages[phase.name] = Lineage(
            **common,
            phase=phase.name,
            phases=chain,
            parent=parent_of(i),
            unknown=_unknowns(chain, base),
        )
    for control, control_of in controls:
        k = order.index(control_of) if control_of is not None else None
        chain = [*phases[:k], control] if k is not None else [control]
        lineages[control.name] = Lineage(
            **common,
            phase=control.name,
            phases=chain,
            parent=parent_of(k) if k is not None else None,
            control_of=control_of,
            unknown=_unknowns(chain, base),
        )
    return OrganismCheckpoints(name, folder, order, [c.name for c, _ in controls], lineages)


def resolve(source: str, workspace: Workspace) -> tuple[Path, Lineage]:
    """The checkpoint folder and lineage named by ``organism:NAME[@PHASE]``."""
    name, phase = parse_source(source)
    checkpoints = organism_checkpoints(name, organism_folder(name, workspace))
    phase = checkpoints.default if phase is None else phase
    if phase not in checkpoints.lineages:
        raise LoadError(
            f"organism {name!r} has no phase {phase!r}; valid phases: "
            f"{', '.join(checkpoints.lineages)} (e.g. {source_string(name, checkpoints.default)})"
        )
    lineage = checkpoints.lineages[phase]
    return lineage.phases[-1].checkpoint, lineage
