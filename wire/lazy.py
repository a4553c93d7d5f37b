"""Package attributes that load on first use (PEP 562), for the packages' ``__init__``.

A package lists where each public name lives; ``from pkg import Name`` imports that one
module then. So a process imports only what it touches: the CLI's inspecting commands
never load Celery, the worker side or the HTTP gateway.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """The package's ``__getattr__``: ``homes`` maps each name to the module that
    defines it; a name is imported once, then kept in ``namespace`` (the package's
    globals), so later lookups do not come back here."""

    def attribute(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    return attribute
