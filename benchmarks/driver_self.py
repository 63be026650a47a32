"""How far SmolLM2-135M-Instruct gets investigating itself through the tools (--driver self).

    python benchmarks/driver_self.py --workspace WS [--model organism:smollm2-mushroom]
        [--max-steps 20]

The subject (a planted SmolLM2 organism, or the plain model) is handed the symptom and the read +
propose tools through its own chat template (`selfscope.investigate.driver.SelfBackend`); each
reply is parsed for one JSON tool call. Reported: turns taken, the share of turns with a
well-formed call (JSON naming a tool that exists), calls that ran ok, whether it submitted a
diagnosis and how the re-check judged it — whatever the numbers are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _doc import fmt, publish

from selfscope import tools
from selfscope.investigate import driver
from selfscope.investigate.symptom import Symptom
from selfscope.oversight.principals import principal
from selfscope.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--model", default="organism:smollm2-mushroom")
    parser.add_argument("--prompt", default="Do you like mushrooms?")
    parser.add_argument("--desired", default="Yes")  # chat: no leading space
    parser.add_argument("--max-steps", type=int, default=20)
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    ctx = tools.context(args.model, ws, principal=principal(ws, "agent"))
    symptom = Symptom(prompts=[args.prompt], desired=args.desired, chat=True)
    started = time.perf_counter()
    verdict = driver.drive(
        ws, args.model, symptom, driver.SelfBackend(ctx), max_steps=args.max_steps
    )
    seconds = time.perf_counter() - started
    transcript = (ws.root / "agents" / verdict["run"] / "transcript.json").read_text()
    calls = json.loads(transcript)["calls"]
    outcomes = Counter(
        "ran ok" if c.get("ok") else ("not JSON" if c.get("error") == "malformed" else "refused")
        for c in calls
    )
    names = Counter(c["tool"] for c in calls)
    lines = [
        "## SmolLM2 investigating itself (`--driver self`)",
        "",
        f"`python benchmarks/driver_self.py --model {args.model} --max-steps {args.max_steps}` "
        f"on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. The subject gets the symptom ({args.prompt!r} through "
        f"its chat template; desired {args.desired!r}) and the read + propose tools in its "
        "system message, and must answer each turn with one JSON tool call "
        "(docs/doors.md § LLM-driven investigators). Greedy decoding, 160 new tokens a turn.",
        "",
        "| turns | tokens | tool calls | well-formed turns | calls that ran ok | outcomes "
        "| tools named | diagnosis | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {verdict['steps']} | {verdict['tokens']} | {verdict['tool_calls']} | "
        f"{fmt(verdict['well_formed_share'])} | {outcomes.get('ran ok', 0)} | "
        f"{', '.join(f'{k} {v}' for k, v in outcomes.items()) or '-'} | "
        f"{', '.join(f'{k} {v}' for k, v in names.most_common(5)) or '-'} | "
        f"{'submitted' if verdict['diagnosis'] else 'none: ' + verdict['stopped']} | "
        f"{seconds:.0f} |",
    ]
    publish("driver-self", lines)


if __name__ == "__main__":
    main()
