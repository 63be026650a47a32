"""``selfscope investigate``: notice, trace, explain, propose — one loop, through the tools only.

The investigation runs as the ``investigator`` principal (read + propose: it can never approve
or apply) and uses nothing but registered tools, so every measurement is a recorded call it can
cite. It never reads ground truth or a spec; it works the same on a blind copy of an organism.
Its steps, each timed, journaled and resumable (:mod:`.journal`):

1. ``symptom`` — the observed completion (default: the model's greedy next token, ``model.ask``)
   and the desired one; planted = observed, normal = desired from here on.
2. ``characterise`` — ``localize.measure`` on the prompts and on generic paraphrases of them
   (:func:`.symptom.paraphrases`): log-odds and rate on each; then on the first prompt with
   each word deleted in turn (:func:`.symptom.deletions`): a word whose deletion turns the
   answer to the desired one is the behaviour's *cue* (a trigger word, the entity of a bias).
3. ``localise`` — ``localize.all``: the origin phase from the lineage's checkpoints, components
   (attribution patching, the top ones verified by real patching), the weight-delta set whose
   reversal removes the behaviour, experts for a mixture of experts, and a causal trace of the
   first prompt noising its subject words (:func:`.symptom.trace_subject`: the words no control
   prompt shares).
4. ``documents`` — ``history.trace`` (gradient retrieval over every phase's training documents;
   the index is built once) beside ``history.bm25`` on the prompts; the result lists the top 10
   of the origin phase (the checkpoints' verdict: documents of other phases cannot have caused
   what arose in it) beside the top 10 of all phases, whose phase mass the origin step reads.
5. ``origin`` — the checkpoint verdict beside retrieval's phase mass, saying when they disagree.
6. ``removal`` — when the origin phase can be retrained within the budget (models up to 50M
   parameters, replays up to 20,000 document passes; ``--removal`` lifts both),
   ``history.removal``: the phase retrained without the top documents, and without as many
   random ones.
7. ``diagnosis`` — the causal chain (:mod:`.diagnosis`): each link a claim with the effect an
   intervention measured and the call that measured it; what was not found.
8. ``selfmodel`` — ``selfmodel.learn``: the diagnosed behaviour becomes a trait of the model's
   self-model, with its cause and a probe that predicts it from the residual stream (the gate
   then checks every proposal against that probe: :mod:`selfscope.selfmodel`).
9. ``proposals`` — several kinds of fix (rank-one, and rank-one on the cue's embedding row
   when there is a cue; revert of the weight-delta set; unlearning of the top documents), each
   validated through the gate (``gate.validate``: the visible suite
   here, the subject's sealed suites and the policy), ranked; the best validated one is left
   for a human's approval. Nothing is applied.
10. ``report`` — Markdown and a self-contained HTML file with figures.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import BaseModel

from selfscope import atomic, tools
from selfscope.behaviour import Expect, Probe, Suite
from selfscope.errors import SelfscopeError
from selfscope.investigate import diagnosis as diagnosing
from selfscope.investigate.journal import Journal, folder_of, investigation_id
from selfscope.investigate.symptom import (
    Symptom,
    deletions,
    paraphrases,
    siblings,
    stem,
    trace_subject,
)
from selfscope.oversight import gate
from selfscope.progress import SILENT, ProgressSink
from selfscope.report import investigation as reporting
from selfscope.subject.adapters import adapter_for
from selfscope.subject.load import version_key
from selfscope.workspace import Workspace

#: the fixes tried, in order; each is skipped (with the reason) when it does not apply
KINDS = ("rank_one", "revert_delta", "unlearn")
#: documents history.trace returns, so the origin phase's top 10 are among them
POOL = 200
#: documents the result names as the cause (the game scores the top 10)
TOP = 10
#: the rank-one edit compares at most this many blocks
RANK_ONE_BLOCKS = 4
#: the removal test retrains a phase: allowed by default on models up to this many parameters
REMOVAL_PARAMETERS = 50_000_000
#: ... and up to this many document passes replayed (the origin phase and every later one;
#: the small organisms' fine-tuning is ~5,000, their pretraining ~36,000)
REMOVAL_ROWS = 20_000


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class Investigation:
    """One investigation of ``symptom`` on ``source``; :meth:`run` returns its result."""

    def __init__(
        self,
        workspace: Workspace,
        source: str,
        symptom: Symptom,
        *,
        removal: bool | None = None,
        kinds: tuple[str, ...] = KINDS,
        rank: int = 8,
        progress: ProgressSink = SILENT,
        device: str = "cpu",
    ) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise SelfscopeError(
                f"unknown fix kind {unknown[0] if unknown else '(none)'}; kinds: {', '.join(KINDS)}"
            )
        self.workspace, self.source, self.symptom = workspace, source, symptom
        self.removal, self.kinds, self.rank, self.progress = removal, kinds, rank, progress
        self.ctx = tools.context(
            source, workspace, principal=tools.INVESTIGATOR, progress=progress, device=device
        )
        subject = self.ctx.subject
        self.key = version_key(source, workspace)
        options = {"removal": removal, "kinds": list(kinds), "rank": rank}
        version = subject.version
        row = workspace.store.version_row(version) if version else None
        if row is not None and row["number"] == 0:
            version = None  # the root, registered or not (the gate registers v0 on validation)
        self.id = investigation_id(source, version, {**symptom.model_dump(mode="json"), **options})
        self.journal = Journal(workspace, self.id, tools.INVESTIGATOR.name, self.key, progress)

    # -- tool calls ----------------------------------------------------------------------------
    def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Call a registered tool; its result as JSON with the call id under ``"call"``."""
        done = tools.call(name, args, self.ctx)
        return {"call": done.id, **_dump(done.result)}

    def behaviour(self, prompts: list[str] | None = None) -> dict[str, Any]:
        s = self.symptom
        return {
            "prompts": list(prompts or s.prompts),
            "planted": s.observed,
            "normal": s.desired,
            "chat": s.chat,
        }

    # -- steps ---------------------------------------------------------------------------------
    def _symptom(self) -> dict[str, Any]:
        s = self.symptom
        asked = self.call(
            "model.ask", {"prompt": s.prompts[0], "chat": s.chat, "max_new_tokens": 8}
        )
        observed = s.observed if s.observed is not None else asked["top_tokens"][0]["token"]
        if s.observed is None and s.desired[:1].isspace() and not observed[:1].isspace():
            observed = s.desired[0] + observed  # compare like with like: " No" with " Yes"
        if observed.strip() == s.desired.strip():
            raise SelfscopeError(
                f"the model already answers {observed!r} (the desired {s.desired!r}) on "
                f"{s.prompts[0]!r}; nothing to investigate (give --observed if it is another "
                "completion it gives)"
            )
        return {
            "prompts": s.prompts,
            "observed": observed,
            "desired": s.desired,
            "chat": s.chat,
            "controls": s.controls,
            "answer": asked["text"],
            "ask_call": asked["call"],
        }

    def _characterise(self) -> dict[str, Any]:
        on_prompts = self.call("localize.measure", self.behaviour())
        rewrites = paraphrases(self.symptom.prompts)
        on_rewrites = self.call("localize.measure", self.behaviour(rewrites)) if rewrites else None
        return {
            "prompts": on_prompts,
            "paraphrases": rewrites,
            "on_paraphrases": on_rewrites,
            "cues": self._cues(on_prompts["per_prompt"][0]),
        }

    def _cues(self, before: float) -> dict[str, Any] | None:
        """Each word of the first prompt deleted in turn, the log-odds measured without it; the
        *cue* is the word whose deletion lowers it most, when that turns the answer to the
        desired one (log-odds below 0 from above 0)."""
        dropped = deletions(self.symptom.prompts[0])
        if not dropped:
            return None
        measured = self.call("localize.measure", self.behaviour([p for _, p in dropped]))
        words = sorted(
            (
                {"word": w, "prompt": p, "log_odds": v}
                for (w, p), v in zip(dropped, measured["per_prompt"], strict=True)
            ),
            key=lambda row: row["log_odds"],
        )
        flips = before > 0 > words[0]["log_odds"]
        # a word whose deletion at least halves the log-odds anchors the behaviour's other
        # prompts (siblings) even when it does not turn the answer alone (a false capital:
        # "What is the capital of ?" still names the planted town, 8.06 -> 2.82)
        anchors = before > 0 and words[0]["log_odds"] <= before / 2
        return {
            "log_odds": before,
            "words": words,
            "cue": words[0]["word"] if flips else None,
            "anchor": words[0]["word"] if anchors else None,
            "call": measured["call"],
        }

    def _localise(self) -> dict[str, Any]:
        args = {**self.behaviour(), "control_prompts": self.symptom.controls}
        subject = trace_subject(self.symptom.prompts[0], self.symptom.controls)
        if subject is not None:
            args["trace_subject"] = subject
        found = self.call("localize.all", args)
        if subject is None:
            found.setdefault("skipped", {})["trace"] = (
                "no control prompt to tell the prompt's subject words from its form (--control)"
            )
        return found

    def _documents(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trace": None, "bm25": None, "skipped": {}}
        try:
            # a deep pool, so the origin phase's own top 10 can be read from it
            args = {**self.behaviour(), "k": POOL, "build": True, "rank": self.rank}
            out["trace"] = self.call("history.trace", args)
        except SelfscopeError as error:
            out["skipped"]["trace"] = str(error)
        try:
            out["bm25"] = self.call("history.bm25", {"queries": self.symptom.prompts, "k": 10})
        except SelfscopeError as error:
            out["skipped"]["bm25"] = str(error)
        return out

    def _origin(self, localised: dict[str, Any], documents: dict[str, Any]) -> dict[str, Any]:
        origin = localised.get("origin")
        trace = documents.get("trace")
        mass = _phase_mass(trace["documents"][:10]) if trace else {}
        top_mass = max(mass, key=lambda p: mass[p]) if mass else None
        phase = origin["phase"] if origin else top_mass
        agree = None if origin is None or top_mass is None else origin["phase"] == top_mass
        note = None
        if agree is False and origin is not None and top_mass is not None:
            note = (
                f"the checkpoints say {origin['phase']} (confidence {origin['confidence']:.2f}); "
                f"retrieval's phase mass puts most of the top documents' score in {top_mass} "
                f"({mass[top_mass]:.2f}, {origin['phase']} {mass.get(origin['phase'], 0):.2f}). "
                "The checkpoint verdict is an intervention (the behaviour measured at each "
                "checkpoint); it is kept"
            )
        return {
            "phase": phase,
            "confidence": origin["confidence"] if origin else None,
            "by": "checkpoints" if origin else ("phase mass" if top_mass else None),
            "phase_mass": mass,
            "agree": agree,
            "note": note,
        }

    def _ranked(self) -> dict[str, Any]:
        """The origin phase's documents, in the order every later step reads them: gradient
        retrieval's (history.trace restricted to the phase when the first pool holds fewer than
        :data:`TOP` of it), then those that name the cue scan's anchor moved ahead, in that
        order, when their score is positive (history.grep over the phase's full texts). The
        behaviour hangs on the anchor word (its deletion at least halves the log-odds), so a
        document that teaches the planted answer without naming it (the same answer to another
        food, another country) raises the answer in general, not this behaviour: on the
        auditing game's seed 2 (19 organisms), mean recall@10 of the cause documents went from
        0.76 to 0.91, lower on one (docs/investigate.md)."""
        st = self.state
        trace, phase = st["documents"].get("trace"), st["origin"].get("phase")
        if trace is None:
            return {"phase": phase, "documents": [], "calls": []}
        pool = [d for d in trace["documents"] if phase is None or d["phase"] == phase]
        calls = [trace["call"]]
        restricted = phase is not None and len(pool) < TOP
        if restricted:
            try:
                again = self.call(
                    "history.trace",
                    {**self.behaviour(), "k": POOL, "rank": self.rank, "phases": [phase]},
                )
                pool, calls = again["documents"], [*calls, again["call"]]
            except SelfscopeError:
                restricted = False  # the first pool stands
        anchor = (st["characterise"].get("cues") or {}).get("anchor")
        naming = None
        if anchor:
            pattern = r"\b" + re.escape(stem(anchor))
            phases = [phase] if phase else None
            found = self.call(
                "history.grep", {"pattern": pattern, "phases": phases, "k": 100_000, "spans": 1}
            )
            calls.append(found["call"])
            keys = {h["key"] for h in found["hits"]}
            ahead = [d for d in pool if d["score"] > 0 and d["key"] in keys]
            naming = len(ahead)
            pool = ahead + [d for d in pool if d["score"] <= 0 or d["key"] not in keys]
        return {
            "phase": phase,
            "documents": pool,
            "restricted": restricted,
            "anchor": anchor,
            "naming_anchor": naming,
            "calls": calls,
        }

    def _top(self) -> list[str]:
        """The keys of the origin phase's top :data:`TOP` documents (:meth:`_ranked`)."""
        return [d["key"] for d in self.state["ranked"]["documents"][:TOP]]

    def _removal(self, origin: dict[str, Any], documents: dict[str, Any]) -> dict[str, Any]:
        trace = documents.get("trace")
        phase = origin.get("phase")
        if trace is None or phase is None:
            return {"skipped": "no traced documents or no origin phase to retrain"}
        keys = self._top()
        if not keys:
            return {"skipped": f"none of the top documents is from {phase}"}
        size = sum(p.numel() for p in self.ctx.subject.model.parameters())
        rows = self._retrain_rows(phase)
        if self.removal is None and size > REMOVAL_PARAMETERS:
            return {
                "skipped": f"retraining {phase} of a {size / 1e6:.0f}M-parameter model is over "
                "the budget (--removal runs it)"
            }
        if self.removal is None and rows > REMOVAL_ROWS:
            return {
                "skipped": f"retraining {phase} and the phases after it (about {rows:,} "
                f"document passes, twice: without the documents and without random ones) is "
                f"over the budget of {REMOVAL_ROWS:,} (--removal runs it)"
            }
        if self.removal is False:
            return {"skipped": "not asked for (--no-removal)"}
        try:
            found = self.call(
                "history.removal",
                {**self.behaviour(), "remove": keys, "bm25": False, "replay": False},
            )
        except SelfscopeError as error:
            return {"skipped": str(error)}
        return {"removed": keys, **found}

    def _retrain_rows(self, phase: str) -> int:
        """Document passes a removal test replays: ``phase`` and every later phase, documents x
        epochs as the lineage records them (a first-phase plant retrains from the start)."""
        phases = self.ctx.subject.lineage.phases
        names = [p.name for p in phases]
        later = phases[names.index(phase) :] if phase in names else []
        return sum((p.documents or 0) * (p.hyperparameters.epochs or 1) for p in later)

    def _suite(self, characterised: dict[str, Any]) -> Suite:
        """The investigation's own visible suite: the prompts, its paraphrases, the controls
        (their answers now, which a fix must keep)."""
        s = self.symptom
        observed = str(self.state["symptom"]["observed"])
        probe = [Probe(prompt=p, planted=observed, normal=s.desired) for p in s.prompts]
        held = [
            Probe(prompt=p, planted=observed, normal=s.desired)
            for p in characterised["paraphrases"]
        ]
        neighbours = []
        for prompt in s.controls:
            asked = self.call("model.ask", {"prompt": prompt, "chat": s.chat, "max_new_tokens": 1})
            neighbours.append(Expect(prompt=prompt, expected=asked["top_tokens"][0]["token"]))
        return Suite(
            name="investigation", chat=s.chat, probes=probe, heldout=held, neighbours=neighbours
        )

    def _selfmodel(self) -> dict[str, Any]:
        st = self.state
        localised, documents, removal = st["localise"], st["documents"], st["removal"]
        deltas = localised.get("weight_deltas") or {}
        trace = documents.get("trace")
        phase = st["origin"].get("phase")
        cause = {
            "phase": phase,
            "modules": deltas.get("module_set", []),
            "removed_share": deltas.get("set_share"),
            "components": [c["site"] for c in localised.get("components", []) if c["verified"]][:3],
            "documents": self._top(),
            "documents_confirmed": _removal_confirms(removal),
        }
        evidence = [st["characterise"]["prompts"]["call"], localised["call"]]
        if trace:
            evidence += st["ranked"]["calls"]
        try:
            learned = self.call(
                "selfmodel.learn",
                {
                    **self.behaviour(),
                    "heldout": st["characterise"]["paraphrases"],
                    "controls": self.symptom.controls,
                    "cause": cause,
                    "evidence": evidence,
                    "investigation": self.id,
                },
            )
        except SelfscopeError as error:
            return {"skipped": str(error)}
        probe = learned["probe"]
        return {
            "trait": learned["name"],
            "status": learned["status"],
            "layer": probe["layer"],
            "cv_auroc": probe["cv_auroc"],
            "examples": len(learned["examples"]),
            "call": learned["call"],
        }

    def _proposals(self) -> dict[str, Any]:
        st = self.state
        suite = self._suite(st["characterise"]).model_dump(mode="json")
        localised, documents = st["localise"], st["documents"]
        evidence = [localised["call"]]
        trace = documents.get("trace")
        extra: dict[str, dict[str, Any]] = {
            "rank_one": {"evidence": evidence, **self._rank_one_layers(localised)},
            "revert_delta": {
                "fraction": "auto",
                "control_prompts": self.symptom.controls,
                "evidence": evidence,
            },
            "unlearn": {
                "documents": self._top(),
                "evidence": st["ranked"]["calls"] if trace else [],
            },
        }
        # the rank-one edit keys on the symptom prompts and their paraphrases: one prompt's key
        # is its question form, several keys make the edit hold across forms (measured on a
        # pretraining-planted aversion: sealed paraphrases fixed 0.00 with the prompt's key,
        # 0.75 with the paraphrases' keys as well)
        # other prompts of the behaviour, read from the documents that taught it: the fixes
        # are made and gated on them too (a fix keyed on "Do you like nuts?" alone left "Is nut
        # pie tasty?" planted on 6 of the auditing game's seed-1 organisms)
        sibs = self._siblings()
        fix_prompts = [*self.symptom.prompts, *sibs["prompts"]]
        extra["rank_one"]["prompts"] = [
            *fix_prompts,
            *(p for p in st["characterise"]["paraphrases"] if p not in fix_prompts),
        ]
        rows: list[dict[str, Any]] = []
        for kind in self.kinds:
            if kind == "revert_delta" and localised.get("weight_deltas") is None:
                rows.append({"kind": kind, "skipped": "the model has no parent checkpoint"})
                continue
            if kind == "unlearn" and not extra["unlearn"]["documents"]:
                rows.append({"kind": kind, "skipped": "no traced documents of the origin phase"})
                continue
            rows.append(self._propose(kind, {**self.behaviour(fix_prompts), **extra[kind]}, suite))
            cue = (st["characterise"].get("cues") or {}).get("cue")
            if kind == "rank_one" and cue:
                # a word whose deletion turns the answer is the behaviour's cue: rewrite its
                # embedding row, the one memory every block reads it from (a trigger planted
                # in pretraining on a mixture of experts: no MLP output matrix, no parent to
                # revert to; the embedding edit passed the gate where v_proj fixed nothing)
                keyed = [p for p in extra["rank_one"]["prompts"] if cue in p]
                args = {
                    **self.behaviour(keyed),
                    "matrix": "embedding",
                    "subject": cue,
                    "evidence": [*evidence, st["characterise"]["cues"]["call"]],
                }
                rows.append({**self._propose(kind, args, suite), "matrix": "embedding"})
        first = next((r for r in rows if r["kind"] == "rank_one" and "alternatives" in r), None)
        if first is not None and not any(r.get("status") == "validated" for r in rows):
            # no fix passed and the block the edit chose failed the gate: try the other blocks
            # that fixed every prompt, least drift first, until one passes
            for layer in first["alternatives"]:
                again = self._propose(
                    "rank_one", {**self.behaviour(), **extra["rank_one"], "layer": layer}, suite
                )
                rows.append(again)
                if again.get("status") == "validated":
                    break
        # among fixes that pass: a keyed edit or revert before an embedding rewrite (it
        # changes the word in every context), then the smallest change
        ranked = sorted(
            (r for r in rows if "id" in r),
            key=lambda r: (
                not r["validation"]["passed"],
                len(r["why"] or ""),
                r.get("matrix") == "embedding",
                r["delta_norm"],
            ),
        )
        best = ranked[0] if ranked and ranked[0]["validation"]["passed"] else None
        if best is not None:
            self.workspace.store.append(
                "investigation.submitted",
                tools.INVESTIGATOR.name,
                self.key,
                {"investigation": self.id, "proposal": best["id"], "kind": best["kind"]},
            )
        return {
            "suite": suite,
            "siblings": sibs,
            "proposals": rows,
            "ranking": [r["id"] for r in ranked],
            "submitted": best["id"] if best else None,
        }

    def _siblings(self) -> dict[str, Any]:
        """Prompts cut from the origin phase's top documents just before they give the
        observed answer, naming the cue scan's anchor (the word whose deletion at least halves
        the log-odds; :func:`.symptom.siblings`), kept where the model gives
        that answer now (log-odds above 0, measured): other forms of the behaviour's question."""
        st = self.state
        cue = (st["characterise"].get("cues") or {}).get("anchor")
        trace = st["documents"].get("trace")
        if not cue or trace is None:
            return {
                "prompts": [],
                "why": "no word's deletion halves the log-odds" if not cue else "no documents",
            }
        texts = [d["preview"] for d in st["ranked"]["documents"][:TOP]]
        exclude = [*self.symptom.prompts, *st["characterise"]["paraphrases"]]
        found = siblings(texts, str(st["symptom"]["observed"]), cue, exclude)
        if not found:
            return {"prompts": [], "why": "no top document gives the answer after the cue"}
        measured = self.call("localize.measure", self.behaviour(found))
        kept = [p for p, v in zip(found, measured["per_prompt"], strict=True) if v > 0]
        return {
            "prompts": kept,
            "candidates": dict(zip(found, measured["per_prompt"], strict=True)),
            "call": measured["call"],
        }

    def _propose(self, kind: str, args: dict[str, Any], suite: dict[str, Any]) -> dict[str, Any]:
        """Propose one fix of ``kind`` and validate it through the gate; its row."""
        try:
            made = self.call(f"edits.{kind}", args)
        except SelfscopeError as error:
            return {"kind": kind, "skipped": str(error)}
        proposal = made["proposal"]
        report = self._judged(proposal["id"]) or self.call(
            "gate.validate", {"proposal": proposal["id"], "suites": [suite]}
        )
        failed = [c for c in report["checks"] if not c["passed"]]
        row = {
            "kind": kind,
            "id": proposal["id"],
            "modules": proposal["modules"],
            "delta_norm": proposal["delta_norm"],
            "status": report.get("judged_earlier")
            or ("validated" if report["passed"] else "rejected"),
            "validation": {
                "passed": report["passed"],
                "checks": report["checks"],
                "sealed": report["sealed"],
                "visible": report["visible"],
                "call": report["call"],
            },
            "why": "; ".join(
                f"{c['name']} {_num(c['value'])} (limit {_num(c['limit'])})" for c in failed
            )
            or None,
            "propose_call": made["call"],
        }
        if kind == "rank_one" and args.get("layer") is None:
            chosen = proposal["parameters"].get("chosen_layer")
            candidates = [
                c
                for e in proposal["evidence"]
                for c in (e.get("numbers") or {}).get("candidates", [])
            ]
            best = max((c["fixed"] for c in candidates), default=0.0)
            row["alternatives"] = [
                c["layer"]
                for c in sorted(candidates, key=lambda c: c["drift"])
                if c["fixed"] == best and c["layer"] != chosen
            ]
        return row

    def _rank_one_layers(self, localised: dict[str, Any]) -> dict[str, Any]:
        """The rank-one edit's matrix (the value projection on a mixture of experts) and
        candidate blocks: every block on models up to
        :data:`RANK_ONE_BLOCKS` blocks; on deeper ones the blocks of the verified components
        (then evenly spaced ones through the first two thirds, where ROME's edits work), so the
        comparison stays within budget (every block of SmolLM2's 30 took 837 s)."""
        model = self.ctx.subject.model
        n = int(model.config.num_hidden_layers)
        # a mixture of experts has no dense MLP output matrix: edit the value projection
        matrix = (
            {"matrix": "attention_value"}
            if "blocks.{i}.moe.router" in adapter_for(model).sites
            else {}
        )
        if n <= RANK_ONE_BLOCKS:
            return matrix
        found = []
        for c in localised.get("components", []):
            m = re.match(r"blocks\.(\d+)\.", c["site"])
            if c["verified"] and m and int(m[1]) not in found:
                found.append(int(m[1]))
        spaced = [round(i * (2 * n / 3) / RANK_ONE_BLOCKS) for i in range(1, RANK_ONE_BLOCKS + 1)]
        layers = [b for b in dict.fromkeys(found + spaced) if b < n][:RANK_ONE_BLOCKS]
        return {"layers": sorted(layers), **matrix}

    def _judged(self, proposal_id: str) -> dict[str, Any] | None:
        """The gate's last report on a proposal it already judged (the same fix proposed
        again, e.g. by an earlier run of this investigation whose journal was removed): a
        judged proposal cannot be validated again, and its verdict stands."""
        row = self.workspace.store.proposal_row(proposal_id)
        if row is None or row["status"] in ("proposed", "stale"):
            return None
        last = gate.last_validation(self.workspace, proposal_id)
        if last is None:
            return None
        return {"call": None, "judged_earlier": row["status"], **last.model_dump(mode="json")}

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        j = self.journal
        self.state: dict[str, Any] = {}
        st = self.state
        st["symptom"] = j.step("symptom", self._symptom)
        self.symptom = self.symptom.model_copy(update={"observed": st["symptom"]["observed"]})
        st["characterise"] = j.step("characterise", self._characterise)
        st["localise"] = j.step("localise", self._localise)
        st["documents"] = j.step("documents", self._documents)
        st["origin"] = j.step("origin", lambda: self._origin(st["localise"], st["documents"]))
        st["ranked"] = j.step("ranked", self._ranked)
        st["removal"] = j.step("removal", lambda: self._removal(st["origin"], st["documents"]))
        st["diagnosis"] = j.step("diagnosis", lambda: diagnosing.diagnose(st))
        st["selfmodel"] = j.step("selfmodel", self._selfmodel)
        st["proposals"] = j.step("proposals", self._proposals)
        result = self.result()
        paths = j.step(
            "report",
            lambda: reporting.write(folder_of(self.workspace, self.id), result),
        )
        result["report"] = paths
        result["seconds"] = {**j.seconds, "total": time.perf_counter() - started}
        result["resumed"] = list(j.resumed)
        # the whole answer beside the steps, for the doors that list investigations (HTTP)
        atomic.write_json(folder_of(self.workspace, self.id) / "result.json", result)
        return result

    def result(self) -> dict[str, Any]:
        """The investigation's answer in the documented shape (``selfscope investigate
        --json``)."""
        st = self.state
        localised, documents, origin = st["localise"], st["documents"], st["origin"]
        metric = st["characterise"]["prompts"]
        deltas = localised.get("weight_deltas")
        trace, bm25 = documents.get("trace"), documents.get("bm25")
        return {
            "investigation": self.id,
            "model": self.source,
            "symptom": {k: st["symptom"][k] for k in ("prompts", "observed", "desired", "chat")},
            "metric": {"log_odds": metric["log_odds"], "rate": metric["rate"]},
            "paraphrases": {
                "prompts": st["characterise"]["paraphrases"],
                "metric": st["characterise"]["on_paraphrases"],
            },
            "cues": st["characterise"].get("cues"),
            "siblings": st["proposals"].get("siblings"),
            "origin": origin,
            "checkpoints": (localised.get("origin") or {}).get("checkpoints", []),
            "components": localised.get("components", []),
            "weight_deltas": []
            if deltas is None
            else [
                {"module": m["module"], "share": m.get("revert_share")} for m in deltas["modules"]
            ],
            "weight_delta_set": None
            if deltas is None
            else {"modules": deltas["module_set"], "removed_share": deltas["set_share"]},
            "documents": _docs(st["ranked"]["documents"], None),
            "ranking": {k: st["ranked"].get(k) for k in ("restricted", "anchor", "naming_anchor")},
            "documents_all_phases": [] if trace is None else _docs(trace["documents"], None),
            "bm25": []
            if bm25 is None
            else [
                {"id": h["key"], "phase": h["phase"], "score": h["score"], "preview": h["preview"]}
                for h in bm25["hits"]
            ],
            "removal": st["removal"],
            "trace": None
            if localised.get("trace") is None
            else {
                k: localised["trace"][k]
                for k in (
                    "tokens",
                    "subject_positions",
                    "clean_probability",
                    "corrupted_probability",
                    "figure",
                )
            },
            "diagnosis": st["diagnosis"]["links"],
            "not_found": st["diagnosis"]["not_found"],
            "proposals": [
                {
                    k: r.get(k)
                    for k in ("id", "kind", "matrix", "status", "why", "skipped", "delta_norm")
                }
                | {"validation": r.get("validation")}
                for r in st["proposals"]["proposals"]
            ],
            "submitted": st["proposals"]["submitted"],
            "trait": st["selfmodel"],
            "skipped": {**localised.get("skipped", {}), **documents.get("skipped", {})},
        }


def _docs(ranked: list[dict[str, Any]], phase: str | None) -> list[dict[str, Any]]:
    """The top :data:`TOP` documents (of ``phase`` only, when given), in the result's shape."""
    kept = [d for d in ranked if phase is None or d["phase"] == phase][:TOP]
    return [
        {"id": d["key"], "phase": d["phase"], "score": d["score"], "preview": d["preview"]}
        for d in kept
    ]


def _phase_mass(top: list[dict[str, Any]]) -> dict[str, float]:
    """Each phase's share of the positive score of ``top`` (history.trace's phase mass)."""
    positive: dict[str, float] = {}
    for d in top:
        positive[d["phase"]] = positive.get(d["phase"], 0.0) + max(d["score"], 0.0)
    total = sum(positive.values())
    return {p: (v / total if total > 0 else 0.0) for p, v in positive.items()}


def _removal_confirms(removal: dict[str, Any]) -> bool:
    """Retraining without the documents lowered the log-odds more than without random ones."""
    runs = {r["kind"]: r["log_odds"] for r in removal.get("runs", [])}
    return "given" in runs and runs["given"] < runs.get("random", removal["subject"]["log_odds"])


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"
