"""Student encoder, distillation adaptors, decoder and segmenter."""

import os

import pytest
import torch
from vfss_agglo_bundle.networks import (
    SUPPORTED_BACKBONES,
    DistillationModel,
    HeadShape,
    StudentEncoder,
    VFSSSegmenter,
    identify_backbone,
    resize_to_grid,
)

# Tiny stand-ins for the real teachers' output grids (MedSAM 64x64, RAD-DINO 37x37 + CLS, MedCLIP 7x7 + summary)
# plus a non-square one.
TEACHERS = {
    "medsam": HeadShape(dense_dim=32, grid=(64, 64)),
    "rad_dino": HeadShape(dense_dim=24, grid=(37, 37), summary_dim=24),
    "medclip": HeadShape(dense_dim=16, grid=(7, 7), summary_dim=12),
    "odd": HeadShape(dense_dim=8, grid=(5, 9)),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED_BACKBONES))
def test_student_levels_and_summary(name):
    encoder = StudentEncoder(name).eval()
    with torch.no_grad():
        maps = encoder(torch.rand(2, 1, 64, 64))
    assert encoder.reductions == [4, 8, 16, 32]
    assert len(maps) == len(encoder.channels) == 4
    for feat, channels, reduction in zip(maps, encoder.channels, encoder.reductions, strict=True):
        assert feat.shape == (2, channels, 64 // reduction, 64 // reduction)
    assert encoder.summary(maps).shape == (2, encoder.summary_dim)
    assert encoder.summary_dim == encoder.channels[-1]


def test_unknown_backbone_lists_supported():
    with pytest.raises(ValueError, match="efficientvit_b0"):
        StudentEncoder("vit_giant_patch14_224")


def test_student_weights_round_trip_and_errors(tmp_path):
    source = StudentEncoder("efficientvit_b0")
    path = tmp_path / "encoder.pt"
    torch.save(source.state_dict(), path)
    loaded = StudentEncoder("efficientvit_b0", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])

    other = tmp_path / "resnet.pt"
    torch.save(StudentEncoder("resnet18").state_dict(), other)
    assert identify_backbone(torch.load(other, weights_only=True)) == "resnet18"
    with pytest.raises(ValueError, match="resnet18.*efficientvit_b0") as err:
        StudentEncoder("efficientvit_b0", weights=other)
    assert str(other) in str(err.value)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        StudentEncoder("efficientvit_b0", weights=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"model": "not tensors"}, junk)
    with pytest.raises(ValueError, match="flat state dict"):
        StudentEncoder("efficientvit_b0", weights=junk)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        StudentEncoder("efficientvit_b0", weights=text)


def test_resize_to_grid_pools_when_shrinking_and_interpolates_otherwise():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(resize_to_grid(x, (4, 4)), x)
    pooled = resize_to_grid(x, (2, 2))
    assert torch.allclose(pooled.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))
    assert resize_to_grid(x, (8, 3)).shape == (1, 1, 8, 3)


@pytest.mark.parametrize("size", [128, 256])
def test_distillation_model_matches_teacher_grids(size):
    model = DistillationModel(StudentEncoder("efficientvit_b0"), TEACHERS, fusion_dim=32)
    out = model(torch.rand(2, 1, size, size))
    assert set(out.predictions) == set(TEACHERS)
    assert out.summary.shape == (2, model.student.summary_dim)
    for name, spec in TEACHERS.items():
        summary, dense = out.predictions[name]
        assert dense.shape == (2, spec.dense_dim, *spec.grid)
        if spec.summary_dim is None:
            assert summary is None
        else:
            assert summary.shape == (2, spec.summary_dim)


def test_distillation_model_every_parameter_gets_a_gradient():
    # DDP (without find_unused_parameters) needs every parameter in the graph.
    model = DistillationModel(StudentEncoder("efficientvit_b0"), TEACHERS, hidden_dim=16, fusion_dim=16)
    out = model(torch.rand(2, 1, 64, 64))
    loss = sum(
        dense.mean() + (summary.mean() if summary is not None else 0) for summary, dense in out.predictions.values()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert model.dense_heads["medsam"].mlp[0].out_channels == 16


def test_distillation_model_default_hidden_and_student_state():
    student = StudentEncoder("efficientvit_b0")
    model = DistillationModel(student, TEACHERS, fusion_dim=16)
    assert model.dense_heads["odd"].mlp[0].out_channels == 32  # max of dense and summary dims
    assert set(model.student.state_dict()) == set(StudentEncoder("efficientvit_b0").state_dict())


def test_distillation_model_without_teachers_is_the_student():
    student = StudentEncoder("efficientvit_b0")
    model = DistillationModel(student, {})
    out = model(torch.rand(1, 1, 64, 64))
    assert out.predictions == {} and out.summary.shape == (1, student.summary_dim)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in student.parameters())


def test_segmenter_output_at_256_and_512():
    model = VFSSSegmenter("efficientvit_b0", num_classes=3).eval()
    with torch.no_grad():
        for size in (256, 512):
            assert model(torch.rand(1, 1, size, size)).shape == (1, 3, size, size)


def test_segmenter_default_channels_follow_default_tasks():
    from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS

    model = VFSSSegmenter().eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, len(DEFAULT_TASKS), 64, 64)


def test_segmenter_is_scriptable():
    model = VFSSSegmenter("efficientvit_b0", num_classes=2).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_segmenter_load_encoder_round_trip_and_mismatch(tmp_path):
    distill = DistillationModel(StudentEncoder("efficientvit_b0"), {"medsam": HeadShape(8, (16, 16))})
    path = tmp_path / "student_encoder.pt"
    torch.save(distill.student.state_dict(), path)

    model = VFSSSegmenter("efficientvit_b0", num_classes=2, encoder_weights=path)
    for key, value in distill.student.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)

    other = tmp_path / "convnext.pt"
    torch.save(StudentEncoder("convnext_atto").state_dict(), other)
    with pytest.raises(ValueError) as err:
        model.load_encoder(other)
    message = str(err.value)
    assert str(other) in message and "convnext_atto" in message and "efficientvit_b0" in message

    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="no supported student encoder"):
        model.load_encoder(tmp_path / "linear.pt")


def test_segmenter_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = VFSSSegmenter("efficientvit_b0", num_classes=2).eval()
    path = os.fspath(tmp_path / "segmenter.onnx")
    torch.onnx.export(
        model,
        (torch.rand(1, 1, 256, 256),),
        path,
        dynamo=False,
        input_names=["image"],
        output_names=["pred"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
    )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for size in (256, 512):
        x = torch.rand(2, 1, size, size)
        (pred,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(pred), model(x), atol=1e-4)
