"""Importers of the annotation tools labs use (COCO JSON, CVAT for video 1.1 XML, LabelMe JSON), on small files written
in each real format, against masks drawn independently: shapes with unambiguous edges (axis-aligned boxes, RLE masks
with a hole, an interpolated CVAT track) exactly; curved shapes (a disc as a 64-gon, a LabelMe circle) against the
analytic disc, where at most the pixels the boundary crosses may differ (tolerance: 2 x the perimeter in pixels).

Coordinates: pixel (row r, column c) covers [c, c + 1) x [r, r + 1) (COCO's and CVAT's convention)."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from pycocotools import mask as mask_util
from vfss_agglo_bundle.data.annotations import (
    LabelMap,
    load_label_map,
    read_coco,
    read_cvat_video,
    read_labelme,
    write_annotated,
)
from vfss_agglo_bundle.data.datalist import load_datalist, validate_datalist
from vfss_agglo_bundle.data.formats import read_label
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS

H, W = 24, 32


def _frame(path: Path, h: int = H, w: int = W, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)


def _box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = True
    return out


def _ring(h: int, w: int) -> np.ndarray:
    out = _box(h, w, 4, 4, 20, 18)
    out[8:14, 8:16] = False  # the hole
    return out


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= r * r


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE by hand: run lengths of the column-major mask, starting with a run of 0s."""
    flat = mask.flatten(order="F").astype(int)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"counts": ([0] if flat[0] else []) + runs, "size": list(mask.shape)}


def _labels(datalist: Path, split_items: bool = True) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for split in ("training", "validation", "test"):
        for item in load_datalist(datalist, split):
            out[(item["study"], item["frame"])] = read_label(item["label"])
    return out


def _coco(tmp_path: Path) -> Path:
    for study in ("s01", "s02"):
        for k in range(2):
            _frame(tmp_path / "images" / study / f"{k:04d}.png")
    disc = [[16 + 6 * np.cos(a), 12 + 6 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 64, endpoint=False)]
    ring = mask_util.encode(np.asfortranarray(_ring(H, W).astype(np.uint8)))
    coco = {
        "images": [{"id": 10 * i + k, "file_name": f"{study}/{k:04d}.png", "height": H, "width": W}
                   for i, study in enumerate(("s01", "s02")) for k in range(2)],  # fmt: skip
        "categories": [{"id": 1, "name": "Hyoid bone"}, {"id": 2, "name": "C2_vertebra"},
                       {"id": 3, "name": "food bolus"}],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": [[2, 3, 9, 3, 9, 8, 2, 8]], "iscrowd": 0},
            {"id": 2, "image_id": 0, "category_id": 2,
             "segmentation": {"counts": ring["counts"].decode(), "size": [H, W]}, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 2, "segmentation": _uncompressed_rle(_ring(H, W)), "iscrowd": 1},
            {"id": 4, "image_id": 10, "category_id": 3, "segmentation": [list(np.ravel(disc))], "iscrowd": 0},
        ],
    }  # fmt: skip
    path = tmp_path / "images" / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_polygons_and_rle_with_a_hole(tmp_path):
    datalist = write_annotated(read_coco(_coco(tmp_path)), tmp_path / "ds", LabelMap(), "coco", ratios=(1, 0, 1))
    assert validate_datalist(datalist) == []
    labels = _labels(datalist)
    hyoid, c2, bolus = (DEFAULT_TASKS.index(t) for t in ("hyoid", "c2", "bolus"))
    np.testing.assert_array_equal(labels[("s01", 0)][hyoid], _box(H, W, 2, 3, 9, 8))
    np.testing.assert_array_equal(labels[("s01", 0)][c2], _ring(H, W))  # compressed RLE
    np.testing.assert_array_equal(labels[("s01", 1)][c2], _ring(H, W))  # uncompressed RLE, counts by hand
    got, want = labels[("s02", 0)][bolus].astype(bool), _disc(H, W, 16, 12, 6)
    assert (got ^ want).sum() <= 2 * 2 * np.pi * 6  # a 64-gon against the circle: boundary pixels only
    assert labels[("s02", 1)].sum() == 0  # a frame without annotations: every structure absent


def test_unknown_labels_are_listed_before_anything_is_written(tmp_path):
    path = _coco(tmp_path)
    doc = json.loads(path.read_text())
    doc["categories"] += [{"id": 4, "name": "tongue"}, {"id": 5, "name": "UES"}]
    doc["annotations"] += [
        {"id": 9, "image_id": 0, "category_id": c, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]} for c in (4, 5)
    ]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"2 label\(s\) map to no task: \['UES', 'tongue'\].*--label_map"):
        write_annotated(read_coco(path), tmp_path / "ds", LabelMap(), path)
    assert not (tmp_path / "ds").exists()
    (tmp_path / "map.yaml").write_text("tongue: null\nUES: pharynx\n")
    datalist = write_annotated(read_coco(path), tmp_path / "ds", load_label_map(tmp_path / "map.yaml"), path)
    labels = _labels(datalist)
    assert labels[("s01", 0)][DEFAULT_TASKS.index("pharynx")].sum() == 4  # the UES square, tongue left out
    with pytest.raises(ValueError, match="name no task"):
        LabelMap(user={"tongue": "tongue"})


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><task><size>8</size><original_size><width>32</width><height>24</height></original_size></task></meta>
<track id="0" label="hyoid" source="manual">
  <polygon frame="0" keyframe="1" outside="0" occluded="0" points="2,4;10,4;10,9;2,9" z_order="0"/>
  <polygon frame="4" keyframe="1" outside="0" occluded="0" points="6,4;14,4;14,9;6,9" z_order="0"/>
  <polygon frame="6" keyframe="1" outside="1" occluded="0" points="6,4;14,4;14,9;6,9" z_order="0"/>
</track>
<track id="1" label="C4" source="manual">
  <box frame="1" keyframe="1" outside="0" occluded="0" xtl="20" ytl="10" xbr="26" ybr="20" z_order="0"/>
  <box frame="2" keyframe="1" outside="1" occluded="0" xtl="20" ytl="10" xbr="26" ybr="20" z_order="0"/>
</track>
<track id="2" label="hyoid bone" source="manual">
  <points frame="0" keyframe="1" outside="0" occluded="0" points="6.5,6.5" z_order="0"/>
  <points frame="2" keyframe="1" outside="0" occluded="0" points="8.5,6.5" z_order="0"/>
  <points frame="3" keyframe="1" outside="1" occluded="0" points="8.5,6.5" z_order="0"/>
</track>
<track id="3" label="pharynx" source="manual">
  <polyline frame="5" keyframe="1" outside="0" occluded="0" points="20.0,2.0;20.0,12.0" z_order="0"/>
  <polyline frame="6" keyframe="1" outside="1" occluded="0" points="20.0,2.0;20.0,12.0" z_order="0"/>
</track>
</annotations>
"""


def test_cvat_video_track_interpolated_between_keyframes(tmp_path):
    for k in range(8):
        _frame(tmp_path / "frames" / f"frame_{k:06d}.png")
    (tmp_path / "s07.xml").write_text(CVAT_XML)
    frames = read_cvat_video(tmp_path / "s07.xml", tmp_path / "frames")
    assert [f.frame for f in frames] == [0, 1, 2, 3, 4, 5] and {f.study for f in frames} == {"s07"}
    datalist = write_annotated(frames, tmp_path / "ds", LabelMap(), "cvat", ratios=(1, 0, 0))
    labels = _labels(datalist)
    hyoid, c4, pharynx = (DEFAULT_TASKS.index(t) for t in ("hyoid", "c4", "pharynx"))
    for k in range(5):  # keyframes 0 and 4, frames 1-3 interpolated: the box moves 1 pixel a frame
        np.testing.assert_array_equal(labels[("s07", k)][hyoid], _box(H, W, 2 + k, 4, 10 + k, 9))
    np.testing.assert_array_equal(labels[("s07", 5)][hyoid], _box(H, W, 6, 4, 14, 9))  # held until outside at 6
    np.testing.assert_array_equal(labels[("s07", 1)][c4], _box(H, W, 20, 10, 26, 20))
    assert labels[("s07", 2)][c4].sum() == 0
    stroke = labels[("s07", 5)][pharynx]  # an open polyline: a 3-pixel stroke along column 19.5
    assert stroke.any() and set(np.flatnonzero(stroke.any(0))) <= {18, 19, 20}
    with open(tmp_path / "ds" / "points.csv") as f:
        rows = list(csv.DictReader(f))
    expected = [("0", "hyoid", "6.5"), ("1", "hyoid", "7.5"), ("2", "hyoid", "8.5")]  # frame 1 interpolated
    assert [(r["frame"], r["structure"], r["x"]) for r in rows] == expected


def test_cvat_errors_name_the_file(tmp_path):
    (tmp_path / "bad.xml").write_text("<annotations><meta></meta></annotations>")
    with pytest.raises(Exception, match=r"bad.xml: no <original_size>"):
        read_cvat_video(tmp_path / "bad.xml", tmp_path)
    (tmp_path / "broken.xml").write_text("<annotations><meta>")
    with pytest.raises(Exception, match=r"broken.xml is not a CVAT XML file"):
        read_cvat_video(tmp_path / "broken.xml", tmp_path)


def test_labelme_shapes_and_embedded_image(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((H, W), 50, np.uint8)).save(buffer, format="PNG")
    shapes = [
        {"label": "mandible", "shape_type": "rectangle", "points": [[3, 2], [12, 10]]},
        {"label": "c3", "shape_type": "circle", "points": [[22, 12], [28, 12]]},
        {"label": "hyoid", "shape_type": "point", "points": [[5.5, 7.25]]},
    ]
    study = tmp_path / "labelme" / "s03"
    study.mkdir(parents=True)
    doc = {"shapes": shapes, "imageHeight": H, "imageWidth": W, "imagePath": "",
           "imageData": base64.b64encode(buffer.getvalue()).decode()}  # fmt: skip
    (study / "0000.json").write_text(json.dumps(doc))
    _frame(study / "0001.png", value=70)
    (study / "0001.json").write_text(json.dumps({"shapes": [], "imageHeight": H, "imageWidth": W,
                                                 "imagePath": "0001.png"}))  # fmt: skip
    datalist = write_annotated(read_labelme(tmp_path / "labelme"), tmp_path / "ds", LabelMap(), "labelme", (1, 0, 0))
    labels = _labels(datalist)
    np.testing.assert_array_equal(labels[("s03", 0)][DEFAULT_TASKS.index("mandible")], _box(H, W, 3, 2, 12, 10))
    got, want = labels[("s03", 0)][DEFAULT_TASKS.index("c3")].astype(bool), _disc(H, W, 22, 12, 6)
    assert (got ^ want).sum() <= 2 * 2 * np.pi * 6
    assert (tmp_path / "ds" / "points.csv").read_text().splitlines()[1] == "s03,0,hyoid,5.5,7.25"
    item = load_datalist(datalist, "training")[0]
    assert np.asarray(Image.open(item["image"])).max() == 50  # the embedded image


def test_studies_of_different_sizes_are_one_dataset(tmp_path):
    _frame(tmp_path / "images" / "a" / "0000.png", 24, 32)
    _frame(tmp_path / "images" / "b" / "0000.png", 40, 30)
    coco = {"images": [{"id": 1, "file_name": "a/0000.png", "height": 24, "width": 32},
                       {"id": 2, "file_name": "b/0000.png", "height": 40, "width": 30}],
            "categories": [{"id": 1, "name": "epiglottis"}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 1,
                             "segmentation": [[1, 1, 5, 1, 5, 30, 1, 30]]}]}  # fmt: skip
    (tmp_path / "images" / "c.json").write_text(json.dumps(coco))
    datalist = write_annotated(read_coco(tmp_path / "images" / "c.json"), tmp_path / "ds", LabelMap(), "c", (1, 0, 1))
    assert validate_datalist(datalist) == []
    assert json.loads(datalist.read_text())["image_size"] == 40
    assert _labels(datalist)[("b", 0)].shape == (12, 40, 30)


def test_prepare_data_import_coco_command(tmp_path):
    path = _coco(tmp_path)
    result = subprocess.run([sys.executable, "scripts/prepare_data.py", "import_coco", "--annotations", str(path),
                             "--out_dir", str(tmp_path / "ds")], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert validate_datalist(tmp_path / "ds" / "datalist.json") == []
    again = subprocess.run([sys.executable, "scripts/prepare_data.py", "import_coco", "--annotations", str(path),
                            "--out_dir", str(tmp_path / "ds")], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert again.returncode != 0 and "datalist.json already exists" in again.stderr
