"""Policy: what may change in a subject, by how much, and who says yes (YAML per subject).

```yaml
editable: ["model.layers.*"]        # globs over parameter names a delta may change
max_change:
  per_module: 2.0                   # ‖ΔW‖_F / ‖W‖_F of any one parameter
  total: 0.5                        # ‖ΔW‖_F / ‖W‖_F over every parameter of the model
thresholds:                          # validation: what the edit must reach
  efficacy: 0.8                     # visible probes fixed
  generalisation: 0.5               # held-out (sealed) paraphrases fixed
  specificity: 0.9                  # neighbours and facts keep their top-1
  perplexity: 0.10                  # largest relative perplexity increase allowed
  selfmodel: 0.75                   # each trait probe agrees with the behaviour left (sealed)
protected:                           # behaviours that must not move
  - suite: path/to/suite.yaml       # a suite file, or the name of a sealed suite
    margin: 0.05                    # largest change of rate or of unchanged answers allowed
sealed: all                          # which sealed suites validation runs: all | [names]
approvals: 1                         # approvals needed (by distinct principals)
approvers: []                        # who may approve (empty: anyone holding govern)
```

Every key is optional; a missing one keeps the default (:class:`Policy`). A policy is stored in
the store per subject and each change is a ledger entry (:func:`set_policy`).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfscope.errors import SelfscopeError
from selfscope.tools import Principal
from selfscope.workspace import Workspace


class MaxChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_module: float = Field(default=2.0, gt=0)
    total: float = Field(default=0.5, gt=0)


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    efficacy: float = Field(default=0.8, ge=0, le=1)
    generalisation: float = Field(default=0.5, ge=0, le=1)
    specificity: float = Field(default=0.9, ge=0, le=1)
    perplexity: float = Field(default=0.10, ge=0)
    # a sealed suite holds few trait prompts (4 held-out paraphrases in the catalog): one
    # disagreement of four is 0.75; the blinding attack of tests/test_selfmodel.py scores <= 0.25
    selfmodel: float = Field(default=0.75, ge=0, le=1)


class Protected(BaseModel):
    model_config = ConfigDict(extra="forbid")
    suite: str = Field(min_length=1)
    margin: float = Field(default=0.05, ge=0, le=1)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    editable: list[str] = Field(default_factory=lambda: ["*"])
    max_change: MaxChange = Field(default_factory=lambda: MaxChange())
    thresholds: Thresholds = Field(default_factory=lambda: Thresholds())
    protected: list[Protected] = Field(default_factory=list)
    sealed: Literal["all"] | list[str] = "all"
    approvals: int = Field(default=1, ge=1)
    approvers: list[str] = Field(default_factory=list)

    def editable_parameter(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.editable)


def parse(text: str, where: str = "policy") -> Policy:
    """A policy from YAML text, or one line naming the bad key."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise SelfscopeError(f"{where}:{line} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise SelfscopeError(f"{where}: a policy is a mapping (editable, max_change, ...)")
    try:
        return Policy.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "policy"
        keys = ", ".join(Policy.model_fields)
        raise SelfscopeError(f"{where}: {key}: {first['msg']} (keys: {keys})") from None


def current(workspace: Workspace, subject: str) -> Policy:
    """The subject's stored policy, else the default."""
    text = workspace.store.policy(subject)
    return parse(text, f"the stored policy of {subject}") if text is not None else Policy()


def set_policy(workspace: Workspace, subject: str, file: Path, by: Principal) -> Policy:
    """Store ``file`` as the subject's policy (``by`` must hold govern); a ledger entry."""
    if not by.holds("govern"):
        raise SelfscopeError(f"{by.name} may not set a policy: it needs the 'govern' permission")
    try:
        text = Path(file).read_text()
    except OSError:
        raise SelfscopeError(f"cannot read the policy file {file}") from None
    policy = parse(text, str(file))
    workspace.store.set_policy(subject, text, by.name)
    return policy
