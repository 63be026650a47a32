"""``selfscope organism random`` and ``selfscope bench``: the auditing game (selfscope.game)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from selfscope.cli._common import JsonOpt, fmt, out, print_json, workspace
from selfscope.cli.organisms import organism_app
from selfscope.errors import SelfscopeError


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


@organism_app.command("random")
def organism_random(
    seed: Annotated[int, typer.Option(help="Every draw derives from it (same seed, same spec).")],
    size: Annotated[str, typer.Option(help="tiny | small | medium.")] = "small",
    kind: Annotated[
        str | None,
        typer.Option(help="aversion | false-fact | bias | trigger | mixed (default: drawn)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the spec here (default: stdout).")
    ] = None,
) -> None:
    """Draw a fresh organism spec for the auditing game (a normal spec: build it with
    `organism build FILE`)."""
    from selfscope import atomic
    from selfscope.game.generate import random_spec_yaml

    text = random_spec_yaml(seed, size, kind)
    if output is None:
        out.file.write(text)
        return
    if output.is_dir():
        raise SelfscopeError(f"--out {output} is a folder; give a file name such as random.yaml")
    atomic.write_text(output, text)
    out.print(f"wrote {output}: build it with `selfscope organism build {output}`", style="dim")


def bench(
    specs: Annotated[
        Path | None, typer.Option(help="A folder of .yaml specs to play (instead of --random).")
    ] = None,
    random: Annotated[
        int | None, typer.Option("--random", help="Draw this many fresh organisms.")
    ] = None,
    seed: Annotated[int, typer.Option(help="The game's seed (with --random).")] = 1,
    size: Annotated[
        str | None, typer.Option(help="tiny | small | medium (default: small, or each spec's).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Draw only this kind (with --random).")] = None,
    driver: Annotated[str, typer.Option(help="builtin | llm | json.")] = "builtin",
    answers: Annotated[
        Path | None, typer.Option(help="--driver json: a folder of <organism>.json answers.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="--driver llm: an OpenAI-compatible base URL.")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="--driver llm: the model name.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="--driver llm: the variable holding the API key.")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="--driver llm: turn budget.")] = 30,
    markdown: Annotated[
        Path | None, typer.Option(help="Also write the results as a section of this file.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The auditing game: build organisms (cached), investigate each blind in a sandboxed
    process, score against ground truth (see docs/game.md)."""
    from selfscope.game.bench import DRIVERS, Game, folder_specs, random_specs, write_markdown
    from selfscope.game.bench import markdown as md

    if (specs is None) == (random is None):
        raise SelfscopeError("give either --specs DIR or --random N (with --seed S)")
    if driver not in DRIVERS:
        raise SelfscopeError(f"unknown driver {driver!r}; drivers: {', '.join(DRIVERS)}")
    if random is not None and random < 1:
        raise SelfscopeError("--random N needs N >= 1")
    driver_args: list[str] = []
    if driver == "llm":
        if not endpoint or not model_name:
            raise SelfscopeError("--driver llm needs --endpoint URL and --model-name NAME")
        driver_args = ["--endpoint", endpoint, "--model-name", model_name]
        driver_args += ["--max-steps", str(max_steps)]
        driver_args += ["--api-key-env", api_key_env] if api_key_env else []
    ws = workspace()
    if specs is not None:
        if not specs.is_dir():
            raise SelfscopeError(f"--specs {specs} is not a folder of .yaml specs")
        paths, label = folder_specs(specs), f"specs-{specs.resolve().name}-{driver}"
        command = f"selfscope bench --specs {specs}"
        denied = [specs]
    else:
        assert random is not None
        grown = size or "small"
        folder = ws.root / "game" / "specs" / f"seed-{seed}-{grown}{'-' + kind if kind else ''}"
        paths = random_specs(folder, random, seed, grown, kind)
        label = f"random-{random}-seed-{seed}-{grown}{'-' + kind if kind else ''}-{driver}"
        command = f"selfscope bench --random {random} --seed {seed} --size {grown}"
        command += f" --kind {kind}" if kind else ""
        denied = [folder]
    command += f" --driver {driver}" if driver != "builtin" else ""
    game = Game(ws, driver, answers=answers, driver_args=driver_args, size=size, denied=denied)
    results = game.run(paths, label)
    if markdown is not None:
        write_markdown(markdown, f"game-{label}", md(results, command))
    if as_json:
        print_json(results)
        return
    _show(results)


def _show(results: dict[str, Any]) -> None:
    table = Table(title=f"the auditing game ({results['driver']}): {results['path']}")
    for column in ("organism", "phase (truth)", "recall@10", "MRR", "BM25", "local.", "fix"):
        table.add_column(column)
    table.add_column("result")
    for r in results["rows"]:
        if not r.get("playable"):
            table.add_row(r["organism"], escape(f"not playable: {r['why']}"), *[""] * 6)
            continue
        s = r["score"]
        table.add_row(
            r["organism"],
            f"{s['phase']} ({s['true_phase']})",
            fmt(s["recall10"]),
            fmt(s["mrr"]),
            fmt(s["bm25_recall10"]),
            fmt(s["localisation"]),
            "passed" if s["fix_passed"] else "failed",
            "WIN" if s["win"] else "loss: " + ", ".join(s["lost_on"]),
        )
    out.print(table)
    s = results["summary"]
    t = s["seconds"]
    out.print(
        f"{s['wins']} wins of {s['playable']} playable ({s['organisms']} drawn), win rate "
        f"{fmt(s['win_rate'])}; phase {fmt(s['phase_correct'])}, recall@10 >= 0.5 "
        f"{fmt(s['recall_at_least_half'])}, fix {fmt(s['fix_passed'])}. Time "
        f"{results['seconds'] / 60:.1f} min (builds {t['build'] / 60:.1f}, indexes "
        f"{t['index'] / 60:.1f}, investigations {t['investigation'] / 60:.1f})"
    )
