"""Load a local Hugging Face folder, checking everything that can go wrong first.

``AutoModelForCausalLM.from_pretrained`` is forgiving in ways an introspection tool cannot
afford: a checkpoint with missing tensors loads with those tensors *randomly initialised* (a
warning, no error), and an unknown architecture may fall back to something similar. Here each
failure becomes one :class:`~selfscope.errors.LoadError` line that says what to do: a missing
folder, a folder without ``config.json``, an unsupported ``model_type``, no weights, corrupt or
truncated weights, missing tensors, or a tokenizer that does not load. Nothing is fetched from a
hub: every call passes ``local_files_only=True``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from safetensors import SafetensorError

from selfscope.errors import LoadError
from selfscope.subject.architectures import check_architecture

if TYPE_CHECKING:  # transformers' model classes load on first use (a CLI start stays light)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Files that hold weights in a Hugging Face folder (sharded or not).
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
#: Files from which ``AutoTokenizer`` can build a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
#: Exceptions that mean "these bytes are not the weights they claim to be".
_CORRUPT = (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError)


class LoadedFolder(NamedTuple):
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    architecture: str


def one_line(exc: BaseException, limit: int = 160) -> str:
    """``exc``'s message squeezed onto one line and cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_model_type(folder: Path) -> str:
    """The supported ``model_type`` in ``folder/config.json``, or a :class:`LoadError`."""
    if not folder.exists():
        raise LoadError(f"{folder} does not exist; check the path")
    if not folder.is_dir():
        raise LoadError(f"{folder} is a file; pass a Hugging Face model folder or a .gguf file")
    config = folder / "config.json"
    if not config.is_file():
        raise LoadError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder; "
            "save the model there with model.save_pretrained(folder)"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"{config} is not valid JSON ({one_line(exc)}); rebuild it") from exc
    model_type = data.get("model_type") if isinstance(data, dict) else None
    return check_architecture(model_type, str(folder))


def load_model(folder: Path, device: str = "cpu") -> PreTrainedModel:
    """The float32 causal LM saved in ``folder``, on ``device``, in eval mode."""
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_GLOBS):
        raise LoadError(
            f"{folder} has config.json but no weights (*.safetensors or pytorch_model*.bin); "
            "save them with model.save_pretrained(folder)"
        )
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress is the caller's (a ProgressSink), not a bar
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
        model, info = cast("tuple[PreTrainedModel, dict[str, Any]]", loaded)
    except _CORRUPT as exc:
        raise LoadError(
            f"the weights in {folder} are corrupt or truncated ({one_line(exc)}); "
            "rebuild or re-download them"
        ) from exc
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise LoadError(
            f"the weights in {folder} lack {len(missing)} tensors (e.g. {missing[0]}), which "
            "would be random; the checkpoint is incomplete or corrupt, rebuild or re-download it"
        )
    try:
        cast(torch.nn.Module, model).to(device)  # PreTrainedModel.to is mistyped (@wraps)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise LoadError(f"cannot put the model on device {device!r} ({one_line(exc)})") from exc
    model.eval()
    return model


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder``; its pad token is set to eos when it has none."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LoadError(
            f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer next to the model with tokenizer.save_pretrained(folder)"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # tokenizer backends raise anything; all mean the same here
        raise LoadError(
            f"cannot load the tokenizer in {folder} ({one_line(exc)}); save a working one "
            "there with tokenizer.save_pretrained(folder)"
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_folder(folder: Path, device: str = "cpu") -> LoadedFolder:
    """Check and load the model and tokenizer in the Hugging Face folder ``folder``."""
    architecture = read_model_type(folder)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, device)
    return LoadedFolder(model, tokenizer, architecture)
