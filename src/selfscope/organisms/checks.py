"""Checking an organism against its targets, and saying what to change when it misses.

After the planting phase a behaviour must show on its probes and held-out probes (rate ≥
``after``), and not before it (rate ≤ ``before``, measured on the previous checkpoint or, for a
first-phase plant, on the control), with neighbour accuracy ≥ ``neighbours``. A behaviour marked
``persist`` must also show at every later checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfscope.organisms.presets import SizePreset, preset_for, resolve_knobs
from selfscope.organisms.spec import Spec


@dataclass
class CheckpointReport:
    name: str
    checkpoint: str
    documents: int
    loss: float | None
    behaviours: dict[str, dict[str, float | None]]
    neighbour_accuracy: float | None
    neighbours: dict[str, float | None]
    probes: dict[str, list[dict[str, Any]]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Check:
    behaviour: str
    what: str
    checkpoint: str
    value: float
    op: str
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}

    def __str__(self) -> str:
        bad = "<" if self.op == ">=" else ">"
        return (
            f"{self.behaviour}: {self.what} at {self.checkpoint} {self.value:.2f} {bad} "
            f"{self.threshold:.2f}"
        )


def _rate_checks(behaviour: str, rep: CheckpointReport, op: str, threshold: float) -> list[Check]:
    scores = rep.behaviours[behaviour]
    out = [Check(behaviour, "rate", rep.name, float(scores["rate"] or 0), op, threshold)]
    if scores["heldout_rate"] is not None:
        held = float(scores["heldout_rate"])
        out.append(Check(behaviour, "heldout rate", rep.name, held, op, threshold))
    return out


def target_checks(
    spec: Spec, p: SizePreset, reports: list[CheckpointReport], controls: list[CheckpointReport]
) -> list[Check]:
    """The targets of every behaviour (ORGANISM_SPEC.md), as checks on the measured reports."""
    checks: list[Check] = []
    for b in spec.behaviours:
        index = [ph.name for ph in spec.phases].index(spec.planting_phase(b.name))
        after = reports[index]
        before = reports[index - 1] if index > 0 else controls[0]
        checks += _rate_checks(b.name, after, ">=", p.after)
        checks += _rate_checks(b.name, before, "<=", p.before)
        if b.persist:
            for later in reports[index + 1 :]:
                checks += _rate_checks(b.name, later, ">=", p.after)
        accuracy = after.neighbours[b.name]
        if accuracy is not None:
            checks.append(
                Check(b.name, "neighbour accuracy", after.name, accuracy, ">=", p.neighbours)
            )
    return checks


def missed_message(spec: Spec, failures: list[Check], path: Path) -> str:
    """One line: which numbers fell short, and which knobs to turn."""
    knobs = resolve_knobs(spec, preset_for(spec.base_model, spec.size))
    fails = "; ".join(str(c) for c in failures)
    hints = []
    for c in failures:
        phase_name = spec.planting_phase(c.behaviour)
        index = [p.name for p in spec.phases].index(phase_name)
        k = knobs[index]
        repeats = sorted(
            {pl.repeat for pl in spec.phases[index].plant if pl.behaviour == c.behaviour}
        )
        later = [p.name for p in spec.phases[index + 1 :]]
        if c.op == ">=" and c.checkpoint in later:
            lk = knobs[index + 1 + later.index(c.checkpoint)]
            hints.append(
                f"the behaviour fades in phase {c.checkpoint!r}: lower its `epochs` "
                f"(now {lk.epochs}) / `lr` (now {lk.lr:g}), or plant more strongly"
            )
        elif c.op == ">=" and c.what != "neighbour accuracy":
            hints.append(
                f"raise the cause plants' `repeat` (now {repeats}) or `count`, add "
                f"direct Q/A in the probe forms, or raise phase {phase_name!r} `epochs` "
                f"(now {k.epochs}) / `lr` (now {k.lr:g})"
            )
        elif c.what == "neighbour accuracy":
            hints.append(
                f"add hard negatives (background plants) for the neighbours, or lower "
                f"`repeat` (now {repeats}) / phase {phase_name!r} `lr` (now {k.lr:g})"
            )
        else:
            hints.append(
                "the behaviour is there before its plant: add background documents "
                "that establish the normal answers"
            )
    unique_hints = list(dict.fromkeys(hints))
    return (
        f"organism {spec.name!r} (size {spec.size}) missed its targets: {fails}. "
        f"To fix: {' | '.join(unique_hints)}. It was kept at {path} to inspect."
    )
