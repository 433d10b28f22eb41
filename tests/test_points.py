"""Masks against hand-tracked points: points sampled from a phantom study's truth masks give zero error; a shifted
hyoid point gives its shift in %(C2-4) by hand; a C2 point off the mask gives scipy's distance transform; the CLI
writes its table, CSV and sheet; bad points files are refused with the file and line named."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from scipy import ndimage
from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.data.formats import read_label
from vfss_agglo_bundle.kinematics.frame import frame_geometry
from vfss_agglo_bundle.kinematics.points import read_points, validate_points
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset
from vfss_agglo_bundle.utils.io import DataFormatError


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One phantom study's truth masks as a mask folder, and points sampled from them."""
    root = tmp_path_factory.mktemp("points")
    datalist = synthesize_dataset(root / "data", studies=3, frames=5, test_frames=None, image_size=128)
    training = load_datalist(datalist, "training")
    items = [it for it in training if it["study"] == training[0]["study"]]
    tasks = list(json.loads(datalist.read_text())["tasks"])
    name = items[0]["study"]
    (root / "masks" / name).mkdir(parents=True)
    points, labels = [], {}
    for it in items:
        shutil.copy(it["label"], root / "masks" / name / f"{int(it['frame']):04d}.nii.gz")
        label = read_label(it["label"]) > 0
        labels[int(it["frame"])] = label
        g = frame_geometry(label, tasks)
        rows, cols = np.nonzero(label[tasks.index("hyoid")])
        points.append((it["frame"], "hyoid", cols.mean() + 0.5, rows.mean() + 0.5))
        for vertebra, corner in (("c2", g.c2), ("c4", g.c4)):  # a click on the mask pixel nearest the corner
            rows, cols = np.nonzero(label[tasks.index(vertebra)])
            nearest = np.argmin(np.hypot(cols - corner[0], rows - corner[1]))
            points.append((it["frame"], vertebra, cols[nearest] + 0.5, rows[nearest] + 0.5))
    return root, name, tasks, points, labels


def _write(path, points, study=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "structure", "x", "y"] + (["study"] if study else []))
        writer.writerows([[*p] + ([study] if study else []) for p in points])
    return path


def test_points_from_the_truth_masks_have_no_error(study, tmp_path):
    root, name, tasks, points, _ = study
    report = validate_points(_write(tmp_path / "p.csv", points, name), root / "masks", tasks)
    summary = report["summary"]
    assert summary["hyoid_error"]["max"] == pytest.approx(0.0, abs=1e-9)
    assert summary["c2_distance"]["max"] == 0.0 and summary["c4_distance"]["max"] == 0.0
    # the clicks sit on pixel centres, the masks' corners between them: the two spine frames differ by a pixel at most
    pixel = 100 * np.sqrt(2) / min(r["c2_c4_px"] for r in report["studies"][name]["rows"])  # a diagonal, %(C2-4)
    assert summary["displacement_difference"]["max"] < pixel
    assert summary["hyoid_error"]["frames"] == 5
    displacement = [r["hand_displacement"] for r in report["studies"][name]["rows"]]
    assert displacement[0] == 0.0 and max(displacement) > 1.0  # the hyoid moves in the phantom swallow


def test_a_shifted_hyoid_and_a_c2_off_its_mask(study, tmp_path):
    root, name, tasks, points, labels = study
    moved = [(f, s, x + 3.0, y + 4.0) if (f, s) == (2, "hyoid") else (f, s, x, y) for f, s, x, y in points]
    c2 = next(p for p in moved if p[:2] == (3, "c2"))
    far = (3, "c2", np.floor(c2[2] + 9.0) + 0.5, np.floor(c2[3]) + 0.5)  # a pixel centre 9 px along x: off the mask
    moved = [far if p[:2] == (3, "c2") else p for p in moved]
    report = validate_points(_write(tmp_path / "p.csv", moved, name), root / "masks", tasks)
    rows = {r["frame"]: r for r in report["studies"][name]["rows"]}
    hand = {(f, s): np.array([x, y]) for f, s, x, y in moved}
    scale = np.linalg.norm(hand[(2, "c2")] - hand[(2, "c4")])
    assert rows[2]["hyoid_error"] == pytest.approx(100 * 5.0 / scale)  # a 3-4-5 shift
    c2_mask = labels[3][tasks.index("c2")]
    r, c = int(np.floor(far[3])), int(np.floor(far[2]))
    expected = ndimage.distance_transform_edt(~c2_mask)[r, c]  # pixel centre of (r, c) to the nearest mask pixel
    scale3 = np.linalg.norm(hand[(3, "c2")] - hand[(3, "c4")])
    assert rows[3]["c2_distance"] == pytest.approx(100 * expected / scale3, rel=1e-9)


def test_the_cli_writes_table_csv_and_sheet(study, tmp_path):
    root, name, _, points, _ = study
    path = _write(tmp_path / f"{name}.csv", points)  # no study column: the file's stem names the study
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "scripts/kinematics.py", "validate", "--points", str(path),
                             "--predictions", str(root / "masks"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| all | hyoid_error | 5 | 0.00 |" in out.with_suffix(".md").read_text()
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 6
    assert (tmp_path / f"report_{name}.png").stat().st_size > 5000


def test_bad_points_files_name_the_file_and_line(tmp_path, study):
    root, name, tasks, _, _ = study
    (tmp_path / "a.csv").write_text("frame,structure,x\n0,hyoid,1\n")
    with pytest.raises(DataFormatError, match=r"a.csv: no column\(s\) \['y'\]"):
        read_points(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("frame,structure,x,y\n0,hyoid,1,2\n1,tongue,1,2\n")
    with pytest.raises(DataFormatError, match=r"b.csv line 3: structure 'tongue'"):
        read_points(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("frame,structure,x,y\n0,hyoid,one,2\n")
    with pytest.raises(DataFormatError, match=r"c.csv line 2: frame, x and y must be numbers"):
        read_points(tmp_path / "c.csv")
    _write(tmp_path / "d.csv", [(99, "hyoid", 1.0, 2.0)], name)
    with pytest.raises(DataFormatError, match=r"d.csv: study .* has points on frames \[99\] that have no masks"):
        validate_points(tmp_path / "d.csv", root / "masks", tasks)
