"""Scoped hooks: capture, patch and ablate canonical sites, and nothing else.

Activation patching and ablation are the basic interventions of interpretability: run the
model, replace the value at one site (with a value from another run, zeros, or a mean), and
measure what changes downstream (Vig et al. 2020; Meng et al. 2022, "Locating and Editing
Factual Associations in GPT"). This module does the plumbing, following three habits:

* **pay only for what you observe** — hooks are registered only on the requested sites, and a
  capture that needs no logits stops the forward pass right after the last requested site;
* **scoped** — every hook is removed when the ``with`` block exits, even on error;
* **canonical names** — sites are named as in :mod:`selfscope.subject.adapters`, whatever the
  architecture.

``blocks.{i}.attn.heads`` is presented per head, ``[batch, pos, head, d_head]``, and a patch for
it is given in that shape too. ``blocks.{i}.attn.pattern`` ``[batch, head, query, key]`` can be
captured, not patched; while one is hooked the model runs eager attention (the fused kernels
never materialise the weights) and its previous implementation is restored on exit.
``blocks.{i}.moe.experts.{j}`` is expert ``j``'s routing-weighted output, recomputed from the
experts' weights and the routing the fused experts module received; patching it replaces that
contribution inside the MoE output (``out + (patched - expert_j)``, so patching a share with
itself leaves the output bit-identical). With ``keep_grad`` the captured tensors stay in the
autograd graph and keep their ``.grad`` after ``backward()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from selfscope.errors import SelfscopeError
from selfscope.subject.adapters import Resolved, adapter_for, resolve

Patch = Tensor | Callable[[Tensor], Tensor]


class _StopForward(Exception):
    """Raised inside a hook once every requested site is captured (caught by :func:`run`)."""


@dataclass
class RunResult:
    logits: Tensor | None  # None when the forward stopped early
    values: dict[str, Tensor]


def _heads(model: nn.Module, site: Resolved) -> int | None:
    if not site.name.endswith(".attn.heads"):
        return None
    adapter = adapter_for(model)
    config: Any = model.config
    return int(getattr(config, adapter.heads_attr))


class _SiteHook:
    def __init__(
        self,
        site: Resolved,
        heads: int | None,
        store: dict[str, Tensor],
        capture: bool,
        patch: Patch | None,
        on_capture: Callable[[], None],
        keep_grad: bool = False,
    ) -> None:
        self.site, self.heads, self.store = site, heads, store
        self.capture, self.patch, self.on_capture = capture, patch, on_capture
        self.keep_grad = keep_grad
        self.routing: tuple[Tensor, Tensor, Tensor] | None = None  # expert sites only

    def _view(self, value: Tensor) -> Tensor:
        if self.heads is None:
            return value
        return value.view(*value.shape[:-1], self.heads, value.shape[-1] // self.heads)

    def _patched(self, value: Tensor) -> Tensor:
        if self.patch is None:
            return value
        new = self.patch(value) if callable(self.patch) else self.patch
        return new.to(value.dtype).to(value.device).expand_as(value)

    def _record(self, value: Tensor) -> None:
        if not self.capture:
            return
        if self.keep_grad and value.requires_grad:
            value.retain_grad()
            self.store[self.site.name] = value
        else:
            self.store[self.site.name] = value.detach().clone()
        self.on_capture()

    def apply(self, value: Tensor) -> Tensor:
        """The value downstream sees at this site (patched or not); records it if captured."""
        viewed = self._patched(self._view(value))
        self._record(viewed)
        return viewed.reshape(value.shape) if self.heads is not None else viewed

    def forward_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self.site.kind == "expert":
            return self._expert(module, output)
        if isinstance(output, tuple):
            i = self.site.index
            if self.site.kind == "pattern":
                if output[i] is None:
                    raise SelfscopeError(f"{self.site.name}: the attention returned no weights")
                self._record(output[i])
                return output
            return (*output[:i], self.apply(output[i]), *output[i + 1 :])
        return self.apply(output)

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (self.apply(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self.apply(kwargs["hidden_states"])
        return args, kwargs

    # -- mixture-of-experts: one expert's share of the fused experts' output --------------------
    def routing_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        inputs = [*args, *kwargs.values()]
        self.routing = (inputs[0], inputs[1], inputs[2])  # tokens, top-k index, top-k weights

    def _expert(self, block: nn.Module, output: Tensor) -> Tensor:
        if self.routing is None:
            raise SelfscopeError(f"{self.site.name}: the experts module did not run")
        tokens, index, weights = self.routing
        experts: Any = block.get_submodule("experts")
        j = self.site.expert
        assert j is not None
        token, slot = torch.nonzero(index.eq(j), as_tuple=True)
        gate, up = nn.functional.linear(tokens[token], experts.gate_up_proj[j]).chunk(2, dim=-1)
        hidden = nn.functional.linear(experts.act_fn(gate) * up, experts.down_proj[j])
        share = torch.zeros_like(tokens).index_add(
            0, token, (hidden * weights[token, slot, None]).to(tokens.dtype)
        )
        share = share.view(output.shape)
        new = self._patched(share)
        self._record(new)
        return output if self.patch is None else output + (new - share)  # exact when new == share


def _check_experts(model: nn.Module, site: Resolved) -> None:
    experts: Any = model.get_submodule(site.module).experts
    layout = (getattr(experts, "is_transposed", False), getattr(experts, "has_bias", False))
    if layout != (False, False) or not getattr(experts, "is_concatenated", True):
        raise SelfscopeError(
            f"{site.name}: this experts layout (transposed, biased or interleaved) is not supported"
        )


@contextmanager
def hooked(
    model: nn.Module,
    *,
    capture: Sequence[str] = (),
    patch: Mapping[str, Patch] | None = None,
    stop_when_captured: bool = False,
    keep_grad: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Hook ``capture`` and ``patch`` sites for the forward passes run inside the block.

    Yields the dict that captured values land in (keyed by site name). With
    ``stop_when_captured``, the forward raises an internal stop once every capture site has
    fired: use :func:`run`, which catches it. With ``keep_grad``, captured values are the live
    tensors (``retain_grad()``), so their ``.grad`` is filled by a later ``backward()``.
    """
    patch = dict(patch or {})
    names = list(dict.fromkeys([*capture, *patch]))
    sites = {n: resolve(model, n) for n in names}  # validates every name before hooking
    for name, site in sites.items():
        if site.kind == "pattern" and name in patch:
            raise SelfscopeError(
                f"{name} can be captured, not patched; patch blocks.{site.block}.attn.heads instead"
            )
        if site.kind == "expert":
            _check_experts(model, site)
    store: dict[str, Tensor] = {}
    wanted = set(capture)

    def on_capture() -> None:
        if stop_when_captured and wanted <= store.keys():
            raise _StopForward

    handles = []
    config: Any = model.config
    attention = getattr(config, "_attn_implementation", None)
    eager = any(site.kind == "pattern" for site in sites.values()) and attention != "eager"
    try:
        if eager:
            model.set_attn_implementation("eager")  # type: ignore[operator]
        for name, site in sites.items():
            hook = _SiteHook(
                site,
                _heads(model, site),
                store,
                name in wanted,
                patch.get(name),
                on_capture,
                keep_grad,
            )
            module = model.get_submodule(site.module)
            if site.kind == "expert":
                handles.append(
                    module.get_submodule("experts").register_forward_hook(
                        hook.routing_hook, with_kwargs=True
                    )
                )
            if site.where == "output":
                handles.append(module.register_forward_hook(hook.forward_hook))
            else:
                handles.append(module.register_forward_pre_hook(hook.pre_hook, with_kwargs=True))
        yield store
    finally:
        for handle in handles:
            handle.remove()
        if eager:
            model.set_attn_implementation(attention)  # type: ignore[operator]


def run(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    capture: Sequence[str] = (),
    patch: Mapping[str, Patch] | None = None,
    need_logits: bool = True,
) -> RunResult:
    """One forward pass with hooks; without ``need_logits`` it stops after the last capture."""
    stop = bool(capture) and not need_logits
    with (
        torch.no_grad(),
        hooked(model, capture=capture, patch=patch, stop_when_captured=stop) as store,
    ):
        try:
            out = model(input_ids=input_ids, attention_mask=attention_mask)
            logits: Tensor | None = out.logits
        except _StopForward:
            logits = None
    return RunResult(logits, dict(store))


def zero_ablation() -> Patch:
    return torch.zeros_like


def mean_ablation(reference: Tensor) -> Patch:
    """Replace a site's value by its mean over the reference run's batch and positions."""
    mean = reference.mean(dim=(0, 1), keepdim=True)
    return lambda value: mean.expand_as(value)


def resample_ablation(reference: Tensor, generator: torch.Generator | None = None) -> Patch:
    """Replace each batch row's value by a randomly drawn row of a reference run on other inputs
    (resample ablation, Chan et al. 2022): the site keeps a realistic value that carries none of
    this input's information. The reference must have the same positions as the patched run."""

    def patch(value: Tensor) -> Tensor:
        if reference.shape[1:] != value.shape[1:]:
            raise SelfscopeError(
                f"resample ablation: reference rows have shape {tuple(reference.shape[1:])}, "
                f"the site has {tuple(value.shape[1:])}; run the reference on inputs of the "
                "same length"
            )
        rows = torch.randint(0, reference.shape[0], (value.shape[0],), generator=generator)
        return reference[rows]

    return patch
