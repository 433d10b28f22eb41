"""Stages of the `training` run: each one skips itself when its outputs exist for the same configuration.

A :class:`Stage` wraps one engine and the config subtree that defines it. Its fingerprint is the hash of that
subtree's resolved objects (:mod:`~vfss_agglo_bundle.workflow.fingerprint`), of the upstream stages'
fingerprints and of the given extra values (seed, datalist content). A finished stage leaves
``<ckpt_dir>/<stage>.done.json`` holding the fingerprint, the description it was computed from and the sha256 of
each output. On the next run the stage is skipped when that record matches, refused with a message naming what
changed when it was made by another configuration (nothing is overwritten), and otherwise run; an interrupted
stage resumes from its :class:`~vfss_agglo_bundle.handlers.checkpoint.ResumeCheckpoint`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine
from torch import nn
from vfss_agglo_bundle.utils.distributed import barrier, is_main_process
from vfss_agglo_bundle.utils.io import file_sha256, read_json, write_json
from vfss_agglo_bundle.utils.state_dict import save_state_dict
from vfss_agglo_bundle.workflow.fingerprint import describe, differences, fingerprint
from vfss_agglo_bundle.workflow.records import RunRecord

if TYPE_CHECKING:  # a type only: `evaluating` and `inferring` load the run record without every handler
    from vfss_agglo_bundle.handlers import ResumeCheckpoint

__all__ = ["Stage", "stage_record"]

logger = logging.getLogger(__name__)


def stage_record(ckpt_dir: str | os.PathLike, stage: str) -> Path:
    """Path of a stage's completion record."""
    return Path(ckpt_dir) / f"{stage}.done.json"


class Stage:
    """One resumable step of a run: an engine, what defines its result, and the files it leaves.

    Args:
        name: stage name (``distillation``, ``segmentation``); its record is ``<ckpt_dir>/<name>.done.json``.
        ckpt_dir: folder of outputs and records.
        engine: the Ignite engine to run.
        defines: the resolved components that define the result: the engine itself, the handlers that change
            what it computes, by name (``{"trainer": "@distill#trainer", "handlers": {"lr_schedule":
            "@distill#lr_schedule", ...}}``), plus values from outside the subtree (``seed``, datalist sha256). All
            of it is described into the fingerprint; handlers it does not name (progress, statistics, TensorBoard,
            MLflow, the resume checkpoint) are not, so adding or removing one keeps a finished stage reusable.
        roots: folders whose location is not part of the fingerprint (``bundle_root``, ``dataset_dir``, ...).
        outputs: file name (in ``ckpt_dir``) -> module whose state dict is saved there when the stage finishes,
            or ``None`` for a file the engine's handlers wrote (the best checkpoint); every one is hashed.
        after: upstream stages; their fingerprints are part of this one's.
        enabled: ``False`` skips the stage (it then has no fingerprint and no outputs).
        skip_reason: logged when the stage is disabled.
        record: the run record the stage writes its settings and fingerprint to when it starts.
        resume: the engine's resume checkpoint handler (by name: ``"@distill#resume"``); the stage gives it its
            fingerprint, so a checkpoint written under another configuration is refused instead of resumed.
        before: called once before the engine runs (not when the stage is skipped), e.g. to load an upstream
            stage's output into the network (before a resume checkpoint restores a later state).
    """

    def __init__(
        self,
        name: str,
        ckpt_dir: str | os.PathLike,
        engine: Engine,
        defines: Mapping[str, Any],
        roots: Mapping[str, str | os.PathLike | None] | None = None,
        outputs: Mapping[str, nn.Module | None] | None = None,
        after: Sequence[Stage] = (),
        enabled: bool = True,
        skip_reason: str = "",
        record: RunRecord | None = None,
        resume: ResumeCheckpoint | None = None,
        before: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.ckpt_dir = Path(ckpt_dir)
        self.engine = engine
        self.defines = dict(defines)
        self.roots = dict(roots or {})
        self.outputs = dict(outputs or {})
        self.after = list(after)
        self.enabled = bool(enabled)
        self.skip_reason = skip_reason
        self.record = record
        self.resume = resume
        self.before = before

    @functools.cached_property
    def description(self) -> dict[str, Any] | None:
        """Plain JSON of everything that defines the result (computed once, before the engine runs)."""
        if not self.enabled:
            return None
        return {**describe(self.defines, self.roots), "after": {stage.name: stage.fingerprint for stage in self.after}}

    @property
    def fingerprint(self) -> str | None:
        """sha256 of :attr:`description`; ``None`` for a disabled stage."""
        return None if self.description is None else fingerprint(self.description)

    def output(self, name: str) -> Path | None:
        """Path of output ``name`` in ``ckpt_dir``; ``None`` when the stage is disabled (nothing to read)."""
        if name not in self.outputs:
            raise KeyError(f"stage {self.name!r} has no output {name!r}; its outputs are {sorted(self.outputs)}.")
        return self.ckpt_dir / name if self.enabled else None

    def is_done(self) -> bool:
        """True when the stage finished with this fingerprint; raises when it finished with another one."""
        path = stage_record(self.ckpt_dir, self.name)
        if not path.exists():
            return False
        done = read_json(path)
        if done.get("fingerprint") != self.fingerprint:
            if "settings" in done:
                what = "; it changed: " + "; ".join(differences(done["settings"], self.description))
            else:
                what = "; the record was written by an earlier version of the bundle, which hashed other settings"
            raise RuntimeError(
                f"stage {self.name!r} already finished in {self.ckpt_dir} with a different configuration "
                f"({path}){what}. Choose another --ckpt_dir (or --bundle_root) for this configuration, or delete "
                f"{path} and the outputs it lists ({', '.join(done.get('outputs', {}))}) to redo it."
            )
        missing = [name for name in done.get("outputs", {}) if not (self.ckpt_dir / name).exists()]
        if missing:
            raise RuntimeError(
                f"stage {self.name!r} is marked done in {path} but its outputs {missing} are missing; "
                f"restore them or delete {path} to redo the stage."
            )
        return True

    def run(self) -> bool:
        """Run the engine unless the stage is disabled or already done; then save the outputs and the record.

        Returns:
            True if the stage ran, False if it was skipped.
        """
        if not self.enabled:
            logger.info("stage %s: skipped (%s)", self.name, self.skip_reason or "disabled")
            return False
        if self.record is not None:
            self.record.add_stage(self.name, self.fingerprint, self.description)
        if self.is_done():
            logger.info(
                "stage %s: outputs found in %s and match this configuration, skipping", self.name, self.ckpt_dir
            )
            return False
        logger.info("stage %s: running", self.name)
        if self.resume is not None:
            self.resume.fingerprint = self.fingerprint
        if self.before is not None:
            self.before()
        self.engine.run()
        if self.engine.should_terminate and self.engine.state.epoch < (self.engine.state.max_epochs or 0):
            raise RuntimeError(f"stage {self.name!r} was terminated early; run the same command again to resume it.")
        if is_main_process():  # files are written by rank 0 only
            self._write_outputs()
        barrier()  # the other ranks read these outputs next (stage 2 loads student_encoder.pt)
        return True

    def _write_outputs(self) -> None:
        hashes = {}
        for name, module in self.outputs.items():
            path = self.ckpt_dir / name
            if module is not None:
                save_state_dict(module, path, overwrite=True)
            elif not path.exists():
                raise RuntimeError(f"stage {self.name!r} finished without writing {path}.")
            hashes[name] = file_sha256(path)
        done = {"stage": self.name, "fingerprint": self.fingerprint, "outputs": hashes, "settings": self.description}
        write_json(stage_record(self.ckpt_dir, self.name), done, overwrite=True)
        summary = ", ".join(f"{k} sha256 {v[:12]}" for k, v in hashes.items()) or "no files"
        logger.info("stage %s: done (%s)", self.name, summary)
