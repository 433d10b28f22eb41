"""The bundle's ``network_def``: student encoder + light decoder -> one logit channel per task."""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
from vfss_agglo_bundle.data.tasks import NUM_DEFAULT_TASKS
from vfss_agglo_bundle.networks.decoder import LightDecoder
from vfss_agglo_bundle.networks.student import StudentEncoder, identify_backbone
from vfss_agglo_bundle.utils.random import seeded
from vfss_agglo_bundle.utils.state_dict import read_state_dict

__all__ = ["VFSSSegmenter"]

logger = logging.getLogger(__name__)


class VFSSSegmenter(nn.Module):
    """Multi-label VFSS segmenter: ``[B, 1, S, S]`` image in [0, 1] -> ``[B, num_classes, S, S]`` logits.

    Apply a sigmoid per channel (masks overlap). Any S divisible by 32 works (256 and 512 are tested);
    the model is TorchScript-scriptable and ONNX-exportable.

    Args:
        backbone: student backbone, one of ``networks.student.SUPPORTED_BACKBONES``.
        num_classes: number of tasks (channels of the output); default: the default task list.
        decoder_width: channels of the decoder maps.
        encoder_weights: optional flat stage-1 encoder state dict to start from (see :meth:`load_encoder`).
        init_seed: encoder and decoder weights are drawn from the stream ``(init_seed, "segmenter")``, whatever ran
            before, so a distilled and a from-scratch run start from the same decoder (``None``: torch's current
            generator).
    """

    def __init__(
        self,
        backbone: str = "efficientvit_b0",
        num_classes: int = NUM_DEFAULT_TASKS,
        decoder_width: int = 64,
        encoder_weights: str | os.PathLike | None = None,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.decoder_width = decoder_width
        with seeded(init_seed, "segmenter"):
            self.encoder = StudentEncoder(backbone)
            self.decoder = LightDecoder(self.encoder.channels, num_classes, width=decoder_width)
        if encoder_weights is not None:
            self.load_encoder(encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, S, S]`` -> logits ``[B, num_classes, S, S]``."""
        return self.decoder(self.encoder(x), [x.shape[-2], x.shape[-1]])

    def load_encoder(self, path: str | os.PathLike | None) -> None:
        """Load a stage-1 flat encoder state dict; ValueError naming the file and both architectures on mismatch.

        ``None`` (no distillation stage ran: training from scratch) keeps the encoder's own initialisation.
        """
        if path is None:
            logger.info(
                "no distilled encoder to load: the %s encoder starts from its own initialisation", self.backbone
            )
            return
        self.encoder.load_weights(path)

    def param_groups(self, lr: float, encoder_lr_scale: float = 1.0, freeze_encoder: bool = False) -> list[dict]:
        """Optimizer parameter groups for stage 2: the encoder at ``lr * encoder_lr_scale``, then the decoder.

        ``freeze_encoder`` turns the encoder's ``requires_grad`` off here (before any DDP wrapper registers the
        parameters) and leaves it out of the groups, so only the decoder is trained; the encoder then also stays in
        eval mode (its batch-norm statistics frozen too: a linear-probe-style frozen encoder).
        """
        self.encoder.requires_grad_(not freeze_encoder)
        self._encoder_frozen = bool(freeze_encoder)
        self.train(self.training)
        groups = [] if freeze_encoder else [{"params": list(self.encoder.parameters()), "lr": lr * encoder_lr_scale}]
        return groups + [{"params": list(self.decoder.parameters())}]

    def train(self, mode: bool = True) -> VFSSSegmenter:
        """As ``nn.Module.train``, except that a frozen encoder (``param_groups(freeze_encoder=True)``) stays in eval
        mode."""
        super().train(mode)
        if getattr(self, "_encoder_frozen", False):
            self.encoder.train(False)
        return self

    def load_checkpoint(self, path: str | os.PathLike) -> VFSSSegmenter:
        """Strictly load a flat state dict of the whole segmenter (``models/model.pt``); returns ``self``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a flat state dict, or it is for another backbone, number of tasks or decoder
                width (the message says which backbone and how many tasks it looks like).
        """
        state = read_state_dict(path, "segmenter checkpoint")
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state.items()} != expected:
            encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
            head = state.get("decoder.head.weight")
            raise ValueError(
                f"{path} does not match VFSSSegmenter(backbone={self.backbone!r}, num_classes={self.num_classes}, "
                f"decoder_width={self.decoder_width}): it looks like backbone={identify_backbone(encoder)!r} with "
                f"{int(head.shape[0]) if head is not None else None} classes; build the network it was trained with "
                "(config keys `student`, `tasks`, `decoder_width`; export.py --backbone, --num_classes)."
            )
        broken = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if broken is not None:
            raise ValueError(
                f"{path} holds non-finite values (NaN or inf) in {broken!r}: the run that wrote it diverged. Use an "
                "earlier checkpoint or train again."
            )
        self.load_state_dict(state, strict=True)
        return self
