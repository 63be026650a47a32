"""Content-addressed weight changes: ``<workspace>/deltas/<sha256>.safetensors``.

A *delta* maps parameter names (or ``runtime/<site>`` for a runtime intervention) to tensors
``ΔW``. It is saved once under the SHA-256 of its bytes, so the same change is stored once and a
file that no longer matches its name is refused. Proposals (:mod:`selfscope.edits.proposal`)
write them; versions (:mod:`selfscope.subject.versions`) are a parent plus one of them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from selfscope import atomic
from selfscope.errors import SelfscopeError

RUNTIME = "runtime/"  # key prefix of runtime interventions inside a delta file


def deltas_dir(workspace: Any) -> Path:
    return Path(workspace.root) / "deltas"


def delta_path(workspace: Any, sha: str) -> Path:
    return deltas_dir(workspace) / f"{sha}.safetensors"


def save_delta(workspace: Any, delta: dict[str, Tensor]) -> str:
    """Write ``delta`` (parameter or ``runtime/<site>`` -> tensor) once; its SHA-256."""
    if not delta:
        raise SelfscopeError("the edit changes nothing (an empty delta); nothing to propose")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in delta.items()}
    data = save_safetensors(dict(sorted(tensors.items())))
    sha = hashlib.sha256(data).hexdigest()
    path = delta_path(workspace, sha)
    if not path.exists():
        atomic.write_bytes(path, data)
    return sha


def load_delta(workspace: Any, sha: str) -> dict[str, Tensor]:
    """The delta named ``sha``; refused when missing or when its bytes no longer match."""
    path = delta_path(workspace, sha)
    if not path.exists():
        raise SelfscopeError(f"delta {sha[:16]} is missing from {path.parent}; re-run the proposal")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise SelfscopeError(
            f"delta file {path} does not match its SHA-256 (changed or corrupt); "
            "re-run the proposal"
        )
    return dict(load_safetensors(data))


def add_delta(model: nn.Module, delta: dict[str, Tensor], scale: float = 1.0) -> None:
    """``W += scale · ΔW`` on ``model`` in place (a copy in the sandbox; a new version's
    weights when a version is materialised). Runtime entries are not weights and are skipped."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in delta.items():
            if not name.startswith(RUNTIME):
                params[name].add_(d.to(params[name].device, params[name].dtype), alpha=scale)
