"""LLM-driven investigators: a language model calls the registry's tools in a loop.

``selfscope investigate --driver llm --endpoint URL --model-name NAME`` talks to any
OpenAI-compatible chat-completions endpoint (llama.cpp's server, vLLM, Ollama, a hosted API);
``--driver self`` lets the subject itself, when it is a local chat model, call tools on its own
weights through its chat template. Either way:

* the model sees the symptom and the ``read`` and ``propose`` tools (OpenAI function schemas from
  the same pydantic definitions as every door), plus ``submit_diagnosis``; every call runs through
  :func:`selfscope.tools.call` as the ``agent`` principal, so it is validated, refused when it
  needs ``govern``, and recorded (each call a ledger entry as ``agent``);
* whatever goes wrong — arguments that are not JSON, an unknown tool, invalid arguments, a tool
  that fails, a reply with no tool call, a spent budget — is answered with one line the model
  can read, never a crash; the budget is steps (model turns) and tokens;
* the submitted diagnosis is **re-checked** by the built-in protocol's own measurements: the
  origin phase and the weight-delta module set by ``localize.origin`` (its checkpoint verdict and
  the set whose reversal removes the behaviour), the proposal by the gate's recorded validation,
  and each claim by the calls it cites (made in this run, by ``agent``, finished ``ok``). A claim
  or a field with no supporting measurement is marked ``unverified``.

The transcript and the verdict are written to ``<workspace>/agents/<run id>/`` and the verdict is a
ledger entry (``agent.diagnosis``).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from selfscope import atomic, tools
from selfscope.errors import SelfscopeError
from selfscope.investigate.symptom import Symptom
from selfscope.oversight.principals import principal
from selfscope.progress import SILENT, ProgressSink
from selfscope.workspace import Workspace

SUBMIT = "submit_diagnosis"
RESULT_CHARS = 3000  # a tool result is cut to this many characters for the model


class Claim(BaseModel):
    claim: str = Field(description="One sentence.")
    evidence: list[str] = Field(
        default_factory=list, description="Call ids (from tool results) that measured it."
    )


class Diagnosis(BaseModel):
    """What an LLM investigator submits (the arguments of ``submit_diagnosis``)."""

    model_config = {"extra": "forbid"}
    phase: str | None = Field(None, description="The training phase where the behaviour arose.")
    modules: list[str] = Field(
        default_factory=list, description="Modules whose weight changes carry it."
    )
    components: list[str] = Field(default_factory=list, description="Heads / neurons / blocks.")
    documents: list[str] = Field(default_factory=list, description="Training document ids.")
    proposal: str | None = Field(None, description="The id of the proposal you recommend.")
    claims: list[Claim] = Field(default_factory=list, description="The causal chain.")


def submit_schema() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": SUBMIT,
            "description": "End the investigation: the phase, the modules, the components, the "
            "documents, the proposal you recommend, and claims each citing the call ids that "
            "measured it.",
            "parameters": Diagnosis.model_json_schema(),
        },
    }


def offered_schemas() -> list[dict[str, Any]]:
    """The tools an agent may call: read and propose (never govern), and submit_diagnosis."""
    allowed = {t.schema_name for t in tools.registry().values() if t.permission != "govern"}
    return [s for s in tools.openai_schema() if s["function"]["name"] in allowed] + [
        submit_schema()
    ]


class Backend(Protocol):
    """One chat turn: the assistant's message (OpenAI shape) and the tokens it cost."""

    def complete(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], int]: ...


@dataclass
class OpenAIBackend:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (``endpoint`` ends in ``/v1``)."""

    endpoint: str
    model_name: str
    api_key: str | None = None
    timeout: float = 300.0
    max_tokens: int = 1024

    def complete(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], int]:
        body = {
            "model": self.model_name,
            "messages": messages,
            "tools": schemas,
            "tool_choice": "auto",
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        request = urllib.request.Request(
            self.endpoint.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")[:300]
            raise SelfscopeError(f"the endpoint answered {error.code}: {text}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise SelfscopeError(f"cannot reach {self.endpoint}: {error}") from None
        except json.JSONDecodeError:
            raise SelfscopeError(f"{self.endpoint} did not answer JSON") from None
        try:
            message = dict(reply["choices"][0]["message"])
        except (KeyError, IndexError, TypeError):
            raise SelfscopeError(
                f"{self.endpoint} answered without choices[0].message: {str(reply)[:200]}"
            ) from None
        usage = reply.get("usage") or {}
        spent = usage.get("total_tokens") or (len(json.dumps(messages)) + len(str(message))) // 4
        return message, int(spent)


@dataclass
class Run:
    """What one driven investigation did."""

    id: str
    steps: int = 0
    tokens: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    stopped: str = ""


def system_prompt(model: str, symptom: Symptom) -> str:
    return (
        "You are investigating a language model with tools that read its weights, activations, "
        "gradients and training data, and that propose weight changes (never apply them). "
        f"The model is {model}. On the prompt {symptom.prompts[0]!r} it answers "
        f"{symptom.observed!r}; the desired answer is {symptom.desired!r}. Find where the "
        "behaviour arose (which training phase), which modules and components carry it, which "
        "training documents caused it, propose a fix, and call submit_diagnosis with claims "
        "that cite the call ids of the measurements behind them. Call one tool at a time."
    )


def drive(
    workspace: Workspace,
    source: str,
    symptom: Symptom,
    backend: Backend,
    *,
    max_steps: int = 30,
    max_tokens: int = 200_000,
    progress: ProgressSink = SILENT,
) -> dict[str, Any]:
    """Run the tool-calling loop until a diagnosis or the budget ends; re-check the diagnosis."""
    agent = principal(workspace, "agent")
    ctx = tools.context(source, workspace, principal=agent, progress=progress)
    if symptom.observed is None:
        said = tools.call("model.ask", {"prompt": symptom.prompts[0], "chat": symptom.chat}, ctx)
        symptom = symptom.model_copy(update={"observed": said.result.top_tokens[0].token})
    run = Run(id=f"a{int(time.time() * 1000):x}-{secrets.token_hex(3)}")
    schemas = offered_schemas()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(source, symptom)},
        {"role": "user", "content": "Begin the investigation."},
    ]
    last_call = False
    while True:
        if run.steps >= max_steps or run.tokens >= max_tokens:
            if last_call:
                run.stopped = f"budget spent ({run.steps} steps, {run.tokens} tokens)"
                break
            last_call = True  # one more turn, told why, to submit what it has
            messages.append({"role": "user", "content": _budget_note(run, max_steps, max_tokens)})
        try:
            message, spent = backend.complete(messages, schemas)
        except SelfscopeError as error:
            run.stopped = f"the model's endpoint failed: {error}"
            break
        run.steps += 1
        run.tokens += spent
        message = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}
        message["role"] = "assistant"
        messages.append(message)
        calls = message.get("tool_calls") or []
        if not calls:
            messages.append(
                {
                    "role": "user",
                    "content": "error: no tool call in your reply; call a tool, or "
                    f"{SUBMIT} when you are done",
                }
            )
            continue
        for call in calls:
            reply = _answer(call, ctx, run)
            messages.append(
                {"role": "tool", "tool_call_id": str(call.get("id", "")), "content": reply}
            )
            progress.say(f"agent step {run.steps}: {_name(call)} -> {reply[:80]}")
        if run.diagnosis is not None:
            run.stopped = "diagnosis submitted"
            break
    run.transcript = messages
    verdict = recheck(workspace, source, symptom, run)
    folder = workspace.root / "agents" / run.id
    atomic.write_json(folder / "transcript.json", {"messages": messages, "calls": run.calls})
    atomic.write_json(folder / "verdict.json", verdict)
    workspace.store.append(
        "agent.diagnosis",
        agent.name,
        source,
        {k: verdict[k] for k in ("run", "stopped", "steps", "tokens", "diagnosis", "checks")},
    )
    return verdict


def _name(call: dict[str, Any]) -> str:
    return str((call.get("function") or {}).get("name", ""))


def _budget_note(run: Run, max_steps: int, max_tokens: int) -> str:
    return (
        f"error: budget spent ({run.steps}/{max_steps} steps, {run.tokens}/{max_tokens} tokens); "
        f"this is your last turn: call {SUBMIT} now with what you have measured"
    )


def _answer(call: dict[str, Any], ctx: tools.ToolContext, run: Run) -> str:
    """Run one tool call; the text the model reads back (a result, or one line of error)."""
    name = _name(call)
    raw = (call.get("function") or {}).get("arguments", "{}")
    record: dict[str, Any] = {"step": run.steps, "tool": name}
    run.calls.append(record)
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as error:
        record["error"] = "malformed"
        return f"error: the arguments are not JSON ({error.msg}); send one JSON object"
    if not isinstance(args, dict):
        record["error"] = "malformed"
        return "error: the arguments must be a JSON object"
    if name == SUBMIT:
        record["well_formed"] = True
        try:
            run.diagnosis = Diagnosis.model_validate(args)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "arguments"
            record["error"] = "invalid"
            return f"error: {SUBMIT}: {where}: {first['msg']}; fix it and call {SUBMIT} again"
        record["ok"] = True
        return "diagnosis received"
    try:
        tool_ = tools.get(name)
        record |= {"well_formed": True, "tool_name": tool_.name}
        if tool_.permission == "govern":
            raise SelfscopeError(f"{tool_.name} needs 'govern'; an agent only reads and proposes")
        done = tools.call(tool_.name, args, ctx)
    except SelfscopeError as error:
        record["error"] = str(error)
        return f"error: {error}"
    except Exception as error:  # a tool's crash is one line for the model, not the end
        record["error"] = tools._crash(error)
        return f"error: {record['error']}"
    record |= {"ok": True, "call_id": done.id}
    text = done.result.model_dump_json()
    if len(text) > RESULT_CHARS:
        text = text[:RESULT_CHARS] + f"... (cut; {len(text)} characters)"
    return f"call {done.id}: {text}"


def recheck(workspace: Workspace, source: str, symptom: Symptom, run: Run) -> dict[str, Any]:
    """The submitted diagnosis against the built-in protocol's measurements."""
    # turns whose tool call was well formed: JSON arguments naming a tool that exists
    well = len({c["step"] for c in run.calls if c.get("well_formed")})
    verdict: dict[str, Any] = {
        "run": run.id,
        "model": source,
        "stopped": run.stopped,
        "steps": run.steps,
        "tokens": run.tokens,
        "tool_calls": len(run.calls),
        "well_formed_share": well / run.steps if run.steps else None,
        "diagnosis": run.diagnosis.model_dump() if run.diagnosis else None,
        "checks": {},
    }
    if run.diagnosis is None:
        return verdict
    d = run.diagnosis
    ours = {c["call_id"] for c in run.calls if c.get("call_id")}
    claims = []
    for claim in d.claims:
        rows = [workspace.store.tool_call(c) for c in claim.evidence]
        good = [
            c
            for c, row in zip(claim.evidence, rows, strict=True)
            if row and c in ours and row["principal"] == "agent" and row["status"] == "ok"
        ]
        complete = bool(good) and len(good) == len(claim.evidence)
        why = None
        if not complete:
            why = "cites no finished call of this run" if not good else "cites calls not of it"
        claims.append(
            {
                "claim": claim.claim,
                "evidence": claim.evidence,
                "status": "supported" if complete else "unverified",
                "why": why,
            }
        )
    checks: dict[str, Any] = {"claims": claims}
    measured = tools.call(
        "localize.origin",
        {"prompts": symptom.prompts, "planted": symptom.observed, "normal": symptom.desired,
         "chat": symptom.chat},
        tools.context(source, workspace, principal=tools.INVESTIGATOR),
    ).result  # fmt: skip
    measured_set = list(measured.deltas.module_set) if measured.deltas is not None else []
    checks["phase"] = {
        "claimed": d.phase,
        "measured": measured.phase,
        "status": "unverified"
        if d.phase is None
        else ("supported" if d.phase == measured.phase else "contradicted"),
    }
    overlap = len(set(d.modules) & set(measured_set))
    checks["modules"] = {
        "claimed": d.modules,
        "measured_set": measured_set,
        "removed_share": measured.deltas.set_share if measured.deltas is not None else None,
        "overlap": overlap,
        "status": "unverified"
        if not d.modules or not measured_set
        else ("supported" if overlap * 2 >= len(d.modules) else "contradicted"),
    }
    from selfscope.oversight import gate

    report = gate.last_validation(workspace, d.proposal) if d.proposal else None
    checks["proposal"] = {
        "claimed": d.proposal,
        "gate_passed": None if report is None else report.passed,
        "status": "unverified" if report is None else ("supported" if report.passed else "failed"),
    }
    checks["documents"] = {
        "claimed": d.documents,
        "status": "unverified",
        "why": "documents are confirmed only by the removal test (history.removal), which this "
        "run did not cite"
        if not _cites(run, "history.removal")
        else "history.removal was called; read its result in the transcript",
    }
    verdict["checks"] = checks
    return verdict


def _cites(run: Run, tool_name: str) -> bool:
    return any(c.get("tool_name") == tool_name and c.get("ok") for c in run.calls)


# -- the subject as its own investigator ------------------------------------------------------
TOOL_CALL = re.compile(r"\{.*\}", re.S)


@dataclass
class SelfBackend:
    """The subject itself (a local chat model) as the investigator: the tools are described in
    the system message, the model's reply is parsed for one JSON object
    ``{"name": ..., "arguments": {...}}`` (a reply without one is a turn with no tool call)."""

    ctx: tools.ToolContext
    max_new_tokens: int = 160
    names: list[str] = field(default_factory=list)

    def complete(
        self, messages: list[dict[str, Any]], schemas: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], int]:
        import torch

        subject = self.ctx.subject
        tokenizer = subject.tokenizer
        listing = "; ".join(
            f"{f['name']}({', '.join(f['parameters'].get('properties', {}))})"
            for f in (s["function"] for s in schemas)
        )
        system = (
            messages[0]["content"]
            + ' Reply with exactly one JSON object {"name": TOOL, "arguments": {...}} and '
            f"nothing else. Tools: {listing}"
        )
        turns = [
            {
                "role": "user" if m["role"] in ("user", "tool") else "assistant",
                "content": m.get("content") or json.dumps(m.get("tool_calls", ""))[:500],
            }
            for m in messages[1:]
        ]
        chat = [{"role": "system", "content": system}, *turns[-6:]]
        text = str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        ids = tokenizer(text, return_tensors="pt").input_ids[:, -1800:]
        with torch.no_grad():
            out = subject.model.generate(  # type: ignore[operator]
                ids,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        reply = str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        spent = int(out.shape[1])
        found = TOOL_CALL.search(reply)
        if found is None:
            return {"role": "assistant", "content": reply}, spent
        try:
            parsed = json.loads(found.group(0))
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or "name" not in parsed:
            call = {"id": "s0", "function": {"name": "?", "arguments": found.group(0)}}
            return {"role": "assistant", "content": reply, "tool_calls": [call]}, spent
        arguments = parsed.get("arguments", {})
        call = {
            "id": f"s{len(messages)}",
            "function": {"name": str(parsed["name"]), "arguments": json.dumps(arguments)},
        }
        return {"role": "assistant", "content": reply, "tool_calls": [call]}, spent
