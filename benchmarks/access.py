"""Benchmark: capturing the residual stream at every layer of SmolLM2, against the plain forward.

Run: ``.venv/bin/python benchmarks/access.py`` (or ``make bench``). Batch 8 x 64 tokens; each
variant is timed ``--runs`` times, interleaved (so machine noise hits all alike), and the table
gives medians and the ratio to the plain Hugging Face forward measured in the same run. Quality
beside speed: the max |difference| of the captured residuals from ``output_hidden_states``.
nnsight / TransformerLens columns are for the senses issue (not installed yet).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _doc import write_section

from selfscope.subject import load
from selfscope.subject.hooks import run
from selfscope.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workspace", default=None, help="reuse a converted SmolLM2")
    args = parser.parse_args()
    ws = Workspace(args.workspace or tempfile.mkdtemp())
    subject = load("smollm2", ws)
    model = subject.model
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (8, 64))
    layers = subject.n_layers
    sites = [f"blocks.{i}.resid_post" for i in range(layers)]

    def plain() -> object:
        with torch.no_grad():
            return model(input_ids=ids)

    def hidden() -> object:
        with torch.no_grad():
            return model(input_ids=ids, output_hidden_states=True)

    def capture() -> object:
        return run(model, ids, capture=sites)

    variants: dict[str, Callable[[], object]] = {
        "plain HF forward": plain,
        "HF output_hidden_states=True": hidden,
        "selfscope run(capture=every resid_post)": capture,
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.runs):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    reference = hidden().hidden_states  # type: ignore[attr-defined]
    captured = capture().values  # type: ignore[attr-defined]
    worst = max(
        float((captured[f"blocks.{i}.resid_post"] - reference[i + 1]).abs().max())
        for i in range(layers - 1)
    )
    base = statistics.median(times["plain HF forward"])
    lines = [
        "## Residual capture on SmolLM2-135M (batch 8 x 64)",
        "",
        f"`python benchmarks/access.py --runs {args.runs}`, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}. Medians of interleaved runs; max |capture - "
        f"output_hidden_states| over layers 0..{layers - 2}: {worst:.1e}.",
        "",
        "| variant | median s | x plain forward |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f} | {median / base:.3f} |")
    text = "\n".join(lines)
    write_section("access", text)
    print(text)


if __name__ == "__main__":
    main()
