"""API tokens: a secret that acts as one principal through the HTTP door.

``selfscope token create --name alice --role reviewer`` grants ``alice`` the role (through
:func:`selfscope.oversight.principals.grant`, so it needs ``govern`` like any grant, except a
workspace's very first ``govern`` grant) and prints a new secret once. The store keeps only the
secret's SHA-256 (a stolen store gives no token), bound to the principal's *name*: the
permissions are read from the principals table on every request, so a later grant or a
revocation takes effect at once. ``investigator`` and ``agent`` can hold tokens but never
``govern``. Creating and revoking are ledger entries (the name and principal, never the secret).
"""

from __future__ import annotations

import hashlib
import secrets

from selfscope.errors import SelfscopeError
from selfscope.oversight.principals import grant, principal
from selfscope.tools import Principal
from selfscope.workspace import Workspace

PREFIX = "sst_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(workspace: Workspace, name: str, role: str, by: Principal) -> tuple[str, str]:
    """Grant ``name`` the ``role`` and make a token for it; returns (token name, secret)."""
    holder = grant(workspace, name, role, by)
    label = f"{holder.name}-{secrets.token_hex(3)}"
    secret = PREFIX + secrets.token_urlsafe(32)
    workspace.store.add_token(label, holder.name, digest(secret), by.name)
    return label, secret


def resolve(workspace: Workspace, secret: str) -> Principal | None:
    """The principal a presented secret acts as (with its current permissions), else None.

    The lookup is by the secret's SHA-256, so a lookup's timing can reveal at most a prefix
    of a hash, never of the secret."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    name = workspace.store.token_principal(digest(secret))
    return None if name is None else principal(workspace, name)


def revoke(workspace: Workspace, name: str, by: Principal) -> None:
    if not by.holds("govern") and any("govern" in p for p in workspace.store.principals().values()):
        raise SelfscopeError(f"{by.name} may not revoke tokens: it needs the 'govern' permission")
    if not workspace.store.revoke_token(name, by.name):
        known = ", ".join(t["name"] for t in workspace.store.tokens() if not t["revoked_at"])
        raise SelfscopeError(f"no live token named {name!r}; live tokens: {known or 'none'}")


def any_live(workspace: Workspace) -> bool:
    return any(t["revoked_at"] is None for t in workspace.store.tokens())
