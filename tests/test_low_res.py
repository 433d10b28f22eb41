"""Progressive resizing (engines.LowResEpochs): what the network is handed in which epoch, against PIL and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image
from vfss_agglo_bundle.engines import LowResEpochs, downsample_pair


def test_the_image_is_resized_as_pil_does_and_labels_keep_pixels_at_least_half_covered():
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 12, 12)).astype(np.float32)
    label = np.zeros((2, 3, 12, 12), np.float32)
    label[:, 0, :6, :6] = 1  # a 6 x 6 square: 2 x 2 cells of 3 x 3 at size 4
    label[:, 1, 0, :2] = 1  # 2 of a cell's 9 pixels: dropped
    label[:, 2, :2, :3] = 1  # 6 of 9: kept
    small, small_label = downsample_pair(torch.from_numpy(image), torch.from_numpy(label), 4)
    reference = np.stack([np.asarray(Image.fromarray(im[0], mode="F").resize((4, 4), Image.BILINEAR)) for im in image])
    np.testing.assert_allclose(small[:, 0].numpy(), reference, atol=1e-5)
    by_hand = label.reshape(2, 3, 4, 3, 4, 3).mean(axis=(3, 5)) >= 0.5
    np.testing.assert_array_equal(small_label.numpy(), by_hand.astype(np.float32))
    assert small_label[:, 0].sum() == 2 * 4 and small_label[:, 1].sum() == 0 and small_label[:, 2].sum() == 2


def test_wrong_shapes_and_settings_are_refused():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        downsample_pair(torch.zeros(1, 8, 8), torch.zeros(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="positive"):
        LowResEpochs(size=0, epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        LowResEpochs(size=64, epochs=-1)
    with pytest.raises(ValueError, match=r"lowres_size 16 is above the image size \(8, 8\).*below image_size"):
        LowResEpochs(size=16, epochs=1)({"image": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 2, 8, 8)})


def _sizes_seen(prepare: LowResEpochs, max_epochs: int, start_epoch: int = 0) -> dict[int, tuple[int, int]]:
    seen = {}

    def step(engine, batch):
        image, label = prepare(batch, "cpu")
        seen[engine.state.epoch] = (image.shape[-1], label.shape[-1])

    engine = Engine(step)
    prepare.attach(engine)
    if start_epoch:  # as a resumed run's checkpoint sets the engine's state
        engine.state.max_epochs, engine.state.epoch_length = max_epochs, 1
        engine.state.epoch, engine.state.iteration = start_epoch, start_epoch
    engine.run([{"image": torch.rand(1, 1, 8, 8), "label": torch.ones(1, 2, 8, 8)}], max_epochs=max_epochs)
    return seen


def test_the_first_epochs_run_at_the_low_size_and_a_resumed_run_follows_its_epoch():
    assert _sizes_seen(LowResEpochs(size=4, epochs=2), 4) == {1: (4, 4), 2: (4, 4), 3: (8, 8), 4: (8, 8)}
    assert _sizes_seen(LowResEpochs(size=4, epochs=2), 4, start_epoch=1) == {2: (4, 4), 3: (8, 8), 4: (8, 8)}
    assert _sizes_seen(LowResEpochs(size=4, epochs=0), 2) == {1: (8, 8), 2: (8, 8)}


@pytest.mark.parametrize("epochs", [0, 3])
def test_train_yaml_hands_the_trainer_low_res_batches_only_when_asked(epochs):
    """0: MONAI's own prepare_batch and no handler (every earlier stage-2 fingerprint stays); > 0: one object, both
    the trainer's prepare_batch and one of its handlers."""
    from conftest import ROOT
    from monai.bundle import ConfigParser
    from monai.engines import default_prepare_batch

    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "train.yaml")
    parser["lowres_epochs"] = epochs
    prepare, handlers = (
        parser.get_parsed_content("train#prepare_batch"),
        parser.get_parsed_content("train#low_res_handlers"),
    )
    assert "@train::low_res_handlers" in parser["train"]["trainer"]["train_handlers"]  # the parser writes # as ::
    assert parser["train"]["trainer"]["prepare_batch"] == "@train::prepare_batch"
    if epochs:
        assert isinstance(prepare, LowResEpochs) and handlers == [prepare]
        assert (prepare.size, prepare.epochs) == (128, 3)
    else:
        assert prepare is default_prepare_batch and handlers == []
