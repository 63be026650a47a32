"""Bring your own lineage: declare how a local fine-tune was made, so the history tools apply.

An organism's lineage is recorded by the builder; a user's own ``base -> fine-tuned`` pair has
none, so without help no tool could ask *which phase*, *which weight changes* or *which
training documents*. :func:`declare` (``selfscope lineage add MODEL --parent BASE --data
train.jsonl``) records what the user knows::

    <workspace>/lineages/<key>.json             the declaration (key: SHA-256 of MODEL's path)
    <workspace>/lineages/<key>/data/*.jsonl     the documents, normalised ({"id","text","repeat"})
    <workspace>/lineages/<key>/index-<digest>/  its training-data index, once built

and :func:`declared_lineage` turns it into the typed :class:`~selfscope.subject.Lineage` that
``load(MODEL)`` attaches from then on: the declared phase (checkpoint MODEL, its data and knobs),
after the phases of BASE's own declared lineage when BASE has one, else after an opaque phase
``base`` (checkpoint BASE, data unknown). So ``localize.origin``, ``localize.weight_deltas``,
``weights.diff`` and ``history.trace`` work on it exactly as on an organism.

What the user does not say is not guessed silently: each missing fact (the learning rate, the
epochs, the renderer, the context length, the batch order, the base model's own data, what a
phase started from) is an :class:`~selfscope.subject.lineage.Unknown` with the assumption made,
and every tool that needed one lists it in its ``caveats``.

The declaration pins MODEL's weights by SHA-256 (re-hashed only when a weight file's size or
modification time changed): when the weights change, ``load`` no longer attaches the declared
history and says so. The data is copied into the workspace, so editing ``train.jsonl`` later
cannot silently disagree with a built index; the index folder is named by a digest of the whole
resolved lineage, so a re-declaration gets a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from selfscope import atomic
from selfscope.errors import LoadError, SelfscopeError
from selfscope.subject.hf import TOKENIZER_FILES, WEIGHT_GLOBS, read_model_type
from selfscope.subject.lineage import (
    Hyperparameters,
    Lineage,
    PhaseRef,
    RendererName,
    Unknown,
)
from selfscope.workspace import expand

DIR = "lineages"
VERSION = 1
#: the name of the opaque phase that stands for an undeclared parent's own training
BASE_PHASE = "base"
#: config.json fields that must agree between a model and its parent
SHAPE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "num_local_experts",
    "n_embd",
    "n_layer",
    "n_head",
)


class WeightFile(BaseModel):
    name: str = Field(description="File name inside the model folder.")
    size: int = Field(description="Bytes.")
    mtime_ns: int = Field(description="Modification time (ns), a cheap change detector.")


class Declaration(BaseModel):
    """What ``selfscope lineage add`` stored for one model folder."""

    version: int = Field(default=VERSION, description="Format version.")
    model: Path = Field(description="The fine-tuned model folder (resolved).")
    weights_sha256: str = Field(description="SHA-256 over the folder's weight files.")
    weight_files: list[WeightFile] = Field(description="Each weight file's size and mtime.")
    phase: str = Field(description="The declared phase's name.")
    parent: Path | None = Field(
        default=None, description="The folder it was trained from, if known."
    )
    scratch: bool = Field(default=False, description="Trained from random initialisation.")
    data: Path = Field(description="The normalised copy of the documents, in the workspace.")
    data_source: str = Field(description="The file the user gave.")
    data_sha256: str = Field(description="SHA-256 of the normalised rows.")
    documents: int = Field(description="How many documents.")
    hyperparameters: Hyperparameters = Field(description="Declared knobs; None where unknown.")
    renderer: RendererName | None = Field(default=None, description="None: not declared.")
    context: int | None = Field(
        default=None, description="Tokens a training row was cut to, if known."
    )
    declared_at: str = Field(description="When (local time, ISO 8601).")


# -- where things live ---------------------------------------------------------------------------


def _root(workspace: Any) -> Path:
    """``<workspace>/lineages``; for ``None`` the default workspace's, without creating it."""
    if workspace is not None:
        return Path(workspace.root) / DIR
    from selfscope.workspace import DEFAULT_ROOT, ENV_VAR

    return Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT).expanduser().absolute() / DIR


def _key(folder: Path) -> str:
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]


def declaration_path(folder: Path, workspace: Any) -> Path:
    """Where the declaration of model folder ``folder`` is (or would be) stored."""
    return _root(workspace) / f"{_key(folder)}.json"


# -- fingerprints --------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in WEIGHT_GLOBS for p in folder.glob(pattern) if p.is_file()})


def _stat(folder: Path) -> list[WeightFile]:
    out = []
    for p in _weight_files(folder):
        st = p.stat()
        out.append(WeightFile(name=p.name, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return out


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the names and bytes of ``folder``'s weight files, in name order."""
    digest = hashlib.sha256()
    for p in _weight_files(folder):
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _unchanged(decl: Declaration) -> bool:
    """Are ``decl.model``'s weights the declared ones? (Hashes only when a file's stat moved.)"""
    if _stat(decl.model) == decl.weight_files:
        return True
    return weights_sha256(decl.model) == decl.weights_sha256


# -- checks --------------------------------------------------------------------------------------


def _config(folder: Path, role: str) -> dict[str, Any]:
    """``folder``'s config.json, after the checked loader's own checks (one-line errors)."""
    if not folder.exists():
        raise SelfscopeError(f"{role} folder {folder} does not exist; give a Hugging Face folder")
    read_model_type(folder)
    if not _weight_files(folder):
        raise SelfscopeError(
            f"{role} folder {folder} has no weights (*.safetensors or pytorch_model*.bin); "
            "save them with model.save_pretrained(folder)"
        )
    data: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return data


def _same_architecture(model: Path, parent: Path) -> None:
    mine, theirs = _config(model, "MODEL"), _config(parent, "parent")
    for field in SHAPE_FIELDS:
        if mine.get(field) != theirs.get(field):
            raise SelfscopeError(
                f"architectures differ: {field} is {mine.get(field)!r} in {model} but "
                f"{theirs.get(field)!r} in {parent}; a lineage links two versions of the same "
                "architecture (weight deltas compare the same parameters)"
            )


def read_documents(path: Path) -> list[dict[str, Any]]:
    """The documents of a JSONL file as ``{"id", "text", "repeat"}`` rows: each line a JSON
    object with a string ``text``, an optional ``id`` (assigned ``line-N`` when absent) and an
    optional ``repeat`` (times an epoch trained on it, default 1); one-line errors."""
    if not path.is_file():
        raise SelfscopeError(f"data file {path} does not exist; give a .jsonl of documents")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise SelfscopeError(f"{where} is not valid JSON ({exc.args[0]})") from None
            if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
                raise SelfscopeError(
                    f'{where} is not an object with a string "text", e.g. '
                    '{"id": "doc-1", "text": "..."}'
                )
            doc_id = raw.get("id", f"line-{number}")
            if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
                raise SelfscopeError(f'{where}: "id" must be a string or an integer')
            repeat = raw.get("repeat", 1)
            if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
                raise SelfscopeError(f'{where}: "repeat" must be a positive integer')
            key = str(doc_id)
            if key in seen:
                raise SelfscopeError(
                    f"{where}: id {key!r} repeats line {seen[key]}; ids must be unique (or "
                    'give a "repeat" count instead of duplicate lines)'
                )
            seen[key] = number
            rows.append({"id": key, "text": raw["text"], "repeat": repeat})
    if not rows:
        raise SelfscopeError(f"data file {path} holds no documents")
    return rows


def _rows_sha256(rows: list[dict[str, Any]]) -> str:
    """SHA-256 of the rows, each ``json.dumps(row, sort_keys=True)``, concatenated: the organism
    builder's definition (``data_sha256`` in lineage.json), so equal data gives equal hashes."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()


# -- declaring -----------------------------------------------------------------------------------


def declare(
    model: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    workspace: Any,
    parent: str | os.PathLike[str] | None = None,
    scratch: bool = False,
    phase: str = "finetune",
    lr: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    chat: bool | None = None,
    context: int | None = None,
) -> Lineage:
    """Declare that the HF folder ``model`` was trained from ``parent`` (a folder; or from
    random weights: ``scratch``) on the documents in ``data`` as phase ``phase``, with the knobs
    given (None: unknown). Stores it in ``workspace`` (replacing an earlier declaration of the
    same folder) and returns the lineage ``load(model)`` will carry."""
    folder = expand(model)
    if parent is not None and scratch:
        raise SelfscopeError("give either --parent (the model it was trained from) or --scratch")
    if not phase.strip() or "/" in phase:
        raise SelfscopeError(f"phase name {phase!r} must be non-empty and have no '/'")
    for name, value in (("lr", lr), ("epochs", epochs), ("batch size", batch_size)):
        if value is not None and value <= 0:
            raise SelfscopeError(f"{name} must be positive, not {value}")
    if context is not None and context < 2:
        raise SelfscopeError(f"context must be at least 2 tokens, not {context}")
    _config(folder, "MODEL")
    folder = folder.resolve()
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SelfscopeError(
            f"MODEL folder {folder} has no tokenizer files; save the tokenizer there with "
            "tokenizer.save_pretrained(folder) (documents are tokenized with the model's own)"
        )
    parent_folder = None
    if parent is not None:
        parent_folder = expand(parent)
        _same_architecture(folder, parent_folder)
        parent_folder = parent_folder.resolve()
        if parent_folder == folder:
            raise SelfscopeError(f"{folder} cannot be its own parent")
    rows = read_documents(expand(data))
    sha = _rows_sha256(rows)
    root = _root(workspace)
    copy = root / _key(folder) / "data" / f"{phase}-{sha[:12]}.jsonl"
    decl = Declaration(
        model=folder,
        weights_sha256=weights_sha256(folder),
        weight_files=_stat(folder),
        phase=phase,
        parent=parent_folder,
        scratch=scratch,
        data=copy,
        data_source=str(expand(data).resolve()),
        data_sha256=sha,
        documents=len(rows),
        hyperparameters=Hyperparameters(lr=lr, epochs=epochs, batch_size=batch_size),
        renderer=None if chat is None else ("chat-template" if chat else "plain"),
        context=context,
        declared_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    lineage = _resolve(decl, workspace, seen={folder})  # checks the chain before writing
    if not copy.exists():
        atomic.write_jsonl(copy, rows)
    atomic.write_json(declaration_path(folder, workspace), json.loads(decl.model_dump_json()))
    return lineage


def declarations(workspace: Any) -> list[tuple[Declaration, bool]]:
    """Every declaration in ``workspace``, oldest first, each with whether its model's weights
    are still the declared ones."""
    root = _root(workspace)
    out = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        decl = _read(path)
        if decl is not None:
            out.append((decl, decl.model.is_dir() and _unchanged(decl)))
    return sorted(out, key=lambda pair: pair[0].declared_at)


def _read(path: Path) -> Declaration | None:
    if not path.is_file():
        return None
    try:
        return Declaration.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LoadError(
            f"{path} is not a lineage declaration ({exc.__class__.__name__}); declare the "
            "lineage again with `selfscope lineage add`"
        ) from None


# -- loading -------------------------------------------------------------------------------------


def declared_lineage(folder: Path, workspace: Any) -> Lineage | None:
    """The lineage declared for HF folder ``folder`` in ``workspace`` (None: the default
    workspace, if it exists), or ``None`` when there is none. When the folder's weights changed
    since the declaration, a plain ``hf-folder`` lineage whose ``unknown`` says so."""
    decl = _read(declaration_path(folder, workspace))
    if decl is None:
        return None
    return _resolve(decl, workspace, seen={decl.model})


def _max_positions(folder: Path) -> int | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings") or data.get("n_positions")
    return int(value) if isinstance(value, int) else None


def _own_unknowns(decl: Declaration) -> list[Unknown]:
    name, knobs, out = decl.phase, decl.hyperparameters, []

    def add(fact: Any, note: str) -> None:
        out.append(Unknown(phase=name, fact=fact, note=f"phase {name!r}: {note}"))

    if knobs.lr is None:
        add("lr", "learning rate not declared: history.trace weights its documents by 1.0")
    if knobs.epochs is None:
        add("epochs", "epochs not declared: history.trace counts each document as seen once")
    if knobs.batch_size is None:
        add("batch_size", "batch size not declared")
    if decl.renderer is None:
        add("renderer", "renderer not declared (--chat/--no-chat): plain text assumed")
    if decl.context is None:
        n = _max_positions(decl.model)
        add("context", f"context length not declared: documents cut to the model's {n} positions")
    add("order", "the order its batches saw the documents is unknown (nothing can replay it)")
    return out


def _resolve(decl: Declaration, workspace: Any, seen: set[Path]) -> Lineage:
    """The typed lineage of a declaration: the parent's declared phases (or an opaque ``base``
    phase), then the declared one."""
    folder = decl.model
    if not folder.is_dir() or not _unchanged(decl):
        return Lineage(
            kind="hf-folder",
            origin=folder,
            unknown=[
                Unknown(
                    phase=decl.phase,
                    fact="start",
                    note=f"a lineage was declared for {folder} on {decl.declared_at}, but its "
                    "weights changed since; declare it again (`selfscope lineage add`)",
                )
            ],
        )
    own = PhaseRef(
        name=decl.phase,
        checkpoint=folder,
        data=decl.data,
        documents=decl.documents,
        hyperparameters=decl.hyperparameters,
        renderer=decl.renderer,
        context=decl.context,
        data_sha256=decl.data_sha256,
    )
    unknown = _own_unknowns(decl)
    phases: list[PhaseRef] = []
    base_model: str | None = None
    fingerprint: list[Any] = [decl.weights_sha256]
    if decl.scratch:
        base_model = "scratch"
    elif decl.parent is None:
        unknown.insert(
            0,
            Unknown(
                phase=decl.phase,
                fact="start",
                note=f"what phase {decl.phase!r} started from is not declared (no --parent or "
                "--scratch): no parent to compare weights with or to measure the behaviour "
                "before it, and history.trace reads its documents' token gradients at its end, "
                "where a learned behaviour's signal is weak",
            ),
        )
    else:
        above = _parent_lineage(decl.parent, workspace, seen)
        if above is not None:
            phases, base_model = list(above.phases), above.base_model
            unknown = [*above.unknown, *unknown]
            fingerprint.append(str(above.index_dir))
        else:
            phases = [PhaseRef(name=BASE_PHASE, checkpoint=decl.parent)]
            fingerprint.append([f.model_dump() for f in _stat(decl.parent)])
            unknown.insert(
                0,
                Unknown(
                    phase=BASE_PHASE,
                    fact="data",
                    note=f"the base model {decl.parent}'s own training data is unknown: history "
                    f"tools search only {decl.phase!r}'s documents, and origin can tell only "
                    f"whether the behaviour was there before {decl.phase!r}",
                ),
            )
    if decl.phase in {p.name for p in phases}:
        raise SelfscopeError(
            f"phase name {decl.phase!r} is already a phase of {decl.parent}'s lineage "
            f"({', '.join(p.name for p in phases)}); give --phase another name"
        )
    phases.append(own)
    # what the index rows depend on (the knobs only weight scores at query time)
    keep = {"name", "checkpoint", "data_sha256", "renderer", "context"}
    fingerprint.append([p.model_dump(mode="json", include=keep) for p in phases])
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return Lineage(
        kind="declared",
        origin=folder,
        phase=decl.phase,
        phases=phases,
        parent=str(decl.parent) if decl.parent is not None else None,
        base_model=base_model,
        tokenizer=f"the tokenizer in {folder}",
        index_dir=_root(workspace) / _key(folder) / f"index-{digest}",
        unknown=unknown,
    )


def _parent_lineage(parent: Path, workspace: Any, seen: set[Path]) -> Lineage | None:
    """The parent folder's own declared lineage, if it has a current one."""
    if parent in seen:
        raise SelfscopeError(
            f"the declared lineages loop through {parent}; declare a parent that is not a "
            "descendant"
        )
    decl = _read(declaration_path(parent, workspace))
    if decl is None:
        return None
    resolved = _resolve(decl, workspace, seen | {parent})
    return resolved if resolved.kind == "declared" else None


__all__ = [
    "BASE_PHASE",
    "Declaration",
    "declaration_path",
    "declarations",
    "declare",
    "declared_lineage",
    "read_documents",
    "weights_sha256",
]
