"""Swallow kinematics on hand-built masks whose geometry is known: a rotated spine, a hyoid moved by a known amount,
a bolus passing the sphincter in known frames, a pharynx that constricts; missing structures and no spine."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from vfss_agglo_bundle.kinematics import analyse, frame_geometry
from vfss_agglo_bundle.kinematics.folders import measure_folder
from vfss_agglo_bundle.kinematics.outputs import write_kinematics

TASKS = ["bolus", "pharynx", "mandible", "hyoid", "c2", "c4"]
HEIGHT, WIDTH = 200, 260  # not square: measured at the frame's own size
ORIGIN = np.array([100.0, 120.0])  # C4's anterior-inferior corner, pixels (x, y)
L = 60.0  # C2-C4 corner distance, pixels
FPS = 10.0
HYOID_STEPS = [0, 0, 0, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 0, 0, 0]  # x (3, 4) px: 5 px per step
BOLUS = {  # frame -> (u0, u1, v0, v1) in the spine frame (u anterior, v up), pixels; absent frames have none
    **{f: (60, 80, 60, 70) for f in range(4)},  # in the mouth, above the jaw's angle (gonion at v = 40)
    4: (15, 25, 30, 45),  # past the gonion, in the pharynx: BPM and swallow onset
    5: (15, 25, 0, 30),
    6: (15, 25, -30, 10),
    7: (15, 25, -50, -10),  # below the sphincter (the pharynx ends at v = -40): UESO
    8: (15, 25, -60, -42),  # nothing left just above the sphincter: UESC
}
CONSTRICTED = (8, 9)  # the pharynx's lumen halves (u 10..20 instead of 10..30)
EXPECTED_EVENTS = {"BPM": 4, "HYB": 5, "hyoid_peak": 7, "UESO": 7, "UESC": 8, "max_constriction": 8,
                   "swallow_rest": 11}  # fmt: skip


def _rect(theta: float, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Pixels whose spine-frame coordinates (rotated by ``theta``) fall inside the rectangle."""
    up = np.array([math.sin(theta), -math.cos(theta)])
    anterior = np.array([math.cos(theta), math.sin(theta)])
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    offset = np.stack([cols, rows], -1) - ORIGIN
    u, v = offset @ anterior, offset @ up
    return (u >= u0 - 1e-6) & (u <= u1 + 1e-6) & (v >= v0 - 1e-6) & (v <= v1 + 1e-6)


def swallow_video(theta: float = 0.35, missing_hyoid: tuple = ()) -> np.ndarray:
    """``[T, tasks, H, W]`` masks of one swallow in a spine frame rotated by ``theta`` radians (0.35: 20 degrees)."""
    video = np.zeros((len(HYOID_STEPS), len(TASKS), HEIGHT, WIDTH), np.uint8)
    for t, step in enumerate(HYOID_STEPS):
        shapes = {
            "c4": (-30, 0, 0, 20),
            "c2": (-30, 0, L, L + 20),
            "mandible": (50, 90, 40, 55),
            "pharynx": (10, 20 if t in CONSTRICTED else 30, -40, 50),
        }
        if t not in missing_hyoid:
            shapes["hyoid"] = (40 + 3 * step, 50 + 3 * step, 10 + 4 * step, 18 + 4 * step)
        if t in BOLUS:
            shapes["bolus"] = BOLUS[t]
        for name, box in shapes.items():
            video[t, TASKS.index(name)] = _rect(theta, *box)
    return video


def measure(video: np.ndarray, fps: float | None = FPS) -> dict:
    return analyse([frame_geometry(m, TASKS) for m in video], TASKS, fps)


@pytest.mark.parametrize("degrees", [0, 20, -35])
def test_spine_frame_corners_and_hyoid_are_exact_to_a_pixel(degrees):
    video = swallow_video(math.radians(degrees))
    g = frame_geometry(video[7], TASKS)
    theta = math.radians(degrees)
    up = np.array([math.sin(theta), -math.cos(theta)])
    assert np.linalg.norm(g.c4 - ORIGIN) <= 1.0
    assert np.linalg.norm(g.c2 - (ORIGIN + L * up)) <= 1.0
    assert abs(g.length - L) <= 1.0
    assert float(g.up @ up) > math.cos(math.radians(2))  # the y axis is the spine's within 2 degrees
    x, y = g.to_spine(g.hyoid)  # hyoid's anterior-inferior corner: (50, 10) moved by 3 x (3, 4)
    assert abs(x - 59) <= 1.0 and abs(y - 22) <= 1.0


@pytest.mark.parametrize("degrees", [0, 20, -35])
def test_hyoid_displacement_and_events_are_exact_in_a_rotated_spine_frame(degrees):
    result = measure(swallow_video(math.radians(degrees)))
    (swallow,) = result["swallows"]
    assert swallow["events"] == EXPECTED_EVENTS
    m = swallow["measures"]
    pixel = 100 / L  # one pixel in %(C2-4)
    assert abs(result["length_px"] - L) <= 1.0
    assert abs(m["hyoid_peak_displacement"] - 15 / L * 100) <= pixel  # 3 steps of 5 px
    assert abs(m["hyoid_rest_to_peak_x"] - 9 / L * 100) <= pixel
    assert abs(m["hyoid_rest_to_peak_y"] - 12 / L * 100) <= pixel
    assert m["stage_transition_s"] == pytest.approx(0.1)  # BPM 4 -> HYB 5 at 10 frames/s
    assert m["pharyngeal_transit_s"] == pytest.approx(0.4)  # BPM 4 -> UESC 8
    assert m["ues_opening_duration_s"] == pytest.approx(0.1)
    assert m["hyb_to_ueso_s"] == pytest.approx(0.2)
    assert m["residue_area"] == 0.0
    assert not swallow["flags"]


def test_constriction_ratio_is_the_lumen_area_ratio():
    video = swallow_video()
    (swallow,) = measure(video)["swallows"]
    pharynx = video[:, TASKS.index("pharynx")].reshape(len(video), -1).sum(1)
    expected = pharynx[8] / np.median(pharynx[:4])  # the rest frames hold no bolus inside the pharynx
    assert swallow["measures"]["pharyngeal_constriction_ratio"] == pytest.approx(expected, abs=1e-9)
    assert 0.45 < expected < 0.6  # 11 of 21 columns of the lumen


def test_a_hyoid_missing_in_some_frames_gives_nan_there_and_keeps_the_rest():
    result = measure(swallow_video(missing_hyoid=(2, 10)))
    frames = result["frames"]
    assert math.isnan(frames["hyoid_x"][2]) and math.isnan(frames["hyoid_x"][10])
    assert math.isfinite(frames["hyoid_x"][7])
    (swallow,) = result["swallows"]
    assert swallow["events"]["hyoid_peak"] == 7
    assert abs(swallow["measures"]["hyoid_peak_displacement"] - 25.0) <= 100 / L


def test_no_hyoid_at_all_flags_and_gives_nan_not_numbers():
    video = swallow_video(missing_hyoid=tuple(range(len(HYOID_STEPS))))
    (swallow,) = measure(video)["swallows"]
    assert swallow["events"]["HYB"] is None and swallow["events"]["hyoid_peak"] is None
    assert math.isnan(swallow["measures"]["hyoid_peak_displacement"])
    assert any("no hyoid" in f for f in swallow["flags"])
    assert swallow["events"]["UESO"] == 7  # what does not need the hyoid is still measured


def test_without_c2_or_c4_only_areas_are_given_with_a_note():
    video = swallow_video()
    video[:, TASKS.index("c2")] = 0
    result = measure(video)
    assert result["swallows"] == [] and result["length_px"] is None
    assert any("C2 and C4" in f for f in result["flags"])
    assert result["frames"]["area_px_pharynx"][0] == int(video[0, TASKS.index("pharynx")].sum())


def test_without_fps_times_are_in_frames_and_flagged():
    result = measure(swallow_video(), fps=None)
    assert result["units"]["time"] == "frames"
    assert result["swallows"][0]["measures"]["pharyngeal_transit_s"] == pytest.approx(4.0)
    assert any("fps" in f for f in result["flags"])


def test_outputs_are_written_and_never_overwritten(tmp_path):
    result = measure(swallow_video())
    paths = write_kinematics(result, tmp_path, "s1")
    rows = paths["csv"].read_text().splitlines()
    assert len(rows) == 1 + len(HYOID_STEPS)
    saved = json.loads(paths["json"].read_text())
    assert saved["swallows"][0]["events"] == EXPECTED_EVENTS
    assert "penetration_aspiration_scale" in saved["not_computable"]
    assert Image.open(paths["png"]).size[0] > 600
    with pytest.raises(FileExistsError):
        write_kinematics(result, tmp_path, "s1")


def test_a_folder_of_png_masks_from_another_tool_is_measured(tmp_path):
    video = swallow_video()
    study = tmp_path / "masks" / "caseA"
    study.mkdir(parents=True)
    for t, frame in enumerate(video):
        for task, mask in zip(TASKS, frame, strict=True):
            Image.fromarray(mask * 255).save(study / f"{t}_{task}.png")
    results = measure_folder(tmp_path / "masks", tmp_path / "out", FPS, TASKS, "{frame}_{task}.png", steady_seconds=0)
    assert results["caseA"]["swallows"][0]["events"] == EXPECTED_EVENTS
    assert (tmp_path / "out" / "caseA.json").is_file()


def test_c2_drawn_on_top_of_c4_gives_no_spine_frame_not_a_crash():
    video = swallow_video()
    video[:, TASKS.index("c2")] = video[:, TASKS.index("c4")]
    result = measure(video)
    assert result["length_px"] is None and result["swallows"] == []
    assert frame_geometry(video[0], TASKS).notes == ["C2 and C4 coincide in this frame: no spine frame of reference"]


def test_a_pharynx_missing_in_a_frame_gives_nan_there_not_an_empty_lumen():
    video = swallow_video()
    video[8, TASKS.index("pharynx")] = 0  # dropped out on the frame the sphincter closes
    result = measure(video)
    assert math.isnan(result["frames"]["pharynx_area"][8]) and math.isnan(result["frames"]["bolus_at_ues"][8])
    (swallow,) = result["swallows"]
    assert swallow["events"]["UESC"] == 9  # the first frame that shows the sphincter closed, not the missing one
    assert swallow["events"]["max_constriction"] == 9 and swallow["measures"]["pharyngeal_constriction_ratio"] > 0.4
