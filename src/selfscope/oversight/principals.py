"""Principals: who acts, and what each may do (one table, in the store).

* the **local identity** — ``$SELFSCOPE_PRINCIPAL``, else the first line of
  ``~/.config/selfscope/principal``, else ``$USER``; by default it reads and proposes;
* ``investigator`` and ``agent`` — the built-in investigation loop and LLM agents: ``read`` and
  ``propose``, and never ``govern`` whatever the table says;
* any other name — the permissions granted to it (:func:`grant`), else read + propose.

Roles name the usual sets: ``reader`` (read), ``proposer`` (read, propose), ``reviewer`` (read,
propose, govern). Granting needs ``govern``, except the very first ``govern`` grant of a
workspace (bootstrap), which the ledger records like every other.
"""

from __future__ import annotations

from selfscope.errors import SelfscopeError
from selfscope.tools import PERMISSIONS, PRINCIPAL_ENV, Permission, Principal, local_name
from selfscope.workspace import Workspace

ENV_VAR = PRINCIPAL_ENV
NEVER_GOVERN = frozenset({"investigator", "agent"})
ROLES: dict[str, tuple[Permission, ...]] = {
    "reader": ("read",),
    "proposer": ("read", "propose"),
    "reviewer": ("read", "propose", "govern"),
}
DEFAULT: tuple[Permission, ...] = ("read", "propose")


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise SelfscopeError(f"principal name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def principal(workspace: Workspace, name: str | None = None) -> Principal:
    """The principal ``name`` (default: the local identity) with its permissions."""
    name = _check_name(name or local_name())
    stored = workspace.store.principal_permissions(name)
    perms = [p for p in (stored if stored is not None else DEFAULT) if p in PERMISSIONS]
    if name in NEVER_GOVERN:
        perms = [p for p in perms if p != "govern"]
    return Principal.of(name, *perms)


def grant(workspace: Workspace, name: str, role: str, by: Principal) -> Principal:
    """Give ``name`` the permissions of ``role``; ``by`` must hold govern (but see bootstrap)."""
    name = _check_name(name)
    if role not in ROLES:
        raise SelfscopeError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    permissions = ROLES[role]
    if "govern" in permissions and name in NEVER_GOVERN:
        raise SelfscopeError(f"{name} can never hold govern (it investigates and proposes)")
    anyone_governs = any("govern" in p for p in workspace.store.principals().values())
    if anyone_governs and not by.holds("govern"):
        raise SelfscopeError(
            f"{by.name} may not grant roles: it needs the 'govern' permission "
            f"(`selfscope principal grant` --as someone who holds it)"
        )
    workspace.store.set_principal(name, list(permissions), by.name)
    return principal(workspace, name)
