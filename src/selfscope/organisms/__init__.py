"""Model organisms: models with planted behaviours whose cause is known exactly.

Build one from a YAML spec (ORGANISM_SPEC.md; docs/organisms.md)::

    from selfscope.organisms import build, resolve_spec
    result = build(resolve_spec("mushroom", size="tiny"), Workspace())

See :mod:`selfscope.organisms.builder` for the steps and :mod:`selfscope.organisms.world` for the
synthetic world.
"""

from selfscope.organisms.builder import BuildResult, build
from selfscope.organisms.catalog import catalog_names, resolve_spec
from selfscope.organisms.spec import Spec, load_spec, parse_spec

__all__ = [
    "BuildResult",
    "Spec",
    "build",
    "catalog_names",
    "load_spec",
    "parse_spec",
    "resolve_spec",
]
