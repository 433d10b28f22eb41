"""Segmenter export (TorchScript, ONNX) with its parity check, and optimize_for_inference."""

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from vfss_agglo_bundle.data.formats import write_frame
from vfss_agglo_bundle.export import (
    export_onnx,
    export_segmenter,
    export_torchscript,
    load_segmenter,
    mask_dice,
    parity_check,
)
from vfss_agglo_bundle.networks import SUPPORTED_BACKBONES, VFSSSegmenter
from vfss_agglo_bundle.networks.fusion import conv_bn_pairs, optimize_for_inference
from vfss_agglo_bundle.utils.io import write_json

SIZE = 64
CLASSES = 3


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics (fresh ones are near the identity and would hide folding errors)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = _randomize_norms(VFSSSegmenter("efficientvit_b0", num_classes=CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    items = []
    for frame in range(5):
        image = f"images/s000/{frame:04d}.png"
        write_frame(root / image, rng.integers(0, 256, (80, 80), dtype=np.uint8))
        items.append({"image": image, "label": f"labels/s000/{frame:04d}.nii.gz", "study": "s000", "frame": frame})
    path = root / "datalist.json"
    write_json(path, {"tasks": ["a", "b", "c"], "image_size": SIZE, "training": [], "validation": [], "test": items})
    return path


def test_load_segmenter_round_trip_and_errors(tmp_path, checkpoint):
    model = load_segmenter(checkpoint, "efficientvit_b0", CLASSES)
    assert not model.training
    saved = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_segmenter(tmp_path / "missing.pt", "efficientvit_b0", CLASSES)
    other = tmp_path / "resnet.pt"
    torch.save(VFSSSegmenter("resnet18", num_classes=5).state_dict(), other)
    with pytest.raises(ValueError, match=r"resnet.pt.*backbone='resnet18' with 5 classes"):
        load_segmenter(other, "efficientvit_b0", CLASSES)
    with pytest.raises(ValueError, match="with 3 classes"):
        load_segmenter(checkpoint, "efficientvit_b0", 12)
    not_a_state = tmp_path / "list.pt"
    torch.save([1, 2], not_a_state)
    with pytest.raises(ValueError, match="list.pt"):
        load_segmenter(not_a_state, "efficientvit_b0", CLASSES)


def test_export_segmenter_parity_on_datalist_frames(tmp_path, checkpoint, datalist):
    out = tmp_path / "export"
    report = export_segmenter(
        checkpoint,
        out,
        "efficientvit_b0",
        image_size=SIZE,
        datalist=datalist,
        split="test",
        max_frames=4,
        batch_size=3,
        dynamo=False,
    )  # tasks and num_classes come from the datalist
    assert sorted(p.name for p in out.iterdir()) == ["export_parity.json", "model.onnx", "model.ts"]
    assert json.loads((out / "export_parity.json").read_text()) == json.loads(json.dumps(report))
    assert report["num_classes"] == CLASSES and report["parity_inputs"].startswith("4 frames of")
    for fmt in ("torchscript", "onnx"):
        parity = report["formats"][fmt]["parity"]
        assert parity["frames"] == 4
        assert parity["max_abs_diff"] < 1e-4
        assert parity["dice"] >= 0.999 and parity["min_frame_dice"] >= 0.99
        assert 0.05 < parity["mask_fraction"] < 0.95  # masks are neither empty nor full: the Dice means something
    assert report["formats"]["torchscript"]["method"] == "script"
    onnx_info = report["formats"]["onnx"]
    assert onnx_info["exporter"] == "torchscript" and onnx_info["opset"] == 18
    assert onnx_info["dynamic_axes"]["image"] == [0, 2, 3]
    assert {0, 2, 3} <= set(onnx_info["dynamic_axes"]["logits"])  # the exporter may also leave channels symbolic

    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(out / "model.ts"), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["backbone"] == "efficientvit_b0" and meta["num_classes"] == CLASSES and meta["tasks"] == ["a", "b", "c"]

    model = load_segmenter(checkpoint, "efficientvit_b0", CLASSES)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 1, 96, 128)  # another batch size and a non-square size than exported with
    with torch.inference_mode():
        ref = model(x)
        np.testing.assert_allclose(scripted(x).numpy(), ref.numpy(), atol=1e-4)
    out_onnx = session.run(None, {"image": x.numpy()})[0]
    assert out_onnx.shape == (2, CLASSES, 96, 128)
    np.testing.assert_allclose(out_onnx, ref.numpy(), atol=1e-4)


def test_export_refuses_to_overwrite(tmp_path, checkpoint):
    out = tmp_path / "export"
    export_segmenter(checkpoint, out, "efficientvit_b0", CLASSES, SIZE, formats=["torchscript"], max_frames=2)
    before = (out / "model.ts").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_segmenter(checkpoint, out, "efficientvit_b0", CLASSES, SIZE, formats=["torchscript"], max_frames=2)
    assert (out / "model.ts").stat().st_mtime_ns == before
    report = export_segmenter(
        checkpoint, out, "efficientvit_b0", CLASSES, SIZE, formats=["torchscript"], max_frames=2, overwrite=True
    )
    assert report["parity_inputs"] == "2 random images" and report["formats"]["torchscript"]["parity"]["frames"] == 2
    with pytest.raises(ValueError, match="tflite"):
        export_segmenter(checkpoint, tmp_path / "x", "efficientvit_b0", CLASSES, SIZE, formats=["tflite"])


class _KeywordForward(nn.Module):
    """Not scriptable (``**kwargs``), traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x, **kwargs):
        return self.conv(x)


def test_torchscript_falls_back_to_trace_and_says_so(tmp_path, caplog):
    model = _KeywordForward().eval()
    x = torch.rand(1, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="vfss_agglo_bundle.export"):
        method = export_torchscript(model, tmp_path / "m.ts", x)
    assert method == "trace"
    assert "falling back to torch.jit.trace" in caplog.text
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    with pytest.raises(FileExistsError):
        export_torchscript(model, tmp_path / "m.ts", x)


def test_onnx_falls_back_from_dynamo(tmp_path, monkeypatch, caplog):
    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo is broken here")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)).eval()
    with caplog.at_level(logging.WARNING, logger="vfss_agglo_bundle.export"):
        info = export_onnx(model, tmp_path / "m.onnx", torch.rand(1, 1, 16, 16), dynamo=True)
    assert info["exporter"] == "torchscript" and "dynamo is broken here" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


@pytest.mark.slow
def test_onnx_dynamo_exporter_is_self_contained_and_dynamic(tmp_path):
    torch.manual_seed(0)
    model = VFSSSegmenter("efficientvit_b0", num_classes=CLASSES).eval()
    info = export_onnx(model, tmp_path / "m.onnx", torch.rand(1, 1, SIZE, SIZE), dynamo=True)
    assert info["exporter"] == "dynamo"
    assert info["dynamic_axes"]["image"] == [0, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inside, no external data file
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 1, 96, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], model(x).numpy(), atol=1e-4)


def test_mask_dice_values():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert mask_dice(a, b) == pytest.approx(0.5)
    assert mask_dice(a, a) == 1.0
    assert mask_dice(torch.zeros(4), torch.zeros(4)) == 1.0
    assert mask_dice(a, torch.zeros(4)) == 0.0


def test_parity_check_reports_a_real_difference():
    model = nn.Conv2d(1, 2, 1).eval()
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-0.5)
    image = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)

    def shifted(x):
        return model(x) + 0.25

    parity = parity_check(model, shifted, [image, image])
    assert parity["frames"] == 2
    assert parity["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    assert parity["mean_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    # eager masks: x > 0.5 (32 of 64 pixels); shifted: x > 0.25 (48 of 64) -> Dice 2*32/(32+48)
    assert parity["dice"] == pytest.approx(64 / 80)
    assert parity["mask_fraction"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(SUPPORTED_BACKBONES))
def test_optimize_for_inference_keeps_outputs(name):
    torch.manual_seed(0)
    model = _randomize_norms(VFSSSegmenter(name, num_classes=CLASSES)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model, torch.rand(1, 1, SIZE, SIZE))
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # every norm folded
    assert not any(p.requires_grad for p in fast.parameters())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    x = torch.rand(2, 1, 96, 64)
    with torch.inference_mode():
        ref = model.eval()(x)
        out = fast(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


class _ReusesConvOutput(nn.Module):
    """``bn`` directly consumes ``conv``'s output, but the output is also added back: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _NormOfSum(nn.Module):
    """RepVGG-style: the norm sees the sum of two branches, not the conv output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x) + x)


def test_conv_bn_folding_is_only_applied_where_exact(caplog):
    x = torch.rand(1, 1, 16, 16)
    assert conv_bn_pairs(_NormOfSum().eval(), x) == []
    assert conv_bn_pairs(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval(), x) == [("0", "1")]

    model = _randomize_norms(_ReusesConvOutput()).eval()
    assert conv_bn_pairs(model, x) == [("conv", "bn")]  # looks foldable from the outside...
    with caplog.at_level(logging.WARNING, logger="vfss_agglo_bundle.export"):
        fast = optimize_for_inference(model, x)
    assert "leaving the norms unfolded" in caplog.text  # ...but the numerical probe refuses it
    assert isinstance(fast.bn, nn.BatchNorm2d)
    with torch.inference_mode():
        assert torch.allclose(fast(x), model(x), atol=1e-6)
