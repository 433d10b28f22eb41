"""A tqdm progress bar for MONAI engines that shows the step's scalars."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar


class ProgressHandler:
    """Attach ignite's tqdm ``ProgressBar`` to an engine, showing ``output_transform(engine.state.output)``.

    Args:
        output_transform: maps the step output to a dict of scalars (e.g. ``distill_logs``); ``None`` shows none.
        desc: bar label.
    """

    def __init__(self, output_transform: Callable[[Any], dict] | None = None, desc: str = "") -> None:
        self.output_transform = output_transform
        self.desc = desc

    def attach(self, engine: Engine) -> None:
        bar = ProgressBar(persist=True, desc=self.desc or None)
        bar.attach(engine, output_transform=self.output_transform)
