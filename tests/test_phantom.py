"""Tests for the synthetic VFSS study simulator (vfss_agglo_bundle.phantom)."""

import numpy as np
import pytest
from scipy import ndimage
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.phantom.anatomy import KNOWN_STRUCTURES, PhantomConfig, sample_anatomy
from vfss_agglo_bundle.phantom.render import render_frame, simulate_study

CFG = PhantomConfig.plain(image_size=128)  # the anatomy and physics; the v2 knobs: test_phantom_v2.py
SEEDS = range(6)
ALWAYS_PRESENT = ("pharynx", "mandible", "hyoid", "epiglottis", "c1", "c2", "c3", "c4", "c5", "c6", "c7")


@pytest.fixture(scope="module")
def studies():
    return {seed: simulate_study(seed, CFG) for seed in SEEDS}


def channel(name):
    return DEFAULT_TASKS.index(name)


def centroid(mask):
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


def test_default_tasks_are_known():
    assert set(DEFAULT_TASKS) <= set(KNOWN_STRUCTURES)


def test_same_seed_is_byte_identical():
    cfg = PhantomConfig(image_size=96, num_frames=6)
    first, second = simulate_study(11, cfg), simulate_study(11, cfg)
    for (img_a, lab_a), (img_b, lab_b) in zip(first, second, strict=True):
        assert img_a.tobytes() == img_b.tobytes()
        assert lab_a.tobytes() == lab_b.tobytes()


def test_different_seeds_differ(studies):
    img_a, lab_a = studies[0][0]
    img_b, lab_b = studies[1][0]
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 5
    for name in ("mandible", "c3", "pharynx"):
        a, b = lab_a[channel(name)].astype(bool), lab_b[channel(name)].astype(bool)
        assert (a & b).sum() / (a | b).sum() < 0.95, name


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes_and_dtypes(size):
    frames = simulate_study(3, PhantomConfig(image_size=size, num_frames=5))
    assert len(frames) == 5
    for image, label in frames:
        assert image.shape == (size, size) and image.dtype == np.uint8
        assert label.shape == (len(DEFAULT_TASKS), size, size) and label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1}
        assert 20 < image.max() and image.std() > 10


def test_geometry_is_resolution_independent():
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    anatomy = sample_anatomy(np.random.default_rng(5), CFG)
    _, small = render_frame(anatomy, 0.5, rng_a, PhantomConfig(image_size=128))
    _, large = render_frame(anatomy, 0.5, rng_b, PhantomConfig(image_size=512))
    for name in ("c4", "mandible", "hyoid"):
        k = channel(name)
        np.testing.assert_allclose(
            np.array(centroid(small[k])) / 128, np.array(centroid(large[k])) / 512, atol=0.01, err_msg=name
        )
        assert abs(small[k].mean() - large[k].mean()) < 0.002, name


def test_task_subset_and_order():
    cfg = PhantomConfig(image_size=96, num_frames=8)
    full = simulate_study(2, cfg)
    subset = simulate_study(2, cfg, tasks=("c7", "bolus"))
    for (img_full, lab_full), (img_sub, lab_sub) in zip(full, subset, strict=True):
        assert np.array_equal(img_full, img_sub)
        assert lab_sub.shape == (2, 96, 96)
        assert np.array_equal(lab_sub[0], lab_full[channel("c7")])
        assert np.array_equal(lab_sub[1], lab_full[channel("bolus")])


def test_unknown_task_raises():
    with pytest.raises(ValueError, match=r"'tongue'.*c7"):
        simulate_study(0, CFG, tasks=("bolus", "tongue"))
    with pytest.raises(ValueError, match="empty"):
        simulate_study(0, CFG, tasks=())


def test_bad_config_raises():
    with pytest.raises(ValueError, match="image_size"):
        PhantomConfig(image_size=8)
    with pytest.raises(ValueError, match="num_frames"):
        PhantomConfig(num_frames=0)


def test_structures_present_in_every_frame(studies):
    for seed, frames in studies.items():
        for i, (_, label) in enumerate(frames):
            for name in ALWAYS_PRESENT:
                assert label[channel(name)].sum() >= 4, (seed, i, name)


def test_vertebrae_ordered_top_to_bottom(studies):
    for seed, frames in studies.items():
        for _, label in frames[::5]:
            rows = [centroid(label[channel(f"c{k}")])[0] for k in range(1, 8)]
            assert np.all(np.diff(rows) > 3), (seed, rows)


def test_sizes_are_plausible(studies):
    _, label = studies[0][0]
    area = {name: label[channel(name)].mean() for name in DEFAULT_TASKS}
    assert area["mandible"] > 3 * area["c4"] > 3 * area["hyoid"]
    assert area["epiglottis"] < area["c4"]


def test_bolus_comes_and_goes(studies):
    for seed, frames in studies.items():
        present = [label[channel("bolus")].sum() > 0 for _, label in frames]
        assert not present[0], seed
        assert sum(present) >= 4 and not all(present), (seed, present)


def test_bolus_overlaps_pharynx_during_transit(studies):
    for seed, frames in studies.items():
        overlaps = [
            (label[channel("bolus")] & label[channel("pharynx")]).sum() / max(label[channel("bolus")].sum(), 1)
            for _, label in frames
        ]
        assert max(overlaps) > 0.5, (seed, overlaps)


def test_hyoid_moves_up_and_forward(studies):
    for seed, frames in studies.items():
        positions = np.array([centroid(label[channel("hyoid")]) for _, label in frames])
        peak = positions[:, 0].argmin()
        rise, advance = positions[0] - positions[peak]
        assert rise > 0.02 * CFG.image_size and advance > 0.008 * CFG.image_size, (seed, rise, advance)
        assert abs(positions[-1, 0] - positions[0, 0]) < 0.015 * CFG.image_size  # back at rest afterwards


def test_epiglottis_tips_down(studies):
    for seed, frames in studies.items():
        # top of the epiglottis relative to the hyoid: drops when the epiglottis inverts
        drop = [
            np.nonzero(label[channel("epiglottis")])[0].min() - centroid(label[channel("hyoid")])[0]
            for _, label in frames
        ]
        assert max(drop) - drop[0] > 0.04 * CFG.image_size, (seed, drop)


def test_black_outside_circular_field(studies):
    size = CFG.image_size
    rows, cols = np.mgrid[0:size, 0:size]
    for seed, frames in studies.items():
        anatomy = sample_anatomy(np.random.default_rng(seed), CFG)
        centre = anatomy.field_centre * size - 0.5
        outside = np.hypot(cols - centre[0], rows - centre[1]) > anatomy.field_radius * size + 1
        assert outside[0, 0] and outside[-1, -1]
        for image, label in frames[::4]:
            assert image[outside].max() == 0, seed
            assert label[:, outside].max() == 0, seed
            assert image[~outside].mean() > 60, seed


def test_structures_visible_and_dense_is_dark(studies):
    contrast = {name: [] for name in DEFAULT_TASKS}
    for frames in studies.values():
        for image, label in frames:
            for name in DEFAULT_TASKS:
                mask = label[channel(name)].astype(bool)
                if mask.sum() < 4:
                    continue
                ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & (image > 0)
                contrast[name].append(image[mask].mean() - image[ring].mean())
    mean = {name: float(np.mean(values)) for name, values in contrast.items()}
    for name in ("bolus", "mandible", "hyoid", "c1", "c2", "c3", "c4", "c5", "c6", "c7"):
        assert mean[name] < -8, (name, mean[name])  # bone and barium darker than surroundings
    assert mean["pharynx"] > 8  # air in the lumen is bright
    assert mean["epiglottis"] < -3  # soft tissue against air: low but visible contrast
    assert mean["bolus"] < min(mean[f"c{k}"] for k in range(1, 8))  # barium is the darkest


def test_quantum_noise_depends_on_rng_only():
    anatomy = sample_anatomy(np.random.default_rng(4), CFG)
    img_a, lab_a = render_frame(anatomy, 0.3, np.random.default_rng(1), CFG)
    img_b, lab_b = render_frame(anatomy, 0.3, np.random.default_rng(2), CFG)
    assert np.array_equal(lab_a, lab_b)
    diff = img_a.astype(int) - img_b.astype(int)
    assert 0.5 < np.abs(diff).mean() < 15
