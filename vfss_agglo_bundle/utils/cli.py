"""Helpers for the fire command lines in ``scripts/``."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["split_names"]


def split_names(value: str | Sequence[str]) -> list[str]:
    """A comma-separated string (``"medsam,rad_dino"``) or a list given on the command line -> a list of names."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]
