"""The one loader of a lineage's other checkpoints: a phase's, the parent's, or any `against`.

Weight deltas, phase origin, the training-data index and the removal test all read *other
versions* of the subject's model: the checkpoint each phase ended at, or the parent it was
trained from. Those are named by source strings (``organism:mushroom@pretrain``, a folder,
``smollm2``) that only mean something inside a workspace (where organisms are built and
``.gguf`` files converted), and they must land on the subject's device. Every such load goes
through here, with the workspace of the tool call and the subject's device, so a sibling
checkpoint is found in the same workspace the subject came from — never in whatever
``$SELFSCOPE_HOME`` happens to say.

```python
from selfscope.subject.checkpoints import load_checkpoint, load_parent
pretrain = load_checkpoint(subject, "pretrain", workspace)   # a phase of its lineage
parent = load_parent(subject, workspace)                     # the checkpoint before it
```
"""

from __future__ import annotations

from typing import Any

from selfscope.subject.lineage import Lineage, parent_source
from selfscope.subject.subject import Subject


def _device(of: Any, device: str | None) -> str:
    """``device``, else the subject's (a Lineage has none: ``cpu``)."""
    return device or str(getattr(of, "device", "cpu"))


def load_version(source: str, workspace: Any, device: str = "cpu") -> Subject:
    """Another model the caller compares with (a checkpoint, a parent, ``against``), loaded
    from ``source`` in ``workspace`` (None: the default workspace) on ``device``."""
    from selfscope.subject.load import load

    return load(source, workspace, device=device)


def load_checkpoint(
    of: Subject | Lineage | Any, phase: str, workspace: Any, device: str | None = None
) -> Subject:
    """The checkpoint phase ``phase`` of a lineage ended at. ``of``: a Subject (its lineage;
    loaded on its device unless ``device`` says otherwise) or a Lineage (default ``cpu``)."""
    lineage = of if isinstance(of, Lineage) else of.lineage
    ref = lineage.phase_ref(phase)
    return load_version(str(ref.checkpoint), workspace, _device(of, device))


def load_parent(
    subject: Any, workspace: Any, *, against: str | None = None, device: str | None = None
) -> tuple[str, Subject]:
    """``(source, model)`` of the checkpoint the subject's phase started from (the previous
    phase's end, or its parent), or of ``against`` when given; a one-line error when the
    lineage names none."""
    source = against or parent_source(subject)
    return source, load_version(source, workspace, _device(subject, device))


__all__ = ["load_checkpoint", "load_parent", "load_version"]
