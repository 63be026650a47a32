"""The architectures selfscope knows how to introspect, as one table.

Every later tool (adapters, hooks, lenses) maps canonical sites onto a model's own modules, and
that map is written per architecture. A model whose ``config.model_type`` is not in
:data:`SUPPORTED` is refused with a clear message rather than guessed at: a tool that silently
hooks the wrong module returns numbers that look right and are not (STYLE.md #1).

To add an architecture, add its ``model_type`` here *and* its adapter table, with a parity test.
"""

from __future__ import annotations

from selfscope.errors import LoadError

#: ``config.model_type`` -> the family it belongs to (for messages and catalogues).
SUPPORTED: dict[str, str] = {
    "llama": "Llama",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "mistral": "Mistral",
    "gpt2": "GPT-2",
    "gpt_neox": "GPT-NeoX",
    "mixtral": "Mixtral (mixture of experts)",
    "qwen2_moe": "Qwen2-MoE (mixture of experts)",
}


def check_architecture(model_type: object, where: str) -> str:
    """Return ``model_type`` if selfscope supports it; raise :class:`LoadError` otherwise.

    ``where`` names the model (a folder or file) so the one-line message says which one.
    """
    if not isinstance(model_type, str) or not model_type:
        raise LoadError(
            f"{where}: config.json has no model_type; selfscope supports "
            f"{', '.join(SUPPORTED)} causal LMs"
        )
    if model_type not in SUPPORTED:
        raise LoadError(
            f"{where}: architecture {model_type!r} is not supported; selfscope supports "
            f"{', '.join(SUPPORTED)} (convert the model to one of these or add an adapter)"
        )
    return model_type
