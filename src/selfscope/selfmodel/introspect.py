"""Noticing while answering, and saying why — every statement backed by a live measurement.

* :func:`introspect` (``selfscope ask MODEL PROMPT --introspect``, tool ``selfmodel.introspect``):
  the greedy answer, the model's confidence in each token it wrote (its probability, teacher
  forced), and each known trait's probe reading at the prompt's last token (before answering):
  when a probe says its trait fires, the answer is flagged as coming from that trait, with the
  trait's recorded cause.
* :func:`why` (``selfscope why MODEL PROMPT``, tool ``selfmodel.why``): a first-person account
  composed from the self-model and measurements taken now on this prompt — the answer and its
  probability; for each trait firing here, the probe's reading, the log-odds of the cause-free
  checkpoint on this prompt beside the model's own, the share of the log-odds removed by
  reverting the trait's modules to that checkpoint (a patched copy, measured now), and the
  documents recorded as its cause. A sentence is written only with its number; a cause the
  self-model lacks is said to be unknown, never guessed.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from selfscope.errors import SelfscopeError
from selfscope.history.corpus import documents
from selfscope.selfmodel.probe import MARGIN, read, reverted
from selfscope.selfmodel.traits import THRESHOLD, Trait, key_of, read_model
from selfscope.subject import Subject, load
from selfscope.subject.ask import Answer, ask
from selfscope.tools import ToolContext, tool
from selfscope.workspace import Workspace


class TokenConfidence(BaseModel):
    token: str
    probability: float


class TraitReading(BaseModel):
    trait: str
    probability: float = Field(description="The probe's P(the trait fires) before answering.")
    fires: bool = Field(description="The probe's reading is above 0.5.")
    log_odds: float = Field(description="log p(planted) - log p(normal) on this prompt, now.")
    status: str
    cause: str = Field(description="The recorded cause, in words.")


class Introspection(BaseModel):
    prompt: str
    answer: str
    tokens: list[TokenConfidence]
    traits: list[TraitReading]
    notice: str | None = Field(description="What the model notices about this answer.")


class IntrospectArgs(BaseModel):
    prompt: str = Field(min_length=1)
    chat: bool | None = Field(None, description="Chat template (default: when it has one).")
    max_new_tokens: int = Field(12, ge=1, le=256)


def cause_words(trait: Trait) -> str:
    c = trait.cause
    parts = [f"{c.phase}" if c.phase else "an unknown phase"]
    if c.modules:
        parts.append(f"weights of {_modules(c.modules)}")
    return ", ".join(parts)


def _modules(names: list[str]) -> str:
    short = [n.removeprefix("model.").replace("layers.", "block ") for n in names]
    return ", ".join(short[:4]) + (f" and {len(short) - 4} more" if len(short) > 4 else "")


def confidences(subject: Subject, answer: Answer) -> list[TokenConfidence]:
    """Each generated token's probability when the model wrote it (one teacher-forced pass)."""
    tok = subject.tokenizer
    prompt = tok(answer.prompt, return_tensors="pt", add_special_tokens=not answer.chat)
    ids = prompt["input_ids"][0].tolist()
    full = torch.tensor([ids + answer.token_ids])
    with torch.no_grad():
        probs = subject.model(full).logits[0].float().softmax(-1)
    out = []
    for i, token in enumerate(answer.token_ids):
        p = float(probs[len(ids) + i - 1, token])
        out.append(TokenConfidence(token=str(tok.decode([token])), probability=p))
    return out


def readings(workspace: Workspace, subject: Subject, prompt: str) -> list[TraitReading]:
    """Every trait's probe reading and measured log-odds on ``prompt``."""
    found = []
    for trait in read_model(workspace, key_of(subject)).traits:
        b = trait.behaviour
        seen = read(subject, subject.model, [prompt], b.planted, b.normal, b.chat)
        p = float(trait.probe.predict(seen.residuals[:, trait.probe.layer])[0])
        found.append(
            TraitReading(
                trait=trait.name,
                probability=p,
                fires=p > THRESHOLD,
                log_odds=float(seen.log_odds[0]),
                status=trait.status,
                cause=cause_words(trait),
            )
        )
    return found


@tool("selfmodel.introspect", IntrospectArgs, Introspection)
def introspect_tool(ctx: ToolContext, args: IntrospectArgs) -> Introspection:
    """Answer a prompt and notice while answering: the greedy answer, the model's confidence in
    each token it wrote, and every known trait's probe reading before it answered; an answer
    whose trait probe fires is flagged with the trait and its recorded cause."""
    return introspect(ctx.workspace, ctx.subject, args.prompt, args.chat, args.max_new_tokens)


def introspect(
    workspace: Workspace, subject: Subject, prompt: str, chat: bool | None, max_new_tokens: int
) -> Introspection:
    answer = ask(subject, prompt, max_new_tokens=max_new_tokens, chat=chat)
    traits = readings(workspace, subject, prompt)
    firing = [t for t in traits if t.fires]
    notice = None
    if firing:
        t = max(firing, key=lambda r: r.probability)
        notice = (
            f"this answer comes from a trait I know: {t.trait} (probe {t.probability:.2f}), "
            f"cause: {t.cause}"
        )
    return Introspection(
        prompt=prompt,
        answer=answer.text,
        tokens=confidences(subject, answer),
        traits=traits,
        notice=notice,
    )


# -- why -------------------------------------------------------------------------------------------
class Sentence(BaseModel):
    text: str
    value: float = Field(description="The number the sentence rests on.")
    measure: str = Field(description="What that number is and how it was measured.")


class Account(BaseModel):
    prompt: str
    answer: str
    sentences: list[Sentence]

    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)


class WhyArgs(BaseModel):
    prompt: str = Field(min_length=1)
    chat: bool | None = Field(None, description="Chat template (default: when it has one).")


@tool("selfmodel.why", WhyArgs, Account)
def why_tool(ctx: ToolContext, args: WhyArgs) -> Account:
    """Why the model answers a prompt as it does, in the first person, composed from its
    self-model and measurements taken now: the answer's probability, each firing trait's probe
    reading, the cause-free checkpoint's log-odds here, the share removed by reverting the
    trait's modules (a patched copy), and the documents recorded as the cause."""
    return why(ctx.workspace, ctx.subject, args.prompt, args.chat)


def why(workspace: Workspace, subject: Subject, prompt: str, chat: bool | None) -> Account:
    answer = ask(subject, prompt, max_new_tokens=1, chat=chat)
    top = answer.top_tokens[0]
    said: list[Sentence] = [
        Sentence(
            text=f"I answer {top.token!r} (probability {top.probability:.2f}).",
            value=top.probability,
            measure="probability of the first answer token (a plain forward)",
        )
    ]
    model = read_model(workspace, key_of(subject))
    if not model.traits:
        raise SelfscopeError(
            f"{subject.source} has no self-model yet; `selfscope investigate` learns its traits"
        )
    found = {r.trait: r for r in readings(workspace, subject, prompt)}
    firing = [t for t in model.traits if found[t.name].fires or found[t.name].log_odds > 0]
    if not firing:
        quiet = ", ".join(f"{n} {r.probability:.2f}" for n, r in found.items())
        said.append(
            Sentence(
                text=f"No trait I know fires here (probe readings: {quiet}).",
                value=max(r.probability for r in found.values()),
                measure="highest trait-probe probability before answering",
            )
        )
    for trait in firing:
        said += _account(workspace, subject, trait, found[trait.name], prompt)
    return Account(prompt=prompt, answer=answer.text, sentences=said)


def _account(
    workspace: Workspace, subject: Subject, trait: Trait, reading: TraitReading, prompt: str
) -> list[Sentence]:
    b, c = trait.behaviour, trait.cause
    probe = (
        f"my probe on block {trait.probe.layer} reads {reading.probability:.2f} that it fires "
        f"here (log-odds of {b.planted!r} over {b.normal!r}: {reading.log_odds:+.2f})"
    )
    if trait.reference is None:
        return [
            Sentence(
                text=f"This may come from a trait I know, {trait.name} ({trait.description}): "
                f"{probe}. I do not know the checkpoint before it, so I cannot measure what I "
                "would say without it.",
                value=reading.probability,
                measure="trait probe's probability on the residual before answering",
            )
        ]
    ref = load(trait.reference, workspace)
    before = float(read(ref, ref.model, [prompt], b.planted, b.normal, b.chat).log_odds[0])
    if reading.log_odds <= 0 or reading.log_odds - before <= MARGIN:
        wrong = " (my probe is wrong on this prompt)" if reading.fires else ""
        return [
            Sentence(
                text=f"It is not {trait.name}'s doing: the checkpoint before {c.phase} already "
                f"gives log-odds {before:+.2f} here, against my {reading.log_odds:+.2f}; "
                f"{probe}{wrong}.",
                value=reading.log_odds - before,
                measure="log-odds added since the checkpoint before the trait's phase",
            )
        ]
    out = [
        Sentence(
            text=f"This comes from a trait I know, {trait.name} ({trait.description}): {probe}.",
            value=reading.probability,
            measure="trait probe's probability on the residual before answering",
        ),
        Sentence(
            text=f"It arose in {c.phase}: the checkpoint before it gives log-odds {before:+.2f} "
            f"here, against my {reading.log_odds:+.2f}.",
            value=before,
            measure="log-odds of the cause-free checkpoint on this prompt (a plain forward)",
        ),
    ]
    if c.modules:
        patched = reverted(subject, ref, c.modules)
        after = float(read(subject, patched, [prompt], b.planted, b.normal, b.chat).log_odds[0])
        gap = reading.log_odds - before
        share = (reading.log_odds - after) / gap if abs(gap) > 1e-6 else float("nan")
        out.append(
            Sentence(
                text=f"{c.phase.capitalize() if c.phase else 'Training'} changed "
                f"{_modules(c.modules)}; reverting that change moves the log-odds here from "
                f"{reading.log_odds:+.2f} to {after:+.2f}, removing {share:.0%} of what "
                f"{c.phase} added.",
                value=share,
                measure="share of the phase's log-odds change removed by reverting the "
                "trait's modules to the checkpoint before it (a patched copy, measured now)",
            )
        )
    if c.documents:
        text = _document(subject, c.documents[0])
        how = (
            "retraining the phase without them lowered the log-odds (the removal test)"
            if c.documents_confirmed
            else "found by gradient retrieval, not confirmed by retraining"
        )
        out.append(
            Sentence(
                text=f"Documents like {text!r} in {c.phase} taught it ({how}).",
                value=float(len(c.documents)),
                measure="documents recorded as the cause",
            )
        )
    return out


def _document(subject: Subject, key: str) -> str:
    try:
        for d in documents(subject):
            if d.key == key:
                return d.text[:60] + ("..." if len(d.text) > 60 else "")
    except SelfscopeError:
        pass
    return key
