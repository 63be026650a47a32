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
it is given in that shape too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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
    ) -> None:
        self.site, self.heads, self.store = site, heads, store
        self.capture, self.patch, self.on_capture = capture, patch, on_capture

    def _view(self, value: Tensor) -> Tensor:
        if self.heads is None:
            return value
        return value.view(*value.shape[:-1], self.heads, value.shape[-1] // self.heads)

    def apply(self, value: Tensor) -> Tensor:
        """The value downstream sees at this site (patched or not); records it if captured."""
        viewed = self._view(value)
        if self.patch is not None:
            new = self.patch(viewed) if callable(self.patch) else self.patch
            viewed = new.to(viewed.dtype).to(viewed.device).expand_as(viewed)
        if self.capture:
            self.store[self.site.name] = viewed.detach().clone()
            self.on_capture()
        return viewed.reshape(value.shape) if self.heads is not None else viewed

    def forward_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self.apply(output[0]), *output[1:])
        return self.apply(output)

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (self.apply(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self.apply(kwargs["hidden_states"])
        return args, kwargs


@contextmanager
def hooked(
    model: nn.Module,
    *,
    capture: Sequence[str] = (),
    patch: Mapping[str, Patch] | None = None,
    stop_when_captured: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Hook ``capture`` and ``patch`` sites for the forward passes run inside the block.

    Yields the dict that captured values land in (keyed by site name). With
    ``stop_when_captured``, the forward raises an internal stop once every capture site has
    fired: use :func:`run`, which catches it.
    """
    patch = dict(patch or {})
    names = list(dict.fromkeys([*capture, *patch]))
    sites = {n: resolve(model, n) for n in names}  # validates every name before hooking
    store: dict[str, Tensor] = {}
    wanted = set(capture)

    def on_capture() -> None:
        if stop_when_captured and wanted <= store.keys():
            raise _StopForward

    handles = []
    try:
        for name, site in sites.items():
            hook = _SiteHook(
                site, _heads(model, site), store, name in wanted, patch.get(name), on_capture
            )
            module = model.get_submodule(site.module)
            if site.where == "output":
                handles.append(module.register_forward_hook(hook.forward_hook))
            else:
                handles.append(module.register_forward_pre_hook(hook.pre_hook, with_kwargs=True))
        yield store
    finally:
        for handle in handles:
            handle.remove()


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
