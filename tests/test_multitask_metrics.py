"""12-task metrics and report: values equal hand computations, empty masks scored as documented."""

import json
import math

import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from vfss_agglo_bundle.handlers.report import MultiTaskReport
from vfss_agglo_bundle.metrics.multitask import MultiTaskSegMetrics, segmentation_scores


def test_scores_by_hand():
    pred = torch.zeros(1, 4, 10, 10)
    label = torch.zeros(1, 4, 10, 10)
    pred[0, 0, 0:4, 0:4] = 1  # 16 px
    label[0, 0, 0:4, 0:2] = 1  # 8 px inside it: Dice = 2*8/24, IoU = 8/16
    label[0, 1, 5:7, 5:7] = 1  # prediction empty -> 0, 0, diagonal
    pred[0, 2, 1, 1] = 1  # label empty -> 0, 0, diagonal
    s = segmentation_scores(pred, label)  # task 3: both empty -> 1, 1, 0
    assert s["dice"][0].tolist() == pytest.approx([16 / 24, 0.0, 0.0, 1.0])
    assert s["iou"][0].tolist() == pytest.approx([0.5, 0.0, 0.0, 1.0])
    assert s["hd95"][0, 1:].tolist() == pytest.approx([math.hypot(10, 10), math.hypot(10, 10), 0.0])
    assert s["hd95"][0, 0] == pytest.approx(2.0)  # columns 2-3 of the prediction are 2 px from the label


class _Fixed(torch.nn.Module):
    """Returns the logits stored for each frame index in the batch."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()] + 0 * self.anchor


def test_report_through_an_evaluator_equals_hand_computation(tmp_path):
    tasks = ["bolus", "pharynx"]
    labels = torch.zeros(3, 2, 8, 8)
    preds = torch.zeros(3, 2, 8, 8)
    labels[0, 0, 0:4, 0:4] = 1
    preds[0, 0, 0:4, 0:2] = 1  # Dice 2*8/24 = 2/3
    labels[1, 0, 2:4, 2:4] = 1  # missed: 0
    labels[:, 1, 4:8, 0:8] = 1
    preds[:, 1, 4:8, 0:8] = 1  # perfect: 1, 1, 1 ; frame 2 bolus: both empty -> 1
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 8, 8).clone()
    studies = ["s000", "s000", "s001"]
    data = [
        {"image": images[i], "label": labels[i], "image_path": f"/d/{studies[i]}/{i:04d}.png", "study": studies[i]}
        for i in range(3)
    ]
    post = Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)])
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=_Fixed(preds * 20 - 10),
        postprocessing=post,
        key_val_metric={"mean_dice": MultiTaskSegMetrics(tasks, from_engine(["pred", "label"]), reduce="mean_dice")},
        additional_metrics={"multitask": MultiTaskSegMetrics(tasks, from_engine(["pred", "label"]), keep_frames=True)},
        val_handlers=[MultiTaskReport(str(tmp_path), tasks)],
    )
    evaluator.run()
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["task"]: r for r in report["rows"]}
    assert rows["bolus"]["dice"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert rows["bolus"]["iou"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert rows["pharynx"]["dice"] == pytest.approx(1.0) and rows["pharynx"]["hd95"] == pytest.approx(0.0)
    assert rows["mean"]["dice"] == pytest.approx(((2 / 3 + 1) / 3 + 1) / 2)
    assert evaluator.state.metrics["mean_dice"] == pytest.approx(rows["mean"]["dice"])
    assert report["num_frames"] == 3
    assert (tmp_path / "report.csv").read_text().splitlines()[0] == "task,dice,dice_present,fp_rate,iou,hd95"
    # presence separated from shape: bolus is present in frames 0 and 1 (Dice 2/3 and 0), absent in frame 2 (and
    # not predicted there); pharynx is present everywhere, so it has no false-positive rate
    assert rows["bolus"]["dice_present"] == pytest.approx(1 / 3) and rows["bolus"]["fp_rate"] == 0.0
    assert rows["pharynx"]["dice_present"] == pytest.approx(1.0) and rows["pharynx"]["fp_rate"] is None
    assert rows["mean"]["fp_rate"] == 0.0  # averaged over the tasks that have absent frames
    assert "| bolus | 0.5556 | 0.3333 | 0.0000 |" in (tmp_path / "report.md").read_text()
    studies = report["studies"]
    assert studies["s000"]["bolus"]["dice"] == pytest.approx(1 / 3) and studies["s000"]["bolus"]["fp_rate"] is None
    assert studies["s001"]["bolus"]["dice"] == pytest.approx(1.0) and studies["s001"]["bolus"]["dice_present"] is None
    assert studies["s001"]["pharynx"]["hd95"] == 0.0
    assert studies["s000"]["mean"]["dice"] == pytest.approx((1 / 3 + 1) / 2)
    assert (tmp_path / "overlays/bolus_worst.png").exists() and (tmp_path / "overlays/pharynx_best.png").exists()


def test_metric_refuses_wrong_channel_count():
    metric = MultiTaskSegMetrics(["a", "b", "c"])
    with pytest.raises(ValueError, match="prediction has 2 channels but there are 3 tasks"):
        metric.update((torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)))
