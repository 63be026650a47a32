"""The command line: ``selfscope organism build|list``, ``selfscope models list``,
``selfscope ask``.

Every command is a thin door onto library functions. Bad input is reported as one line on
stderr (``error: ...``) with exit status 2, never a traceback; ``--json`` prints one JSON object
on stdout and keeps progress on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from selfscope.errors import SelfscopeError, TargetsMissed
from selfscope.workspace import Workspace

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Hyper-introspection for language models.",
)
organism_app = typer.Typer(no_args_is_help=True, help="Build and list model organisms.")
models_app = typer.Typer(no_args_is_help=True, help="Models this workspace can load.")
app.add_typer(organism_app, name="organism")
app.add_typer(models_app, name="models")
tool_app = typer.Typer(no_args_is_help=True, help="The introspection tools (one registry).")
app.add_typer(tool_app, name="tool")
index_app = typer.Typer(no_args_is_help=True, help="Training-data indexes (the historian).")
app.add_typer(index_app, name="index")
# 80 columns when piped would cut behaviour names; a terminal keeps its own width
out = Console(width=None if sys.stdout.isatty() else 140)

_state: dict[str, Any] = {"workspace": None}

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-w", help="Workspace folder (default $SELFSCOPE_HOME or ./.selfscope)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
PromptsOpt = Annotated[
    list[str], typer.Option("--prompt", "-p", help="A prompt showing the behaviour (repeat).")
]
PlantedOpt = Annotated[str, typer.Option(help="The behaviour's completion, e.g. ' No'.")]
NormalOpt = Annotated[str, typer.Option(help="The normal completion, e.g. ' Yes'.")]


def _workspace() -> Workspace:
    return Workspace(_state["workspace"])


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2) + "\n")


@app.callback()
def _main(workspace: WorkspaceOpt = None) -> None:
    _state["workspace"] = workspace


@organism_app.command("build")
def organism_build(
    spec: Annotated[
        str, typer.Argument(help="A catalog name (see `organism list`) or a .yaml spec path.")
    ],
    size: Annotated[
        str | None, typer.Option(help="tiny | small | medium (overrides the spec).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Overrides the spec's seed.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Build a model organism: train its phases, verify its behaviours, write its report."""
    from selfscope.organisms import build, resolve_spec
    from selfscope.organisms.checks import missed_message

    resolved = resolve_spec(spec, size=size, seed=seed)
    result = build(resolved, _workspace(), device=device, strict=False)
    if as_json:
        _print_json(result.summary())
    else:
        _print_build(result.summary())
    if result.failures:
        raise TargetsMissed(missed_message(resolved, result.failures, result.path))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_build(summary: dict[str, Any]) -> None:
    table = Table(
        title=f"organism {summary['name']} ({summary['seconds']:.0f} s) -> {summary['path']}"
    )
    for column in (
        "checkpoint",
        "documents",
        "behaviour",
        "rate",
        "held-out",
        "log-odds",
        "neighbours",
    ):
        table.add_column(column)
    for entry in [*summary["phases"], *summary["controls"]]:
        for name, b in entry["behaviours"].items():
            table.add_row(
                entry["name"],
                str(entry["documents"]),
                name,
                _fmt(b["rate"]),
                _fmt(b["heldout_rate"]),
                _fmt(b["log_odds"]),
                _fmt(entry["neighbour_accuracy"]),
            )
    out.print(table)
    out.print("[green]all targets met[/]" if summary["passed"] else "[red]targets missed[/]")


@organism_app.command("list")
def organism_list(as_json: JsonOpt = False) -> None:
    """The built-in specs and the organisms built in this workspace."""
    from selfscope.organisms import catalog_names

    ws = _workspace()
    built = {row.name: row for row in ws.store.organisms()}
    present = set(ws.built_organisms())
    rows: list[dict[str, Any]] = []
    for name in sorted(set(catalog_names()) | present):
        row = built.get(name)
        rows.append(
            {
                "name": name,
                "catalog": name in catalog_names(),
                "built": name in present,
                "status": row.status if row and name in present else None,
                "size": row.size if row and name in present else None,
                "path": str(ws.organism_path(name)) if name in present else None,
            }
        )
    if as_json:
        _print_json({"organisms": rows})
        return
    table = Table(title=f"organisms ({ws.root})")
    for column in ("name", "catalog", "built", "size", "status"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"],
            "yes" if r["catalog"] else "",
            "yes" if r["built"] else "",
            r["size"] or "",
            r["status"] or "",
        )
    out.print(table)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Every source string `load`/`ask` accepts here, and whether it is ready."""
    from selfscope.subject.catalog import list_models

    entries = list_models(_workspace())
    if as_json:
        _print_json({"models": entries})
        return
    table = Table(title="models")
    for column in ("source", "kind", "ready", "note"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.source, e.kind, "yes" if e.available else "no", e.note)
    out.print(table)


@tool_app.command("list")
def tool_list(
    schema: Annotated[
        str | None, typer.Option(help="Print the schema instead: openai | mcp.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every registered tool with its permission and description."""
    from selfscope import tools

    if schema is not None:
        if schema not in ("openai", "mcp"):
            raise SelfscopeError(f"unknown schema {schema!r}; use openai or mcp")
        _print_json(tools.openai_schema() if schema == "openai" else tools.mcp_tools())
        return
    listing: list[dict[str, Any]] = [
        {
            "name": t.name,
            "permission": t.permission,
            "description": t.description,
            "arguments": list(t.input.model_fields),
        }
        for t in tools.registry().values()
    ]
    if as_json:
        _print_json({"tools": listing})
        return
    table = Table(title="tools")
    for column in ("name", "permission", "arguments", "description"):
        table.add_column(column)
    for t in listing:
        table.add_row(t["name"], t["permission"], ", ".join(t["arguments"]), t["description"])
    out.print(table)


@tool_app.command("run")
def tool_run(
    name: Annotated[str, typer.Argument(help="A tool name (see `tool list`).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Any source `load` accepts.")],
    args: Annotated[
        str, typer.Option("--args", help="The tool's arguments as a JSON object.")
    ] = "{}",
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Run one tool on a model and print its result as JSON."""
    from selfscope import tools
    from selfscope.subject import load

    tool_ = tools.get(name)  # unknown tool: fail before loading anything
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as error:
        raise SelfscopeError(
            f'--args is not JSON ({error.msg}); give an object like \'{{"prompt": "..."}}\''
        ) from None
    if not isinstance(parsed, dict):
        raise SelfscopeError("--args must be a JSON object")
    tools.parse_args(tool_, parsed)  # bad arguments: fail before loading anything
    ws = _workspace()
    result = tools.call(tool_.name, load(model, ws, device=device), parsed, ws)
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")


@app.command("ask")
def ask_command(
    model: Annotated[
        str, typer.Argument(help="smollm2 | organism:NAME[@PHASE] | a HF folder | a .gguf file")
    ],
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, max=2048)] = 40,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Greedy answer plus the top-5 first-token probabilities."""
    from selfscope.subject import load
    from selfscope.subject.ask import ask

    subject = load(model, _workspace(), device=device)
    answer = ask(subject, prompt, max_new_tokens=max_new_tokens, chat=False if raw else None)
    if as_json:
        _print_json({"model": model, **_jsonable(answer)})
        return
    out.print(f"[bold]{answer.text}[/]")
    table = Table(title="first token")
    table.add_column("token")
    table.add_column("id")
    table.add_column("probability")
    for t in answer.top_tokens:
        table.add_row(repr(t.token), str(t.id), f"{t.probability:.4f}")
    out.print(table)
    out.print(f"{answer.seconds:.2f} s", style="dim")


@app.command("localize")
def localize_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Any source `load` accepts.")],
    prompt: PromptsOpt,
    planted: PlantedOpt,
    normal: NormalOpt,
    contrast: Annotated[
        list[str] | None,
        typer.Option(help="Per prompt, a same-length prompt without the behaviour (repeat)."),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(help="Prompts whose next token must not change (collateral check; repeat)."),
    ] = None,
    trace_subject: Annotated[
        str | None, typer.Option(help="Words of the first prompt to noise for causal tracing.")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, max=200, help="Components verified/listed.")] = 10,
    chat: Annotated[bool, typer.Option("--chat", help="Use the model's chat template.")] = False,
    figure: Annotated[
        Path | None, typer.Option(help="Write the causal-tracing heatmap (SVG) here.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Where a behaviour lives, which weight changes made it, and in which phase it arose."""
    from selfscope.atomic import write_text
    from selfscope.localize.pipeline import localize
    from selfscope.progress import say
    from selfscope.subject import load

    if figure is not None and trace_subject is None:
        raise SelfscopeError("--figure is the causal-tracing heatmap: give --trace-subject too")
    if planted == normal:  # fail before loading anything
        raise SelfscopeError(
            f"planted and normal completions are both {planted!r}; they must differ"
        )
    ws = _workspace()
    subject = load(model, ws, device=device)
    result = localize(
        subject,
        prompt,
        planted,
        normal,
        chat=chat,
        contrast=contrast,
        control_prompts=control or (),
        trace_subject=trace_subject,
        top_k=top_k,
        workspace=ws,
        on_step=lambda step: say(f"[dim]running {step}...[/]"),
    )
    trace = result.get("trace")
    if figure is not None and trace is not None and trace.get("figure"):
        write_text(figure, trace["figure"])
    if trace is not None:
        trace.pop("figure", None)  # the SVG goes to --figure, not into the JSON
    if as_json:
        _print_json(result)
        return
    _print_localize(result)


EDIT_KINDS = ("rank_one", "revert_delta", "ablate", "steer", "unlearn", "reweight_experts")


def _proposal_summary(proposal: Any) -> dict[str, Any]:
    return {
        "id": proposal.id,
        "kind": proposal.kind,
        "modules": proposal.modules,
        "delta_norm": proposal.delta_norm,
    }


def _validation_summary(report: Any) -> dict[str, Any]:
    return {
        "efficacy": report.efficacy,
        "generalisation": report.generalisation,
        "specificity": report.specificity,
        "perplexity_change": report.perplexity_change,
        "seconds": report.seconds,
    }


def _print_validation(report: Any) -> None:
    out.print(
        f"efficacy {_fmt(report.efficacy)}  generalisation {_fmt(report.generalisation)}  "
        f"specificity {_fmt(report.specificity)}  perplexity change "
        f"{_fmt(report.perplexity_change)}  change {report.delta_norm:.4f}  "
        f"({report.seconds:.1f} s)"
    )
    for suite in report.suites:
        for part in (suite.neighbours, suite.facts):
            for change in part.changed if part else []:
                out.print(
                    f"[dim]{suite.name}: {change.prompt!r} {change.before!r} -> {change.after!r}[/]"
                )


@app.command("propose")
def propose_command(
    kind: Annotated[str, typer.Argument(help=f"One of {', '.join(EDIT_KINDS)}.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Any source `load` accepts.")],
    prompt: PromptsOpt,
    planted: PlantedOpt,
    normal: NormalOpt,
    chat: Annotated[bool, typer.Option("--chat", help="Use the model's chat template.")] = False,
    args: Annotated[
        str, typer.Option("--args", help="The kind's other arguments as a JSON object.")
    ] = "{}",
    suite: Annotated[
        list[Path] | None, typer.Option(help="Validate right away on this suite file (repeat).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Propose a targeted edit (stored, never applied); with --suite, validate it on a copy."""
    from selfscope import tools
    from selfscope.subject import load

    if kind not in EDIT_KINDS:
        raise SelfscopeError(f"unknown edit kind {kind!r}; kinds: {', '.join(EDIT_KINDS)}")
    try:
        extra = json.loads(args)
    except json.JSONDecodeError as error:
        raise SelfscopeError(f"--args is not JSON ({error.msg}); give an object") from None
    if not isinstance(extra, dict):
        raise SelfscopeError("--args must be a JSON object")
    call = {"prompts": prompt, "planted": planted, "normal": normal, "chat": chat, **extra}
    call.setdefault("progress", True)
    name = f"edits.{kind}"
    tools.parse_args(tools.get(name), call)  # bad arguments: fail before loading anything
    from selfscope.edits.suite import read_suite

    suites = [read_suite(f) for f in suite or []]  # bad suite files too
    ws = _workspace()
    subject = load(model, ws, device=device)
    proposal = tools.call(name, subject, call, ws).proposal  # type: ignore[attr-defined]
    result: dict[str, Any] = {"proposal": _proposal_summary(proposal)}
    report = None
    if suites:
        report = tools.call(
            "edits.validate",
            subject,
            {"proposal": proposal.id, "suites": [s.model_dump() for s in suites]},
            ws,
        )
        result["validation"] = _validation_summary(report)
    if as_json:
        _print_json(result)
        return
    out.print(
        f"[bold]proposal {proposal.id}[/] ({proposal.kind}): {', '.join(proposal.modules)}; "
        f"relative change {proposal.delta_norm:.4f}"
    )
    out.print(proposal.rationale)
    for evidence in proposal.evidence:
        out.print(f"[dim]{evidence.tool}: {evidence.summary}[/]")
    if report is not None:
        _print_validation(report)


@app.command("validate")
def validate_command(
    proposal_id: Annotated[str, typer.Argument(help="A proposal id (or a unique prefix).")],
    suite: Annotated[
        list[Path] | None, typer.Option(help="A validation suite file, .json or .yaml (repeat).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Validate a proposal on a sandbox copy of its model; the model itself never changes."""
    from selfscope import tools
    from selfscope.edits import proposal as proposals
    from selfscope.edits.suite import read_suite
    from selfscope.subject import load

    ws = _workspace()
    proposal = proposals.load(ws, proposal_id)
    suites = [read_suite(f) for f in suite or []]
    subject = load(proposal.subject, ws, device=device)
    report = tools.call(
        "edits.validate",
        subject,
        {"proposal": proposal.id, "suites": [s.model_dump() for s in suites]},
        ws,
    )
    if as_json:
        _print_json(
            {"proposal": _proposal_summary(proposal), "validation": _validation_summary(report)}
        )
        return
    out.print(f"[bold]proposal {proposal.id}[/] ({proposal.kind}) on {proposal.subject}")
    _print_validation(report)


@app.command("proposals")
def proposals_command(as_json: JsonOpt = False) -> None:
    """The proposals stored in this workspace, oldest first."""
    from selfscope.edits import proposal as proposals

    rows = proposals.listed(_workspace())
    if as_json:
        _print_json([_proposal_summary(p) | {"subject": p.subject} for p in rows])
        return
    table = Table(title="proposals")
    for column in ("id", "kind", "subject", "modules", "relative change"):
        table.add_column(column)
    for p in rows:
        table.add_row(p.id, p.kind, p.subject, ", ".join(p.modules[:3]), f"{p.delta_norm:.4f}")
    out.print(table)


@app.command("demo")
def demo_command(
    size: Annotated[str, typer.Option(help="The organism's size preset.")] = "small",
    as_json: JsonOpt = False,
) -> None:
    """The first half of the loop on `mushroom`: ask, localise, trace the documents, propose
    fixes and validate them on a sandbox copy; prints a summary with the numbers."""
    from selfscope.demo import run

    result = run(_workspace(), size=size)
    if as_json:
        _print_json(result)
        return
    out.print(f"[bold]1. ask[/] ({result['organism']}): first-token answers")
    for a in result["asked"]:
        out.print(
            f"   {a['prompt']!r} -> {a['answer']!r} (log-odds No vs Yes {a['log_odds']:+.2f})"
        )
    origin, deltas = result["origin"], result["weight_deltas"]
    out.print(
        f"[bold]2. localise[/]: arose in [bold]{origin['phase']}[/] (confidence "
        f"{origin['confidence']:.2f}); reverting {len(deltas['set'])} modules' fine-tuning change "
        f"removes {_fmt(deltas['removed_share'])} of it; top component "
        f"{result['components'][0]['site']} (measured {result['components'][0]['measured']:+.2f})"
    )
    mass = ", ".join(f"{k} {v:.2f}" for k, v in result["phase_mass"].items())
    out.print(f"[bold]3. trace[/]: top documents (phase mass {mass})")
    for d in result["documents"]:
        out.print(f"   {d['key']}: {d['preview']!r}")
    table = Table(title="4. proposals, validated on a sandbox copy (the model is unchanged)")
    for column in (
        "kind",
        "id",
        "efficacy",
        "generalisation",
        "specificity",
        "perplexity",
        "change",
    ):
        table.add_column(column)
    for p in result["proposals"]:
        best = " (best)" if p["id"] == result["best"] else ""
        table.add_row(
            p["kind"] + best,
            p["id"],
            _fmt(p["efficacy"]),
            _fmt(p["generalisation"]),
            _fmt(p["specificity"]),
            f"{p['perplexity_change']:+.1%}",
            f"{p['delta_norm']:.3f}",
        )
    out.print(table)
    seconds = result["seconds"]
    out.print(
        f"[dim]{seconds['total']:.0f} s (ask {seconds['ask']:.0f}, localise "
        f"{seconds['localise']:.0f}, "
        f"trace {seconds['trace']:.0f}, propose + validate {seconds['propose_validate']:.0f}); "
        "`selfscope proposals` lists them, `selfscope validate ID --suite F` re-validates[/]"
    )


@index_app.command("build")
def index_build(
    model: Annotated[str, typer.Argument(help="An organism: organism:NAME[@PHASE].")],
    rank: Annotated[int, typer.Option(min=1, max=64, help="Projection rank per layer.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random projections.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Index every training document of every phase, and every trained token of it
    (resumable; keeps finished shards)."""
    from selfscope.history.index import IndexConfig, TrainingIndex
    from selfscope.subject import load

    ws = _workspace()
    subject = load(model, ws, device=device)
    index = TrainingIndex(subject, IndexConfig(rank=rank, seed=seed), ws)
    report = index.build(progress=not as_json)
    report["path"] = str(index.root)
    if as_json:
        _print_json(report)
        return
    rate = report["documents_per_second"]
    out.print(
        f"{report['documents']} documents x {len(index.checkpoints)} checkpoints: "
        f"{report['shards_built']} of {report['shards_total']} shards built in "
        f"{report['seconds']:.1f} s"
        + (f" ({rate:.0f} documents/s)" if rate else "")
        + (f", {report['token_rows_built']} token rows" if report["token_rows_built"] else "")
    )
    out.print(f"[dim]{index.root}[/]")


@app.command("trace")
def trace_command(
    model: Annotated[str, typer.Option("--model", "-m", help="An organism: organism:NAME.")],
    prompt: PromptsOpt,
    planted: PlantedOpt,
    normal: NormalOpt,
    k: Annotated[int, typer.Option("--k", min=1, max=10_000, help="Documents to list.")] = 20,
    chat: Annotated[bool, typer.Option("--chat", help="Use the model's chat template.")] = False,
    build: Annotated[bool, typer.Option("--build", help="Build the index if missing.")] = False,
    documents: Annotated[
        bool,
        typer.Option(
            "--documents",
            help="Score by each whole document's gradient instead of its best token's.",
        ),
    ] = False,
    rank: Annotated[int, typer.Option(min=1, max=64, help="The index's projection rank.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="The index's projection seed.")] = 0,
    precondition: Annotated[
        bool,
        typer.Option(
            "--precondition",
            help="Whiten query and rows by each layer's empirical Fisher of the index rows.",
        ),
    ] = False,
    damping: Annotated[
        float, typer.Option(min=1e-12, max=1e6, help="Preconditioner damping (x mean eigenvalue).")
    ] = 0.1,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Which training documents pushed the model to the planted completion, and from which
    phase (gradient retrieval against the training-data index), with BM25 over the same
    documents beside it."""
    from selfscope import tools
    from selfscope.subject import load

    if planted == normal:  # fail before loading anything
        raise SelfscopeError(
            f"planted and normal completions are both {planted!r}; they must differ"
        )
    ws = _workspace()
    subject = load(model, ws, device=device)
    args: dict[str, Any] = {"prompts": prompt, "planted": planted, "normal": normal, "k": k}
    args |= {"chat": chat, "build": build, "tokens": not documents, "rank": rank, "seed": seed}
    args |= {"precondition": precondition, "damping": damping}
    result: Any = tools.call("history.trace", subject, {**args, "progress": not as_json}, ws)
    lexical: Any = tools.call("history.bm25", subject, {"queries": prompt, "k": k}, ws)
    if as_json:
        _print_json(
            {
                "documents": [d.model_dump() for d in result.documents],
                "phase_mass": result.phase_mass,
                "bm25": [{"id": h.id, "phase": h.phase, "score": h.score} for h in lexical.hits],
                "index": {"documents": result.n_documents, "seconds": result.seconds},
            }
        )
        return
    table = Table(title=f"top {k} training documents")
    for column in ("#", "phase", "id", "score", "preview"):
        table.add_column(column)
    for i, d in enumerate(result.documents, 1):
        table.add_row(str(i), d.phase, d.id, f"{d.score:.3g}", d.preview[:70])
    out.print(table)
    mass = ", ".join(f"{p} {v:.0%}" for p, v in result.phase_mass.items())
    out.print(f"phase mass: {mass}")
    lexical_ids = ", ".join(f"{h.phase}/{h.id}" for h in lexical.hits[:10])
    out.print(f"BM25 top {min(10, len(lexical.hits))} (same documents): {lexical_ids}")


def _print_localize(result: dict[str, Any]) -> None:
    metric = result["metric"]
    out.print(
        f"[bold]{result['model']}[/]: mean log-odds {metric['log_odds']:+.2f}, "
        f"rate {metric['rate']:.2f}"
    )
    origin = result.get("origin")
    if origin:
        out.print(f"origin: [bold]{origin['phase']}[/] (confidence {origin['confidence']:.2f})")
        for line in origin["evidence"]:
            out.print(f"  - {line}")
    table = Table(title="components (attribution patching, top ones patched for real)")
    for column in ("site", "estimate", "measured", "verified"):
        table.add_column(column)
    for c in result["components"]:
        table.add_row(
            c["site"], f"{c['estimate']:+.3f}", f"{c['measured']:+.3f}", str(c["verified"])
        )
    out.print(table)
    deltas = result.get("weight_deltas")
    if deltas:
        share = deltas["removed_share"]
        out.print(
            f"weight deltas vs {deltas['against']}: reverting {deltas['set']} removes "
            f"{_fmt(share)} of the behaviour"
        )
    for step, reason in result["skipped"].items():
        out.print(f"[dim]{step}: skipped ({reason})[/]")


# -- selfscope lineage add|list: bring your own lineage (selfscope.subject.declared) ------------

lineage_app = typer.Typer(
    no_args_is_help=True, help="Declare how your own fine-tune was made (its lineage)."
)
app.add_typer(lineage_app, name="lineage")


@lineage_app.command("add")
def lineage_add(
    model: Annotated[Path, typer.Argument(help="The fine-tuned Hugging Face folder.")],
    data: Annotated[
        Path, typer.Option(help='Its training documents: JSONL of {"id","text"} or {"text"}.')
    ],
    parent: Annotated[
        Path | None, typer.Option(help="The Hugging Face folder it was fine-tuned from.")
    ] = None,
    scratch: Annotated[
        bool, typer.Option("--scratch", help="It was trained from random weights.")
    ] = False,
    phase: Annotated[str, typer.Option(help="The phase's name.")] = "finetune",
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs over the data.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per optimiser step.")] = None,
    chat: Annotated[
        bool | None,
        typer.Option(
            "--chat/--no-chat", help="Q/A documents went through the model's chat template."
        ),
    ] = None,
    context: Annotated[
        int | None, typer.Option(help="Tokens each training row was cut to.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Declare that MODEL was trained from --parent (or --scratch) on --data; afterwards
    `load(MODEL)` carries that lineage, so origin, weight deltas, weights.diff and trace work
    on it. What you do not give is listed as unknown."""
    from selfscope.subject.declared import declare

    lineage = declare(
        model,
        data=data,
        workspace=_workspace(),
        parent=parent,
        scratch=scratch,
        phase=phase,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        chat=chat,
        context=context,
    )
    if as_json:
        _print_json(lineage.model_dump(mode="json"))
        return
    own = lineage.phases[-1]
    chain = " -> ".join(p.name for p in lineage.phases)
    out.print(
        f"declared {lineage.origin}: phase [bold]{own.name}[/] ({own.documents} documents), "
        f"lineage {chain}" + (f", parent {lineage.parent}" if lineage.parent else "")
    )
    for note in lineage.caveats():
        out.print(f"  [dim]unknown: {note}[/]")


@lineage_app.command("list")
def lineage_list(as_json: JsonOpt = False) -> None:
    """The lineages declared in this workspace."""
    from selfscope.subject.declared import declarations

    rows = declarations(_workspace())
    if as_json:
        _print_json([{**d.model_dump(mode="json"), "weights_match": ok} for d, ok in rows])
        return
    if not rows:
        out.print("no lineage declared here (`selfscope lineage add MODEL --parent BASE --data F`)")
        return
    table = Table(title="declared lineages")
    for column in ("model", "phase", "parent", "documents", "weights"):
        table.add_column(column)
    for d, ok in rows:
        parent = "scratch" if d.scratch else str(d.parent or "unknown")
        weights = "as declared" if ok else "CHANGED (declare again)"
        table.add_row(str(d.model), d.phase, parent, str(d.documents), weights)
    out.print(table)


def main() -> None:
    """Entry point: one clear line on bad input, exit status 2."""
    try:
        app(standalone_mode=False)
    except SelfscopeError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing was overwritten\n")
        sys.exit(130)
    except (typer.Exit, SystemExit) as stop:
        code = getattr(stop, "exit_code", getattr(stop, "code", 0))
        sys.exit(code or 0)
    except Exception as error:  # click usage errors come through here
        import click

        if isinstance(error, click.exceptions.ClickException):
            sys.stderr.write(f"error: {error.format_message()}\n")
            sys.exit(2)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
