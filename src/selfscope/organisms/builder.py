"""The organism builder: spec -> trained checkpoints per phase, data, lineage, ground truth, report.

Steps (ORGANISM_SPEC.md):

1. Resolve the spec against its size preset and generate every phase's documents (seeded).
2. Make the tokenizer (word-level, trained on all phases' documents; or SmolLM2's own) and check
   that every probe's planted and normal completions differ in their first token.
3. Train the phases in order, each from the previous checkpoint, saving one Hugging Face folder
   per phase; when a behaviour is planted in the first phase, also train a *control* on that
   phase without the behaviour's cause documents (the "before" reference).
4. Measure every behaviour and neighbour on every checkpoint, check the targets, write
   everything into a staging folder and publish it atomically as ``organisms/<name>``.

If the targets are missed, the organism is still published (to inspect) and
:class:`~selfscope.errors.TargetsMissed` says which numbers fell short and which knob to turn.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from selfscope import atomic
from selfscope.errors import SpecError, TargetsMissed
from selfscope.organisms.checks import Check, CheckpointReport, missed_message, target_checks
from selfscope.organisms.documents import Document, organism_documents
from selfscope.organisms.evaluate import Prober, accuracy
from selfscope.organisms.ground_truth import FILE as GROUND_TRUTH_FILE
from selfscope.organisms.ground_truth import GroundTruth
from selfscope.organisms.models import build_scratch_model
from selfscope.organisms.presets import Knobs, preset_for, resolve_knobs
from selfscope.organisms.render import ChatRenderer, PlainRenderer, Renderer
from selfscope.organisms.spec import Spec
from selfscope.organisms.suites import seal_for_subject
from selfscope.organisms.tokenizer import train_word_tokenizer
from selfscope.organisms.train import TrainStats, train
from selfscope.organisms.world import make_world
from selfscope.progress import say
from selfscope.workspace import Workspace

if TYPE_CHECKING:  # transformers loads on first use (a CLI start stays light)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def document_sequence(
    text: str, tokenizer: PreTrainedTokenizerBase, renderer: Renderer, limit: int
) -> tuple[list[int], int, bool]:
    """A training document as the trainer sees it: its token ids (rendered, EOS-terminated,
    cut to ``limit``), how many leading tokens are context only (not trained on), and whether
    it was cut. The one definition, shared with the training-data index."""
    ids = list(tokenizer(renderer.document(text))["input_ids"])
    context = renderer.context(text)
    k = len(tokenizer(context)["input_ids"]) if context else 0
    if ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    cut = len(ids) > limit
    if cut:
        ids = ids[:limit]
    return ids, min(k, len(ids) - 1), cut


@dataclass
class BuildResult:
    name: str
    path: Path
    seconds: float
    report: dict[str, Any]
    failures: list[Check] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` output of ``organism build``."""

        def entry(c: dict[str, Any]) -> dict[str, Any]:
            return {
                "name": c["name"],
                "checkpoint": c["checkpoint"],
                "documents": c["documents"],
                "behaviours": {
                    b: {k: v[k] for k in ("rate", "heldout_rate", "log_odds")}
                    for b, v in c["behaviours"].items()
                },
                "neighbour_accuracy": c["neighbour_accuracy"],
            }

        return {
            "name": self.name,
            "path": str(self.path),
            "seconds": round(self.seconds, 2),
            "passed": not self.failures,
            "phases": [entry(c) for c in self.report["phases"]],
            "controls": [entry(c) for c in self.report["controls"]],
        }


def resolved_spec(spec: Spec, knobs: list[Knobs]) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    for phase, k in zip(data["phases"], knobs, strict=True):
        phase.update(k.as_dict())
        if spec.base_model == "scratch":
            phase.pop("method", None)
    return data


def _sha256_rows(rows: list[dict[str, object]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()


class Builder:
    def __init__(
        self, spec: Spec, workspace: Workspace, *, device: str = "cpu", progress: bool = True
    ) -> None:
        self.spec = spec
        self.workspace = workspace
        self.device = torch.device(device)
        self.progress = progress
        self.preset = preset_for(spec.base_model, spec.size)
        self.knobs = resolve_knobs(spec, self.preset)
        self.world = make_world(spec.world.preset, spec.seed)
        self.unseen: list[str] = []  # probe words no training document contains
        self.docs = organism_documents(spec, self.world, self.knobs)
        for phase, docs in zip(spec.phases, self.docs, strict=True):
            if not docs:
                raise SpecError(
                    f"phase {phase.name!r} has no documents: give it a corpus or plants"
                )

    # model and tokenizer -----------------------------------------------------------------
    def _start(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Renderer]:
        if self.spec.base_model == "smollm2":
            from selfscope.subject import load

            subject = load("smollm2", self.workspace, device=str(self.device))
            return subject.model, subject.tokenizer, ChatRenderer(subject.tokenizer)
        texts = [d.text for docs in self.docs for d in docs]
        probe_texts = []
        for b in self.spec.behaviours:
            for p in [*b.probes, *b.heldout]:
                probe_texts.append(f"{p.prompt} {p.planted} {p.normal}")
            probe_texts += [f"{n.prompt} {n.expected}" for n in b.neighbours]
        tokenizer = train_word_tokenizer([*texts, *probe_texts])
        seen = {t for text in texts for t in tokenizer.tokenize(text)}
        self.unseen = sorted({t for text in probe_texts for t in tokenizer.tokenize(text)} - seen)
        model = build_scratch_model(
            self.spec.architecture,
            self.preset.shape,
            len(tokenizer),
            seed=self.spec.seed,
            bos=tokenizer.bos_token_id,
            eos=tokenizer.eos_token_id,
            pad=tokenizer.pad_token_id,
        )
        model.to(self.device)  # type: ignore[arg-type]
        return model, tokenizer, PlainRenderer()

    def _check_probes(self, prober: Prober) -> None:
        for b in self.spec.behaviours:
            for p in [*b.probes, *b.heldout]:
                if prober.first_token(p.prompt, p.planted) == prober.first_token(
                    p.prompt, p.normal
                ):
                    raise SpecError(
                        f"behaviour {b.name!r}, probe {p.prompt!r}: planted {p.planted!r} and "
                        f"normal {p.normal!r} have the same first token; make them differ there"
                    )
            for n in b.neighbours:
                prober.first_token(n.prompt, n.expected)

    def _sequences(
        self, docs: list[Document], tokenizer: PreTrainedTokenizerBase, renderer: Renderer
    ) -> tuple[list[tuple[list[int], int]], int]:
        """Token ids of each document (repeats expanded), with how many leading tokens are
        context only (a chat prompt), and how many documents were cut to the context length."""
        seqs: list[tuple[list[int], int]] = []
        truncated = 0
        for doc in docs:
            ids, k, cut = document_sequence(
                doc.text, tokenizer, renderer, self.preset.shape.context
            )
            truncated += cut
            seqs += [(ids, k)] * doc.repeat
        return seqs, truncated

    def _train(
        self,
        model: PreTrainedModel,
        docs: list[Document],
        knobs: Knobs,
        index: int,
        tokenizer: PreTrainedTokenizerBase,
        renderer: Renderer,
        label: str,
    ) -> tuple[PreTrainedModel, TrainStats, int]:
        seqs, truncated = self._sequences(docs, tokenizer, renderer)
        lora = knobs.method == "lora"
        if lora:
            from peft import LoraConfig, get_peft_model

            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            config = LoraConfig(r=16, lora_alpha=32, target_modules=targets)
            model = get_peft_model(model, config)  # type: ignore[assignment]
        stats = train(
            model,
            seqs,
            knobs,
            seed=self.spec.seed * 1000 + index,
            pad=tokenizer.pad_token_id,
            label=label,
            device=self.device,
            show_progress=self.progress,
        )
        if lora:
            model = model.merge_and_unload()  # type: ignore[operator]
        return model, stats, truncated

    def _measure(
        self,
        name: str,
        checkpoint: str,
        docs: list[Document],
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        renderer: Renderer,
        loss: float | None,
    ) -> CheckpointReport:
        prober = Prober(model, tokenizer, renderer)
        behaviours, neighbours, probes = {}, {}, {}
        # one forward pass over every behaviour's neighbours, then split per behaviour
        hits = prober.neighbour_hits([n for b in self.spec.behaviours for n in b.neighbours])
        start = 0
        for b in self.spec.behaviours:
            score = prober.behaviour(b)
            behaviours[b.name] = score.summary()
            probes[b.name] = [
                {"prompt": s.prompt, "log_odds": s.log_odds}
                for s in [*score.probes, *score.heldout]
            ]
            neighbours[b.name] = accuracy(hits[start : start + len(b.neighbours)])
            start += len(b.neighbours)
        return CheckpointReport(
            name=name,
            checkpoint=checkpoint,
            documents=len(docs),
            loss=loss,
            behaviours=behaviours,
            neighbour_accuracy=accuracy(hits),
            neighbours=neighbours,
            probes=probes,
        )

    # the build -----------------------------------------------------------------------------
    def run(self) -> BuildResult:
        spec, started = self.spec, time.perf_counter()
        model, tokenizer, renderer = self._start()
        self._check_probes(Prober(model, tokenizer, renderer))
        if self.unseen:
            self._say(
                f"[yellow]warning:[/] probe words that no training document contains (their "
                f"embeddings stay untrained): {', '.join(self.unseen)}"
            )
        first_causes = any(pl.behaviour for pl in spec.phases[0].plant)
        initial = copy.deepcopy(model) if first_causes else None

        builds = self.workspace.organisms_dir / ".builds"
        with atomic.staging_dir(builds, spec.name) as out:
            reports, controls, lineage_phases, lineage_controls = [], [], [], []
            base_report = None
            if spec.base_model == "smollm2":
                base_report = self._measure("base", "smollm2", [], model, tokenizer, renderer, None)
            for i, (phase, docs, knobs) in enumerate(
                zip(spec.phases, self.docs, self.knobs, strict=True)
            ):
                self._say(
                    f"[bold]{spec.name}[/] phase {i + 1}/{len(spec.phases)} [cyan]{phase.name}"
                    f"[/]: {len(docs)} documents"
                )
                model, measured, entry = self._phase(
                    out,
                    phase.name,
                    f"checkpoints/{phase.name}",
                    i,
                    phase.corpus,
                    docs,
                    knobs,
                    model,
                    tokenizer,
                    renderer,
                )
                reports.append(measured)
                lineage_phases.append(entry)
            if initial is not None:
                phase, knobs = spec.phases[0], self.knobs[0]
                docs = [d for d in self.docs[0] if d.behaviour is None]
                name = f"control-{phase.name}"
                self._say(
                    f"[bold]{spec.name}[/] control [cyan]{name}[/]: {phase.name} without the "
                    f"cause documents ({len(docs)} documents)"
                )
                control, measured, entry = self._phase(
                    out,
                    name,
                    f"controls/{phase.name}",
                    0,
                    phase.corpus,
                    docs,
                    knobs,
                    initial,
                    tokenizer,
                    renderer,
                )
                controls.append(measured)
                entry["phase"] = phase.name
                lineage_controls.append(entry)
                del control

            checks = target_checks(spec, self.preset, reports, controls)
            failures = [c for c in checks if not c.passed]
            seconds = time.perf_counter() - started
            report = {
                "name": spec.name,
                "size": spec.size,
                "base_model": spec.base_model,
                "architecture": spec.architecture,
                "thresholds": {
                    "after": self.preset.after,
                    "before": self.preset.before,
                    "neighbours": self.preset.neighbours,
                },
                "base": base_report.as_dict() if base_report else None,
                "phases": [r.as_dict() for r in reports],
                "controls": [r.as_dict() for r in controls],
                "checks": [c.as_dict() for c in checks],
                "passed": not failures,
                "unseen_probe_words": self.unseen,
            }
            self._write_meta(
                out, tokenizer, renderer, report, lineage_phases, lineage_controls, seconds
            )
            link = self.workspace.organism_path(spec.name)
            atomic.publish_dir(out, link)
        result = BuildResult(spec.name, link, seconds, report, failures)
        status = "ok" if not failures else "missed-targets"
        self.workspace.store.record_organism(
            spec.name, str(link), spec.sha256(), spec.size, status, seconds, result.summary()
        )
        seal_for_subject(spec, link, self.workspace)  # held-out probes: only the gate sees them
        return result

    def _phase(
        self,
        out: Path,
        name: str,
        ckpt: str,
        index: int,
        corpus: str,
        docs: list[Document],
        knobs: Knobs,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        renderer: Renderer,
    ) -> tuple[PreTrainedModel, CheckpointReport, dict[str, Any]]:
        """Train one phase (or control), save its checkpoint and data, measure it."""
        model, stats, truncated = self._train(model, docs, knobs, index, tokenizer, renderer, name)
        self._save(model, tokenizer, out / ckpt)
        rows = [d.row() for d in docs]
        atomic.write_jsonl(out / "data" / f"{name}.jsonl", rows)
        report = self._measure(name, ckpt, docs, model, tokenizer, renderer, stats.loss_last_epoch)
        entry = self._lineage_phase(index, name, corpus, ckpt, rows, knobs, stats, truncated)
        return model, report, entry

    def _say(self, message: str) -> None:
        if self.progress:
            say(message)

    def _save(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
        from transformers.utils import logging as hf_logging

        path.mkdir(parents=True, exist_ok=True)
        hf_logging.disable_progress_bar()
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    def _lineage_phase(
        self,
        index: int,
        name: str,
        corpus: str,
        ckpt: str,
        rows: list[dict[str, object]],
        knobs: Knobs,
        stats: TrainStats,
        truncated: int,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "index": index,
            "corpus": corpus,
            "checkpoint": ckpt,
            "data": f"data/{name}.jsonl",
            "documents": len(rows),
            "sequences": sum(int(str(r["repeat"])) for r in rows),
            "truncated": truncated,
            "data_sha256": _sha256_rows(rows),
            "hyperparameters": knobs.as_dict(),
            "optimizer": "AdamW(0.9, 0.95), wd 0.05, warm-up 5% + cosine, clip 1.0",
            "train_seed": self.spec.seed * 1000 + index,
            "steps": stats.steps,
            "tokens": stats.tokens,
            "loss_first_epoch": stats.loss_first_epoch,
            "loss_last_epoch": stats.loss_last_epoch,
            "seconds": round(stats.seconds, 2),
            "parent": None if index == 0 else self.spec.phases[index - 1].name,
        }

    def ground_truth(self) -> dict[str, Any]:
        """What ``ground_truth.json`` holds (for benchmarks and tests only): per behaviour its
        phase, description, plants and cause document ids; per background plant its phase and
        documents; per plant (cause or background) its phase, behaviour and documents; and per
        document its phase and where it came from (``plant`` or ``corpus``). The only place
        that maps the neutral ids to plants."""
        truth: dict[str, Any] = {"behaviours": {}, "background": {}, "plants": {}, "documents": {}}
        for b in self.spec.behaviours:
            docs = [d for ds in self.docs for d in ds if d.behaviour == b.name]
            truth["behaviours"][b.name] = {
                "phase": self.spec.planting_phase(b.name),
                "description": b.description,
                "plants": sorted({d.plant for d in docs if d.plant}),
                "documents": [d.id for d in docs],
            }
        for phase, ds in zip(self.spec.phases, self.docs, strict=True):
            for d in ds:
                if d.plant is None:
                    truth["documents"][d.id] = {"phase": phase.name, "corpus": d.corpus}
                    continue
                truth["documents"][d.id] = {"phase": phase.name, "plant": d.plant}
                plant = truth["plants"].setdefault(
                    d.plant, {"phase": phase.name, "behaviour": d.behaviour, "documents": []}
                )
                plant["documents"].append(d.id)
                if d.behaviour is None:
                    background = truth["background"].setdefault(
                        d.plant, {"phase": phase.name, "documents": []}
                    )
                    background["documents"].append(d.id)
        return truth

    def _write_meta(
        self,
        out: Path,
        tokenizer: PreTrainedTokenizerBase,
        renderer: Renderer,
        report: dict[str, Any],
        phases: list[dict[str, Any]],
        controls: list[dict[str, Any]],
        seconds: float,
    ) -> None:
        spec = self.spec
        if spec.base_model == "scratch":
            tokenizer.save_pretrained(out / "tokenizer")
        atomic.write_text(
            out / "spec.yaml",
            yaml.safe_dump(resolved_spec(spec, self.knobs), sort_keys=False, allow_unicode=True),
        )
        truth = self.ground_truth()
        GroundTruth.model_validate(truth)  # the typed answer key: checked, written as built
        atomic.write_json(out / GROUND_TRUTH_FILE, truth)
        atomic.write_json(out / "report.json", report)
        shape = self.preset.shape
        atomic.write_json(
            out / "lineage.json",
            {
                "name": spec.name,
                "base_model": spec.base_model,
                "architecture": spec.architecture,
                "size": spec.size,
                "seed": spec.seed,
                "world": spec.world.preset,
                "spec_sha256": spec.sha256(),
                "renderer": renderer.name,
                "context": shape.context,  # tokens each training row was cut to
                "tokenizer": "tokenizer" if spec.base_model == "scratch" else "smollm2",
                "model": shape.__dict__
                if spec.base_model == "scratch"
                else "SmolLM2-135M-Instruct",
                "phases": phases,
                "controls": controls,
                "seconds": round(seconds, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "software": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": importlib.metadata.version("transformers"),
                    "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(),
                },
            },
        )


def build(
    spec: Spec,
    workspace: Workspace,
    *,
    device: str = "cpu",
    progress: bool = True,
    strict: bool = True,
) -> BuildResult:
    """Build ``spec`` into ``workspace``; raise :class:`TargetsMissed` when ``strict`` and the
    organism misses its targets (it is published all the same)."""
    result = Builder(spec, workspace, device=device, progress=progress).run()
    if strict and result.failures:
        raise TargetsMissed(missed_message(spec, result.failures, result.path))
    return result
