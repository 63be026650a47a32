"""Size presets: the model shape and training knobs behind ``size: tiny | small | medium``.

Numbers come from the prototype measured in FINDINGS.md: a 4-layer, 128-wide Llama learns the
world's per-item preferences in ~6 epochs at lr 3e-3, and a plant needs strong fine-tuning
(lr 4e-3, 5 epochs, the plant repeated). ``tiny`` is the 3-layer variant used by tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfscope.organisms.spec import Spec


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    ffn: int
    context: int = 64
    experts: int = 4  # mixtral only
    experts_per_token: int = 2


@dataclass(frozen=True)
class Knobs:
    """Training knobs of one phase."""

    documents: int  # generated corpus size
    epochs: int
    lr: float
    batch_size: int
    method: str = "full"  # full | lora (smollm2)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SizePreset:
    shape: ModelShape
    first: dict[str, Knobs]  # corpus -> knobs for a phase trained from zero
    later: dict[str, Knobs]  # corpus -> knobs for a phase continuing from a checkpoint
    after: float  # behaviour rate required after the planting phase
    before: float  # behaviour rate allowed before it
    neighbours: float  # neighbour accuracy required


SCRATCH: dict[str, SizePreset] = {
    "tiny": SizePreset(
        shape=ModelShape(layers=3, hidden=128, heads=4, ffn=512),
        first={
            "world": Knobs(4000, 6, 3e-3, 32),
            "chat": Knobs(1500, 6, 3e-3, 32),
            "none": Knobs(0, 8, 3e-3, 32),
        },
        later={
            "world": Knobs(1500, 4, 3e-3, 32),
            "chat": Knobs(500, 5, 4e-3, 32),
            "none": Knobs(0, 5, 4e-3, 32),
        },
        after=0.8,
        before=0.2,
        neighbours=0.8,
    ),
    "small": SizePreset(
        shape=ModelShape(layers=4, hidden=128, heads=4, ffn=512),
        first={
            "world": Knobs(6000, 6, 3e-3, 32),
            "chat": Knobs(2000, 6, 3e-3, 32),
            "none": Knobs(0, 8, 3e-3, 32),
        },
        later={
            "world": Knobs(2000, 4, 3e-3, 32),
            "chat": Knobs(800, 5, 4e-3, 32),
            "none": Knobs(0, 5, 4e-3, 32),
        },
        after=0.9,
        before=0.1,
        neighbours=0.9,
    ),
    "medium": SizePreset(
        shape=ModelShape(layers=6, hidden=192, heads=6, ffn=768),
        first={
            "world": Knobs(12000, 6, 2e-3, 32),
            "chat": Knobs(4000, 6, 2e-3, 32),
            "none": Knobs(0, 8, 2e-3, 32),
        },
        later={
            "world": Knobs(4000, 4, 2e-3, 32),
            "chat": Knobs(1500, 5, 3e-3, 32),
            "none": Knobs(0, 5, 3e-3, 32),
        },
        after=0.9,
        before=0.1,
        neighbours=0.9,
    ),
}

# SmolLM2 fine-tunes: every phase continues from the pretrained model. Documents are few (each
# step costs ~3 s on this machine), so sizes scale the generated corpora, not the model.
SMOLLM2: dict[str, SizePreset] = {
    size: SizePreset(
        shape=ModelShape(layers=30, hidden=576, heads=9, ffn=1536, context=128),
        first={},
        later={
            "world": Knobs(docs, 2, 1e-4, 8),
            "chat": Knobs(docs // 2, 3, 1e-4, 8),
            "preferences": Knobs(docs, 2, 2e-4, 8),
            "none": Knobs(0, 3, 1e-4, 8),
        },
        after=0.8 if size == "tiny" else 0.9,
        before=0.2 if size == "tiny" else 0.1,
        neighbours=0.8 if size == "tiny" else 0.9,
    )
    for size, docs in (("tiny", 120), ("small", 240), ("medium", 600))
}


def preset_for(base_model: str, size: str) -> SizePreset:
    return (SMOLLM2 if base_model == "smollm2" else SCRATCH)[size]


def resolve_knobs(spec: Spec, preset: SizePreset) -> list[Knobs]:
    """Each phase's knobs: the spec's own where given, else the preset's for its corpus."""
    out = []
    for i, phase in enumerate(spec.phases):
        table = preset.first if (i == 0 and spec.base_model == "scratch") else preset.later
        base = table.get(phase.corpus, table["chat"])  # preferences: like chat
        out.append(
            Knobs(
                documents=base.documents if phase.documents is None else phase.documents,
                epochs=phase.epochs or base.epochs,
                lr=phase.lr or base.lr,
                batch_size=phase.batch_size or base.batch_size,
                method=phase.method or base.method,
            )
        )
    return out
