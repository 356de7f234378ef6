"""Parameter sampling: determinism, ranges, probabilities, validation, pickling."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.augment import rng as R
from crumpets.core import pack, unpack

CONTRACT_KEYS = {
    "angle",
    "scale",
    "aspect",
    "shift",
    "hmirror",
    "vmirror",
    "shear",
    "interp_method",
    "gamma_gray",
    "gamma_color",
    "contrast",
    "noise",
    "blur",
    "noise_seed",
}
PIXEL_KEYS = ("gamma_gray", "gamma_color", "contrast", "noise", "blur")

FULL = dict(
    prob=0.5,
    scale_range=(0.8, 1.3),
    shift_range=(-1, 1),
    noise_range=(0.01, 0.2),
    brightness_range=(-0.4, 0.4),
    color_range=(-0.25, 0.25),
    contrast_range=(-0.5, 0.5),
    blur_range=(0.001, 0.004),
    rotation_sigma=18,
    aspect_sigma=0.1,
    interpolations=(R.INTERP_LINEAR, R.INTERP_CUBIC, R.INTERP_AREA),
    hmirror=0.5,
    vmirror=0.5,
    shear_range=(-0.06, 0.06),
)


def draw(rng: R.RNG, seed: int) -> dict:
    return rng(np.random.default_rng(seed))


def assert_plain(value) -> None:
    """Only plain Python types: msgpack-able and never numpy scalars."""
    if isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert value is None or type(value) in (float, int, bool), type(value)


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_parameters():
    rng = R.MixtureRNG(**FULL)
    for seed in range(20):
        assert draw(rng, seed) == draw(rng, seed)


def test_different_seeds_differ():
    rng = R.MixtureRNG(**FULL)
    draws = [draw(rng, seed) for seed in range(20)]
    assert len({d["angle"] for d in draws}) == 20
    assert len({d["noise_seed"] for d in draws}) == 20


def test_enabling_an_option_keeps_the_other_draws():
    base = R.MixtureRNG(scale_range=(0.5, 1.5))
    more = R.MixtureRNG(scale_range=(0.5, 1.5), hmirror=0.5, rotation_sigma=10)
    for seed in range(10):
        a, b = draw(base, seed), draw(more, seed)
        assert a["scale"] == b["scale"] and a["noise_seed"] == b["noise_seed"]


def test_never_touches_global_generators():
    np.random.seed(123)
    random.seed(123)
    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    rng = R.MixtureRNG(**FULL)
    for seed in range(5):
        draw(rng, seed)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state


# --- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, FULL, dict(prob=0.0), dict(interpolations=["nearest"])])
def test_all_contract_keys_always_present(kwargs):
    params = draw(R.MixtureRNG(**kwargs), 0)
    assert set(params) == CONTRACT_KEYS


def test_defaults_are_identity():
    params = draw(R.MixtureRNG(), 7)
    assert params["angle"] == 0.0 and math.copysign(1, params["angle"]) == 1
    assert params["scale"] == 1.0 and params["aspect"] == 1.0
    assert params["shift"] == [0.0, 0.0] and params["shear"] == 0.0
    assert params["hmirror"] is False and params["vmirror"] is False
    assert params["interp_method"] is None
    assert all(params[k] is None for k in PIXEL_KEYS)
    assert 0 <= params["noise_seed"] < 2**31


@pytest.mark.parametrize("kwargs", [{}, FULL, dict(FULL, prob=1.0)])
def test_values_are_plain_and_msgpack_round_trip(kwargs):
    rng = R.MixtureRNG(**kwargs)
    for seed in range(10):
        params = draw(rng, seed)
        for value in params.values():
            assert_plain(value)
        assert unpack(pack(params)) == params


def test_prob_zero_sets_no_pixel_parameter():
    rng = R.MixtureRNG(**dict(FULL, prob=0.0))
    for seed in range(50):
        params = draw(rng, seed)
        assert all(params[k] is None for k in PIXEL_KEYS)


def test_prob_one_sets_every_pixel_parameter():
    rng = R.MixtureRNG(**dict(FULL, prob=1.0))
    for seed in range(50):
        params = draw(rng, seed)
        assert all(params[k] is not None for k in PIXEL_KEYS)
        assert len(params["gamma_color"]) == 3


def test_pixel_parameters_need_their_range():
    params = draw(R.MixtureRNG(prob=1.0, noise_range=(0.1, 0.2)), 0)
    assert params["noise"] is not None
    assert all(params[k] is None for k in PIXEL_KEYS if k != "noise")


def test_each_pixel_parameter_rolls_separately():
    rng = R.MixtureRNG(**FULL)
    draws = [draw(rng, seed) for seed in range(2000)]
    for key in PIXEL_KEYS:
        assert np.mean([d[key] is not None for d in draws]) == pytest.approx(0.5, abs=0.05)
    patterns = {tuple(d[k] is None for k in PIXEL_KEYS) for d in draws}
    assert len(patterns) > 20  # independent rolls, not one shared coin


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_mirror_probabilities(p):
    rng = R.MixtureRNG(hmirror=p, vmirror=1 - p)
    draws = [draw(rng, seed) for seed in range(2000)]
    assert all(type(d["hmirror"]) is bool for d in draws)
    assert np.mean([d["hmirror"] for d in draws]) == pytest.approx(p, abs=0.04)
    assert np.mean([d["vmirror"] for d in draws]) == pytest.approx(1 - p, abs=0.04)


def test_gaussian_parameters():
    rng = R.MixtureRNG(rotation_sigma=12, aspect_sigma=0.2)
    draws = [draw(rng, seed) for seed in range(4000)]
    angles = np.array([d["angle"] for d in draws])
    log_aspects = np.log([d["aspect"] for d in draws])
    assert angles.std() == pytest.approx(12, rel=0.1) and abs(angles.mean()) < 1
    assert log_aspects.std() == pytest.approx(0.2, rel=0.1) and abs(log_aspects.mean()) < 0.02


def test_interpolations_chosen_uniformly():
    choices = (R.INTERP_NEAREST, R.INTERP_CUBIC, R.INTERP_LANCZOS4)
    rng = R.MixtureRNG(interpolations=choices)
    picks = [draw(rng, seed)["interp_method"] for seed in range(3000)]
    for c in choices:
        assert picks.count(c) / len(picks) == pytest.approx(1 / 3, abs=0.04)


def test_interpolation_names_are_accepted():
    rng = R.MixtureRNG(interpolations=["linear", "CUBIC"])
    assert rng.interpolations == (R.INTERP_LINEAR, R.INTERP_CUBIC)
    assert draw(rng, 0)["interp_method"] in (R.INTERP_LINEAR, R.INTERP_CUBIC)


def _ranges(low=-2.0, high=2.0):
    number = st.floats(low, high, allow_nan=False)
    return st.tuples(number, number).map(sorted).map(tuple)


@settings(max_examples=100, deadline=None)
@given(
    scale=_ranges(0.01, 4.0),
    shift=_ranges(),
    noise=_ranges(0.0, 1.0),
    brightness=_ranges(),
    color=_ranges(),
    contrast=_ranges(-1.0, 1.0),
    blur=_ranges(0.0, 0.05),
    shear=_ranges(),
    seed=st.integers(0, 2**32),
)
def test_values_inside_ranges(scale, shift, noise, brightness, color, contrast, blur, shear, seed):
    rng = R.MixtureRNG(
        prob=1.0,
        scale_range=scale,
        shift_range=shift,
        noise_range=noise,
        brightness_range=brightness,
        color_range=color,
        contrast_range=contrast,
        blur_range=blur,
        shear_range=shear,
    )
    params = draw(rng, seed)

    def inside(value, bounds):
        return bounds[0] <= value <= bounds[1]

    assert inside(params["scale"], scale)
    assert all(inside(v, shift) for v in params["shift"])
    assert inside(params["noise"], noise)
    assert inside(params["contrast"], contrast)
    assert inside(params["blur"], blur)
    assert inside(params["shear"], shear)
    # human2gamma decreases: the brightest setting gives the smallest gamma.
    gamma_bounds = (R.human2gamma(brightness[1]), R.human2gamma(brightness[0]))
    assert inside(params["gamma_gray"], gamma_bounds)
    color_bounds = (R.human2gamma(color[1]), R.human2gamma(color[0]))
    assert all(inside(g, color_bounds) for g in params["gamma_color"])


def test_degenerate_range_gives_its_value():
    params = draw(R.MixtureRNG(prob=1.0, brightness_range=(0.45, 0.45), scale_range=(1.4, 1.4)), 3)
    assert params["scale"] == 1.4
    assert params["gamma_gray"] == R.human2gamma(0.45)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(prob=1.5), "prob"),
        (dict(prob=-0.1), "prob"),
        (dict(prob=float("nan")), "prob"),
        (dict(hmirror=2), "hmirror"),
        (dict(vmirror=-1), "vmirror"),
        (dict(rotation_sigma=-1), "rotation_sigma"),
        (dict(aspect_sigma=float("inf")), "aspect_sigma"),
        (dict(scale_range=(1.5, 0.5)), "scale_range"),
        (dict(scale_range=(0.0, 1.0)), "scale_range"),
        (dict(scale_range=(-1.0, 1.0)), "scale_range"),
        (dict(shift_range=(0, 1, 2)), "shift_range"),
        (dict(shift_range=1), "shift_range"),
        (dict(shift_range="ab"), "shift_range"),
        (dict(shear_range=(0, float("nan"))), "shear_range"),
        (dict(brightness_range=(0, float("inf"))), "brightness_range"),
        (dict(color_range=("a", 1)), "color_range"),
        (dict(noise_range=(-0.1, 0.1)), "noise_range"),
        (dict(blur_range=(-0.1, 0.1)), "blur_range"),
        (dict(contrast_range=(-1.5, 0.5)), "contrast_range"),
        (dict(interpolations=[]), "interpolations"),
        (dict(interpolations=1), "interpolations"),
        (dict(interpolations=[1, 99]), "interpolations"),
        (dict(interpolations=["bilinear"]), "interpolations"),
    ],
)
def test_validation_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        R.MixtureRNG(**kwargs)


def test_check_interpolation():
    assert R.check_interpolation(R.INTERP_CUBIC) == R.INTERP_CUBIC
    assert R.check_interpolation("lanczos4") == R.INTERP_LANCZOS4
    assert R.INTERPOLATIONS["area"] == R.INTERP_AREA
    for bad in (7, -1, True, "bilinear", 1.0, None):
        with pytest.raises(ValueError, match="nearest=0") as info:
            R.check_interpolation(bad)
        assert "lanczos4" in str(info.value)


def test_interp_constants_are_opencv_values():
    cv2 = pytest.importorskip("cv2")
    assert R.INTERP_NEAREST == cv2.INTER_NEAREST
    assert R.INTERP_LINEAR == cv2.INTER_LINEAR
    assert R.INTERP_CUBIC == cv2.INTER_CUBIC
    assert R.INTERP_AREA == cv2.INTER_AREA
    assert R.INTERP_LANCZOS4 == cv2.INTER_LANCZOS4


# --- human2gamma, NoRNG, RNG, pickling, repr -------------------------------------------------


@pytest.mark.parametrize(
    ("human", "gamma"), [(0, 1.0), (1, 0.25), (-1, 4.0), (0.5, 0.5), (3, 0.25), (-7, 4.0)]
)
def test_human2gamma(human, gamma):
    assert R.human2gamma(human) == pytest.approx(gamma)
    assert type(R.human2gamma(np.float32(human))) is float


def test_human2gamma_rejects_nan():
    with pytest.raises(ValueError):
        R.human2gamma(float("nan"))


def test_no_rng_returns_empty_dict():
    assert R.NoRNG()(np.random.default_rng(0)) == {}
    assert isinstance(R.NoRNG(), R.RNG)


def test_rng_is_abstract():
    with pytest.raises(TypeError):
        R.RNG()


@pytest.mark.parametrize("rng", [R.MixtureRNG(**FULL), R.MixtureRNG(), R.NoRNG()], ids=repr)
def test_pickle_round_trip(rng):
    copy = pickle.loads(pickle.dumps(rng))
    assert type(copy) is type(rng)
    assert vars(copy) == vars(rng)
    for seed in range(5):
        assert draw(copy, seed) == draw(rng, seed)


def test_repr_lists_non_default_options():
    text = repr(R.MixtureRNG(prob=0.5, hmirror=0.5, scale_range=(1, 2)))
    assert text.startswith("MixtureRNG(")
    assert "prob=0.5" in text and "hmirror=0.5" in text and "scale_range=(1.0, 2.0)" in text
    assert "vmirror" not in text and "noise_range" not in text
    assert repr(R.MixtureRNG()) == "MixtureRNG()"


# --- the one declaration of the parameters (crumpets.core.params) ----------------------
def test_declared_values_are_opencvs_and_the_workers():
    cv2 = pytest.importorskip("cv2")
    from crumpets.augment.augmentation import SCALE_MODES
    from crumpets.augment.workers import COLORSPACES
    from crumpets.core.params import INTERPOLATIONS, PARAMS

    assert INTERPOLATIONS == {
        "nearest": cv2.INTER_NEAREST,
        "linear": cv2.INTER_LINEAR,
        "cubic": cv2.INTER_CUBIC,
        "area": cv2.INTER_AREA,
        "lanczos4": cv2.INTER_LANCZOS4,
    }
    assert R.INTERPOLATIONS is INTERPOLATIONS
    assert PARAMS["scale_mode"].choices == SCALE_MODES
    assert set(PARAMS["colorspace"].choices) == set(COLORSPACES)


def test_mixture_draws_are_valid_by_construction():
    from crumpets.augment.presets import AUGMENTATION_TRAIN
    from crumpets.core.params import check_params

    extreme = R.MixtureRNG(
        prob=1,
        scale_range=(1e-3, 10),
        shift_range=(-3, 3),
        noise_range=(0, 5),
        brightness_range=(-9, 9),
        color_range=(-9, 9),
        contrast_range=(-1, 1),
        blur_range=(0, 1),
        rotation_sigma=90,
        aspect_sigma=1,
        interpolations=["nearest", "lanczos4"],
        hmirror=0.5,
        vmirror=0.5,
        shear_range=(-2, 2),
    )
    for rng in (extreme, AUGMENTATION_TRAIN, R.NoRNG()):
        assert rng.checked
        for seed in range(50):
            draw = rng(np.random.default_rng(seed))
            assert check_params(draw) == draw
    with pytest.raises(ValueError, match="blur_range values must be in \\[0, 1\\]"):
        R.MixtureRNG(blur_range=(0, 2))
