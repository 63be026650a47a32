"""``selfscope bench``: the auditing game — organisms no one tuned for, investigated blind.

For each organism (specs from a folder, or drawn fresh by :mod:`.generate`):

1. **build** it into the workspace (reused when a build of the same spec exists);
2. write its **blind copy** (:mod:`selfscope.organisms.blind`: no spec, no ground truth,
   neutral document ids) and a fresh **investigation workspace** holding only the probed
   behaviour's sealed suite (held-out paraphrases and neighbours, for the gate);
3. **investigate** in a separate process behind :mod:`.sandbox` (it refuses every path of the
   organisms' build folders and the specs), given one probe prompt and the desired answer:
   first the training-data index (timed apart), then ``selfscope investigate`` with the chosen
   driver — ``builtin`` (the built-in loop), ``llm`` (an OpenAI-compatible endpoint drives the
   tools), or ``json`` (a third party's answers, read from ``--answers DIR/<organism>.json``);
4. **measure** (:mod:`.measure`) the localisation and the fix itself, and **score**
   (:mod:`.score`) the answer against ground truth.

The probed behaviour is the spec's first (a generated ``mixed`` organism has a second planted
behaviour the investigator is not asked about). Results: a table, ``<workspace>/game/<label>.json``
and, with ``--markdown FILE``, a section of FILE (docs/benchmarks.md in this repository).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfscope import atomic
from selfscope.errors import SelfscopeError
from selfscope.game import measure
from selfscope.game.generate import organism_seed, random_spec_yaml
from selfscope.game.score import Answer, answer_from_investigation, read_answer, score
from selfscope.organisms.ground_truth import read_ground_truth
from selfscope.organisms.spec import Probe, Spec, load_spec
from selfscope.workspace import Workspace

DRIVERS = ("builtin", "llm", "json")
#: the index step builds what the investigation's retrieval reads (history.trace's default)
INDEX_ARGS = '{"scope": "tokens"}'
#: the subprocess's hard limit per step (seconds)
TIMEOUT = 7200


def random_specs(folder: Path, count: int, seed: int, size: str, kind: str | None) -> list[Path]:
    """Write ``count`` fresh specs for game seed ``seed`` into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        s = organism_seed(seed, i)
        path = folder / f"random-{s}{'' if kind is None else '-' + kind}.yaml"
        atomic.write_text(path, random_spec_yaml(s, size, kind))
        paths.append(path)
    return paths


def folder_specs(folder: Path) -> list[Path]:
    found = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not found:
        raise SelfscopeError(f"no .yaml specs in {folder}; write some with `organism random`")
    return found


class Game:
    """One run of the game in ``workspace`` with one driver."""

    def __init__(
        self,
        workspace: Workspace,
        driver: str = "builtin",
        *,
        answers: Path | None = None,
        driver_args: list[str] | None = None,
        size: str | None = None,
        denied: list[Path] | None = None,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        if driver not in DRIVERS:
            raise SelfscopeError(f"unknown driver {driver!r}; drivers: {', '.join(DRIVERS)}")
        if driver == "json" and answers is None:
            raise SelfscopeError("--driver json needs --answers DIR (one <organism>.json each)")
        self.ws, self.driver, self.answers = workspace, driver, answers
        self.driver_args = driver_args or []
        self.size, self.say = size, say
        self.root = workspace.root / "game"
        self.denied = [workspace.root / "organisms", *(denied or [])]

    # -- the steps ---------------------------------------------------------------------------
    def organism(self, spec: Spec) -> tuple[Path, float | None, list[str]]:
        """The built organism (reused when built from the same spec), the build seconds (None:
        reused) and the targets it missed."""
        from selfscope.organisms import build

        if spec.name in self.ws.built_organisms():
            folder = self.ws.organism_path(spec.name).resolve()
            lineage = json.loads((folder / "lineage.json").read_text())
            if lineage.get("spec_sha256") == spec.sha256():
                report = json.loads((folder / "report.json").read_text())
                missed = [c for c in report.get("checks", []) if not _passed(c)]
                return folder, None, [_check_line(c) for c in missed]
        self.say(f"  building {spec.name} ({spec.size}) ...")
        result = build(spec, self.ws, progress=False, strict=False)
        missed = [c.as_dict() for c in result.failures]
        return result.path.resolve(), result.seconds, [_check_line(c) for c in missed]

    def blind_copy(self, spec: Spec, folder: Path) -> Path:
        """The organism's blind copy under the game folder (reused, with any index built into
        it, while the organism is the same build)."""
        from selfscope.organisms.blind import blind

        copy = self.root / "copies" / spec.name
        if (copy / "lineage.json").is_file():
            mine = json.loads((copy / "lineage.json").read_text()).get("built_at")
            theirs = json.loads((folder / "lineage.json").read_text()).get("built_at")
            if mine == theirs:
                return copy
        copy.parent.mkdir(parents=True, exist_ok=True)
        return blind(spec.name, copy, self.ws)

    def investigation_workspace(self, spec: Spec, folder: Path, copy: Path) -> Path:
        """A fresh workspace holding only the probed behaviour's sealed suite for the copy."""
        import hashlib

        from selfscope.organisms.suites import suite_for
        from selfscope.subject.versions import subject_key

        root = self.root / "runs" / self.driver / spec.name
        shutil.rmtree(root, ignore_errors=True)
        ws = Workspace(root)
        last = json.loads((copy / "lineage.json").read_text())["phases"][-1]["checkpoint"]
        full = suite_for(spec, folder, facts=0, documents=0, behaviour=0, name="organism-0")
        sealed = full.model_copy(update={"probes": [], "documents": {}})
        text = sealed.model_dump_json()
        ws.store.seal_suite(
            hashlib.sha256(text.encode()).hexdigest(),
            subject_key(copy.resolve() / last),
            sealed.name,
            text,
            len(sealed.heldout) + len(sealed.neighbours),
            "game",
        )
        return root

    def _sandboxed(self, home: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "selfscope.game.sandbox"]
        for path in self.denied:
            command += ["--deny", str(path)]
        command += ["--", "--workspace", str(home), *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELFSCOPE_HOME": str(home)}
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
        )

    def investigate(
        self, spec: Spec, copy: Path, home: Path, probe: Probe
    ) -> tuple[Answer, dict[str, Any]]:
        """Run the investigator on ``copy`` with the symptom ``probe``; its answer, timings."""
        timing: dict[str, Any] = {}
        if self.driver == "json":
            assert self.answers is not None
            path = self.answers / f"{spec.name}.json"
            if not path.is_file():
                return Answer(detected=False), {"error": f"no answer file {path}"}
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SelfscopeError(
                    f"{path}: not JSON ({error.msg}, line {error.lineno})"
                ) from None
            return read_answer(data, str(path)), timing
        started = time.perf_counter()
        index = ["tool", "run", "history.index_build", "-m", str(copy), "--args", INDEX_ARGS]
        built = self._sandboxed(home, index)
        timing["index"] = time.perf_counter() - started
        if built.returncode != 0:
            timing["error"] = _last_line(built.stderr)
        started = time.perf_counter()
        args = ["investigate", "-m", str(copy), "-p", probe.prompt, "--desired", probe.normal]
        if self.driver == "llm":
            args += ["--driver", "llm", *self.driver_args]
        done = self._sandboxed(home, [*args, "--json"])
        timing["investigation"] = time.perf_counter() - started
        refused = [x for x in done.stderr.splitlines() if x.startswith("sandbox: refused")]
        if refused:
            timing["refused"] = refused
        if done.returncode != 0:
            timing["error"] = _last_line(done.stderr)
            return Answer(detected=False), timing
        result = json.loads(done.stdout)
        made = (
            _answer_from_verdict(result)
            if self.driver == "llm"
            else answer_from_investigation(result)
        )
        return made.model_copy(update={"workspace": str(home)}), timing

    def play(self, spec_path: Path) -> dict[str, Any]:
        """One organism of the game: its row."""
        spec = load_spec(spec_path, size=self.size)
        row: dict[str, Any] = {"organism": spec.name, "spec": str(spec_path)}
        row["kinds"] = [b.name for b in spec.behaviours]
        row["architecture"] = spec.architecture
        folder, build_s, failures = self.organism(spec)
        row["seconds"] = {"build": build_s}
        if build_s is None:  # reused: what its build took when it was made
            recorded = json.loads((folder / "lineage.json").read_text()).get("seconds")
            row["seconds"]["build_reused"] = recorded
        if failures:
            row["playable"] = False
            row["why"] = f"the organism missed its build targets: {'; '.join(failures)}"
            return row
        row["playable"] = True
        truth = read_ground_truth(folder)
        behaviour = spec.behaviours[0]
        row["true_phase"] = truth.behaviours[behaviour.name].phase
        copy = self.blind_copy(spec, folder)
        home = self.investigation_workspace(spec, folder, copy)
        probe = symptom_probe(copy, behaviour)
        if probe is None:
            row["playable"] = False
            row["why"] = (
                "the organism's greedy answer is not the planted one on any probe (it shows the "
                "behaviour as planted > normal, but says something else first)"
            )
            return row
        row["symptom"] = probe.prompt
        answer, timing = self.investigate(spec, copy, home, probe)
        row["seconds"] |= {k: v for k, v in timing.items() if k in ("index", "investigation")}
        row |= {k: v for k, v in timing.items() if k in ("error", "refused")}
        started = time.perf_counter()
        measured: dict[str, Any] = {"planted": probe.planted}
        local = measure.localisation(copy, behaviour, row["true_phase"], answer.modules)
        measured["localisation"] = local["share"]
        row["localisation_detail"] = local
        if answer.proposal:
            from selfscope.organisms.suites import suite_for

            suite = suite_for(spec, folder, facts=0, documents=0, behaviour=0, name="game")
            where = Path(answer.workspace) if answer.workspace else home
            measured["fix"] = measure.fix(Workspace(where), answer.proposal, suite)
        row["seconds"]["measure"] = time.perf_counter() - started
        row["answer"] = answer.model_dump()
        row["score"] = score(truth, behaviour.name, answer, measured)
        return row

    def run(self, specs: list[Path], label: str) -> dict[str, Any]:
        """Play every spec; the results (also written to ``<workspace>/game/<label>.json``)."""
        rows: list[dict[str, Any]] = []
        started = time.perf_counter()
        out = self.root / f"{label}.json"
        if threading.current_thread() is threading.main_thread():
            # a SIGTERM becomes an exception, so the investigator's process is killed with the
            # game (subprocess.run kills its child on any exception), never left running
            signal.signal(signal.SIGTERM, _terminate)
        for i, path in enumerate(specs, start=1):
            self.say(f"[{i}/{len(specs)}] {path.stem}")
            row = self.play(path)
            rows.append(row)
            self.say("  " + _line(row))
            atomic.write_json(out, {"label": label, "driver": self.driver, "rows": rows})
        results = {
            "label": label,
            "driver": self.driver,
            "rows": rows,
            "summary": summary(rows),
            "seconds": time.perf_counter() - started,
        }
        atomic.write_json(out, results)
        results["path"] = str(out)
        return results


def symptom_probe(copy: Path, behaviour: Any) -> Probe | None:
    """The first probe on which the organism's greedy first token is the planted answer's: the
    symptom an investigator can see. (random-1012 showed its bias as log p(No) > log p(Yes),
    but said "people" first; given "Yes" as the desired answer, the investigator chased
    "people".) None when no probe shows it greedily."""
    from selfscope.organisms.evaluate import Prober
    from selfscope.organisms.render import ChatRenderer, PlainRenderer
    from selfscope.subject.load import load

    subject = load(str(copy))
    renderer = ChatRenderer(subject.tokenizer) if measure._chat(copy) else PlainRenderer()
    prober = Prober(subject.model, subject.tokenizer, renderer)
    rows = prober.last_logprobs([p.prompt for p in behaviour.probes])
    for row, probe in zip(rows, behaviour.probes, strict=True):
        if int(row.argmax()) == prober.first_token(probe.prompt, probe.planted):
            return probe  # type: ignore[no-any-return]
    return None


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _passed(check: dict[str, Any]) -> bool:
    if check["op"] == ">=":
        return bool(check["value"] >= check["threshold"])
    return bool(check["value"] <= check["threshold"])


def _check_line(check: dict[str, Any]) -> str:
    return (
        f"{check['behaviour']} {check['what']} at {check['checkpoint']} {check['value']:.2f} "
        f"(needs {check['op']} {check['threshold']})"
    )


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if not x.startswith("sandbox: ")]
    return lines[-1] if lines else "(no output)"


def _answer_from_verdict(verdict: dict[str, Any]) -> Answer:
    """An LLM driver's verdict (``investigate --driver llm --json``) as an answer."""
    d = verdict.get("diagnosis") or {}
    return Answer(
        detected=bool(d),
        phase=d.get("phase"),
        documents=list(d.get("documents") or []),
        modules=list(d.get("modules") or []),
        proposal=d.get("proposal"),
    )


def _line(row: dict[str, Any]) -> str:
    if not row.get("playable"):
        return f"not playable: {row['why']}"
    s = row["score"]
    fix = s["fix"] or {}
    return (
        f"{'WIN' if s['win'] else 'loss (' + ', '.join(s['lost_on']) + ')'}; phase "
        f"{s['phase']} ({s['true_phase']}), recall@10 {s['recall10']:.2f}, MRR {s['mrr']:.2f}, "
        f"fix {'passed' if s['fix_passed'] else 'failed ' + str(fix.get('failed') or '')}"
    )


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Win rate, per-criterion rates, mean scores and the time split over playable rows."""
    played = [r for r in rows if r.get("playable")]
    scores = [r["score"] for r in played]
    n = len(scores)

    def rate(key: str) -> float | None:
        return sum(bool(s[key]) for s in scores) / n if n else None

    times = {
        k: sum(r["seconds"].get(k) or 0.0 for r in rows)
        for k in ("build", "build_reused", "index", "investigation", "measure")
    }
    return {
        "organisms": len(rows),
        "playable": n,
        "wins": sum(s["win"] for s in scores),
        "win_rate": rate("win"),
        "detected": rate("detected"),
        "phase_correct": rate("phase_correct"),
        "recall_at_least_half": sum(s["recall10"] >= 0.5 for s in scores) / n if n else None,
        "fix_passed": rate("fix_passed"),
        "recall10": _mean([s["recall10"] for s in scores]),
        "mrr": _mean([s["mrr"] for s in scores]),
        "bm25_recall10": _mean([s["bm25_recall10"] for s in scores]),
        "localisation": _mean([s["localisation"] for s in scores]),
        "seconds": times,
    }


def markdown(results: dict[str, Any], command: str) -> list[str]:
    """The results as a Markdown section."""
    import platform

    import torch

    s = results["summary"]

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

    t = s["seconds"]
    lines = [
        f"### `{command}`",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, driver {results['driver']}. **{s['wins']} wins of "
        f"{s['playable']}** playable organisms ({s['organisms']} drawn): win rate "
        f"**{f(s['win_rate'])}**; detected {f(s['detected'])}, phase {f(s['phase_correct'])}, "
        f"recall@10 ≥ 0.5 {f(s['recall_at_least_half'])}, fix passes the gate "
        f"{f(s['fix_passed'])}. Mean recall@10 {f(s['recall10'])} (BM25 "
        f"{f(s['bm25_recall10'])}), MRR {f(s['mrr'])}, localisation {f(s['localisation'])}. "
        f"Time {results['seconds'] / 60:.1f} min: builds {t['build'] / 60:.1f} (and "
        f"{t.get('build_reused', 0.0) / 60:.1f} in builds reused from earlier), indexes "
        f"{t['index'] / 60:.1f}, investigations {t['investigation'] / 60:.1f}, measuring "
        f"{t['measure'] / 60:.1f}.",
        "",
        "| organism | behaviour | arch | phase (truth) | recall@10 | MRR | top 1 | BM25 r@10 | "
        "localisation | fix: eff / gen / spec | gate | result | build s | index s | "
        "investigation s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        sec = r["seconds"]
        if not r.get("playable"):
            lines.append(f"| {r['organism']} | {', '.join(r['kinds'])} | {r['architecture']} | "
                         f"not playable: {r['why']} |" + " |" * 11)  # fmt: skip
            continue
        s1 = r["score"]
        fix = s1["fix"] or {}
        lines.append(
            f"| {r['organism']} | {', '.join(r['kinds'])} | {r['architecture']} | "
            f"{s1['phase']} ({s1['true_phase']}) | {f(s1['recall10'])} | {f(s1['mrr'])} | "
            f"{s1['top1']} | {f(s1['bm25_recall10'])} | {f(s1['localisation'])} | "
            f"{f(fix.get('efficacy'))} / {f(fix.get('generalisation'))} / "
            f"{f(fix.get('specificity'))} | "
            f"{'passed' if s1['fix_passed'] else 'failed: ' + _failed(fix)} | "
            f"{'**win**' if s1['win'] else 'loss: ' + ', '.join(s1['lost_on'])} | "
            f"{_build(sec)} | {f(sec.get('index'))} | {f(sec.get('investigation'))} |"
        )  # fmt: skip
    return lines


def _build(seconds: dict[str, Any]) -> str:
    if seconds.get("build") is not None:
        return f"{seconds['build']:.0f}"
    reused = seconds.get("build_reused")
    return "-" if reused is None else f"({reused:.0f}, reused)"


def _failed(fix: dict[str, Any]) -> str:
    return ", ".join(fix.get("failed") or [fix.get("why") or "no fix submitted"])


def write_markdown(path: Path, name: str, lines: list[str]) -> None:
    """Replace (or append) the section ``name`` of the Markdown file ``path``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.exists() else ""
    block = f"{start}\n" + "\n".join(lines) + f"\n{end}"
    if start in old:
        new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic.write_text(path, new)


__all__ = ["DRIVERS", "Game", "folder_specs", "markdown", "random_specs", "summary"]
