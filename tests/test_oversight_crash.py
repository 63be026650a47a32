"""`selfscope apply` killed (SIGKILL) at every crash point of its write, one run per point: after
each, HEAD is the old or the new version, every version's tensors match their hash, the ledger
verifies, and running `apply` again completes. The points are the ones
:func:`selfscope.atomic.crash_point` marks (each file write half done, written, renamed; each
folder flushed; each store transaction begun, written, committed; each ledger entry)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from selfscope.errors import SelfscopeError
from selfscope.organisms import BuildResult, Spec
from selfscope.organisms.suites import seal_for_subject
from selfscope.oversight import gate, ledger, principals
from selfscope.oversight import versions as version_audit
from selfscope.tools import Principal
from selfscope.workspace import Workspace
from test_cli import EXE
from test_oversight import MODEL, set_policy, validated_and_approved

MAX_POINTS = 120


def _apply(root: Path, proposal: str, crash_at: int | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SELFSCOPE_HOME": str(root), "HF_HUB_OFFLINE": "1"}
    env.pop("SELFSCOPE_CRASH_AT", None)
    if crash_at is not None:
        env["SELFSCOPE_CRASH_AT"] = str(crash_at)
    return subprocess.run(
        [*EXE, "apply", proposal, "--as", "alice"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_apply_killed_at_every_crash_point_leaves_old_or_new_and_completes_after(
    tiny_mushroom: BuildResult, tiny_mushroom_spec: Spec, tmp_path: Path
) -> None:
    ready = Workspace(tmp_path / "ready")
    ready.organisms_dir.mkdir(parents=True)
    (ready.organisms_dir / "mushroom").symlink_to(tiny_mushroom.path.resolve())
    seal_for_subject(tiny_mushroom_spec, ready.organism_path("mushroom"), ready)
    principals.grant(ready, "alice", "reviewer", Principal.local())
    principals.grant(ready, "carol", "proposer", principals.principal(ready, "alice"))
    set_policy(ready, tmp_path)
    proposal = validated_and_approved(ready, tiny_mushroom_spec)
    key = gate.key_of(ready, MODEL)
    old_head = ready.store.head(key)
    ready.store.close()

    killed = 0
    for point in range(1, MAX_POINTS + 1):
        root = tmp_path / f"crash-{point}"
        shutil.copytree(ready.root, root, symlinks=True)
        run = _apply(root, proposal.id, point)
        if run.returncode == 0:  # past the last point: the apply finished untouched
            break
        assert run.returncode == -signal.SIGKILL, run.stderr
        killed += 1
        ws = Workspace(root)
        head = ws.store.head(key)
        rows = ws.store.versions(key)
        assert head == old_head or (len(rows) == 2 and head == rows[1]["id"]), point
        assert ledger.verify_workspace(ws).ok, point
        audit = version_audit.verify(ws, MODEL)
        assert audit.ok, (point, audit.problems)
        try:  # running apply again (in this process: the same code, without the start-up)
            gate.apply(ws, proposal.id, principals.principal(ws, "alice"))
        except SelfscopeError as error:
            assert "applied already" in str(error), (point, str(error))
        rows = ws.store.versions(key)
        assert len(rows) == 2 and ws.store.head(key) == rows[1]["id"], point
        assert ledger.verify_workspace(ws).ok and version_audit.verify(ws, MODEL).ok, point
        ws.store.close()
        shutil.rmtree(root)
    assert killed >= 20, f"only {killed} crash points in an apply"
    print(f"apply killed at {killed} points; each left a consistent state and completed after")
