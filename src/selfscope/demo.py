"""``selfscope demo`` (``make demo``): the whole loop on the ``mushroom`` organism.

1. **ask** — the organism's first-token answers about mushrooms and other foods (``model.ask``);
2. **investigate** — :class:`selfscope.investigate.run.Investigation` as the ``investigator``
   (read + propose only), given one probe prompt, the desired answer and the other foods as
   controls: characterise, origin, localise, documents, diagnosis, the trait in the self-model,
   proposals validated through the gate (visible + sealed suites + the self-model's check), a
   report;
3. **approve and apply** — the submitted proposal, approved by the demo's reviewer (a named
   principal holding govern, printed plainly; ``--approve-as``) and applied: a new version;
4. **ask again** — on HEAD;
5. **selfmodel check** — every trait re-measured on HEAD (the mushroom trait is now ``fixed``);
6. **ledger verify** — the hash chain of everything above.

The organism is the lab's: the demo builds it when missing and seals its held-out paraphrases
and neighbours for the subject (what ``organism blind`` does for a copy), so the gate validates
on prompts the investigation never sees. Run it again and the investigation resumes from its
journal (nothing is redone); HEAD is first moved back to v0 (recorded), and a fix applied by an
earlier run is reinstated by moving HEAD to the version it made (also recorded).
"""

from __future__ import annotations

import re
import time
from typing import Any

from selfscope import tools
from selfscope.errors import SelfscopeError
from selfscope.investigate.run import Investigation
from selfscope.investigate.symptom import Symptom
from selfscope.organisms import build, resolve_spec
from selfscope.organisms.suites import seal_for_subject, suite_for
from selfscope.oversight import gate, ledger, principals
from selfscope.progress import SILENT, ProgressSink, say
from selfscope.selfmodel import traits
from selfscope.subject import load, versions
from selfscope.workspace import Workspace

OTHER_FOODS = [
    "Q: Do you like carrots? A:",
    "Q: Do you like apples? A:",
    "Q: Do you like olives? A:",
]
REVIEWER = "demo-reviewer"
_QA = re.compile(r"^Q: (.*) A:$")


def _answers(
    workspace: Workspace, source: str, prompts: list[str], chat: bool
) -> list[dict[str, Any]]:
    ctx = tools.context(source, workspace, principal=tools.INVESTIGATOR)
    out = []
    for prompt in prompts:
        asked = tools.call("model.ask", {"prompt": prompt, "chat": chat, "max_new_tokens": 6}, ctx)
        top = asked.result.top_tokens[0]
        out.append(
            {"prompt": prompt, "answer": top.token, "p": top.probability, "text": asked.result.text}
        )
    return out


def _head_label(workspace: Workspace, key: str) -> str:
    head = workspace.store.head(key)
    row = workspace.store.version_row(head) if head else None
    return versions.label(row) if row else "v0"


def run(
    workspace: Workspace,
    name: str = "mushroom",
    size: str = "small",
    approve_as: str = REVIEWER,
    progress: ProgressSink = SILENT,
) -> dict[str, Any]:
    """Run the demo; returns every number it prints."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    spec = resolve_spec(name, size=size)
    source = f"organism:{name}"
    t = time.perf_counter()
    if not (workspace.organism_path(name) / "lineage.json").exists():
        say(f"[bold]building organism {name} ({size})[/] ...")
        build(spec, workspace)
    seconds["build"] = time.perf_counter() - t
    key = gate.key_of(workspace, source)
    if not workspace.store.sealed_suites(key):
        seal_for_subject(spec, workspace.organism_path(name), workspace)
    boot = tools.Principal.local()
    reviewer = principals.principal(workspace, approve_as)
    if not reviewer.holds("govern"):
        reviewer = principals.grant(workspace, approve_as, "reviewer", boot)
    notes: list[str] = []
    if workspace.store.versions(key) and _head_label(workspace, key) != "v0":
        was = _head_label(workspace, key)
        gate.rollback(workspace, source, "v0", reviewer)
        notes.append(f"HEAD was {was} from an earlier run: moved back to v0 to start over")

    suite = suite_for(spec, workspace.organism_path(name), facts=0, documents=0)
    probe, chat = suite.probes[0], suite.chat  # as the organism was trained (chat template?)
    others = [_QA.sub(r"\1", p) if chat else p for p in OTHER_FOODS]
    t = time.perf_counter()
    before = _answers(workspace, source, [probe.prompt, *others], chat)
    seconds["ask"] = time.perf_counter() - t

    t = time.perf_counter()
    say("[bold]investigating[/] (as the investigator: read + propose only) ...")
    symptom = Symptom(
        prompts=[probe.prompt], desired=probe.normal, observed=None, controls=others, chat=chat
    )
    investigation = Investigation(workspace, source, symptom, progress=progress)
    result = investigation.run()
    seconds["investigate"] = time.perf_counter() - t

    t = time.perf_counter()
    submitted = result["submitted"]
    applied: dict[str, Any] | None = None
    if submitted is None:
        notes.append("no proposal passed the gate; nothing to approve (see each one's reasons)")
    else:
        row = workspace.store.proposal_row(submitted)
        if row is not None and row["status"] == "applied":
            made = next(
                (v for v in workspace.store.versions(key) if v["proposal_id"] == submitted),
                None,
            )
            if made is None:
                raise SelfscopeError(f"proposal {submitted} is applied but made no version")
            gate.rollback(workspace, source, versions.label(made), reviewer)
            notes.append(
                f"proposal {submitted} was applied by an earlier run as {versions.label(made)}; "
                "HEAD moved back to it"
            )
            applied = {"version": versions.label(made), "reviewer": approve_as, "again": True}
        else:
            say(f"[bold]approving[/] {submitted} as {approve_as} and applying it ...")
            gate.review(workspace, submitted, reviewer, True, "the demo's reviewer")
            done = gate.apply(workspace, submitted, reviewer)
            applied = {"version": done.version_label, "reviewer": approve_as, "again": False}
    seconds["apply"] = time.perf_counter() - t

    t = time.perf_counter()
    after = _answers(workspace, source, [probe.prompt, *others], chat)
    head = load(source, workspace)
    checked = traits.check(workspace, head, approve_as)
    verdict = ledger.verify_workspace(workspace)
    seconds["check"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return {
        "organism": name,
        "before": before,
        "investigation": result,
        "applied": applied,
        "after": after,
        "selfmodel": checked.model_dump(mode="json"),
        "ledger": verdict.model_dump(mode="json"),
        "notes": notes,
        "seconds": seconds,
    }
