"""``selfscope investigate``: the whole investigation of one symptom (selfscope.investigate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from selfscope.cli._common import ChatOpt, DeviceOpt, JsonOpt, out, print_json, workspace
from selfscope.errors import SelfscopeError
from selfscope.progress import SILENT, RichProgress


def register(app: typer.Typer) -> None:
    app.command("investigate")(investigate_command)


def investigate_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Any source `load` accepts.")],
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="A prompt showing it (repeat).")
    ] = None,
    desired: Annotated[
        str | None, typer.Option(help="The completion it should give, e.g. ' Yes'.")
    ] = None,
    observed: Annotated[
        str | None, typer.Option(help="The completion it gives (default: its greedy token).")
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(help="A prompt whose answer must not change (repeat)."),
    ] = None,
    symptom: Annotated[
        Path | None, typer.Option(help="A YAML/JSON file with the symptom's fields instead.")
    ] = None,
    removal: Annotated[
        bool | None,
        typer.Option(
            "--removal/--no-removal",
            help="Retrain the origin phase without the top documents (default: models up to "
            "50M parameters).",
        ),
    ] = None,
    fix: Annotated[
        list[str] | None,
        typer.Option(
            help="A kind of fix to propose (repeat; default: rank_one, revert_delta, unlearn)."
        ),
    ] = None,
    index_rank: Annotated[
        int, typer.Option(min=1, max=64, help="The training-data index's projection rank.")
    ] = 8,
    driver: Annotated[
        str,
        typer.Option(
            help="builtin (the protocol), llm (an OpenAI-compatible endpoint calls the tools) "
            "or self (the subject, a local chat model, calls them on its own weights)."
        ),
    ] = "builtin",
    endpoint: Annotated[
        str | None, typer.Option(help="--driver llm: the endpoint, e.g. http://127.0.0.1:8080/v1")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="--driver llm: the model name the endpoint serves.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="--driver llm: the environment variable holding a key.")
    ] = None,
    max_steps: Annotated[
        int, typer.Option(min=1, max=1000, help="--driver llm/self: model turns at most.")
    ] = 30,
    max_tokens: Annotated[
        int, typer.Option(min=100, help="--driver llm/self: tokens at most.")
    ] = 200_000,
    chat: ChatOpt = False,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Investigate a behaviour: characterise, origin, localise, documents, diagnosis, proposals
    validated through the gate (never applied), report. Re-running resumes. With --driver llm
    or self a language model runs the investigation through the tools instead, and its
    diagnosis is re-checked by the same measurements."""
    from selfscope.investigate.run import KINDS, Investigation
    from selfscope.investigate.symptom import Symptom, read_symptom

    if symptom is not None:
        if prompt or desired:
            raise SelfscopeError("give either --symptom FILE or --prompt/--desired, not both")
        found = read_symptom(symptom)
    else:
        if not prompt or desired is None:
            raise SelfscopeError("give --prompt (one or more) and --desired, or --symptom FILE")
        found = Symptom(
            prompts=prompt, desired=desired, observed=observed, chat=chat, controls=control or []
        )
    progress = SILENT if as_json else RichProgress()
    if driver != "builtin":
        from selfscope.cli import driven

        verdict = driven.run(
            driver, model, found, endpoint, model_name, api_key_env, max_steps, max_tokens
        )
        if as_json:
            print_json(verdict)
        else:
            driven.show(verdict)
        return
    result = Investigation(
        workspace(),
        model,
        found,
        removal=removal,
        kinds=tuple(fix or KINDS),
        rank=index_rank,
        progress=progress,
        device=device,
    ).run()
    if as_json:
        print_json(result)
        return
    _print(result)


def trait_line(trait: dict[str, Any]) -> str:
    """The trait the investigation's selfmodel step learned, in one line."""
    return (
        f"self-model: trait [bold]{escape(trait['trait'])}[/] ({trait['status']}), probe on "
        f"block {trait['layer']}, cross-validated AUROC {trait['cv_auroc']:.2f}"
    )


def proposals_table(result: dict[str, Any], title: str) -> Table:
    """The proposals, the submitted one marked, with why each failed or was skipped."""
    table = Table(title=title)
    for column in ("kind", "id", "status", "why"):
        table.add_column(column)
    for p in result["proposals"]:
        mark = " (submitted)" if p.get("id") and p["id"] == result["submitted"] else ""
        why = p.get("why") or p.get("skipped") or "passed every check"
        table.add_row(
            p["kind"] + mark, p.get("id") or "-", p.get("status") or "skipped", escape(why)
        )
    return table


def _print(result: dict[str, Any]) -> None:
    s, m, o = result["symptom"], result["metric"], result["origin"]
    out.print(
        f"[bold]{escape(result['model'])}[/]: {escape(repr(s['observed']))} instead of "
        f"{escape(repr(s['desired']))}; mean "
        f"log-odds {m['log_odds']:+.2f}, rate {m['rate']:.2f}"
    )
    conf = "" if o.get("confidence") is None else f" (confidence {o['confidence']:.2f})"
    out.print(f"origin: {escape(str(o.get('phase') or 'not found'))}{conf}")
    table = Table(title="diagnosis: every link measured by an intervention")
    for column in ("claim", "effect", "confidence", "calls"):
        table.add_column(column)
    for link in result["diagnosis"]:
        table.add_row(
            escape(link["claim"]),
            f"{link['effect']:+.3g}",
            f"{link['confidence']:.2f}",
            ", ".join(link["evidence"]),
        )
    out.print(table)
    for line in result["not_found"]:
        out.print(f"[dim]not found / not confirmed:[/] {escape(line)}")
    skipped = dict(result.get("skipped", {}))
    if "skipped" in result.get("removal", {}):
        skipped["removal"] = result["removal"]["skipped"]
    trait = result.get("trait") or {}
    if "skipped" in trait:
        skipped["selfmodel"] = trait["skipped"]
    for step, why in skipped.items():
        out.print(f"[yellow]skipped {step}[/]: {escape(str(why))}")
    if "trait" in trait:
        out.print(trait_line(trait))
    out.print(proposals_table(result, "proposals (validated through the gate; nothing applied)"))
    submitted = result["submitted"]
    out.print(
        f"submitted for approval: {submitted} (`selfscope review {submitted} --approve --as NAME`)"
        if submitted
        else "nothing submitted: no proposal passed the gate"
    )
    out.print(f"report: {escape(result['report']['html'])}")
    seconds = result["seconds"]
    out.print(
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
        + (f" (resumed: {', '.join(result['resumed'])})" if result["resumed"] else "")
    )
