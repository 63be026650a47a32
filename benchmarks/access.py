"""Benchmark: capturing the residual stream at every layer of SmolLM2, against the plain forward.

Run: ``.venv/bin/python benchmarks/access.py`` (or ``make bench``). Batch 8 x 64 tokens; each
variant is timed ``--runs`` times, interleaved (so machine noise hits all alike), and the table
gives medians and the ratio to the plain Hugging Face forward measured in the same run. Quality
beside speed: for each capture, the max |resid_post of block i - ``output_hidden_states[i + 1]``|
over blocks 0..L-2 (the last hidden state is taken after the final norm). Every variant runs
under ``torch.no_grad()``.

Peers (the ``bench`` extra; a peer that is not installed or fails to load is said in one line and
its row left out):

* nnsight wraps a deep copy of the loaded model, ``NNsight(copy)``; one ``trace`` saves the
  output of every decoder layer into a list (``nnsight.save([])`` then ``append(layer.output)``).
  A copy, because wrapping installs nnsight's forward on every module (it passes through outside
  a trace but costs about 1% on the plain forward): the plain row stays plain.
* TransformerLens's ``TransformerBridge.boot_transformers(path, hf_model=...)`` runs
  ``run_with_cache`` with ``names_filter`` = every ``blocks.{i}.hook_resid_post``. It wraps a deep
  copy of the loaded model, since booting swaps bridge modules into the model it is given and
  switches it to eager attention, which would change the forward the other rows are timed on.
  The bridge computes attention eagerly, so its difference from the (sdpa) hidden states is
  that kernel's rounding, not the capture's.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import Tensor, nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _doc import write_section

from selfscope.subject import Subject, load
from selfscope.subject.hooks import run
from selfscope.workspace import Workspace

Capture = Callable[[], Sequence[Tensor] | None]  # resid_post of every block, or None (no capture)
INSTALL = "pip install -c constraints.txt -e '.[bench]'"


def nnsight_capture(model: nn.Module, ids: Tensor) -> Capture:
    """Every decoder layer's output, read through nnsight wrapping a copy of ``model``."""
    import nnsight

    wrapped = nnsight.NNsight(copy.deepcopy(model))
    layers = wrapped.model.layers

    def capture() -> Sequence[Tensor]:
        with torch.no_grad(), wrapped.trace(input_ids=ids):
            saved = nnsight.save([])
            for layer in layers:
                saved.append(layer.output)
        return saved  # type: ignore[no-any-return]

    return capture


def bridge_capture(subject: Subject, ids: Tensor) -> Capture:
    """Every ``hook_resid_post``, read through TransformerBridge on a copy of the model."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        str(subject.path),
        hf_model=copy.deepcopy(subject.model),
        tokenizer=subject.tokenizer,
        device="cpu",
    )
    names = [f"blocks.{i}.hook_resid_post" for i in range(subject.n_layers)]

    def capture() -> Sequence[Tensor]:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, names_filter=names)
        return [cache[name] for name in names]

    return capture


def peer(dist: str, build: Callable[[], Capture], notes: list[str]) -> tuple[str, Capture] | None:
    """``dist``'s version and ``build()``; or None, with one line in ``notes`` saying why."""
    try:
        found = version(dist)
        capture = build()
        capture()  # fails here rather than mid-timing
        return found, capture
    except (ImportError, PackageNotFoundError):
        note = f"{dist} is not installed: its row is left out ({INSTALL})."
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        note = f"{dist} failed to load ({type(error).__name__}: {first}): its row is left out."
    notes.append(note)
    print(note)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workspace", default=None, help="reuse a converted SmolLM2")
    args = parser.parse_args()
    started = time.perf_counter()
    ws = Workspace(args.workspace or tempfile.mkdtemp())
    subject = load("smollm2", ws)
    model = subject.model
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (8, 64))
    layers = subject.n_layers
    sites = [f"blocks.{i}.resid_post" for i in range(layers)]

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    def hidden() -> Sequence[Tensor]:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        return out.hidden_states[1:]  # type: ignore[no-any-return]

    def ours() -> Sequence[Tensor]:
        values = run(model, ids, capture=sites).values
        return [values[site] for site in sites]

    notes: list[str] = []
    variants: dict[str, Capture] = {
        "plain HF forward": plain,
        "HF output_hidden_states=True": hidden,
        "selfscope run(capture=every resid_post)": ours,
    }
    # Both peers wrap deep copies: each rewrites the modules of the model it is given.
    bridge = peer("transformer-lens", partial(bridge_capture, subject, ids), notes)
    traced = peer("nnsight", partial(nnsight_capture, model, ids), notes)
    if traced is not None:
        variants[f"nnsight {traced[0]} NNsight(copy).trace, save every layer output"] = traced[1]
    if bridge is not None:
        name = f"transformer-lens {bridge[0]} TransformerBridge.run_with_cache(hook_resid_post)"
        variants[name] = bridge[1]
        notes.append(
            "TransformerBridge computes attention eagerly: its difference is that kernel's "
            "rounding against sdpa (0 against an eager HF forward), not the capture's."
        )

    captured = {name: fn() for name, fn in variants.items()}  # warm-up, and the values compared
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    reference = captured["HF output_hidden_states=True"]
    assert reference is not None

    def worst(values: Sequence[Tensor] | None) -> str:
        if values is None:
            return "—"
        diff = max(float((values[i] - reference[i]).abs().max()) for i in range(layers - 1))
        return f"{diff:.1e}"

    base = statistics.median(times["plain HF forward"])
    lines = [
        "## Residual capture on SmolLM2-135M (batch 8 x 64)",
        "",
        f"`python benchmarks/access.py --runs {args.runs}`, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}. Medians of interleaved runs; the last column is the max "
        f"|capture - output_hidden_states| over blocks 0..{layers - 2} (the reference row is "
        "0 by construction).",
        *(f"\n{note}" for note in notes),
        "",
        "| variant | median s | x plain forward | max abs diff |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f} | {median / base:.3f} | {worst(captured[name])} |")
    text = "\n".join(lines)
    write_section("access", text)
    print(text)
    print(f"elapsed {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
