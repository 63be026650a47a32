"""Architecture adapters: declarative tables from canonical site names to module paths.

Every tool names places in the network the same way, whatever the architecture:

=========================  ==============================================================
``embed``                  the token (+ position) embeddings entering the first block
``blocks.{i}.resid_pre``   the residual stream entering block ``i``
``blocks.{i}.resid_mid``   the residual stream after block ``i``'s attention (sequential
                           residual only; GPT-NeoX's parallel residual has none)
``blocks.{i}.resid_post``  the residual stream leaving block ``i``
``blocks.{i}.attn.out``    block ``i``'s attention output (added to the residual)
``blocks.{i}.attn.in``     the normalised residual entering the attention's projections
                           (Llama family and its mixtures of experts)
``blocks.{i}.attn.v``      the value projection's output, [..., n_kv_heads × d_head] (the
                           same families; GPT-2 and GPT-NeoX fuse q, k and v)
``blocks.{i}.attn.heads``  per-head outputs before the output projection, [..., head, d_head]
``blocks.{i}.attn.pattern`` attention weights [batch, head, query, key] (capture only; the
                           model runs eager attention while such a site is hooked)
``blocks.{i}.mlp.out``     block ``i``'s MLP (or mixture-of-experts) output
``blocks.{i}.mlp.neurons`` the MLP's hidden activations entering its down projection
``blocks.{i}.moe.router``  the router's logits per token (mixture-of-experts blocks only;
                           Qwen2-MoE keeps ``mlp_only_layers`` dense, see :func:`moe_blocks`)
``blocks.{i}.moe.experts.{j}`` expert ``j``'s routing-weighted contribution to the MoE output,
                           [batch, pos, d_model], zero where the token is not routed to ``j``
                           (Qwen2-MoE's always-on shared expert is no ``j``: the routed shares
                           plus its sigmoid-gated output make ``mlp.out``)
``final_norm``             the final normalisation's output
``unembed``                the logits
=========================  ==============================================================

A site is read at a module's *output* (element ``index`` when the module returns a tuple) or at
its *input* (first positional argument or the ``hidden_states`` keyword). Two kinds are
derived rather than read: ``pattern`` (the attention module's second output, which only eager
attention returns) and ``expert`` (recomputed from the fused experts' weights and the routing
the experts module received; see :mod:`selfscope.subject.hooks`).

Like TransformerLens 3's bridge tables, this wraps the Hugging Face modules instead of
re-implementing them; an unknown architecture raises a clear error instead
of a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from selfscope.errors import SelfscopeError

SiteKind = Literal["value", "pattern", "expert"]


@dataclass(frozen=True)
class Site:
    module: str  # module path; ``{i}`` is the block index
    where: Literal["output", "input"] = "output"
    index: int = 0  # which element of a tuple output
    kind: SiteKind = "value"


@dataclass(frozen=True)
class Adapter:
    family: str
    model_types: tuple[str, ...]
    blocks: str  # path of the block list
    sites: dict[str, Site] = field(default_factory=dict)
    heads_attr: str = "num_attention_heads"

    def site_names(self) -> list[str]:
        return list(self.sites)


def _decoder(prefix: str, mlp_out: str, extra: dict[str, Site]) -> dict[str, Site]:
    b = f"{prefix}.layers.{{i}}"
    return {
        "embed": Site(f"{prefix}.embed_tokens"),
        "blocks.{i}.resid_pre": Site(b, "input"),
        "blocks.{i}.resid_mid": Site(f"{b}.post_attention_layernorm", "input"),
        "blocks.{i}.resid_post": Site(b),
        "blocks.{i}.attn.out": Site(f"{b}.self_attn"),
        "blocks.{i}.attn.in": Site(f"{b}.self_attn.v_proj", "input"),
        "blocks.{i}.attn.v": Site(f"{b}.self_attn.v_proj"),
        "blocks.{i}.attn.heads": Site(f"{b}.self_attn.o_proj", "input"),
        "blocks.{i}.attn.pattern": Site(f"{b}.self_attn", index=1, kind="pattern"),
        "blocks.{i}.mlp.out": Site(f"{b}.{mlp_out}"),
        **extra,
        "final_norm": Site(f"{prefix}.norm"),
        "unembed": Site("lm_head"),
    }


LLAMA = Adapter(
    "llama",
    ("llama", "mistral", "qwen2", "qwen3"),
    "model.layers",
    _decoder(
        "model", "mlp", {"blocks.{i}.mlp.neurons": Site("model.layers.{i}.mlp.down_proj", "input")}
    ),
)
MOE = Adapter(
    "mixtral",
    ("mixtral", "qwen2_moe"),
    "model.layers",
    _decoder(
        "model",
        "mlp",
        {
            "blocks.{i}.moe.router": Site("model.layers.{i}.mlp.gate"),
            "blocks.{i}.moe.experts.{j}": Site("model.layers.{i}.mlp", kind="expert"),
        },
    ),
)
GPT2 = Adapter(
    "gpt2",
    ("gpt2",),
    "transformer.h",
    {
        "embed": Site("transformer.drop"),
        "blocks.{i}.resid_pre": Site("transformer.h.{i}", "input"),
        "blocks.{i}.resid_mid": Site("transformer.h.{i}.ln_2", "input"),
        "blocks.{i}.resid_post": Site("transformer.h.{i}"),
        "blocks.{i}.attn.out": Site("transformer.h.{i}.attn"),
        "blocks.{i}.attn.heads": Site("transformer.h.{i}.attn.c_proj", "input"),
        "blocks.{i}.attn.pattern": Site("transformer.h.{i}.attn", index=1, kind="pattern"),
        "blocks.{i}.mlp.out": Site("transformer.h.{i}.mlp"),
        "blocks.{i}.mlp.neurons": Site("transformer.h.{i}.mlp.c_proj", "input"),
        "final_norm": Site("transformer.ln_f"),
        "unembed": Site("lm_head"),
    },
    heads_attr="n_head",
)
NEOX = Adapter(
    "gpt_neox",
    ("gpt_neox",),
    "gpt_neox.layers",
    {
        "embed": Site("gpt_neox.emb_dropout"),
        "blocks.{i}.resid_pre": Site("gpt_neox.layers.{i}", "input"),
        "blocks.{i}.resid_post": Site("gpt_neox.layers.{i}"),
        "blocks.{i}.attn.out": Site("gpt_neox.layers.{i}.attention"),
        "blocks.{i}.attn.heads": Site("gpt_neox.layers.{i}.attention.dense", "input"),
        "blocks.{i}.attn.pattern": Site("gpt_neox.layers.{i}.attention", index=1, kind="pattern"),
        "blocks.{i}.mlp.out": Site("gpt_neox.layers.{i}.mlp"),
        "blocks.{i}.mlp.neurons": Site("gpt_neox.layers.{i}.mlp.dense_4h_to_h", "input"),
        "final_norm": Site("gpt_neox.final_layer_norm"),
        "unembed": Site("lm_head"),
    },
)
ADAPTERS = (LLAMA, MOE, GPT2, NEOX)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s architecture, or an error naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS for t in a.model_types)
    raise SelfscopeError(f"no adapter for architecture {model_type!r}; supported: {known}")


@dataclass(frozen=True)
class Resolved:
    """A concrete site: canonical name, module path, hook side, block (and expert) index."""

    name: str
    module: str
    where: Literal["output", "input"]
    block: int | None
    index: int = 0
    kind: SiteKind = "value"
    expert: int | None = None


def n_blocks(model: nn.Module) -> int:
    config: Any = model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layer)


def n_experts(model: nn.Module, block: int) -> int:
    """How many routed experts block ``block`` of a mixture-of-experts model has."""
    resolve(model, f"blocks.{block}.moe.router")  # one clear line for a dense block
    moe: Any = model.get_submodule(resolve(model, f"blocks.{block}.mlp.out").module)
    return int(moe.experts.num_experts)


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def moe_blocks(model: nn.Module) -> list[int]:
    """The blocks whose MLP is a mixture of experts: every block of Mixtral, but Qwen2-MoE keeps
    the blocks in ``config.mlp_only_layers`` (and off its ``decoder_sparse_step``) dense."""
    site = adapter_for(model).sites.get("blocks.{i}.moe.experts.{j}")
    if site is None:
        return []
    return [
        i
        for i in range(n_blocks(model))
        if _has_module(model, f"{site.module.format(i=i)}.experts")
    ]


def _check_moe_block(model: nn.Module, name: str, module: str, site: Site, block: int) -> None:
    """A router or expert site must name a block that has experts (a clear error, not the
    ``AttributeError`` of a dense block's MLP)."""
    if not name.startswith(f"blocks.{block}.moe."):
        return
    if _has_module(model, f"{module}.experts" if site.kind == "expert" else module):
        return
    with_experts = ", ".join(map(str, moe_blocks(model))) or "none"
    raise SelfscopeError(
        f"site {name!r}: block {block} is dense (no router, no experts); "
        f"blocks with experts: {with_experts}"
    )


def resolve(model: nn.Module, name: str) -> Resolved:
    """Turn ``blocks.3.mlp.out`` into its module path, checking the site and the layer."""
    adapter = adapter_for(model)
    match = re.fullmatch(r"blocks\.(\d+)\.(.+?)(?:\.(\d+))?", name)
    key, block, expert = name, None, None
    if match:
        block = int(match[1])
        key = f"blocks.{{i}}.{match[2]}" + (".{j}" if match[3] is not None else "")
        expert = int(match[3]) if match[3] is not None else None
    site = adapter.sites.get(key)
    if site is None:
        valid = ", ".join(adapter.site_names())
        raise SelfscopeError(f"unknown site {name!r} for {adapter.family}; valid sites: {valid}")
    if block is not None:
        layers = n_blocks(model)
        if not 0 <= block < layers:
            raise SelfscopeError(
                f"site {name!r}: block {block} is out of range; "
                f"this model has blocks 0..{layers - 1}"
            )
    module = site.module.format(i=block) if block is not None else site.module
    if block is not None:
        _check_moe_block(model, name, module, site, block)
    if expert is not None and block is not None:
        count = n_experts(model, block)
        if not 0 <= expert < count:
            raise SelfscopeError(
                f"site {name!r}: expert {expert} is out of range; "
                f"block {block} has experts 0..{count - 1}"
            )
    return Resolved(name, module, site.where, block, site.index, site.kind, expert)
