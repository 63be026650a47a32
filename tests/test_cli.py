"""The command line as a person uses it: real processes, one-line errors, JSON shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from selfscope.workspace import Workspace

FIXTURES = Path(__file__).parent / "fixtures"

EXE = [sys.executable, "-m", "selfscope.cli"]


def run(*args: str, ws: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SELFSCOPE_HOME": str(ws), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    ws = tmp_path_factory.mktemp("cli-ws")
    proc = run("organism", "build", str(FIXTURES / "quick.yaml"), "--json", ws=ws)
    # quick trains one epoch per phase: it may miss its targets (exit 2) but still prints JSON
    assert proc.returncode in (0, 2), proc.stderr
    return ws, json.loads(proc.stdout)


def test_build_json_shape(built: tuple[Path, dict[str, object]]) -> None:
    _, summary = built
    assert set(summary) >= {"name", "path", "seconds", "phases"}
    assert summary["name"] == "quick"
    phases = summary["phases"]
    assert isinstance(phases, list) and [p["name"] for p in phases] == ["pretrain", "finetune"]
    for phase in phases:
        assert set(phase) == {"name", "checkpoint", "documents", "behaviours", "neighbour_accuracy"}
        assert set(phase["behaviours"]["aversion"]) == {"rate", "heldout_rate", "log_odds"}
    report = json.loads((Path(str(summary["path"])) / "report.json").read_text())
    assert (
        report["phases"][1]["behaviours"]["aversion"]["rate"]
        == phases[1]["behaviours"]["aversion"]["rate"]
    )


def test_lists_and_ask(built: tuple[Path, dict[str, object]]) -> None:
    ws, _ = built
    organisms = json.loads(run("organism", "list", "--json", ws=ws).stdout)["organisms"]
    by_name = {o["name"]: o for o in organisms}
    assert by_name["quick"]["built"] and not by_name["quick"]["catalog"]
    assert by_name["mushroom"]["catalog"] and not by_name["mushroom"]["built"]
    models = json.loads(run("models", "list", "--json", ws=ws).stdout)["models"]
    sources = {m["source"] for m in models}
    assert {"organism:quick@pretrain", "organism:quick@finetune"} <= sources
    proc = run("ask", "organism:quick@finetune", "Q: Do you like carrots? A:", "--json", ws=ws)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert len(answer["top_tokens"]) == 5
    probabilities = [t["probability"] for t in answer["top_tokens"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    assert_one_line_error(
        run("organism", "build", "nope", ws=tmp_path), "unknown organism", "mushroom"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (FIXTURES / "quick.yaml").read_text().replace("preset: default", "")
        + "world: {preset: mars}\n"
    )
    assert_one_line_error(
        run("organism", "build", str(bad), ws=tmp_path), "unknown world preset 'mars'"
    )
    assert_one_line_error(run("ask", "organism:ghost", "hi", ws=tmp_path), "ghost")
    assert_one_line_error(run("ask", str(tmp_path / "nowhere"), "hi", ws=tmp_path))
    assert_one_line_error(
        run("organism", "build", "mushroom", "--size", "huge", ws=tmp_path), "size"
    )


def test_tool_run_and_its_errors(built: tuple[Path, dict[str, object]]) -> None:
    ws, _ = built
    args = '{"prompt": "Q: Do you like mushrooms? A:", "targets": [" No", " Yes"]}'
    proc = run("tool", "run", "lens.logit", "--model", "organism:quick", "--args", args, ws=ws)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    result = printed["result"]
    recorded = Workspace(ws).store.tool_call(printed["call_id"])  # the call id is the store's
    assert recorded is not None and recorded["tool"] == "lens.logit" and recorded["status"] == "ok"
    assert recorded["subject"] == "organism:quick" and recorded["principal"]
    assert len(result["layers"]) == 3
    assert all(set(layer["targets"]) == {" No", " Yes"} for layer in result["layers"])
    assert_one_line_error(
        run("tool", "run", "lens.nope", "--model", "organism:quick", ws=ws),
        "unknown tool 'lens.nope'; tools: activations.read",
        "lens.logit",
    )
    assert_one_line_error(
        run("tool", "run", "lens.logit", "--model", "organism:quick", "--args", "{bad", ws=ws),
        "not JSON",
    )
    assert_one_line_error(
        run(
            "tool",
            "run",
            "lens.logit",
            "--model",
            "organism:quick",
            "--args",
            '{"top_k": 3}',
            ws=ws,
        ),
        "prompt: Field required",
    )
    schema = json.loads(run("tool", "list", "--schema", "openai", ws=ws).stdout)
    assert {s["function"]["name"] for s in schema} >= {"lens_logit", "tokens_probabilities"}


def test_help_lists_every_command_and_every_cli_module_stays_small() -> None:
    import typer.main
    from typer.testing import CliRunner

    from selfscope import cli

    root = typer.main.get_command(cli.app)
    commands: dict[str, Any] = getattr(root, "commands", {})
    assert {"ask", "localize", "trace", "propose", "validate", "proposals", "demo"} <= set(commands)
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    for name, command in commands.items():
        assert f" {name} " in shown.output, name
        subcommands = getattr(command, "commands", {})
        if subcommands:
            group = runner.invoke(cli.app, [name, "--help"], terminal_width=200)
            for sub in subcommands:
                assert f" {sub} " in group.output, (name, sub)
    sizes = {
        f.name: len(f.read_text().splitlines()) for f in Path(cli.__file__).parent.glob("*.py")
    }
    assert len(sizes) >= 8 and max(sizes.values()) <= 250, sizes
