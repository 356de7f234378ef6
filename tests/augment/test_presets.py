"""Presets are ready-to-use RNGs and constants that follow the parameter contract."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from test_rng import CONTRACT_KEYS  # the parameter contract, written out once

from crumpets.augment import presets
from crumpets.augment import rng as R


@pytest.mark.parametrize("name", ["AUGMENTATION_TRAIN", "AUGMENTATION_ALL"])
def test_training_presets_produce_the_contract(name):
    rng = getattr(presets, name)
    assert isinstance(rng, R.MixtureRNG) and isinstance(rng, R.RNG)
    draws = [rng(np.random.default_rng(seed)) for seed in range(200)]
    assert all(set(d) == CONTRACT_KEYS for d in draws)
    assert draws[0] == rng(np.random.default_rng(0))
    for key in ("gamma_gray", "gamma_color", "contrast", "noise", "blur"):
        assert any(d[key] is not None for d in draws), key
    assert any(d["hmirror"] for d in draws) and any(not d["hmirror"] for d in draws)
    # AUGMENTATION_TRAIN warps bilinearly only (the default), for speed
    expected = {R.INTERP_LINEAR, R.INTERP_CUBIC} if name == "AUGMENTATION_ALL" else {None}
    assert {d["interp_method"] for d in draws} == expected
    assert pickle.loads(pickle.dumps(rng))(np.random.default_rng(1)) == draws[1]


def test_train_preset_values():
    rng = presets.AUGMENTATION_TRAIN
    assert rng.prob == 0.5 and rng.hmirror == 0.5 and rng.vmirror == 0
    assert rng.scale_range == (1.0, 1.25) and rng.blur_range == (0.0, 1 / 448)
    assert rng.rotation_sigma == 10 and rng.aspect_sigma == 0.1


def test_all_preset_is_stronger_and_mirrors_vertically():
    train, every = presets.AUGMENTATION_TRAIN, presets.AUGMENTATION_ALL
    assert every.vmirror == 0.5
    assert every.rotation_sigma > train.rotation_sigma
    for name in ("scale_range", "noise_range", "brightness_range", "color_range"):
        low, high = getattr(every, name)
        train_low, train_high = getattr(train, name)
        assert high - low > train_high - train_low, name
    assert all(value is not None for value in vars(every).values())


@pytest.mark.parametrize("name", ["AUGMENTATION_VAL", "NO_AUGMENTATION"])
def test_validation_presets_draw_nothing(name):
    rng = getattr(presets, name)
    assert isinstance(rng, R.NoRNG)
    assert rng(np.random.default_rng(0)) == {}


def test_input_params_and_normalisation_constants():
    assert presets.INPUT_PARAMS_TRAIN == {"scale_mode": "shortest"}
    assert presets.INPUT_PARAMS_VAL == {"scale_mode": "shortest", "interp_method": R.INTERP_LINEAR}
    assert presets.IMAGENET_MEAN == (123.675, 116.28, 103.53)
    assert presets.IMAGENET_STD == (58.395, 57.12, 57.375)


def test_reexports_rng_classes():
    assert presets.MixtureRNG is R.MixtureRNG
    assert presets.NoRNG is R.NoRNG
    assert presets.RNG is R.RNG


def test_importing_never_imports_torch():
    code = (
        "import sys\n"
        "import crumpets.augment.augmentation_cpu, crumpets.augment.rng, "
        "crumpets.augment.presets\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
