"""Convert a ``.gguf`` file once into a cached float32 safetensors folder.

GGUF is llama.cpp's single-file format: quantised tensors (e.g. Q4_1) plus the config and the
tokenizer as metadata. ``transformers`` can read it (``from_pretrained(folder,
gguf_file=name)``), dequantising every tensor to float32, but that takes seconds per load and the
result refuses ``save_pretrained`` ("quantized with gguf and is not serializable"). So the first
load converts: it builds a fresh model from the same config without the quantisation config,
copies the dequantised state dict into it (tied embeddings stay tied), saves it with the
tokenizer, reloads the saved folder and checks that its logits equal the GGUF model's. Later
loads read the folder, keyed by the file's SHA-256:

```
<workspace>/models/gguf-<sha256[:16]>/    config.json, model.safetensors, tokenizer files,
                                           conversion.json (where it came from)
store: models['gguf:<sha256>'] -> that folder
```

The folder is built under a hidden staging name and renamed into place only when complete and
verified, so a crash at any point leaves no folder that a later load would trust.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from selfscope.atomic import fsync_path, fsync_tree, staging_dir
from selfscope.errors import LoadError
from selfscope.subject.architectures import check_architecture
from selfscope.subject.hf import load_model, one_line, read_model_type

if TYPE_CHECKING:
    from transformers import PreTrainedModel
from selfscope.workspace import Workspace

_CHUNK = 1 << 20
#: A staging folder untouched for this long belongs to a conversion that was killed.
_STALE_SECONDS = 3600.0
#: Largest |difference| allowed between the GGUF model's logits and the converted folder's.
_TOLERANCE = 1e-5


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MB chunks (~0.1 s per 100 MB, cached)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def store_key(sha256: str) -> str:
    """The key of a converted GGUF in the store's ``models`` table."""
    return f"gguf:{sha256}"


def cache_folder(workspace: Workspace, sha256: str) -> Path:
    """Where the conversion of the GGUF file with this hash lives (it may not exist yet)."""
    return workspace.models_dir / f"gguf-{sha256[:16]}"


def converted_folder(gguf_path: Path, workspace: Workspace) -> Path:
    """The safetensors folder for ``gguf_path``, converting it on first use.

    Raises :class:`LoadError` for a missing, corrupt or unsupported file.
    """
    if not gguf_path.is_file():
        raise LoadError(f"{gguf_path} does not exist; check the path")
    sha256 = file_sha256(gguf_path)
    folder = cache_folder(workspace, sha256)
    if not folder.is_dir():
        _remove_stale_staging(folder)
        _convert(gguf_path, sha256, folder)
    row = workspace.store.model(store_key(sha256))
    if row is None or row.path != str(folder) or row.source != str(gguf_path):
        workspace.store.record_model(
            store_key(sha256),
            source=str(gguf_path),
            path=str(folder),
            architecture=read_model_type(folder),
            parameters=_count_parameters(folder),
        )
    return folder


def _load_gguf(gguf_path: Path) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as exc:  # the GGUF reader raises many kinds; all mean "unreadable"
        raise LoadError(
            f"cannot read {gguf_path} as a GGUF causal LM ({one_line(exc)}); the file is "
            "corrupt, truncated or of an architecture transformers cannot dequantise; "
            "re-download it"
        ) from exc
    check_architecture(model.config.model_type, str(gguf_path))
    return model


def _unquantised_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain float32 model with ``model``'s config (minus quantisation) and weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    output = fresh.get_output_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied and output is not None and output.weight is not fresh.get_input_embeddings().weight:
        raise LoadError("converting the GGUF lost the tied embeddings; report this bug")
    fresh.eval()
    return fresh


def _check_same_logits(reference: PreTrainedModel, converted: PreTrainedModel) -> None:
    vocab = int(reference.config.vocab_size)
    ids = (torch.arange(1, 17) * 7919 % vocab).unsqueeze(0)
    with torch.no_grad():
        expected = reference(ids).logits
        actual = converted(ids).logits
    diff = float((expected - actual).abs().max())
    if diff > _TOLERANCE:
        raise LoadError(
            f"the converted GGUF differs from the original (max |Δlogit| = {diff:.2e}); "
            "report this bug"
        )


def _convert(gguf_path: Path, sha256: str, folder: Path) -> None:
    import transformers
    from transformers import AutoTokenizer

    started = time.perf_counter()
    original = _load_gguf(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
        )
    except Exception as exc:
        raise LoadError(
            f"cannot read the tokenizer in {gguf_path} ({one_line(exc)}); re-download the file"
        ) from exc
    fresh = _unquantised_copy(original)
    with staging_dir(folder.parent, folder.name) as staging:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        del fresh
        _check_same_logits(original, load_model(staging))
        provenance = {
            "source": str(gguf_path),
            "sha256": sha256,
            "transformers": transformers.__version__,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (staging / "conversion.json").write_text(json.dumps(provenance, indent=2) + "\n")
        fsync_tree(staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent conversion that finished first
                raise
            shutil.rmtree(staging, ignore_errors=True)
        fsync_path(folder.parent)


def _remove_stale_staging(folder: Path) -> None:
    """Delete half-built staging folders of ``folder`` left by a killed conversion.

    They are hidden (``.<name>.<random>``) and never loaded; a conversion takes well under a
    minute, so one older than :data:`_STALE_SECONDS` is not in progress anywhere.
    """
    if not folder.parent.is_dir():
        return
    for leftover in folder.parent.glob(f".{folder.name}.*"):
        if leftover.is_dir() and time.time() - leftover.stat().st_mtime > _STALE_SECONDS:
            shutil.rmtree(leftover, ignore_errors=True)


def _count_parameters(folder: Path) -> int:
    """Parameters stored in ``folder``'s safetensors files (tied tensors are stored once)."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = handle.get_slice(name).get_shape()
                total += int(torch.Size(shape).numel())
    return total
