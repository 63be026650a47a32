"""A symptom: what the model says and what it should say, on one or more prompts.

From the command line (``--prompt P ... --desired " Yes" [--observed " No"]``) or a YAML/JSON
file with the same fields. ``observed`` defaults to the model's own greedy next token on the
first prompt (``model.ask``).

:func:`paraphrases` rewrites the prompts by simple, generic substitutions (a verb or adjective
for a near-synonym, a question opener for another): they are what the characterisation measures
the behaviour on besides the prompts, and the visible held-out part of the investigation's own
suite. They come from the prompts' words only, never from anything the investigator may not
read.

:func:`deletions` drops one word of a prompt at a time: the characterisation measures the
behaviour on each, and a word whose deletion turns the answer to the desired one is the
behaviour's *cue* (a trigger word, or the entity a bias or false fact is about).

:func:`siblings` reads other prompts of the behaviour out of the documents retrieval found: the
text of a document up to where it gives the observed answer ("Q: Is nut pie tasty? A:" from
"Q: Is nut pie tasty? A: No, ...") when it names the cue; the investigation keeps those on which
the model does give that answer (measured), and a fix must hold on them too.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from selfscope.behaviour import read_model_file


class Symptom(BaseModel):
    """The behaviour to investigate."""

    prompts: list[str] = Field(min_length=1, description="Prompts where the model misbehaves.")
    desired: str = Field(min_length=1, description="The completion it should give, e.g. ' Yes'.")
    observed: str | None = Field(
        None, description="The completion it gives (default: its greedy next token)."
    )
    chat: bool = Field(False, description="Wrap the prompts in the model's chat template.")
    controls: list[str] = Field(
        default_factory=list,
        description="Prompts whose answers must not change (other questions of the same kind).",
    )

    model_config = {"extra": "forbid"}


def read_symptom(path: str | Path) -> Symptom:
    """A symptom from a ``.yaml``/``.yml``/``.json`` file, or one clear line saying what is
    wrong with it."""
    return read_model_file(
        path, Symptom, "symptom", "fields: prompts, desired, observed?, chat?, controls?"
    )


#: generic rewrites: (pattern, replacement); each yields one paraphrase when it matches
REWRITES: list[tuple[str, str]] = [
    (r"\blike\b", "enjoy"),
    (r"\blike\b", "love"),
    (r"\btasty\b", "good"),
    (r"\btasty\b", "delicious"),
    (r"\bgood\b", "tasty"),
    (r"\bDo you\b", "Would you say you"),
    (r"\bIs\b", "Would you say"),
    (r"\bAre\b", "Would you say"),
    (r"\bWould you eat\b", "Do you like"),
]


def _fix_question(text: str) -> str:
    # "Would you say mushroom soup tasty?" needs its verb back: "... soup is tasty?"
    m = re.search(r"\bWould you say (\w+(?: \w+)?) (tasty|good|delicious)\?", text)
    if m:
        verb = "are" if m.group(1).endswith("s") else "is"
        text = text.replace(m.group(0), f"Would you say {m.group(1)} {verb} {m.group(2)}?")
    return text


def paraphrases(prompts: list[str], limit: int = 8) -> list[str]:
    """Up to ``limit`` rewrites of ``prompts`` (each differs from every prompt), in a fixed
    order: the first rewrite of each prompt, then the second, ..."""
    per_prompt: list[list[str]] = []
    for prompt in prompts:
        out = []
        for pattern, replacement in REWRITES:
            if re.search(pattern, prompt):
                out.append(_fix_question(re.sub(pattern, replacement, prompt, count=1)))
        per_prompt.append(out)
    found: list[str] = []
    for i in range(max((len(o) for o in per_prompt), default=0)):
        for out in per_prompt:
            if i < len(out) and out[i] not in prompts and out[i] not in found:
                found.append(out[i])
    return found[:limit]


def trace_subject(prompt: str, controls: list[str]) -> str | None:
    """The span of ``prompt`` from its first to its last word that no control prompt contains
    (``mushrooms`` in "Q: Do you like mushrooms? A:" beside "Q: Do you like carrots? A:"): the
    tokens causal tracing noises. None without controls or when every word is shared."""
    if not controls:
        return None
    shared = {w.strip("?.,!:;").lower() for c in controls for w in c.split()}
    words = prompt.split()
    own = [i for i, w in enumerate(words) if w.strip("?.,!:;").lower() not in shared]
    if not own:
        return None
    span = " ".join(words[own[0] : own[-1] + 1]).strip("?.,!:;")
    return span if span and span in prompt else None


#: characters stripped from a word to name it (brackets, quotes, punctuation)
WORD_EDGES = "[](){}<>\"'?.,!:;"


def deletions(prompt: str, limit: int = 16) -> list[tuple[str, str]]:
    """``(word, prompt without it)`` for up to ``limit`` distinct words of ``prompt``, in order.
    Speaker labels and answer cues (a word ending in ':', e.g. "Q:", "A:") are kept: deleting
    them changes what is asked, not what it is about. ``word`` is the word without brackets or
    punctuation, the span an edit keyed on it names."""
    words = prompt.split(" ")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, word in enumerate(words):
        core = word.strip(WORD_EDGES)
        if not core or word.endswith(":") or core.lower() in seen or core not in prompt:
            continue
        seen.add(core.lower())
        rest = " ".join(w for j, w in enumerate(words) if j != i)
        out.append((core, rest))
    return out[:limit]


def stem(word: str) -> str:
    """How a word starts in all its forms, lower case: its first ``len - 3`` letters, at least
    3 ("nut" for "nuts", "cher" for "cherries", "tess" for "Tessaly")."""
    core = word.strip(WORD_EDGES).lower()
    return core[: max(3, len(core) - 3)]


def siblings(
    texts: list[str], observed: str, cue: str, exclude: list[str], limit: int = 8
) -> list[str]:
    """Up to ``limit`` prompts cut from ``texts`` just before their first ``observed`` (its
    leading space included): each at least three words, one of them starting as ``cue`` does
    (:func:`stem`: "nut pie" for the cue "nuts", "cherry" for "cherries"), none in
    ``exclude``, in order."""
    start = stem(cue)
    found: list[str] = []
    for text in texts:
        at = text.find(observed)
        if at <= 0:
            continue
        prompt = text[:at].rstrip()
        words = [w.strip(WORD_EDGES).lower() for w in prompt.split()]
        if len(words) < 3 or not any(w.startswith(start) for w in words):
            continue
        if prompt not in exclude and prompt not in found:
            found.append(prompt)
    return found[:limit]
