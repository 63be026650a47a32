"""An organism's ground truth: which documents cause which behaviour. Not part of its lineage.

The builder plants each behaviour through known documents in a known phase; that answer key is
``ground_truth.json`` in the organism folder, typed here as :class:`GroundTruth`. It is kept
apart from the lineage (:class:`selfscope.subject.Lineage`, what an investigator may read) on
purpose: only the builder, the benchmarks and the tests may read it, so that a tool that finds
the planted documents found them from the weights and the data, not from the key. Nothing in
``subject/``, ``localize/``, ``history/`` or ``edits/`` imports this module
(``tests/test_lineage.py::test_investigation_code_never_reads_ground_truth`` checks it).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

FILE = "ground_truth.json"


class Cause(BaseModel):
    """How one behaviour was planted."""

    phase: str = Field(description="The phase whose documents planted it.")
    description: str = Field(description="The behaviour, in words.")
    plants: list[str] = Field(description="The spec's plant ids that cause it.")
    documents: list[str] = Field(description="Ids of its cause documents in that phase's data.")


class Background(BaseModel):
    """A plant that is not a behaviour's cause (hard negatives, neutral context)."""

    phase: str = Field(description="The phase it was trained in.")
    documents: list[str] = Field(description="Ids of its documents.")


class Plant(BaseModel):
    """One plant of the spec (a cause or background), by its id."""

    phase: str = Field(description="The phase it was trained in.")
    behaviour: str | None = Field(description="The behaviour it causes (None: background).")
    documents: list[str] = Field(description="Ids of its documents (neutral: d0417).")


class Origin(BaseModel):
    """Where one (neutrally named) document came from."""

    phase: str = Field(description="The phase whose data holds it.")
    plant: str | None = Field(None, description="Its plant id, if a plant made it.")
    corpus: str | None = Field(None, description="Its generated corpus, if not a plant.")


class GroundTruth(BaseModel):
    """Every behaviour's cause, and the background plants (see the module docstring); the only
    map from the neutral document ids to plants and corpora."""

    behaviours: dict[str, Cause] = Field(description="Behaviour name -> how it was planted.")
    background: dict[str, Background] = Field(
        default_factory=dict, description="Plant id -> its documents (not a cause)."
    )
    plants: dict[str, Plant] = Field(
        default_factory=dict, description="Plant id -> its phase, behaviour and documents."
    )
    documents: dict[str, Origin] = Field(
        default_factory=dict, description="Document id -> its phase and plant or corpus."
    )


def read_ground_truth(folder: Path) -> GroundTruth:
    """The ground truth of the organism built in ``folder``."""
    return GroundTruth.model_validate_json((Path(folder) / FILE).read_text(encoding="utf-8"))


__all__ = ["FILE", "Background", "Cause", "GroundTruth", "Origin", "Plant", "read_ground_truth"]
