"""Teacher feature store and deterministic views: write, read back, resume, refuse, pool, load in a transform.

Read-back tolerance: features are stored as float16, so they must equal the float32 teacher output to
rtol 1e-3 / atol 1e-3 (float16 has 11 significant bits: relative error <= 4.9e-4).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from vfss_agglo_bundle.data.feature_store import CorruptEntryError, TeacherFeatureReader
from vfss_agglo_bundle.data.transforms import LoadTeacherFeaturesd
from vfss_agglo_bundle.data.views import apply_view, view_params
from vfss_agglo_bundle.teachers import store as store_module
from vfss_agglo_bundle.teachers.registry import build_teachers
from vfss_agglo_bundle.teachers.store import TeacherFeatureStore, fill_store

SIZE = 48
HEADER_MAX = 256  # safetensors header bytes for one or two small tensors


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def load_png(item: dict) -> torch.Tensor:
    """The trivial canonical loader for these tests: grey PNG / 255 -> [1, S, S]."""
    return torch.from_numpy(np.array(Image.open(item["image"]))).float().div(255.0)[None]


@pytest.fixture(scope="module")
def teachers():
    return build_teachers(["medsam", "rad_dino"], None, "tiny")


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = []
    for study in ("s000", "s001"):
        for frame in (0, 3):
            image = 100 + 80 * np.sin(xx / (5 + frame)) * np.cos(yy / 7) + rng.normal(0, 10, (SIZE, SIZE))
            path = tmp_path / "images" / study / f"{frame:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
            out.append({"image": str(path), "label": "unused.nii.gz", "study": study, "frame": frame})
    return out


def _key(item: dict) -> str:
    return f"{item['study']}/{item['frame']:04d}"


def _expected(teacher, item: dict, view: int):
    image = apply_view(load_png(item), view_params(_key(item), view))
    return teacher(image[None])


# ------------------------------------------------------------------------------------------------ views


def test_view_zero_is_identity_and_views_are_deterministic():
    image = torch.rand(1, 16, 16)
    params = view_params("s000/0000", 0)
    assert params == {"angle": 0.0, "scale": 1.0, "tx": 0.0, "ty": 0.0}
    assert apply_view(image, params) is image
    assert view_params("s000/0000", 1) == view_params("s000/0000", 1)
    # Seeded from sha256, not Python's hash(): these numbers are the same in every process and run.
    assert view_params("s000/0000", 1) == pytest.approx(
        {"angle": 1.651877706063713, "scale": 1.092677000325847, "tx": 0.014921347710748378, "ty": -0.05183873276804246}
    )
    assert view_params("s000/0000", 2) != view_params("s000/0000", 1) != view_params("s000/0001", 1)
    draws = [view_params(f"s{i:03d}/0000", v) for i in range(50) for v in (1, 2)]
    assert max(abs(p["angle"]) for p in draws) <= 10 and max(abs(p["angle"]) for p in draws) > 8
    assert all(0.9 <= p["scale"] <= 1.1 and abs(p["tx"]) <= 0.06 and abs(p["ty"]) <= 0.06 for p in draws)
    assert view_params("k", 1, rotation=0.0, scale=(1.0, 1.0), translation=0.0) == {
        "angle": 0.0,
        "scale": 1.0,
        "tx": 0.0,
        "ty": 0.0,
    }
    with pytest.raises(ValueError, match="view must be >= 0"):
        view_params("k", -1)


def test_apply_view_geometry():
    image = torch.zeros(2, 6, 6)
    image[:, 0, 1] = 1.0
    rotated = apply_view(image, {"angle": 90.0, "scale": 1.0, "tx": 0.0, "ty": 0.0}, mode="nearest")
    assert torch.equal(rotated, torch.rot90(image, -1, dims=(1, 2)))
    shifted = apply_view(image, {"angle": 0.0, "scale": 1.0, "tx": 1 / 6, "ty": 2 / 6}, mode="bilinear")
    torch.testing.assert_close(shifted, torch.roll(image, shifts=(2, 1), dims=(1, 2)), atol=1e-5, rtol=0)
    mask = (torch.rand(3, 32, 32) > 0.5).float()
    warped = apply_view(mask, view_params("s000/0001", 1), mode="nearest")
    assert warped.shape == mask.shape and set(warped.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"\[C, S, S\]"):
        apply_view(mask[None], view_params("k", 1))


# ------------------------------------------------------------------------------------------------ store


def test_fill_and_read_back(tmp_path, items, teachers):
    root = tmp_path / "cache"
    readers = fill_store(teachers, items, root, load_png, views=2, batch_size=3, progress=False)
    assert set(readers) == {"medsam", "rad_dino"}
    for name, teacher in teachers.items():
        reader = readers[name]
        assert reader.directory == root / f"{name}-{teacher.signature[:12]}"
        assert (reader.dense_dim, reader.grid) == (teacher.dense_dim, teacher.grid)
        assert reader.summary_dim == teacher.summary_dim
        for item in items:
            features = [reader.read(_key(item), view) for view in range(2)]
            for view, got in enumerate(features):
                expected = _expected(teacher, item, view)
                assert got["dense"].dtype == torch.float32
                _close(got["dense"], expected.dense[0])
                if teacher.summary_dim is None:
                    assert "summary" not in got
                else:
                    _close(got["summary"], expected.summary[0])
            assert (features[0]["dense"] - features[1]["dense"]).abs().max() > 1e-2  # the views differ
    with safe_open(str(readers["rad_dino"].path("s000/0000", 1)), "pt") as f:
        assert {k: f.get_tensor(k).dtype for k in f.keys()} == {"dense": torch.float16, "summary": torch.float16}


def test_a_flipped_bit_is_named_and_the_fill_recomputes_it(tmp_path, items, teachers):
    one = {"rad_dino": teachers["rad_dino"]}
    reader = fill_store(one, items[:2], tmp_path, load_png, views=1, progress=False)["rad_dino"]
    path = reader.path("s000/0000", 0)
    with safe_open(str(path), "pt") as f:  # the checksum written with the entry: sha256 of its tensors, by hand
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        recorded = f.metadata()["sha256"]
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode() + t.view(torch.uint8).numpy().tobytes())
    assert recorded == digest.hexdigest()
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[-7] ^= 0x10  # one bit of the last tensor's data
    path.write_bytes(bytes(flipped))
    other = reader.path("s000/0003", 0)
    before = other.stat().st_mtime_ns
    with pytest.raises(CorruptEntryError, match=rf"{path} is corrupt.*scripts/cache_teachers.py .*--teachers rad_dino"):
        reader.read("s000/0000")
    store = TeacherFeatureStore(tmp_path, one["rad_dino"])
    assert [key for _, key, _ in store.pending(items[:2])] == ["s000/0000"]  # only the corrupt entry
    assert store.fill(items[:2], load_png, progress=False) == 1
    assert path.read_bytes() == original and other.stat().st_mtime_ns == before
    reader.read("s000/0000")


def test_meta_and_fp16_size_on_disk(tmp_path, items, teachers):
    readers = fill_store(teachers, items[:1], tmp_path, load_png, views=1, progress=False)
    meta = json.loads((readers["rad_dino"].directory / "meta.json").read_text())
    assert meta["signature"] == teachers["rad_dino"].signature
    assert (meta["name"], meta["dense_dim"], meta["grid"], meta["summary_dim"]) == ("rad_dino", 32, [8, 8], 32)
    assert (meta["views"], meta["pooling"], meta["dtype"]) == (1, "none", "float16")
    medsam_bytes = readers["medsam"].path("s000/0000").stat().st_size
    assert 32 * 16 * 16 * 2 <= medsam_bytes <= 32 * 16 * 16 * 2 + HEADER_MAX
    dino_bytes = readers["rad_dino"].path("s000/0000").stat().st_size
    assert (32 * 8 * 8 + 32) * 2 <= dino_bytes <= (32 * 8 * 8 + 32) * 2 + HEADER_MAX


def test_pooling_to_a_target_grid(tmp_path, items, teachers):
    readers = fill_store(teachers, items[:1], tmp_path, load_png, grid={"medsam": 4, "rad_dino": None}, progress=False)
    assert readers["medsam"].grid == (4, 4) and readers["medsam"].meta["pooling"] == "adaptive_avg"
    assert readers["medsam"].meta["native_grid"] == [16, 16]
    expected = F.adaptive_avg_pool2d(_expected(teachers["medsam"], items[0], 0).dense, (4, 4))[0]
    _close(readers["medsam"].read("s000/0000")["dense"], expected)
    assert readers["rad_dino"].read("s000/0000")["dense"].shape == (32, 8, 8)
    upper = fill_store(teachers, items[:1], tmp_path / "b", load_png, grid=(12, 64), progress=False)
    assert upper["medsam"].grid == (12, 16) and upper["rad_dino"].grid == (8, 8)
    assert upper["medsam"].read("s000/0000")["dense"].shape == (32, 12, 16)


def test_batch_size_does_not_change_features(tmp_path, items, teachers):
    one = {"medsam": teachers["medsam"]}
    a = fill_store(one, items, tmp_path / "a", load_png, views=2, batch_size=1, progress=False)["medsam"]
    b = fill_store(one, items, tmp_path / "b", load_png, views=2, batch_size=4, progress=False)["medsam"]
    for item in items:
        _close(a.read(_key(item), 1)["dense"], b.read(_key(item), 1)["dense"])


def test_resume_after_interruption(tmp_path, items, teachers, monkeypatch):
    teacher = teachers["medsam"]
    calls: list[str] = []

    def failing_loader(item):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(_key(item))
        return load_png(item)

    store = TeacherFeatureStore(tmp_path, teacher, views=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.fill(items, failing_loader, batch_size=1, progress=False)
    done = sorted(p.relative_to(store.directory).as_posix() for p in store.directory.rglob("*.safetensors"))
    assert done == [f"s000/{frame}.v{view}.safetensors" for frame in ("0000", "0003") for view in (0, 1)]

    # A crash while writing leaves neither a final file nor a temporary one.
    def broken_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.fill(items, load_png, progress=False)
    monkeypatch.undo()
    assert not list(store.directory.rglob("*.tmp")) and not store.path("s001/0000", 0).exists()

    calls.clear()
    resumed = TeacherFeatureStore(tmp_path, teacher, views=2)
    assert resumed.fill(items, lambda item: calls.append(_key(item)) or load_png(item), progress=False) == 4
    assert calls == ["s001/0000", "s001/0003"]
    assert TeacherFeatureStore(tmp_path, teacher, views=2).fill(items, failing_loader, progress=False) == 0
    more = TeacherFeatureStore(tmp_path, teacher, views=3)
    assert more.fill(items, load_png, progress=False) == 4
    reader = more.reader()
    assert reader.views == 3 and reader.missing([_key(i) for i in items]) == []
    _close(reader.read("s000/0003", 1)["dense"], _expected(teacher, items[1], 1).dense[0])


def test_mismatched_store_is_refused(tmp_path, items, teachers):
    teacher = teachers["rad_dino"]
    store = TeacherFeatureStore(tmp_path, teacher, grid=4)
    store.fill(items[:1], load_png, progress=False)
    with pytest.raises(ValueError, match=r"grid.*delete"):
        TeacherFeatureStore(tmp_path, teacher, grid=None)
    with pytest.raises(ValueError, match="view_strength"):
        TeacherFeatureStore(tmp_path, teacher, grid=4, view_strength={"rotation": 5.0})
    meta_path = store.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["signature"] = teacher.signature[:12] + "0" * 52
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"signature.*Use another cache directory, or delete"):
        TeacherFeatureStore(tmp_path, teacher, grid=4)
    with pytest.raises(ValueError, match="delete the folder"):
        TeacherFeatureReader(tmp_path, "rad_dino", teacher.signature)
    with pytest.raises(FileNotFoundError, match="no teacher feature store"):
        TeacherFeatureReader(tmp_path, "rad_dino", "f" * 64)


def test_reader_finds_the_only_store_and_reports_missing(tmp_path, items, teachers):
    fill_store(teachers, items[:2], tmp_path, load_png, progress=False)
    reader = TeacherFeatureReader(tmp_path, "medsam")
    assert reader.signature == teachers["medsam"].signature
    assert reader.missing(["s000/0000", "s001/0000"], views=2) == [("s000/0000", 1), ("s001/0000", 0), ("s001/0000", 1)]
    with pytest.raises(FileNotFoundError, match=r"s001/0000.*cache_teachers"):
        reader.read("s001/0000")
    with pytest.raises(ValueError, match="relative path"):
        reader.path("../etc/passwd", 0)
    (tmp_path / "medsam-0123456789ab").mkdir()
    (tmp_path / "medsam-0123456789ab" / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="exactly one feature store"):
        TeacherFeatureReader(tmp_path, "medsam")


def test_image_loader_must_return_canonical_shape(tmp_path, items, teachers):
    store = TeacherFeatureStore(tmp_path, teachers["medsam"])
    with pytest.raises(ValueError, match=r"s000/0000.*\[1, S, S\]"):
        store.fill(items, lambda item: load_png(item)[0], progress=False)


def test_load_teacher_features_transform(tmp_path, items, teachers):
    readers = fill_store(teachers, items[:1], tmp_path, load_png, views=2, progress=False)
    transform = pickle.loads(pickle.dumps(LoadTeacherFeaturesd(readers)))  # as DataLoader workers get it
    out = transform({"frame_key": "s000/0000", "view": 1, "image": "x"})
    assert out["image"] == "x"
    assert out["medsam_dense"].shape == (32, 16, 16) and "medsam_summary" not in out
    assert out["rad_dino_dense"].shape == (32, 8, 8) and out["rad_dino_summary"].shape == (32,)
    assert out["rad_dino_dense"].dtype == torch.float32
    _close(out["rad_dino_dense"], readers["rad_dino"].read("s000/0000", 1)["dense"])
    view0 = transform({"frame_key": "s000/0000"})
    _close(view0["medsam_dense"], readers["medsam"].read("s000/0000", 0)["dense"])
    with pytest.raises(KeyError, match="frame_key"):
        transform({"image": "x"})
    assert LoadTeacherFeaturesd(readers, allow_missing_keys=True)({"image": "x"}) == {"image": "x"}
    with pytest.raises(FileNotFoundError, match="view 2"):
        transform({"frame_key": "s000/0000", "view": 2})


def test_cache_teachers_cli(tmp_path, items, capsys):
    datalist = tmp_path / "datalist.json"
    rel = [{**item, "image": str(Path(item["image"]).relative_to(tmp_path))} for item in items]
    content = {"tasks": ["a"], "image_size": 32, "training": rel[:3], "validation": rel[3:], "test": []}
    datalist.write_text(json.dumps(content))
    script = Path(__file__).parents[1] / "scripts" / "cache_teachers.py"
    spec = importlib.util.spec_from_file_location("cache_teachers", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cache_dir = str(tmp_path / "cache")
    cli.cache(str(datalist), teachers="medsam,rad_dino", preset="tiny", cache_dir=cache_dir, views=2, grid=8)
    printed = capsys.readouterr().out
    assert "4 frames x 2 views" in printed and "image size 32" in printed
    medsam_line = next(line for line in printed.splitlines() if line.startswith("medsam"))
    assert "dense 32x8x8" in medsam_line and "KiB/frame" in medsam_line
    reader = TeacherFeatureReader(tmp_path / "cache", "medsam")
    assert reader.missing(["s000/0000", "s000/0003", "s001/0000", "s001/0003"], views=2) == []
    assert reader.read("s001/0003", 1)["dense"].shape == (32, 8, 8)
