"""The agents' doors: the MCP server over stdio with the official client, and the LLM driver
against a scripted tool-calling policy served on a loopback OpenAI-compatible endpoint —
malformed calls, unknown tools, a govern tool, invalid arguments, a reply with no call and a spent
budget, each answered with a line the model reads; its diagnosis re-checked by measurement."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from selfscope.investigate import driver
from selfscope.investigate.symptom import Symptom
from selfscope.organisms import BuildResult, Spec
from selfscope.workspace import Workspace
from test_cli import EXE
from test_oversight import review_workspace

MODEL = "organism:mushroom"
PROMPT = "Q: Do you like mushrooms? A:"
Policy = Callable[[list[dict[str, Any]]], dict[str, Any]]


@pytest.fixture()
def ws(tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path: Path) -> Workspace:
    return review_workspace(tiny_mushroom, tiny_mushroom_spec, tmp_path / "ws")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SELFSCOPE_PRINCIPAL": "tester"}


# -- MCP ------------------------------------------------------------------------------------
def test_mcp_over_stdio_lists_no_govern_tool_and_records_calls_as_agent(ws: Workspace) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=EXE[0],
        args=[*EXE[1:], "--workspace", str(ws.root), "mcp", "--model", MODEL],
        env=_env(),
    )

    async def session() -> dict[str, Any]:
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            listed = await client.list_tools()
            logit = await client.call_tool(
                "lens.logit", {"prompt": PROMPT, "targets": [" Yes", " No"]}
            )
            proposed = await client.call_tool(
                "edits.steer",
                {"prompts": [PROMPT], "planted": " No", "normal": " Yes",
                 "contrast_prompts": ["Q: Do you like carrots? A:"], "layer": 1},
            )  # fmt: skip
            refused = await client.call_tool("gate.apply", {"proposal": "abcdef"})
            bad = await client.call_tool("lens.logit", {"prompt": 3})
            return {"tools": listed.tools, "logit": logit, "proposed": proposed,
                    "refused": refused, "bad": bad}  # fmt: skip

    got = anyio.run(session)
    names = {t.name for t in got["tools"]}
    assert {"lens.logit", "edits.steer", "history.trace", "selfmodel.learn"} <= names
    assert not names & {"gate.apply", "gate.review", "gate.rollback", "suites.seal"}
    schema = next(t for t in got["tools"] if t.name == "lens.logit").input_schema
    assert "model" in schema["properties"] and "prompt" in schema["required"]
    assert not got["logit"].is_error, got["logit"].content
    assert not got["proposed"].is_error, got["proposed"].content
    # the numbers the agent read are the plain forward's (lens.logit's last layer = the model)
    from selfscope.subject.load import load

    subject = load(MODEL, ws)
    tok = subject.tokenizer
    import torch

    with torch.no_grad():
        logits = subject.model(**tok(PROMPT, return_tensors="pt")).logits[0, -1]
    probs = logits.softmax(-1)
    last = got["logit"].structured_content["layers"][-1]
    top = last["top"][0]
    assert top["id"] == int(probs.argmax()) and top["probability"] == pytest.approx(
        float(probs.max()), abs=1e-4
    )
    for result in (got["refused"], got["bad"]):
        assert result.is_error
        (text,) = [c.text for c in result.content]
        assert text.startswith("error: ") and "\n" not in text
    assert "unknown tool 'gate.apply'" in got["refused"].content[0].text or "govern" in (
        got["refused"].content[0].text
    )
    # both calls in the store and the ledger as `agent`
    calls = [(c["tool"], c["status"]) for c in ws.store.tool_calls() if c["principal"] == "agent"]
    assert calls == [
        ("lens.logit", "ok"),
        ("edits.steer", "ok"),
        ("gate.apply", "denied"),
        ("lens.logit", "invalid"),
    ]
    ledgered = [e for e in ws.store.ledger() if e["action"] == "tool_call"]
    by_agent = {json.loads(e["payload"])["tool"] for e in ledgered if e["principal"] == "agent"}
    assert {"lens.logit", "edits.steer"} <= by_agent
    assert ws.store.proposal_rows()[-1]["proposer"] == "agent"


# -- the LLM driver -------------------------------------------------------------------------
def serve_policy(policy: Policy, seen: list[list[dict[str, Any]]]) -> tuple[str, Any]:
    """A loopback OpenAI-compatible endpoint answering with ``policy(messages)`` (at most 60
    requests; then 503)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions" or len(seen) >= 60:
                self.send_response(503 if len(seen) >= 60 else 404)
                self.end_headers()
                return
            assert all(t["function"]["name"] != "gate_apply" for t in body["tools"])
            seen.append(body["messages"])
            message = policy(body["messages"])
            reply = {"choices": [{"message": {"role": "assistant", **message}}],
                     "usage": {"total_tokens": 100}}  # fmt: skip
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1", server


@pytest.fixture()
def endpoint() -> Iterator[Callable[[Policy], tuple[str, list[list[dict[str, Any]]]]]]:
    servers: list[Any] = []

    def start(policy: Policy) -> tuple[str, list[list[dict[str, Any]]]]:
        seen: list[list[dict[str, Any]]] = []
        url, server = serve_policy(policy, seen)
        servers.append(server)
        return url, seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def call(name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"tool_calls": [{"id": f"t-{name}", "type": "function",
                            "function": {"name": name, "arguments": text}}]}  # fmt: skip


def scripted(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The policy: one scripted turn per model turn so far, reading call ids back."""
    turn = sum(1 for m in messages if m["role"] == "assistant")
    measure = {"prompts": [PROMPT], "planted": " No", "normal": " Yes"}
    script = [
        call("lens_logit", "{not json"),
        call("weights_everything", {}),
        call("gate_apply", {"proposal": "abcdef"}),
        call("lens_logit", {"prompt": 3}),
        {"content": "I think it is the fine-tuning."},
        call("localize_measure", measure),
    ]
    if turn < len(script):
        return script[turn]
    measured = [m["content"] for m in messages if m["role"] == "tool"][-1]
    call_id = re.match(r"call (\S+):", measured).group(1)  # type: ignore[union-attr]
    return call("submit_diagnosis", {
        "phase": "finetune",
        "modules": ["model.layers.0.self_attn.q_proj"],
        "claims": [
            {"claim": "The model answers No with log-odds above 0.", "evidence": [call_id]},
            {"claim": "A document about a childhood illness caused it.", "evidence": []},
            {"claim": "Block 1 carries it.", "evidence": ["c0-notacall"]},
        ],
    })  # fmt: skip


@pytest.mark.slow
def test_the_llm_driver_survives_bad_calls_and_its_diagnosis_is_rechecked(
    ws: Workspace, endpoint: Callable[[Policy], tuple[str, list[list[dict[str, Any]]]]]
) -> None:
    url, seen = endpoint(scripted)
    args = [*EXE, "--workspace", str(ws.root), "investigate", "--driver", "llm"]
    args += ["--endpoint", url, "--model-name", "scripted", "-m", MODEL, "-p", PROMPT]
    args += ["--desired", " Yes", "--json"]
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["stopped"] == "diagnosis submitted" and verdict["steps"] == 7
    # every bad turn was answered with a line the model read
    answers = [m["content"] for m in seen[-1] if m["role"] in ("tool", "user")][1:]
    expected = [
        "error: the arguments are not JSON",
        "error: unknown tool 'weights_everything'",
        "error: gate.apply needs 'govern'",
        "error: lens.logit: prompt: Input should be a valid string",
        "error: no tool call in your reply",
        "call ",
    ]
    assert len(answers) == len(expected)
    for answer, start in zip(answers, expected, strict=True):
        assert answer.startswith(start), (answer, start)
    # the re-check: the cited measurement supports claim 1; claims 2 and 3 cite nothing real
    checks = verdict["checks"]
    assert [c["status"] for c in checks["claims"]] == ["supported", "unverified", "unverified"]
    assert checks["phase"] == {"claimed": "finetune", "measured": "finetune", "status": "supported"}
    assert checks["proposal"]["status"] == "unverified"  # none recommended
    assert checks["modules"]["measured_set"] and checks["modules"]["status"] in (
        "supported", "contradicted",
    )  # fmt: skip
    # the measured number the model read is the plain forward's
    from selfscope.subject.load import load
    from test_localize_metric import plain_log_odds

    measured = json.loads(answers[-1].split(": ", 1)[1])
    assert measured["log_odds"] == pytest.approx(
        plain_log_odds(load(MODEL, ws), [PROMPT])[0], abs=1e-4
    )
    # every call is a ledger entry as `agent`, and so is the verdict
    entries = ws.store.ledger()
    agent_calls = [e for e in entries if e["action"] == "tool_call" and e["principal"] == "agent"]
    assert {json.loads(e["payload"])["tool"] for e in agent_calls} >= {
        "lens.logit",
        "localize.measure",
    }
    assert any(e["action"] == "agent.diagnosis" and e["principal"] == "agent" for e in entries)


def test_a_spent_budget_is_a_message_then_an_end(
    ws: Workspace, endpoint: Callable[[Policy], tuple[str, list[list[dict[str, Any]]]]]
) -> None:
    url, seen = endpoint(lambda messages: call("ledger_show", {"last": 1}))
    backend = driver.OpenAIBackend(url, "scripted")
    symptom = Symptom(prompts=[PROMPT], desired=" Yes", observed=" No")
    verdict = driver.drive(ws, MODEL, symptom, backend, max_steps=3)
    assert verdict["stopped"].startswith("budget spent (4 steps")
    assert verdict["diagnosis"] is None and verdict["checks"] == {}
    assert len(seen) == 4  # three turns, then one more told why
    told = [m["content"] for m in seen[-1] if m["role"] == "user"][-1]
    assert told.startswith("error: budget spent (3/3 steps") and "submit_diagnosis" in told
    # an endpoint that is not there is one line, not a crash
    dead = driver.OpenAIBackend("http://127.0.0.1:9/v1", "none", timeout=5)
    verdict = driver.drive(ws, MODEL, symptom, dead, max_steps=3)
    assert verdict["stopped"].startswith("the model's endpoint failed: cannot reach")
