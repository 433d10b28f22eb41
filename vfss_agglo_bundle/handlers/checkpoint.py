"""Checkpoints: a resume checkpoint written atomically and reloaded on start, the best model, the model loader."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from vfss_agglo_bundle.networks.fusion import optimize_for_inference
from vfss_agglo_bundle.utils.distributed import is_main_process, unwrap_ddp
from vfss_agglo_bundle.utils.io import save_torch
from vfss_agglo_bundle.utils.state_dict import save_state_dict

logger = logging.getLogger(__name__)


class ResumeCheckpoint:
    """Save ``objects`` (model, optimizer, scheduler, engine, ...) to one file every epoch; reload it on start.

    Args:
        path: checkpoint file (``.pt``). Written to a temporary file and renamed, so a crash mid-save keeps the
            previous checkpoint intact.
        objects: name -> object with ``state_dict``/``load_state_dict`` (model, optimizer, scheduler, ...); the
            engine the handler is attached to is added as ``engine``, so its epoch and iteration resume too.
        fingerprint: describes the run's configuration; a checkpoint with another fingerprint is refused
            (e.g. written for other teachers or another backbone) instead of being loaded into the wrong run.
        every_epochs: save interval in epochs.

    Only rank 0 writes. Resumes are exact at epoch boundaries
    (see :class:`~vfss_agglo_bundle.handlers.seeding.EpochSeed`).
    """

    def __init__(
        self, path: str | os.PathLike, objects: Mapping[str, Any], fingerprint: str = "", every_epochs: int = 1
    ) -> None:
        self.path = Path(path)
        self.objects = dict(objects)
        self.fingerprint = fingerprint
        self.every_epochs = int(every_epochs)

    def attach(self, engine: Engine) -> None:
        self.objects["engine"] = engine
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_epochs), self.save)

    def load(self, engine: Engine) -> None:
        if not self.path.exists():
            return
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a truncated or foreign file
            raise ValueError(
                f"resume checkpoint {self.path} cannot be read ({type(err).__name__}); it is left as it is. Delete it "
                "to run this stage again from its start, or put back a copy."
            ) from err
        found = checkpoint.get("fingerprint", "")
        if found != self.fingerprint:
            raise ValueError(
                f"resume checkpoint {self.path} was written by a different configuration "
                f"({found[:80]!r} != {self.fingerprint[:80]!r}); delete it or choose another ckpt_dir."
            )
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(self.objects, checkpoint["objects"])
        engine.state.max_epochs = max_epochs  # a longer run may continue a shorter one
        logger.info("resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration)

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        objects = {name: unwrap_ddp(obj).state_dict() for name, obj in self.objects.items()}
        save_torch({"fingerprint": self.fingerprint, "objects": objects}, self.path, overwrite=True)


class BestCheckpoint:
    """Save ``network``'s flat state dict to ``path`` whenever the evaluator's ``metric_name`` improves.

    Unlike ignite's in-memory tracking, the best score is part of ``state_dict`` so that a
    :class:`ResumeCheckpoint` that includes this handler resumes it: an interrupted stage then keeps the same best
    model an uninterrupted one would. Written atomically; only rank 0 writes.

    Args:
        path: checkpoint file (e.g. ``models/model.pt``).
        network: the module to save (DDP unwrapped).
        metric_name: key metric in ``engine.state.metrics`` (higher is better).
    """

    def __init__(self, path: str | os.PathLike, network: torch.nn.Module, metric_name: str) -> None:
        self.path = Path(path)
        self.network = network
        self.metric_name = metric_name
        self.best = float("-inf")
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        score = float(engine.state.metrics[self.metric_name])
        if score <= self.best:
            return
        self.best, self.best_epoch = score, engine.state.epoch
        save_state_dict(self.network, self.path, overwrite=True)
        logger.info("best %s %.4f: saved %s", self.metric_name, score, self.path)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class ModelLoader:
    """Load a flat segmenter state dict (``models/model.pt``) into ``network`` when the engine starts.

    MONAI's ``CheckpointLoader`` for the bundle's flat checkpoints, with one error naming the file and the
    architecture it holds when it does not fit (:meth:`VFSSSegmenter.load_checkpoint`).

    Args:
        load_path: the checkpoint file.
        network: a ``VFSSSegmenter``, or ``DistributedDataParallel`` around one.
        optimize: then run the engine with :func:`~vfss_agglo_bundle.networks.fusion.optimize_for_inference`'s copy
            (conv-BN folding, channels-last; the same outputs up to float rounding), for inference-only engines.
    """

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, optimize: bool = False) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.optimize = optimize

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        unwrap_ddp(self.network).load_checkpoint(self.load_path)
        logger.info("loaded %s", self.load_path)
        if self.optimize:
            device = next(self.network.parameters()).device
            engine.network = optimize_for_inference(unwrap_ddp(self.network), torch.rand(1, 1, 64, 64, device=device))
