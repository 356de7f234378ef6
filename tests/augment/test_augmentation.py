"""Geometry and fidelity of crumpets.augment.augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _photos import encode, photo, psnr
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.augment import augmentation_cpu as K
from crumpets.augment.augmentation import (
    calc_scale_ratio,
    decode_image,
    decode_opencv,
    image_size,
    make_transform,
    randomize_image,
    rotate_and_resize,
    transform_image,
)


def blob_image(h, w, x, y, sigma=2.5):
    """Dark photo-sized image with one bright Gaussian blob centred at (x, y)."""
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 250).astype(np.uint8)[:, :, None], 3, axis=2)


def centroid(im):
    g = im.astype(np.float64).mean(2) if im.ndim == 3 else im.astype(np.float64)
    g = np.where(g > 0.2 * g.max(), g, 0)
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.array([(xx * g).sum() / g.sum(), (yy * g).sum() / g.sum()])


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(150, 250),
    y=st.floats(120, 180),
    angle=st.floats(-180, 180),
    scale=st.floats(0.6, 2.0),
    aspect=st.floats(0.7, 1.4),
    shear=st.floats(-0.3, 0.3),
    shift=st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3)),
    hmirror=st.booleans(),
    vmirror=st.booleans(),
    size=st.sampled_from([(96, 96), (224, 224), (64, 128)]),
    form=st.sampled_from(["array", "png", "jpeg"]),
    scale_mode=st.sampled_from(["shortest", "longest"]),
)
def test_keypoint_mapped_by_matrix_lands_on_its_feature(
    x, y, angle, scale, aspect, shear, shift, hmirror, vmirror, size, form, scale_mode
):
    src = blob_image(
        300, 400, x, y, sigma=2.5 / min(1.0, calc_scale_ratio((300, 400), size, scale, scale_mode))
    )
    data = src if form == "array" else encode(src, ".png" if form == "png" else ".jpg", 95)
    out, matrix = transform_image(
        data,
        size,
        angle=angle,
        scale=scale,
        aspect=aspect,
        shear=shear,
        shift=shift,
        hmirror=hmirror,
        vmirror=vmirror,
        scale_mode=scale_mode,
    )
    mapped = matrix @ np.array([x, y, 1.0])
    if not (8 <= mapped[0] <= size[1] - 9 and 8 <= mapped[1] <= size[0] - 9):
        return  # the blob left the image; nothing to locate
    assert np.abs(centroid(out) - mapped).max() < 0.5


def test_identity_geometry_is_exact():
    im = photo("chelsea")
    out, matrix = transform_image(im, im.shape[:2])
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    np.testing.assert_array_equal(out, im)


@pytest.mark.parametrize("form", ["array", "png", "jpeg"])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_4x_downscale_matches_float64_area_average(form, name):
    im = photo(name)
    h, w = im.shape[0] // 4 * 4, im.shape[1] // 4 * 4
    im = im[:h, :w]
    data = {"array": im, "png": encode(im, ".png"), "jpeg": encode(im, ".jpg")}[form]
    # the reference averages what the decoder gives at full size (JPEG is lossy)
    full = (
        im
        if form != "jpeg"
        else cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    )
    reference = full.astype(np.float64).reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3))
    out, _ = transform_image(data, (h // 4, w // 4))
    assert psnr(out, reference) >= 40


def test_jpeg_is_decoded_at_reduced_scale_when_target_is_small():
    data = encode(photo("coffee"))  # 400 x 600
    assert image_size(data) == (400, 600)
    im = decode_image(data, True, min_height=100, min_width=150)
    assert im.shape == (100, 150, 3)  # 1/4
    assert decode_image(data, True, min_height=201, min_width=10).shape == (400, 600, 3)
    # min_factor: the smallest reduction worth doing (the reference's parameter)
    assert decode_image(data, True, 150, 200, min_factor=2).shape == (200, 300, 3)
    assert decode_image(data, True, 150, 200, min_factor=4).shape == (400, 600, 3)
    assert decode_image(data, False, 50, 75, min_factor=8).shape == (50, 75, 1)


def test_decoders_return_rgb_like_the_reference():
    im = photo("coffee")  # RGB
    data = encode(im, ".png")
    np.testing.assert_array_equal(decode_opencv(data, True), im)
    np.testing.assert_array_equal(decode_image(data, True), im)
    gray = decode_opencv(data, False)
    assert gray.shape == (*im.shape[:2], 1)


def test_mirrors_flip_the_output():
    data = encode(photo("coffee"), ".png")
    plain, _ = transform_image(data, (160, 160), angle=0, scale=1.2)
    h, _ = transform_image(data, (160, 160), scale=1.2, hmirror=True)
    v, _ = transform_image(data, (160, 160), scale=1.2, vmirror=True)
    assert np.abs(h.astype(int) - cv2.flip(plain, 1)).mean() < 1
    assert np.abs(v.astype(int) - cv2.flip(plain, 0)).mean() < 1
    assert np.abs(h.astype(int) - plain).mean() > 10


def test_shift_selects_the_crop_window():
    im = photo("coffee")  # 400 x 600: 'shortest' into 200 x 200 scales by 1/2
    resized = cv2.resize(im, (300, 200), interpolation=cv2.INTER_AREA).astype(int)
    for dx, window in ((-1, slice(0, 200)), (0, slice(50, 250)), (1, slice(100, 300))):
        out, _ = transform_image(im, (200, 200), shift=(dx, 0))
        assert np.abs(out - resized[:, window]).mean() < 2, dx
    up, _ = transform_image(im, (200, 200), scale=2, shift=(0, 1))  # more of the bottom
    assert np.abs(up.astype(int) - cv2.resize(im, (600, 400))[200:400, 200:400]).mean() < 3


def test_scale_modes():
    im = photo("coffee")  # wider than tall
    fill, _ = transform_image(im, (100, 100), scale_mode="shortest", background=(255, 0, 255))
    fit, _ = transform_image(im, (100, 100), scale_mode="longest", background=(255, 0, 255))
    magenta = np.all(fit == (255, 0, 255), axis=2)
    assert not np.all(fill == (255, 0, 255), axis=2).any()
    assert magenta[:10].all() and magenta[-10:].all()  # bands above and below
    assert not magenta[20:80].any()
    with pytest.raises(ValueError, match="shortest"):
        make_transform((10, 10), (5, 5), scale_mode="middle")


def test_shear_tilts_horizontal_edges_by_its_value():
    matrix = make_transform((300, 400), (300, 400), shear=0.2)
    a, b = matrix @ [100, 150, 1], matrix @ [300, 150, 1]
    assert (b[1] - a[1]) / (b[0] - a[0]) == pytest.approx(0.2)
    c, d = matrix @ [200, 100, 1], matrix @ [200, 200, 1]
    assert c[0] == pytest.approx(d[0])  # vertical edges stay vertical


def test_rotation_is_counter_clockwise():
    matrix = make_transform((101, 101), (101, 101), angle=90)
    # a point right of the centre goes above it (y grows downwards)
    np.testing.assert_allclose(matrix @ [80, 50, 1], [50, 20], atol=1e-9)


def test_gray_and_colorless_decoding():
    data = encode(photo("astronaut"))
    gray, _ = transform_image(data, (64, 64), color=False)
    assert gray.shape == (64, 64)
    ref = cv2.cvtColor(
        cv2.resize(photo("astronaut"), (64, 64), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
    )
    assert np.abs(gray.astype(int) - ref).mean() < 3


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", encode(photo())[:5000], encode(photo(), ".png")[:3000]],
    ids=["empty", "garbage", "truncated-jpeg", "truncated-png"],
)
def test_corrupt_images_raise_value_error(data):
    with pytest.raises(ValueError, match="decode|truncated"):
        transform_image(data, (32, 32))


def test_randomize_image_keeps_channel_order_and_pixel_ops():
    im = photo("chelsea")
    rgb = randomize_image(im, (100, 100), gamma_color=(0.5, 1, 1))
    bgr = randomize_image(im[:, :, ::-1].copy(), (100, 100), gamma_color=(0.5, 1, 1), is_rgb=False)
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    plain = randomize_image(im, (100, 100))
    assert rgb[:, :, 0].mean() > plain[:, :, 0].mean() + 10  # gamma 0.5 brightens red only
    assert abs(rgb[:, :, 2].mean() - plain[:, :, 2].mean()) < 0.5
    skipped = randomize_image(im, (100, 100), gamma_color=(0.5, 1, 1), gpu_augmentation=True)
    np.testing.assert_array_equal(skipped, plain)


PIXEL_OPS = dict(gamma_gray=0.8, gamma_color=(1.2, 0.9, 1.1), contrast=0.3, blur=1.5 / 120)


@pytest.mark.parametrize("color", [True, False])
def test_pixel_ops_equal_the_kernels_applied_in_order(color):
    data = encode(photo("chelsea"))
    geometry = dict(angle=7.0, scale=1.1, shear=0.03, hmirror=True)
    plain, _ = transform_image(data, (96, 120), color=color, **geometry)
    out, _ = transform_image(
        data, (96, 120), color=color, noise=0.05, noise_seed=77, **geometry, **PIXEL_OPS
    )
    expected = K.add_gamma(plain, color, 0.8, (1.2, 0.9, 1.1), 0.3)
    expected = K.add_blur(expected, 1.5)
    expected = (K.add_noise_rgb if color else K.add_noise_other)(expected, 0.05, 77)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("color", [True, False])
def test_out_receives_the_result_as_planes(color):
    data = encode(photo("astronaut"))
    params = dict(angle=-4.0, noise=0.03, noise_seed=5, **PIXEL_OPS)
    image, matrix = transform_image(data, (64, 80), color=color, **params)
    out = np.zeros((3 if color else 1, 64, 80), np.uint8)
    result, same_matrix = transform_image(data, (64, 80), color=color, out=out, **params)
    assert result is out
    np.testing.assert_array_equal(same_matrix, matrix)
    planes = image.transpose(2, 0, 1) if color else image[None]
    np.testing.assert_array_equal(out, planes)


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((3, 64, 81), np.uint8),
        np.zeros((1, 64, 80), np.uint8),
        np.zeros((3, 64, 80), np.float32),
        np.zeros((64, 80, 3), np.uint8),
        np.zeros((3, 64, 160), np.uint8)[:, :, ::2],
    ],
    ids=["size", "channels", "dtype", "hwc", "strided"],
)
def test_out_must_fit(out):
    with pytest.raises(ValueError, match="out must be"):
        transform_image(photo("astronaut"), (64, 80), out=out)


@pytest.mark.parametrize("color", [True, False])
def test_a_number_as_background_fills_every_channel(color):
    im = photo("coffee")  # wider than tall: 'longest' leaves bands above and below
    out, _ = transform_image(im, (100, 100), color=color, scale_mode="longest", background=128)
    band = out[:10].reshape(-1, 3 if color else 1)
    assert (band == 128).all()


def test_background_needs_one_value_per_channel():
    with pytest.raises(ValueError, match="background"):
        transform_image(photo("coffee"), (50, 50), background=(1, 2))


def test_image_arrays_need_one_or_three_channels():
    with pytest.raises(ValueError, match="HxWx3"):
        transform_image(np.zeros((20, 20, 4), np.uint8), (10, 10))


def test_rotate_and_resize_fills_every_channel_with_a_number():
    im = photo("coffee")
    out = rotate_and_resize(
        im, 0, (100, 100), 1, 1, None, cv2.INTER_LINEAR, 128, False, False, scale_mode="longest"
    )
    assert (out[:10] == 128).all()


def test_points_and_boxes_map_through_a_matrix_as_pure_functions():
    from crumpets.augment.augmentation import map_boxes, map_keypoints

    shift = [[2.0, 0.0, -10.0], [0.0, 2.0, 5.0]]  # scale 2, then move
    points = [[10, 10], [100, 0], [-1, -1]]
    mapped, index = map_keypoints(points, shift, (60, 80))
    np.testing.assert_allclose(mapped, [[10, 25]])
    assert index == [0] and mapped.dtype == np.float32
    clipped, index = map_keypoints(points, shift, (60, 80), outside="clip")
    np.testing.assert_allclose(clipped, [[10, 25], [79.5, 5], [-0.5, 3]])
    assert index == [0, 1, 2]
    boxes, index = map_boxes([[0, 0, 10, 10], [200, 200, 210, 210]], shift, (60, 80))
    np.testing.assert_allclose(boxes, [[-0.5, 5, 10, 25]])
    assert index == [0]
