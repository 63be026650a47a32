"""Sealed suites: validation suites stored where no ``read`` or ``propose`` tool returns them.

``selfscope suite seal FILE --model M`` (``govern``) stores a suite for a subject in the store's
``sealed_suites`` table; an organism's held-out paraphrases and neighbours are sealed for it when
it is built (:func:`selfscope.organisms.suites.seal_for_subject`). Only the gate
(:func:`selfscope.oversight.gate.validate`) reads them, and it hands back aggregate numbers per
suite (:class:`~selfscope.oversight.gate.SealedResult`), never a prompt: a proposer cannot fit
what it cannot see. ``tests/test_oversight.py`` calls every registered tool and checks that no
output contains a sealed prompt.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

from selfscope import tools
from selfscope.behaviour import read_suite
from selfscope.subject.load import version_key
from selfscope.tools import ToolContext
from selfscope.workspace import Workspace


class SealArgs(BaseModel):
    model: str = Field(min_length=1, description="The subject the suite guards.")
    file: str = Field(min_length=1, description="The suite file (.json or .yaml).")
    name: str | None = Field(default=None, description="Its name (default: the suite's own).")


class Sealed(BaseModel):
    model: str
    name: str
    sha256: str
    probes: int = Field(description="Probes, held-out probes, neighbours and facts it holds.")


def seal(workspace: Workspace, model: str, file: str, name: str | None, by: str) -> Sealed:
    suite = read_suite(file)
    if name:
        suite = suite.model_copy(update={"name": name})
    text = suite.model_dump_json()
    digest = hashlib.sha256(text.encode()).hexdigest()
    size = len(suite.probes) + len(suite.heldout) + len(suite.neighbours) + len(suite.facts)
    key = version_key(model, workspace)
    workspace.store.seal_suite(digest, key, suite.name, text, size, by)
    return Sealed(model=model, name=suite.name, sha256=digest, probes=size)


@tools.tool("suites.seal", SealArgs, Sealed, permission="govern")
def seal_tool(ctx: ToolContext, args: SealArgs) -> Sealed:
    """Seal a validation suite for a subject: stored where no read or propose tool returns it;
    the gate validates every proposal on it and reports only aggregate numbers."""
    return seal(ctx.workspace, args.model, args.file, args.name, ctx.principal.name)
