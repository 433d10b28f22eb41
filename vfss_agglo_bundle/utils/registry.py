"""One lookup for every name-keyed registry of the package (teachers, students, losses, balancers)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["check_name", "lookup"]

T = TypeVar("T")


def check_name(name: str, registry: Mapping[str, object], kind: str) -> str:
    """Return ``name`` if ``registry`` has it; else raise one ``ValueError`` listing the choices.

    The message is ``unknown <kind> '<name>'; choose one of [...]`` plus ``did you mean '<close match>'?`` when a
    registered name is close (``difflib``), e.g. ``unknown teacher 'rad-dino'; ... did you mean 'rad_dino'?``.
    """
    if name in registry:
        return name
    close = difflib.get_close_matches(str(name), [str(k) for k in registry], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}{hint}")


def lookup(name: str, registry: Mapping[str, T], kind: str) -> T:
    """``registry[name]``, with the error of :func:`check_name` for an unknown name."""
    return registry[check_name(name, registry, kind)]
