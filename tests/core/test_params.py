"""The augmentation parameters' one declaration: checks, bounds and pixel operations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crumpets.core.params import (
    AUGMENTED_IMAGES,
    INTERPOLATIONS,
    OUTPUT_KEYS,
    PARAMS,
    PIXEL_OPS,
    check_param,
    check_params,
    enabled_ops,
)


def test_pixel_operations_read_declared_parameters():
    assert list(PIXEL_OPS) == ["gamma", "blur", "noise"]  # the order they are applied in
    for names in PIXEL_OPS.values():
        assert set(names) <= PARAMS.keys()
    assert not OUTPUT_KEYS & PARAMS.keys()
    assert set(AUGMENTED_IMAGES) == {"image", "target_image"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"zoom": 2}, "unknown augmentation parameters \\['zoom'\\]"),
        ({"gamma_gray": 0}, "'gamma_gray' must be in \\(0, inf\\)"),
        ({"gamma_color": [1, 1]}, "'gamma_color' must be 3 numbers"),
        ({"gamma_color": [1, -1, 1]}, "'gamma_color' must be in"),
        ({"contrast": 1.5}, "'contrast' must be in \\[-1, 1\\]"),
        ({"blur": 1.01}, "'blur' must be in \\[0, 1\\]"),
        ({"noise": -0.1}, "'noise' must be in \\[0, inf\\)"),
        ({"angle": float("nan")}, "'angle' must be a finite number"),
        ({"scale": 0}, "'scale' must be in \\(0, inf\\)"),
        ({"shift": "ab"}, "'shift' must be 2 numbers"),
        ({"hmirror": "yes"}, "'hmirror' must be a bool"),
        ({"noise_seed": 1.5}, "'noise_seed' must be an int"),
        ({"supersampling": 9}, "'supersampling' must be in \\[0, 8\\]"),
        ({"interp_method": 99}, "'interp_method' must be one of .*nearest"),
        ({"interp_method": True}, "'interp_method'"),
        ({"scale_mode": "middle"}, "'scale_mode' must be one of \\['shortest', 'longest'\\]"),
        ({"colorspace": "cmyk"}, "'colorspace' must be one of .*hsv"),
        ({"angle": "3"}, "'angle' must be a number"),
        ({"angle": True}, "'angle' must be a number"),
    ],
)
def test_invalid_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        check_params(params)


def test_valid_parameters_pass_and_names_become_values():
    params = {
        "angle": np.float32(3),
        "scale": 2,
        "shift": np.array([0.5, -1.0]),
        "hmirror": np.bool_(True),
        "vmirror": 0,
        "interp_method": "CUBIC",
        "gamma_gray": None,
        "gamma_color": (0.5, 1, 2),
        "contrast": -1,
        "noise_seed": np.int64(2**40),
        "background": (1, 2, 3),
        "transform": [[1, 0, 0], [0, 1, 0]],  # a worker's output passes unchanged
        "gpu_ops": ["gamma"],
    }
    checked = check_params(params)
    assert checked["interp_method"] == INTERPOLATIONS["cubic"] == 2
    assert checked.keys() == params.keys() and checked is not params
    assert check_param("noise", None) is None


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_number_bounds_are_the_declared_ones(value):
    for name in ("contrast", "blur", "gamma_gray", "noise", "scale", "angle"):
        p = PARAMS[name]
        valid = math.isfinite(value) and (value > p.low if p.low_open else value >= p.low)
        valid = valid and value <= p.high
        try:
            check_param(name, value)
        except ValueError:
            assert not valid, (name, value)
        else:
            assert valid, (name, value)


def test_ranges_inside_a_parameter():
    assert PARAMS["contrast"].contains(-1, 1) and not PARAMS["contrast"].contains(-1.1, 0)
    assert not PARAMS["scale"].contains(0, 1) and PARAMS["scale"].contains(1e-9, 1e9)
    assert PARAMS["blur"].bounds() == "[0, 1]" and PARAMS["scale"].bounds() == "(0, inf)"


@pytest.mark.parametrize(
    ("params", "color", "ops"),
    [
        ({}, True, []),
        ({"gamma_gray": None, "contrast": 0, "blur": 0.0, "noise": None, "noise_seed": 5}, 1, []),
        ({"gamma_gray": 1.0}, True, ["gamma"]),  # the CPU builds a table for it
        ({"contrast": -0.2}, True, ["gamma"]),
        ({"gamma_color": [1, 1, 1]}, True, ["gamma"]),
        ({"gamma_color": [1, 2, 1]}, False, []),  # gray images ignore colour gammas
        ({"noise": 0.1, "blur": 0.01, "gamma_gray": 2}, True, ["gamma", "blur", "noise"]),
    ],
)
def test_enabled_ops_follow_the_cpu_kernels_rules(params, color, ops):
    assert enabled_ops(params, color) == ops
