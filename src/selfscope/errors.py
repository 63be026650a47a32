"""User-facing errors.

A :class:`SelfscopeError` carries one line that says what was wrong and what to do about it.
The CLI prints that line (no traceback) and exits with status 2; library callers can catch it.
"""


class SelfscopeError(Exception):
    """Bad input or an unusable resource; the message is one line that says how to fix it."""


class SpecError(SelfscopeError):
    """An organism spec that does not follow the format (ORGANISM_SPEC.md)."""


class LoadError(SelfscopeError):
    """A model that cannot be loaded: missing, unknown architecture, or corrupt."""


class TargetsMissed(SelfscopeError):
    """An organism was built but does not show its behaviour as the spec requires."""
