"""Phantom v2's domain randomisation (vfss_agglo_bundle.phantom): every knob at its extremes renders, the labels
stay on the anatomy they label (checked against the same study with the knob off), and a seed gives the same bytes."""

import numpy as np
import pytest
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.phantom.anatomy import PhantomConfig, sample_anatomy
from vfss_agglo_bundle.phantom.render import simulate_study

SIZE, SEED = 96, 4
VERTEBRAE = [DEFAULT_TASKS.index(f"c{k}") for k in range(1, 8)]
MANDIBLE = DEFAULT_TASKS.index("mandible")


def render(**knobs):
    """Frames (image, labels) of study SEED at phases 0, 0.5 and 1 with phantom v1's look plus ``knobs``."""
    return simulate_study(SEED, PhantomConfig.plain(image_size=SIZE, num_frames=3, **knobs))


@pytest.fixture(scope="module")
def plain():
    return render()


def centroid(mask):
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def check_rendered(frames):
    for image, labels in frames:
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8 and image.std() > 5
        assert labels.shape == (len(DEFAULT_TASKS), SIZE, SIZE) and set(np.unique(labels)) <= {0, 1}


# knobs that only add what is not labelled (or change its density): the labels must not move by a pixel
CONTENT_KNOBS = {
    "shoulders over C5-C7": dict(shoulder_top=(0.52, 0.52), shoulder_density=(2.6, 2.6)),
    "light shoulders low": dict(shoulder_top=(0.8, 0.8), shoulder_density=(0.8, 0.8)),
    "calcified cartilage": dict(cartilage=(0.35, 0.35)),
    "dense skull base": dict(skull_base=(0.6, 0.6)),
    "faint vertebrae": dict(vertebra_contrast=(0.45, 0.45)),
    "dense vertebrae": dict(vertebra_contrast=(1.1, 1.1)),
    "six fillings": dict(fillings=(6, 6)),
    "burned-in text": dict(text_probability=1.0),
    "ruler": dict(ruler_probability=1.0),
    "coin": dict(coin_probability=1.0),
    "saturating gain": dict(gain=(1.9, 1.9)),
}


@pytest.mark.parametrize("knobs", CONTENT_KNOBS.values(), ids=CONTENT_KNOBS.keys())
def test_content_knobs_change_the_image_not_the_labels(knobs, plain):
    frames = render(**knobs)
    check_rendered(frames)
    for (_, labels), (_, plain_labels) in zip(frames, plain, strict=True):
        assert np.array_equal(labels, plain_labels)
    changed = np.abs(frames[1][0].astype(int) - plain[1][0].astype(int)) > 10
    assert changed.sum() >= 20  # the knob shows


def test_shoulders_darken_the_lower_spine_and_text_is_burned_in(plain):
    (_, _), (dark, labels), _ = render(shoulder_top=(0.52, 0.52), shoulder_density=(2.6, 2.6))
    lower = labels[VERTEBRAE[4:]].any(0)
    assert dark[lower].mean() < plain[1][0][lower].mean() - 20  # C5-C7 behind the shoulders
    text = render(text_probability=1.0)[1][0]
    corners = np.zeros((SIZE, SIZE), bool)
    corners[:14, :] = corners[-14:, :] = True
    assert (text[corners] >= 200).sum() > 30 and (plain[1][0][corners] >= 200).sum() < 5  # white text, black corners
    saturated = render(gain=(1.9, 1.9))[1][0]
    assert (saturated == 255).mean() > 0.05 > (plain[1][0] == 255).mean()  # air in front of the neck saturates


def test_mirroring_flips_image_content_and_labels(plain):
    frames = render(mirror_probability=1.0)
    check_rendered(frames)
    for (_, labels), (_, plain_labels) in zip(frames, plain, strict=True):
        flipped = plain_labels[:, :, ::-1]
        for k in np.flatnonzero(flipped.reshape(len(DEFAULT_TASKS), -1).any(1)):
            a, b = labels[k].astype(bool), flipped[k].astype(bool)
            assert (a & b).sum() / (a | b).sum() > 0.9, DEFAULT_TASKS[k]
    c4, mandible = centroid(frames[0][1][DEFAULT_TASKS.index("c4")]), centroid(frames[0][1][MANDIBLE])
    assert mandible[0] > c4[0]  # facing right: the jaw is right of the spine


@pytest.mark.parametrize("aspect", [0.75, 0.5625])  # 4:3 and 16:9 recordings
def test_letterboxing_shrinks_the_scene_into_a_band(aspect):
    boxed = PhantomConfig.plain(image_size=SIZE, num_frames=1, letterbox_probability=1.0)
    seed = next(s for s in range(50) if sample_anatomy(np.random.default_rng(s), boxed).letterbox == aspect)
    image, labels = simulate_study(seed, boxed)[0]
    _, plain_labels = simulate_study(seed, PhantomConfig.plain(image_size=SIZE, num_frames=1))[0]
    check_rendered([(image, labels)])
    rows = np.flatnonzero(image.max(1) > 0)
    assert rows[-1] - rows[0] + 1 <= round(aspect * SIZE) + 1  # black above and below the recording
    assert labels[:, : rows[0]].max() == 0 and labels[:, rows[-1] + 1 :].max() == 0
    centre = np.array([SIZE / 2, SIZE / 2])
    for k in (MANDIBLE, *VERTEBRAE[1:5]):
        expected = centre + aspect * (centroid(plain_labels[k]) + 0.5 - centre) - 0.5
        assert np.linalg.norm(centroid(labels[k]) - expected) < 1.0, DEFAULT_TASKS[k]


def test_shutters_and_a_flat_panel_bound_the_exposed_field(plain):
    shut = render(shutter_probability=1.0, shutter_inset=(0.25, 0.25))
    check_rendered(shut)
    image, labels = shut[1]
    cols, rows = np.flatnonzero(image.max(0) > 0), np.flatnonzero(image.max(1) > 0)
    plain_cols = np.flatnonzero(plain[1][0].max(0) > 0)
    assert cols[-1] - cols[0] < 0.6 * (plain_cols[-1] - plain_cols[0])  # a quarter off each side
    inside = np.zeros((SIZE, SIZE), bool)
    inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    assert labels[:, ~inside].max() == 0  # nothing labelled behind the shutters ...
    assert np.array_equal(labels[:, inside], plain[1][1][:, inside])  # ... and the rest as it was
    flat = render(flat_panel_probability=1.0)[1][0]
    assert flat[2, 2] > 0 and flat[-3, -3] > 0 and plain[1][0][2, 2] == 0  # a rectangle, not the circle


@pytest.mark.parametrize("degrees", [-15.0, 15.0])
def test_head_flexion_moves_the_jaw_not_the_spine(degrees, plain):
    frames = render(head_flex_deg=(degrees, degrees))
    check_rendered(frames)
    labels = frames[0][1]
    assert np.array_equal(labels[VERTEBRAE], plain[0][1][VERTEBRAE])
    shift = centroid(labels[MANDIBLE]) - centroid(plain[0][1][MANDIBLE])
    assert np.sign(shift[1]) == np.sign(degrees) and abs(shift[1]) > 0.02 * SIZE  # flexion drops the chin


@pytest.mark.parametrize("scale", [0.55, 1.2])
def test_magnification_extremes_scale_the_anatomy(scale, plain):
    frames = render(scale=(scale, scale))
    check_rendered(frames)
    base = render(scale=(1.0, 1.0))
    for k in VERTEBRAE[1:5]:
        ratio = frames[0][1][k].sum() / base[0][1][k].sum()
        assert ratio == pytest.approx(scale**2, rel=0.2), DEFAULT_TASKS[k]


def test_uneven_vertebra_spacing_keeps_the_order():
    frames = render(vertebra_spacing=0.012)
    check_rendered(frames)
    rows = [centroid(frames[0][1][k])[1] for k in VERTEBRAE]
    assert np.all(np.diff(rows) > 2)
    even = render()[0][1]
    gaps, even_gaps = np.diff(rows), np.diff([centroid(even[k])[1] for k in VERTEBRAE])
    assert np.abs(gaps - even_gaps).max() > 0.3  # the gaps are no longer those of the even tiles


def test_the_default_phantom_is_deterministic_and_varied():
    cfg = PhantomConfig(image_size=64, num_frames=2)
    a, b = simulate_study(7, cfg), simulate_study(7, cfg)
    assert all(x.tobytes() == y.tobytes() and u.tobytes() == v.tobytes() for (x, u), (y, v) in zip(a, b, strict=True))
    studies = [sample_anatomy(np.random.default_rng(s), PhantomConfig()) for s in range(16)]
    assert 3 <= sum(s.mirror for s in studies) <= 13 and 1 <= sum(s.letterbox < 1 for s in studies) <= 12
    assert max(s.scale for s in studies) / min(s.scale for s in studies) > 1.6  # field of view varies several-fold
    assert sum(s.flat_panel for s in studies) >= 1 and sum(bool(s.text) for s in studies) >= 8


OFF = PhantomConfig.plain()


@pytest.mark.parametrize(
    "knob",
    ["mirror_probability", "flat_panel_probability", "shutter_probability", "letterbox_probability", "head_flex_deg",
     "shoulder_top", "cartilage", "skull_base", "vertebra_contrast", "vertebra_spacing", "fillings",
     "text_probability", "ruler_probability", "coin_probability"],
)  # fmt: skip
def test_a_knob_turned_off_changes_nothing_else(knob):
    """Every study draws the same random numbers whatever the knobs: switching one off leaves the rest of it."""
    default = PhantomConfig()
    one_off = PhantomConfig(**{knob: getattr(OFF, knob)})
    for seed in range(5):
        a, b = (vars(sample_anatomy(np.random.default_rng(seed), cfg)) for cfg in (default, one_off))
        changed = {k for k in a if not np.array_equal(np.asarray(a[k], dtype=object), np.asarray(b[k], dtype=object))}
        expected = {"mirror_probability": {"mirror"}, "flat_panel_probability": {"flat_panel"},
                    "shutter_probability": {"shutters"}, "letterbox_probability": {"letterbox"},
                    "head_flex_deg": {"head_flex"}, "shoulder_top": {"shoulder_top"}, "cartilage": {"cartilage"},
                    "skull_base": {"skull_base"}, "vertebra_contrast": {"vertebra_contrast"},
                    "vertebra_spacing": {"vertebra_levels"}, "fillings": {"fillings"}, "text_probability": {"text"},
                    "ruler_probability": {"ruler"}, "coin_probability": {"coin"}}[knob]  # fmt: skip
        assert changed <= expected, (seed, changed - expected)


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="mirror_probability must be in"):
        PhantomConfig(mirror_probability=1.5)
    with pytest.raises(ValueError, match="fillings"):
        PhantomConfig(fillings=(3, 1))
    with pytest.raises(ValueError, match="<= 6"):
        PhantomConfig(fillings=(0, 9))
