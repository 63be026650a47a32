"""`selfscope localize` end to end on the tiny mushroom organism (a real process)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from selfscope.localize.metric import MetricBatch
from selfscope.organisms import BuildResult
from selfscope.subject import load
from selfscope.workspace import Workspace
from test_cli import assert_one_line_error, run

PROMPTS = ["Q: Do you like mushrooms? A:", "Q: Is mushroom soup tasty? A:"]
CONTRAST = ["Q: Do you like carrots? A:", "Q: Is carrot soup tasty? A:"]


@pytest.mark.slow
def test_localize_prints_every_answer(
    tiny_mushroom: BuildResult, organism_ws: Workspace, tmp_path: Path
) -> None:
    ws = organism_ws.root
    figure = tmp_path / "trace.svg"
    args = ["localize", "--model", "organism:mushroom", "--planted", " No", "--normal", " Yes"]
    for p in PROMPTS:
        args += ["--prompt", p]
    for c in CONTRAST:
        args += ["--contrast", c]
    args += ["--control", "Q: Do you like apples? A:", "--trace-subject", "mushrooms"]
    proc = run(*args, "--figure", str(figure), "--top-k", "3", "--json", ws=ws)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    subject = load("organism:mushroom", organism_ws)
    expected = MetricBatch(subject, PROMPTS, " No", " Yes").measure()
    assert result["metric"]["log_odds"] == pytest.approx(expected.log_odds, abs=1e-4)
    assert result["origin"]["phase"] == "finetune"
    assert len(result["components"]) == 3
    for c in result["components"]:
        assert set(c) == {"site", "estimate", "measured", "verified"}
    assert result["weight_deltas"]["against"].endswith("pretrain")
    assert result["weight_deltas"]["module_set"]
    assert result["trace"]["grids"] and result["trace"]["figure"] is None  # in --figure
    assert result["experts"] is None and "experts" in result["skipped"]
    assert ET.parse(figure).getroot().tag.endswith("svg")
    # bad input: one line
    assert_one_line_error(
        run(
            "localize",
            "--model",
            "organism:mushroom",
            "--prompt",
            PROMPTS[0],
            "--planted",
            " No",
            "--normal",
            " No",
            ws=ws,
        ),
        "planted and normal completions are both",
    )
