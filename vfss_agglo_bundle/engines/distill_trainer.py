"""Stage 1: agglomerative distillation as a MONAI/Ignite engine.

``DistillationTrainer`` is a ``SupervisedTrainer`` with its own ``_iteration``: the network is a
:class:`~vfss_agglo_bundle.networks.adaptors.DistillationModel` (student + per-teacher heads), the loss function a
:class:`~vfss_agglo_bundle.losses.distill.DistillationLoss` giving one loss per teacher, and a balancer
(:mod:`vfss_agglo_bundle.losses.balancing`) turns those into the total. Targets come from the teacher feature
store (batch keys ``<teacher>_dense`` ``[B,C,h,w]`` and ``<teacher>_summary`` ``[B,D]``) or, for teachers passed
in ``teacher_models``, from frozen teachers run online on the batch image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from vfss_agglo_bundle.losses.distill import DistillationLoss
from vfss_agglo_bundle.utils.distributed import broadcast_from_main, is_distributed, mean_over_ranks


def distill_logs(output: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of a distillation step for loggers: ``loss``, ``loss_<teacher>`` (batch mean),
    ``weight_<teacher>`` (mean over the batch's samples) and ``weight_sd_<teacher>`` (their spread)."""
    logs = {}
    for key, value in output.items():
        if key == Keys.LOSS or key.startswith(("loss_", "weight_")):
            logs[key] = float(value.detach()) if torch.is_tensor(value) else float(value)
    return logs


class DistillationTrainer(SupervisedTrainer):
    """Distils one or more teachers into the student held by ``network``.

    Args:
        device, max_epochs, train_data_loader, network, optimizer: as for ``SupervisedTrainer``; ``network`` is a
            ``DistillationModel`` (or its DDP wrapper) returning a ``DistillationOutput``.
        loss_function: per-teacher ``DistillationLoss``.
        balancer: module mapping per-sample losses ``{teacher: [B]}`` and the student summaries ``[B, D]`` to
            ``(total, weights [B, K])``. Its parameters must be in ``optimizer``; under DDP their gradients are
            averaged across ranks here.
        teacher_models: optional ``{name: Teacher}`` computed online (frozen, never wrapped in DDP); teachers not
            listed are read from the batch.
        grad_clip: max gradient norm (``None``: no clipping).
        kwargs: any other ``SupervisedTrainer`` argument (``train_handlers``, ``amp``, ``accumulation_steps``, ...).
            ``prepare_batch`` gives the image (its first element; the teacher targets are read from the batch
            itself) and ``inferer(image, network)`` runs the forward, so it must return the network's dict.

    ``engine.state.output`` holds ``image`` and the detached scalars ``loss``, ``loss_<teacher>``,
    ``weight_<teacher>`` and ``weight_sd_<teacher>`` (feature maps are not kept, so nothing large is decollated or
    logged).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: DistillationLoss,
        balancer: nn.Module,
        teacher_models: Mapping[str, nn.Module] | None = None,
        grad_clip: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.balancer = balancer
        self.teacher_models = {name: teacher.to(device) for name, teacher in (teacher_models or {}).items()}
        self.teacher_names = list(loss_function.teacher_names)
        self.grad_clip = grad_clip
        self.add_event_handler(Events.STARTED, lambda _: self._broadcast_balancer())

    def _targets(
        self, batchdata: Mapping[str, Any], image: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        targets = {}
        for name in self.teacher_names:
            if name in self.teacher_models:
                out = self.teacher_models[name](image)
                targets[name] = (out.summary, out.dense)
                continue
            if f"{name}_dense" not in batchdata:
                raise KeyError(
                    f"batch has no '{name}_dense' target: fill the teacher feature store for {name!r} "
                    "(scripts/cache_teachers.py) or pass the teacher online."
                )
            dense = batchdata[f"{name}_dense"].to(self.state.device, non_blocking=self.non_blocking).float()
            summary = batchdata.get(f"{name}_summary")
            if summary is not None:
                summary = summary.to(self.state.device, non_blocking=self.non_blocking).float()
            targets[name] = (summary, dense)
        return targets

    def _broadcast_balancer(self) -> None:
        """Start every rank from rank 0's balancer parameters (DDP does this for the network only)."""
        for p in self.balancer.parameters():
            broadcast_from_main(p.data)

    def _sync_balancer_grads(self) -> None:
        if not is_distributed():
            return
        for p in self.balancer.parameters():
            if p.grad is not None:
                p.grad.copy_(mean_over_ranks(p.grad))

    def _clip_and_step(self, engine: DistillationTrainer) -> None:
        self._sync_balancer_grads()
        if engine.amp and engine.scaler is not None:
            if self.grad_clip is not None:
                engine.scaler.unscale_(engine.optimizer)
                self._clip()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            if self.grad_clip is not None:
                self._clip()
            engine.optimizer.step()

    def _clip(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        # a plain tensor: a MetaTensor would make the losses, and so the balancer's buffers, MetaTensors that the
        # resume checkpoint cannot be read back from (torch.load with weights_only=True refuses them)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        image = batch[0].as_subclass(torch.Tensor)
        engine.state.output = {Keys.IMAGE: image}

        def _forward_and_loss() -> torch.Tensor:
            targets = self._targets(batchdata, image)
            outputs = engine.inferer(image, engine.network)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            losses = engine.loss_function(outputs.predictions, targets)
            total, weights = self.balancer(losses, outputs.summary.detach())
            engine.state.output[Keys.LOSS] = total.detach()
            for i, name in enumerate(self.teacher_names):
                engine.state.output[f"loss_{name}"] = float(losses[name].detach().mean())
                engine.state.output[f"weight_{name}"] = float(weights[:, i].mean())
                engine.state.output[f"weight_sd_{name}"] = float(weights[:, i].std(unbiased=False))
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return total

        acc = engine.accumulation_steps
        local_iter = (engine.state.iteration - 1) % engine.state.epoch_length if engine.state.epoch_length else 0
        should_zero = acc == 1 or local_iter % acc == 0
        should_step = acc == 1 or (local_iter + 1) % acc == 0 or (local_iter + 1) == engine.state.epoch_length

        engine.network.train()
        self.balancer.train()
        if should_zero:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                total = _forward_and_loss()
            engine.scaler.scale(total / acc).backward()
        else:
            total = _forward_and_loss()
            (total / acc).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            self._clip_and_step(engine)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
