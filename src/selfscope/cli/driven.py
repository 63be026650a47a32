"""``selfscope investigate --driver llm|self``: an LLM runs the investigation through the tools
(selfscope.investigate.driver); its verdict, re-checked, printed."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from selfscope.cli._common import out, workspace
from selfscope.errors import SelfscopeError
from selfscope.progress import RichProgress


def run(
    driver: str,
    model: str,
    symptom: Any,
    endpoint: str | None,
    model_name: str | None,
    api_key_env: str | None,
    max_steps: int,
    max_tokens: int,
) -> dict[str, Any]:
    import os

    from selfscope import tools
    from selfscope.investigate import driver as driving
    from selfscope.oversight.principals import principal

    ws = workspace()
    backend: driving.Backend
    if driver == "llm":
        if not endpoint or not model_name:
            raise SelfscopeError("--driver llm needs --endpoint URL and --model-name NAME")
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise SelfscopeError(f"--api-key-env {api_key_env}: that variable is not set")
        backend = driving.OpenAIBackend(endpoint, model_name, key)
    elif driver == "self":
        ctx = tools.context(model, ws, principal=principal(ws, "agent"))
        backend = driving.SelfBackend(ctx)
    else:
        raise SelfscopeError(f"unknown driver {driver!r}; use builtin, llm or self")
    return driving.drive(
        ws, model, symptom, backend, max_steps=max_steps, max_tokens=max_tokens,
        progress=RichProgress(),
    )  # fmt: skip


def show(verdict: dict[str, Any]) -> None:
    out.print(
        f"agent run {verdict['run']}: {verdict['stopped']}; {verdict['steps']} turns, "
        f"{verdict['tokens']} tokens, {verdict['tool_calls']} tool calls "
        f"(well formed on {_share(verdict['well_formed_share'])} of the turns)"
    )
    checks = verdict["checks"]
    if not checks:
        out.print("no diagnosis was submitted")
        return
    table = Table(title="the agent's diagnosis, re-checked")
    for column in ("what", "claimed", "status"):
        table.add_column(column)
    for what in ("phase", "modules", "proposal", "documents"):
        c = checks[what]
        table.add_row(what, escape(str(c["claimed"])), c["status"])
    for c in checks["claims"]:
        table.add_row("claim", escape(c["claim"]), c["status"])
    out.print(table)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
