"""configs/common.yaml and train.yaml's augmentation: parse, and give canonical, aligned tensors."""

import numpy as np
import torch
from conftest import ROOT
from monai.bundle import ConfigParser
from vfss_agglo_bundle.data.formats import write_frame, write_label


def _parser(config: str = "configs/common.yaml", **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(ROOT / config)
    parser.update(overrides)
    return parser


def _blob_item(tmp_path):
    image = np.full((96, 96), 30, np.uint8)
    label = np.zeros((2, 96, 96), np.uint8)
    label[0, 10:40, 55:70] = 1
    label[1, 60:80, 10:30] = 1
    image[label[0] > 0] = 230
    image[label[1] > 0] = 140
    write_frame(tmp_path / "f.png", image)
    write_label(tmp_path / "l.nii.gz", label)
    return {"image": str(tmp_path / "f.png"), "label": str(tmp_path / "l.nii.gz")}


def test_common_config_defaults():
    parser = _parser()
    assert parser.get_parsed_content("num_tasks") == 12
    assert parser.get_parsed_content("tasks")[:2] == ["bolus", "pharynx"]
    assert parser.get_parsed_content("image_size") == 256
    net = parser.get_parsed_content("network_def")
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 12, 64, 64)


def test_eval_transforms_are_canonical(tmp_path):
    parser = _parser(tasks=["a", "b"], image_size=64)
    out = parser.get_parsed_content("eval_transforms")(_blob_item(tmp_path))
    assert out["image"].shape == (1, 64, 64) and out["label"].shape == (2, 64, 64)
    assert out["image"].dtype == torch.float32 and set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(out["image_shape"], torch.tensor([96, 96]))


def test_train_augmentation_moves_image_and_label_together(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # train.yaml pulls common.yaml in by a path relative to the bundle root
    parser = _parser("configs/train.yaml", tasks=["a", "b"], image_size=64)
    transforms = parser.get_parsed_content("train_transforms")
    transforms.set_random_state(seed=0)
    item = _blob_item(tmp_path)
    changed = 0
    for _ in range(8):
        out = transforms(item)
        image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert image.shape == (1, 64, 64) and label.shape == (2, 64, 64)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        bright = image[0] > image[0].mean() + 0.25
        inside = label[0] > 0.5
        assert (bright & inside).sum() / inside.sum().clamp_min(1) > 0.7  # the bright bar is where label 0 is
        changed += int(not torch.equal(label, parser.get_parsed_content("eval_transforms")(item)["label"]))
    assert changed >= 3  # the spatial augmentation does move things
