"""The phantom's kinematic ground truth (vfss_agglo_bundle.phantom.truth) against its own rendered masks, and
the kinematics measured on those masks against the truth (the method's own error, within the issue's targets)."""

import numpy as np
import pytest
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.kinematics import analyse, frame_geometry
from vfss_agglo_bundle.phantom.anatomy import PhantomConfig, sample_anatomy
from vfss_agglo_bundle.phantom.render import simulate_study
from vfss_agglo_bundle.phantom.truth import study_truth

CFG = PhantomConfig.plain()  # 256 px, 24 frames over 3 s, at about one magnification, facing left, circular field
V2 = PhantomConfig()  # the default: domain-randomised (mirrored, letterboxed, shuttered, magnified 0.55-1.2 x, ...)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def studies():
    return {seed: (simulate_study(seed, CFG), study_truth(seed, CFG)) for seed in SEEDS}


@pytest.fixture(scope="module")
def v2_studies():
    seeds = (0, 1, 2, 3)
    anatomies = [sample_anatomy(np.random.default_rng(seed), V2) for seed in seeds]
    assert any(a.mirror for a in anatomies) and any(a.letterbox < 1 for a in anatomies)  # the knobs are covered
    assert any(a.shutters.any() for a in anatomies) and any(a.flat_panel for a in anatomies)
    return {seed: (simulate_study(seed, V2), study_truth(seed, V2)) for seed in seeds}


def channel(name):
    return DEFAULT_TASKS.index(name)


def test_frame_rate_is_frames_over_duration():
    assert CFG.fps == pytest.approx((24 - 1) / 3.0)
    assert PhantomConfig(num_frames=91).fps == pytest.approx(30.0)


def test_truth_is_deterministic_and_json_ready(studies):
    import json

    again = study_truth(SEEDS[0], CFG)
    assert json.dumps(again, sort_keys=True) == json.dumps(studies[SEEDS[0]][1], sort_keys=True)


def test_events_are_in_physiological_order(studies):
    for _, truth in studies.values():
        (swallow,) = truth["swallows"]
        e = swallow["events"]
        assert None not in e.values(), e
        assert e["HYB"] < e["hyoid_peak"] < e["swallow_rest"]
        assert e["UESO"] < e["UESC"]
        assert e["HYB"] <= e["max_constriction"] <= e["swallow_rest"]
        assert 0 < swallow["measures"]["pharyngeal_transit_s"] < CFG.duration_s


@pytest.mark.parametrize("which", ["studies", "v2_studies"])
def test_pharynx_constricts_and_the_sphincter_opens(which, request):
    for frames, truth in request.getfixturevalue(which).values():
        m = truth["swallows"][0]["measures"]
        assert 0.0 < m["pharyngeal_constriction_ratio"] < 0.95  # the lumen narrows with the swallow
        opened = np.array(truth["frames"]["ues_open"], bool)
        width = np.array(truth["frames"]["ues_width"])
        assert opened.any() and not opened.all()
        assert width[opened].mean() > 1.5 * width[~opened].mean()  # a measurable opening
        # the truth's pharyngeal area follows the rendered lumen (pharynx label with the bolus in it)
        pharynx = np.array([lab[channel("pharynx")].sum() for _, lab in frames], float)
        area_px = np.array(truth["frames"]["pharynx_area"]) * np.array(truth["frames"]["length_px"]) ** 2 / 1e4
        assert np.corrcoef(pharynx, area_px)[0, 1] > 0.9
        assert np.abs(pharynx / area_px - 1).max() < 0.1


@pytest.mark.parametrize("which", ["studies", "v2_studies"])
def test_hyoid_truth_matches_the_rendered_hyoid(which, request):
    for frames, truth in request.getfixturevalue(which).values():
        centroids = np.array([np.argwhere(lab[channel("hyoid")])[:, ::-1].mean(0) for _, lab in frames])
        truth_px = np.array(truth["frames"]["hyoid_px"])
        moved = np.linalg.norm(centroids - centroids[0], axis=1)  # the hyoid moves rigidly: same path as its point
        moved_truth = np.linalg.norm(truth_px - truth_px[0], axis=1)
        assert np.abs(moved - moved_truth).max() < 1.5  # pixels


def test_kinematics_from_ground_truth_masks_meet_the_targets(studies):
    """Target (a) of the kinematics issue: hyoid peak displacement within 3 %(C2-4), events within 1 frame,
    constriction ratio within 0.03 (at about one magnification: at 0.55 x, C2-C4 is under 30 px and the method's
    own error grows, see docs/kinematics.md)."""
    for frames, truth in studies.values():
        result = analyse([frame_geometry(lab, DEFAULT_TASKS) for _, lab in frames], DEFAULT_TASKS, truth["fps"])
        (swallow,) = result["swallows"]
        true = truth["swallows"][0]
        for name, frame in true["events"].items():
            assert abs(swallow["events"][name] - frame) <= 1, (name, swallow["events"], true["events"])
        m, t = swallow["measures"], true["measures"]
        assert abs(m["hyoid_peak_displacement"] - t["hyoid_peak_displacement"]) <= 3.0
        assert abs(m["pharyngeal_constriction_ratio"] - t["pharyngeal_constriction_ratio"]) <= 0.03
        assert (
            m["epiglottis_inversion"] == t["epiglottis_inversion"]
            or abs(m["epiglottis_max_angle"] - t["epiglottis_max_angle"]) < 5
        )
