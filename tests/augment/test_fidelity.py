"""Fidelity of the warp: downscaling at any factor, and the image's border.

The reference of a downscale is a float64 area average of the same geometry (cv2.resize
with INTER_AREA on float64 averages exactly, at any factor); the bar is Pillow's
antialiased bilinear resize (``Image.resize`` with BILINEAR, ``reducing_gap=None``). The
photo is scikit-image's astronaut (512x512), the one issue 20's figures are of. JPEG input
is compared with the area average of what the decoder gives at full size (JPEG is lossy),
so the test covers decoding at reduced scale too.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
from _photos import encode, photo, psnr
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crumpets.augment.augmentation import rotate_and_resize, transform_image

FORMS = ["array", "png", "jpeg"]


@functools.cache
def source(form: str) -> tuple[object, np.ndarray]:
    """The astronaut as ``form``, and the RGB pixels its decoder gives at full size."""
    im = photo("astronaut")
    if form == "array":
        return im, im
    data = encode(im, ".png" if form == "png" else ".jpg")
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    return data, full


def area_average(im: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(im.astype(np.float64), (side, side), interpolation=cv2.INTER_AREA)


def pillow(im: np.ndarray, side: int) -> np.ndarray:
    resized = Image.fromarray(im).resize((side, side), Image.BILINEAR, reducing_gap=None)
    return np.asarray(resized)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("side", "floor"), [(56, 32.0), (48, 32.0), (40, 31.0)])
def test_non_integer_downscales_reach_pillows_level(form, side, floor):
    # 512 -> 56 scored 27.1 dB (max error 78 grey levels): the source was area-averaged by
    # 9 to 57 pixels, then warped by 0.98, which blurs by up to half a pixel
    data, full = source(form)
    reference = area_average(full, side)
    out, _ = transform_image(data, (side, side))
    score = psnr(out, reference)
    assert score >= floor
    assert score >= psnr(pillow(full, side), reference)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("side", [255, 240, 200, 170, 150, 120, 100, 80, 60, 50, 24])
def test_downscales_by_2x_or_more_are_at_least_as_good_as_pillow(form, side):
    # from 2x down the source is shrunk before the warp, which then takes 2x2 samples per
    # pixel; between 1x and 2x it takes one, as OpenCV's warpAffine does (docs/performance.md)
    data, full = source(form)
    reference = area_average(full, side)
    out, _ = transform_image(data, (side, side))
    assert psnr(out, reference) >= psnr(pillow(full, side), reference)


def area_of_geometry(im: np.ndarray, matrix: np.ndarray, side: int, k: int = 16) -> np.ndarray:
    """Float64 area average of any geometry: k x k point samples of the source's pixels
    (as little squares) per target pixel, averaged."""
    up = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2]]) @ np.vstack([matrix, [0, 0, 1]])
    big = cv2.warpAffine(
        im.astype(np.float32),
        up,
        (side * k, side * k),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return cv2.resize(big.astype(np.float64), (side, side), interpolation=cv2.INTER_AREA)


def centres_in_source(matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Where the centre of each (height, width) target pixel lies in the source: (x, y)."""
    inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    x = inverse[0, 0] * xx + inverse[0, 1] * yy + inverse[0, 2]
    y = inverse[1, 0] * xx + inverse[1, 1] * yy + inverse[1, 2]
    return x, y


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "geometry",
    [
        {"angle": 30.0},
        {"angle": 30.0, "aspect": 1.4, "shear": 0.15},
        {"angle": -20.0, "aspect": 0.7, "side": 48},
        {"angle": 10.0, "scale": 1.2, "side": 150},
    ],
)
def test_rotated_and_stretched_downscales_are_antialiased(form, geometry):
    # the antialiasing follows the matrix's scales, not only a plain resize's
    geometry = dict(geometry)
    side = geometry.pop("side", 56)
    data, full = source(form)
    out, matrix = transform_image(data, (side, side), **geometry)
    reference = area_of_geometry(full, matrix, side)
    # compare where the target pixel's footprint lies well inside the photo
    x, y = centres_in_source(matrix, (side, side))
    margin = 2 / min(np.linalg.svd(matrix[:, :2], compute_uv=False))
    inside = (x > margin) & (x < 511 - margin) & (y > margin) & (y < 511 - margin)
    assert inside.mean() > 0.3
    error = (out.astype(np.float64) - reference)[inside]
    assert 10 * np.log10(255.0**2 / np.mean(error**2)) >= 35


@pytest.mark.parametrize("color", [True, False])
def test_an_upscaled_uniform_image_is_not_blended_with_the_fill(color):
    # 8x8 to 16x16: the outer target pixels' centres lie a quarter source pixel inside the
    # image, yet they were blended with the black fill (corners 112, edges 150)
    im = np.full((8, 8, 3) if color else (8, 8), 200, np.uint8)
    out, _ = transform_image(im, (16, 16), color=color)
    assert (out == 200).all(), np.unique(out)
    same = rotate_and_resize(im, 0, (16, 16), 1, 1, None, cv2.INTER_LINEAR, 0, False, False)
    assert (same == 200).all(), np.unique(same)


def gaps(matrix: np.ndarray, size: tuple[int, int], source: tuple[int, int]) -> np.ndarray:
    """How far inside the source's area ([-0.5, w - 0.5] x [-0.5, h - 0.5]) the centre of
    each target pixel maps, in source pixels (negative: outside)."""
    x, y = centres_in_source(matrix, size)
    h, w = source
    return np.minimum.reduce([x + 0.5, w - 0.5 - x, y + 0.5, h - 0.5 - y])


def tolerance(matrix: np.ndarray) -> float:
    """Source pixels around the image's edge where a target pixel may go either way. With
    one sample per pixel (a warp that shrinks by less than 1.8x), the warp's precision
    (a 32nd of a pixel); with several, pixels at most half covered get the background,
    which is up to half a target pixel (0.5 / scale source pixels) from the centre rule."""
    scale = min(np.linalg.svd(np.asarray(matrix)[:, :2], compute_uv=False))
    return 1 / 16 if scale >= 0.55 else 1 / 16 + 0.5 / scale


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("size", "geometry"),
    [
        ((16, 16), {"angle": 30.0, "scale": 0.4}),
        ((24, 20), {"angle": -50.0, "scale": 0.7, "aspect": 1.3, "shear": 0.2}),
        ((40, 40), {"angle": 20.0, "scale": 1.5, "scale_mode": "longest"}),
        ((30, 50), {"angle": 70.0, "scale": 0.4, "shift": (0.5, -0.3)}),
        ((64, 64), {"scale": 0.5, "scale_mode": "longest", "hmirror": True}),
        ((120, 160), {"angle": 15.0, "scale": 0.8, "scale_mode": "longest"}),
    ],
)
def test_target_pixels_are_source_or_fill_by_where_their_centres_map(form, size, geometry):
    # a uniform photo: any target pixel whose centre maps inside the source's area has its
    # colour exactly; every other one, the fill (but within the warp's precision of the
    # edge, or half a target pixel where it supersamples)
    im = np.full((60, 90, 3), 200, np.uint8)
    data = im if form == "array" else encode(im, ".png" if form == "png" else ".jpg")
    fill = np.array([10, 20, 30])
    out, matrix = transform_image(data, size, background=tuple(fill), **geometry)
    gap = gaps(matrix, size, (60, 90))
    inside, outside = gap > tolerance(matrix), gap < -tolerance(matrix)
    assert inside.any() and outside.any()
    assert (out[inside] == 200).all(), np.unique(out[inside])
    assert (out[outside] == fill).all(), np.unique(out[outside].reshape(-1, 3), axis=0)
    assert ((out == 200).all(-1) | (out == fill).all(-1)).all()  # never a blend of the two
    gray, _ = transform_image(data, size, color=False, background=7, **geometry)
    assert (gray[inside] == 200).all() and (gray[outside] == 7).all()
    assert ((gray == 200) | (gray == 7)).all()


@settings(max_examples=300, deadline=None)
@given(
    source=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    angle=st.one_of(st.sampled_from([0.0, 90.0, 180.0, -90.0, 1e-300]), st.floats(-180, 180)),
    scale=st.floats(0.05, 3.0),
    aspect=st.floats(0.5, 2.0),
    shear=st.one_of(st.just(0.0), st.floats(-0.4, 0.4)),
    shift=st.tuples(st.floats(-1, 1), st.floats(-1, 1)),
    hmirror=st.booleans(),
    scale_mode=st.sampled_from(["shortest", "longest"]),
    color=st.booleans(),
)
def test_any_geometry_takes_source_pixels_inside_and_the_fill_outside(
    source, size, angle, scale, aspect, shear, shift, hmirror, scale_mode, color
):
    h, w = source
    im = np.full((h, w, 3), 200, np.uint8)
    out, matrix = transform_image(
        im,
        size,
        color=color,
        background=9,
        angle=angle,
        scale=scale,
        aspect=aspect,
        shear=shear,
        shift=shift,
        hmirror=hmirror,
        scale_mode=scale_mode,
    )
    gap = gaps(matrix, size, source)
    value = out if out.ndim == 2 else out[:, :, 0]
    assert (value[gap > tolerance(matrix)] == 200).all()
    assert (value[gap < -tolerance(matrix)] == 9).all()
    assert ((value == 200) | (value == 9)).all()


def test_an_integer_downscale_is_still_exact():
    # 4x and 8x: the area average itself (crumpets scored 59 dB here before)
    im = photo("astronaut")
    for side in (128, 64):
        out, _ = transform_image(im, (side, side))
        assert psnr(out, area_average(im, side)) >= 55


@pytest.mark.parametrize("form", FORMS)
def test_a_vanishing_scale_shrinks_the_source_to_a_pixel_at_most(form):
    # the source is shrunk by a whole factor before the warp: never past one pixel (a
    # factor of millions once asked for terabytes to pad the source to a multiple of it)
    data, _ = source(form)
    out, _ = transform_image(data, (32, 32), scale=1e-6, angle=30.0, background=(1, 2, 3))
    assert out.shape == (32, 32, 3)
    assert (out.reshape(-1, 3) == (1, 2, 3)).all(1).sum() >= 32 * 32 - 1


@pytest.mark.parametrize("method", [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4])
def test_a_letterboxed_upscale_is_as_wide_as_its_area(method):
    # a 4x4 image at 8x, centred in 64x64: 32 pixels of it on each row, whatever the kernel
    # reads beyond a sample (the edge is repeated outward, the coverage decides)
    im = np.full((4, 4, 3), 200, np.uint8)
    out, _ = transform_image(im, (64, 64), scale=0.5, interp_method=method)
    assert sorted(set(out[32, :, 0].tolist())) == [0, 200]
    assert (out[32, :, 0] == 200).sum() == 32
