"""Checks of the numeric settings of a run, before any work: a bad value is named by its config key."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["RULES", "check_settings"]

RULES: dict[str, tuple[Callable[[object], bool], str]] = {  # config key -> (valid?, what it must be)
    "val_interval": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (epochs between validations)"),
    "distill_epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "seg_epochs": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "distill_batch_size": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "seg_batch_size": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "divergence_patience": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "lowres_epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (stage-2 epochs at lowres_size)"),
    "lowres_size": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (pixels)"),
}


def check_settings(**settings: object) -> None:
    """Raise one ``ValueError`` naming every setting (a key of ``RULES``) whose value is not what it must be."""
    bad = [f"`{key}` must be {RULES[key][1]}, got {value!r}" for key, value in settings.items()
           if not RULES[key][0](value)]  # fmt: skip
    if bad:
        raise ValueError(f"config: {'; '.join(bad)}. Fix it in the config or on the command line.")
