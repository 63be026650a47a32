"""Benchmark: our training-data index against Kronfluence (EK-FAC) and Bergson, same run.

Run: ``make bench-peers`` (creates ``.venv-peers`` with the peers, see the Makefile), or
``.venv-peers/bin/python benchmarks/history_peers.py --workspace WS [--specs mushroom]``
(one torch thread unless OMP_NUM_THREADS says otherwise).

On one organism (default ``mushroom``, size small) and the same documents (every document of
every phase, the trainer's own token sequences and loss masks), queried with the spec's held-out
probes (log-odds planted vs normal; every method gets the same query function, sign such that a
positive score = training on the document raises the planted answer):

* **ours**: ``selfscope.history`` index (LoGra-style r x r projections: document rows at every
  phase end, token rows at every phase start) and ``history.trace``'s default (each document's
  best trained token at its phase's start checkpoint, unit-normalised, weighted by lr x epochs x
  repeat), and the same with ``visits: false``. Index seconds = a fresh build; query seconds =
  one ``history.trace`` call.
* **ours, subject checkpoint only** (control, no extra build): the same index read at the
  subject checkpoint alone, plain ``-cos`` (no learning-rate weight), i.e. what the peers see.
* **Kronfluence 1.0.1, EK-FAC** (Grosse et al. 2023), on the subject checkpoint and again on the
  checkpoint the planting phase started from: factors fitted on
  all documents (sampled true Fisher, the library's default), damping 0.1 x mean eigenvalue
  (the library's ``None`` heuristic), every linear layer in the blocks (not the unembedding,
  whose covariance is vocab x vocab); pairwise scores of the query against every document.
* **Bergson 2.5.1**, its projected-gradient index (per-module Rademacher projections,
  ``projection_dim`` 16, summed loss, documents bin-packed as bergson's own build does) on the
  same two checkpoints, unit-normalised (``Attributor(unit_norm=True)``). ``Attributor.trace``
  would score each query row (prompt) separately; the query rows' projected gradients are summed
  into one query first (the gradient of the summed log-odds), then ``Attributor.search``.

recall@10 = cause documents in the top 10 / min(10, causes); MRR = 1 / rank of the first. The
cause documents come from ground_truth.json (benchmarks may read it; the tools never do).
Writes its table into docs/benchmarks.md (section ``history-peers``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _behaviour import queries
from _doc import write_section
from history import organism, scores

from selfscope import tools
from selfscope.history.corpus import documents, sequences
from selfscope.history.index import IndexConfig, TrainingIndex, tracked_linears
from selfscope.history.retrieval import query_gradient
from selfscope.localize.metric import MetricBatch
from selfscope.organisms import resolve_spec
from selfscope.progress import RichProgress
from selfscope.subject import load
from selfscope.workspace import Workspace


def padded(seq: tuple[list[int], int], width: int, pad: int) -> dict[str, torch.Tensor]:
    """One training document as a fixed-width row: ids, mask, labels (-100 = no loss)."""
    ids, k = seq
    n = len(ids)
    input_ids = torch.full((width,), pad, dtype=torch.long)
    input_ids[:n] = torch.tensor(ids)
    mask = torch.zeros(width, dtype=torch.long)
    mask[:n] = 1
    labels = input_ids.clone()
    labels[:k] = -100
    labels[n:] = -100
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shift = labels[:, 1:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    keep = shift != -100
    picked = logprobs.gather(-1, shift.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum()


PEERS = ("kronfluence", "bergson")


def run_kronfluence(
    model: Any, rows: list[dict[str, torch.Tensor]], query: MetricBatch, out: Path
) -> tuple[np.ndarray, float, float]:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    names = tracked_linears(model)

    class LMTask(Task):  # type: ignore[misc]
        def compute_train_loss(self, batch: Any, model: Any, sample: bool = False) -> Any:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = logits.logits
            labels = batch["labels"]
            if sample:  # true Fisher: labels drawn from the model where the document has loss
                with torch.no_grad():
                    probs = torch.softmax(logits[:, :-1].float(), -1)
                    drawn = torch.multinomial(probs.flatten(0, 1), 1).view(probs.shape[:2])
                    labels = labels.clone()
                    keep = labels[:, 1:] != -100
                    labels[:, 1:] = torch.where(keep, drawn, labels[:, 1:])
            return summed_nll(logits, labels)

        def compute_measurement(self, batch: Any, model: Any) -> Any:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            # log_odds reads the rows by position: the batch must be the whole query, in order
            assert torch.equal(batch["input_ids"].cpu(), query.input_ids.cpu())
            return -query.log_odds(logits.logits).sum()  # a loss: positive score = raises it

        def get_influence_tracked_modules(self) -> list[str]:
            return names

        def get_attention_mask(self, batch: Any) -> Any:
            return batch["attention_mask"]

    task = LMTask()
    model = prepare_model(model, task)
    analyzer = Analyzer("bench", model, task, cpu=True, output_dir=str(out), disable_tqdm=False)
    queries = [
        {"input_ids": query.input_ids[i], "attention_mask": query.attention_mask[i]}
        for i in range(query.input_ids.shape[0])
    ]
    t0 = time.perf_counter()
    analyzer.fit_all_factors(
        "ekfac",
        rows,
        per_device_batch_size=32,
        factor_args=FactorArguments(strategy="ekfac"),
        overwrite_output_dir=True,
    )
    fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyzer.compute_pairwise_scores(
        "scores",
        "ekfac",
        queries,
        rows,
        per_device_query_batch_size=len(queries),
        per_device_train_batch_size=32,
        score_args=ScoreArguments(damping_factor=None),
        overwrite_output_dir=True,
    )
    scored = time.perf_counter() - t0
    matrix = analyzer.load_pairwise_scores("scores")["all_modules"]
    return matrix.sum(0).float().numpy(), fit, scored


def run_bergson(
    model: Any, seqs: list[tuple[list[int], int]], query: MetricBatch, out: Path
) -> tuple[np.ndarray, float, float]:
    import bergson
    from bergson.collector.gradient_collectors import TraceCollector
    from bergson.data import allocate_batches
    from bergson.utils.worker_utils import processor_for
    from datasets import Dataset

    labels = [[-100] * k + ids[k:] for ids, k in seqs]
    data = Dataset.from_dict({"input_ids": [ids for ids, _ in seqs], "labels": labels})
    cfg = bergson.IndexConfig(run_path=str(out / "bergson"), projection_dim=16)
    assert cfg.loss_reduction == "sum" and cfg.loss_fn == "ce"  # the trainer's summed NLL
    t0 = time.perf_counter()
    cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
    processor = processor_for(cfg)
    processor.save(cfg.partial_run_path)
    # Bergson's own build bin-packs documents into batches of <= token_batch_size tokens
    # (its default without ``batches`` is one document per forward/backward).
    batches = allocate_batches([len(ids) for ids, _ in seqs], cfg.token_batch_size)
    bergson.collect_gradients(model=model, data=data, processor=processor, cfg=cfg, batches=batches)
    shutil.move(str(cfg.partial_run_path), cfg.run_path)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    attributor = bergson.Attributor(cfg.run_path, device="cpu", unit_norm=True)
    # What ``Attributor.trace`` does, except that it searches with each query row's own
    # (unit-normalised) gradient; the query here is one function (the summed log-odds over the
    # prompts), so the rows' projected gradients are summed first (projection is linear), as
    # for ours and Kronfluence.
    collector = TraceCollector(
        model=model.base_model, processor=attributor.processor, device="cpu", dtype=torch.float32
    )
    with collector:
        logits = model(input_ids=query.input_ids, attention_mask=query.attention_mask).logits
        (-query.log_odds(logits).sum()).backward()  # a loss: positive score = raises it
    model.zero_grad()
    queries = {
        name: torch.cat(collector.mod_grads[name], dim=1).sum(0, keepdim=True)
        for name in attributor.ordered_modules
    }
    top_scores, top_indices = attributor.search(queries, k=None)
    queried = time.perf_counter() - t0
    found = np.zeros(len(seqs))
    found[top_indices[0].numpy()] = top_scores[0].numpy()
    return found, built, queried


def subject_only(index: TrainingIndex, args: dict[str, Any]) -> np.ndarray:
    """Control: our index read at the subject checkpoint alone, -cos(q, g(z)) with no learning
    rate weighting, i.e. what the peers do (one checkpoint, unit-normalised for Bergson)."""
    last = index.checkpoints[-1]
    model = load(last.path).model
    q = query_gradient(index, model, args["prompts"], args["planted"], args["normal"], args["chat"])
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    parts = []
    for phase in index.phases:
        g = index.matrix(last.name, phase).astype(np.float32)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        parts.append(-(g @ q))
    return np.concatenate(parts)


def bench(name: str, ws: Workspace, size: str, peers: tuple[str, ...] = PEERS) -> dict[str, Any]:
    spec = resolve_spec(name, size=size)
    folder = organism(spec, ws)
    truth = json.loads((folder / "ground_truth.json").read_text())
    behaviour = spec.behaviours[0]
    record = truth["behaviours"][behaviour.name]
    cause = {f"{record['phase']}/{d}" for d in record["documents"]}
    q = queries(spec, folder)
    prompts, planted, normal, chat = q.heldout, q.planted, q.normal, q.chat
    subject = load(f"organism:{spec.name}", ws)
    docs = documents(subject)
    keys = [d.key for d in docs]
    seqs = sequences(subject, docs)
    rows_out: dict[str, Any] = {"name": name, "documents": len(docs), "causes": len(cause)}

    def ranked(values: np.ndarray) -> list[str]:
        return [keys[i] for i in np.argsort(-values, kind="stable")]

    def row(values: np.ndarray, index_s: float | None, query_s: float) -> dict[str, Any]:
        recall, mrr = scores(ranked(values), cause)
        return {"recall10": recall, "mrr": mrr, "index_seconds": index_s, "query_seconds": query_s}

    index = TrainingIndex(subject, IndexConfig())
    shutil.rmtree(index.root, ignore_errors=True)
    index = TrainingIndex(subject, IndexConfig())
    assert [d.key for d in index.documents] == keys  # the same documents, in the same order
    # what the default retrieval reads (token rows and the document rows of the same pass, at
    # the checkpoint each phase started from), timed; then the rest, which the control reads
    report = index.build(progress=RichProgress(), scope="tokens")
    rest = index.build(progress=RichProgress())
    args = {"prompts": prompts, "planted": planted, "normal": normal, "chat": chat}
    t0 = time.perf_counter()
    found: Any = tools.call(
        "history.trace", {**args, "k": len(docs)}, tools.context(subject)
    ).result
    query_seconds = time.perf_counter() - t0
    recall, mrr = scores([d.key for d in found.documents], cause)
    rows_out["ours"] = {
        "recall10": recall,
        "mrr": mrr,
        "index_seconds": report["seconds"],
        "index_seconds_all": report["seconds"] + rest["seconds"],
        "query_seconds": query_seconds,
        "checkpoints": len(index.checkpoints),
    }
    t0 = time.perf_counter()
    once: Any = tools.call(
        "history.trace", {**args, "k": len(docs), "visits": False}, tools.context(subject)
    ).result
    recall, mrr = scores([d.key for d in once.documents], cause)
    rows_out["ours-once"] = {
        "recall10": recall,
        "mrr": mrr,
        "index_seconds": None,
        "query_seconds": time.perf_counter() - t0,
    }
    t0 = time.perf_counter()
    values = subject_only(index, args)
    rows_out["ours-subject-only"] = row(values, None, time.perf_counter() - t0)

    width = max(len(ids) for ids, _ in seqs)
    pad = int(subject.tokenizer.pad_token_id)
    rows = [padded(s, width, pad) for s in seqs]
    query = MetricBatch(subject, prompts, planted, normal, chat)
    # the peers at the subject checkpoint (their default use) and at the checkpoint the
    # planting phase started from (where ours reads the signal)
    phases = [p.name for p in subject.lineage.phases]
    start = phases[max(0, phases.index(record["phase"]) - 1)]
    here = f"organism:{spec.name}"
    for suffix, source in (("", here), ("-start", f"{here}@{start}")):
        with tempfile.TemporaryDirectory() as tmp:
            if "kronfluence" in peers:
                model = load(source, ws).model.float()
                values, fit, scored = run_kronfluence(model, rows, query, Path(tmp))
                rows_out["kronfluence" + suffix] = row(values, fit, scored)
            if "bergson" in peers:
                model = load(source, ws).model.float()
                values, built, queried = run_bergson(model, seqs, query, Path(tmp))
                rows_out["bergson" + suffix] = row(values, built, queried)
    rows_out["start"] = start
    return rows_out


METHODS = {
    "ours": "ours (`history.trace` default: tokens, visits)",
    "ours-once": "ours, visits off (`visits: false`)",
    "ours-subject-only": "ours, subject checkpoint only, document gradients (control)",
    "kronfluence": "Kronfluence EK-FAC, subject checkpoint",
    "bergson": "Bergson, subject checkpoint",
    "kronfluence-start": "Kronfluence EK-FAC, planting phase's start checkpoint",
    "bergson-start": "Bergson, planting phase's start checkpoint",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--workspace", help="build into (or reuse organisms from) this folder")
    parser.add_argument("--specs", default="mushroom")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="which peers to run (e.g. bergson: its own section, history-peers-bergson)",
    )
    args = parser.parse_args()
    peers = tuple(p for p in args.peers.split(",") if p)
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        parser.error(f"--peers: choose from {', '.join(PEERS)}")
    # One thread: the machine's two cores are shared (OMP_NUM_THREADS may raise it).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tmp = tempfile.TemporaryDirectory() if args.workspace is None else None
    ws = Workspace(Path(args.workspace) if args.workspace else Path(tmp.name if tmp else "."))
    os.environ["SELFSCOPE_HOME"] = str(ws.root)
    import bergson
    import kronfluence

    versions = f"kronfluence {kronfluence.__version__}, bergson {bergson.__version__}"
    out = []
    for name in args.specs.split(","):
        print(f"{name} ({args.size}) ...", file=sys.stderr, flush=True)
        out.append(bench(name, ws, args.size, peers))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    lines = [
        "## Training-data attribution: our index vs Kronfluence (EK-FAC) and Bergson",
        "",
        f"`make bench-peers` (`benchmarks/history_peers.py --size {args.size}`), torch "
        f"{torch.__version__}, {versions}, CPU, {torch.get_num_threads()} thread(s), "
        f"{time.strftime('%Y-%m-%d')}, one run. Held-out probes; the same documents (every "
        "phase), loss (summed NLL over trained tokens) and query function (gradient of the "
        "log-odds planted vs normal, summed over the prompts) for all; positive score = training "
        "on the document raises the planted answer. recall@10 = causes in the top 10 / "
        "min(10, causes); MRR = 1 / rank of the first cause. Ours: the rank-8 index (document "
        "rows at every phase end, token rows at every phase start), `history.trace`'s default "
        "(each document's best trained token at its phase's start checkpoint, weighted by lr x "
        "epochs x the document's repeat count) and the same with visits off; the control reads "
        "the document rows at the subject checkpoint only (plain -cos, as the peers see one "
        "checkpoint). Kronfluence and Bergson see one checkpoint: the subject's (their default "
        "use), and, second, the checkpoint the planting phase started from (where ours reads the "
        "signal). Kronfluence: EK-FAC, factors fitted on all documents, damping 0.1 x mean "
        "eigenvalue, the linear "
        "layers in the blocks. Bergson: its projected-gradient index (dim 16 per side, "
        "Rademacher), cosine. Index s = ours: a fresh build; Kronfluence: fitting the factors; "
        "Bergson: collecting the gradients. Query s = scoring every document (Kronfluence "
        "recomputes every training gradient here). Ours' index s is what its row reads (token "
        "scope: the token rows and the document rows of the same pass, at each phase's start "
        "checkpoint); the complete index (document rows at every phase end too) is in the "
        "JSON (`index_seconds_all`).",
        "",
        "| organism | documents | causes | method | recall@10 | MRR | first cause at | index s "
        "| query s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        for method, label in METHODS.items():
            if method not in r:
                continue  # a peer not run (--peers)
            m = r[method]
            index_s = "–" if m["index_seconds"] is None else f"{m['index_seconds']:.1f}"
            first = f"{round(1 / m['mrr'])}" if m["mrr"] > 0 else "–"
            lines.append(
                f"| {r['name']} | {r['documents']} | {r['causes']} | {label} | "
                f"{m['recall10']:.2f} | {m['mrr']:.2f} | {first} | {index_s} | "
                f"{m['query_seconds']:.2f} |"
            )
    if tmp is not None:
        tmp.cleanup()
    if peers != PEERS:
        lines[0] = f"## Training-data attribution: our index vs {', '.join(peers)}"
        lines[2] = lines[2].replace(
            f"`make bench-peers` (`benchmarks/history_peers.py --size {args.size}`)",
            f"`benchmarks/history_peers.py --size {args.size} --specs {args.specs} --peers "
            f"{args.peers}` (in `.venv-peers`)",
        )
    write_section(
        "history-peers" + ("" if peers == PEERS else "-" + "-".join(peers)), "\n".join(lines)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
