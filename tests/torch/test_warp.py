"""crumpets.torch.warp against a float64 reference of bilinear sampling with OpenCV's
border rules (parity with cv2.warpAffine itself and with the CPU workers:
tests/integration/test_gpu_decode.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _profile import top_level_ops

from crumpets.torch.warp import warp_images


def smooth(h, w, c=3, seed=0):
    """A smooth image with an edge: what photos look like to bilinear sampling."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    planes = []
    for k in range(c):
        base = 128 + 100 * np.sin(xx / rng.uniform(2, 6) + yy / rng.uniform(2, 6) + k)
        base[h // 3 :, : w // 2] = rng.uniform(0, 255)
        planes.append(base)
    return torch.from_numpy(np.clip(planes, 0, 255).astype(np.uint8))


def border_index(i, n, border):
    if 0 <= i < n:
        return i
    if border == "replicate":
        return min(max(i, 0), n - 1)
    if border == "reflect":  # BORDER_REFLECT_101
        if n == 1:
            return 0
        period = 2 * (n - 1)
        i %= period
        return period - i if i >= n else i
    return None  # constant


def reference(im, matrix, size, border, fill):
    """Bilinear warp, straight from the definition: each target pixel maps back through the
    inverse matrix; taps outside the image follow ``border``."""
    src = im.numpy().astype(np.float64)
    c, h, w = src.shape
    (a, b, x), (cc, d, y) = matrix
    inv = np.linalg.inv(np.array([[a, b], [cc, d]]))
    th, tw = size
    out = np.empty((c, th, tw))
    for v in range(th):
        for u in range(tw):
            sx, sy = inv @ np.array([u - x, v - y])
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            acc = np.zeros(c)
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    if wx * wy == 0:
                        continue
                    iy, ix = border_index(y0 + dy, h, border), border_index(x0 + dx, w, border)
                    value = np.full(c, fill, float) if iy is None or ix is None else src[:, iy, ix]
                    acc += wx * wy * value
            out[:, v, u] = acc
    return out


def rotation(angle, scale, cx, cy, tx, ty):
    r = math.radians(angle)
    a, b = scale * math.cos(r), scale * math.sin(r)
    return [[a, b, tx - a * cx - b * cy], [-b, a, ty + b * cx - a * cy]]


@pytest.mark.parametrize("border", ["constant", "replicate", "reflect"])
def test_matches_the_definition_for_images_of_different_sizes(device, border):
    images = [smooth(13, 17, seed=0), smooth(9, 6, seed=1), smooth(1, 5, seed=2), smooth(4, 1)]
    matrices = [
        rotation(20, 1.3, 8, 6, 6, 5),
        rotation(-35, 0.8, 3, 4, 5.25, 4.5),
        rotation(90, 1.1, 2, 0, 5, 5),
        rotation(0, 1.0, 0, 1.5, 6.5, 4.5),  # edges half a pixel from the centres
    ]
    got = warp_images(
        [im.to(device) for im in images],
        matrices,
        (11, 12),
        border=border,
        fill=40,
        antialias=False,
    ).cpu()
    assert got.shape == (4, 3, 11, 12) and got.dtype == torch.uint8
    for i, (im, m) in enumerate(zip(images, matrices)):
        expected = reference(im, m, (11, 12), border, 40)
        assert np.abs(got[i].numpy() - expected).max() <= 0.5 + 1e-3, (border, i)


def test_background_border_takes_the_fill_where_centres_map_outside(device):
    im = smooth(6, 8).to(device)
    # 2x larger, shifted so the source ends mid-target
    matrix = [[2.0, 0.0, 3.0], [0.0, 2.0, 1.0]]
    out = warp_images([im], [matrix], (16, 24), border="background", fill=(1, 2, 3))[0].cpu()
    xs = (np.arange(24) - 3.0) / 2  # target pixel centres in source pixels
    ys = (np.arange(16) - 1.0) / 2
    inside = (ys[:, None] >= -0.5) & (ys[:, None] <= 5.5) & (xs >= -0.5) & (xs <= 7.5)
    replicate = reference(im.cpu(), matrix, (16, 24), "replicate", 0)
    for c, value in enumerate((1, 2, 3)):
        assert (out[c].numpy()[~inside] == value).all()
        assert np.abs(out[c].numpy()[inside] - replicate[c][inside]).max() <= 0.5 + 1e-3


def test_antialiasing_averages_a_shrunk_flat_pattern(device):
    # a one-pixel checkerboard shrunk 5x: without antialiasing it aliases to black or
    # white; with it, each pixel is close to the mean grey
    board = ((np.indices((100, 100)).sum(0) % 2) * 255).astype(np.uint8)
    im = torch.from_numpy(board)[None].to(device)
    matrix = [[0.2, 0.0, -0.4], [0.0, 0.2, -0.4]]
    smooth_out = warp_images([im], [matrix], (20, 20), border="replicate")[0].float()
    aliased = warp_images([im], [matrix], (20, 20), border="replicate", antialias=False)[0]
    assert (smooth_out - 127.5).abs().max().item() < 20
    assert (aliased.float() - 127.5).abs().min().item() > 100


def test_nearest_keeps_labels():
    labels = torch.tensor([[[0, 1, 2], [3, 4, 5]]], dtype=torch.uint8)
    out = warp_images(
        [labels], [[[4.0, 0, 1.5], [0, 4.0, 1.5]]], (8, 12), interpolation="nearest", fill=255
    )
    assert set(out.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}


def test_per_image_fill_and_errors():
    ims = [smooth(4, 4), smooth(4, 4)]
    shrink = [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]
    out = warp_images(
        ims, [shrink, shrink], (6, 6), border="background", fill=[[9, 9, 9], [7, 8, 6]]
    )
    assert out[0, :, 5, 5].tolist() == [9, 9, 9] and out[1, :, 5, 5].tolist() == [7, 8, 6]
    with pytest.raises(ValueError, match="border must be one of"):
        warp_images(ims, [shrink, shrink], (6, 6), border="wrap")
    with pytest.raises(ValueError, match="matrix 1 is singular"):
        warp_images(ims, [shrink, [[1, 1, 0], [1, 1, 0]]], (6, 6))
    with pytest.raises(ValueError, match="1 matrices for 2 images"):
        warp_images(ims, [shrink], (6, 6))


@pytest.mark.parametrize("border", ["constant", "reflect", "background"])
def test_torch_calls_do_not_grow_with_the_batch(border):
    counts = {}
    for n in (4, 32):
        # two source sizes, shrinking (pyramid, 2x2 samples) and enlarging matrices
        ims = [smooth(40, 60) if i % 2 else smooth(30, 20) for i in range(n)]
        mats = [rotation(10 * i, 0.3 if i % 3 else 1.2, 10, 10, 8, 8) for i in range(n)]
        counts[n] = len(
            top_level_ops(
                lambda ims=ims, mats=mats: warp_images(ims, mats, (16, 16), border=border)
            )
        )
    assert counts[4] == counts[32], counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result():
    ims = [smooth(50, 70), smooth(33, 21)]
    mats = [rotation(15, 0.4, 35, 25, 12, 12), rotation(-5, 1.5, 10, 16, 12, 12)]
    cpu = warp_images(ims, mats, (24, 24))
    gpu = warp_images([im.cuda() for im in ims], mats, (24, 24)).cpu()
    assert (cpu.int() - gpu.int()).abs().max().item() <= 1


def distinct_batch(n, distinct=True, scales=(1.2, 0.4, 0.1, 0.03)):
    """n images, each of its own size (or all of one), with enlarging, shrinking (2x2 to
    4x4 samples) and strongly shrinking matrices (pyramid levels)."""
    ims = [smooth(20 + 3 * i, 30 + i, seed=i) if distinct else smooth(20, 30) for i in range(n)]
    mats = [rotation(10 * i, scales[i % len(scales)], 10, 10, 8, 8) for i in range(n)]
    return ims, mats


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("border", ["background", "constant", "reflect"])
def test_torch_calls_depend_neither_on_the_batch_size_nor_on_the_sizes(border, interpolation):
    counts = {}
    batches = {
        "4 sizes": distinct_batch(4),
        "32 sizes": distinct_batch(32),
        "32 of one size": distinct_batch(32, distinct=False),
        "4 sizes, one sample, no pyramid": distinct_batch(4, scales=(1.2,)),
    }
    for name, (ims, mats) in batches.items():
        counts[name] = len(
            top_level_ops(
                lambda ims=ims, mats=mats: warp_images(
                    ims, mats, (16, 16), border=border, interpolation=interpolation
                )
            )
        )
    assert len(set(counts.values())) == 1, counts


class LargestTensor:
    """The largest memory (bytes of its storage: views and expanded tensors count what
    they share) of any tensor an aten op makes while active."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.nbytes = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor):
                        outer.nbytes = max(outer.nbytes, t.untyped_storage().nbytes())
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_memory_follows_the_batchs_pixels_not_its_largest_image():
    # one 12-megapixel photo among 31 small images: a canvas of the largest size would be
    # 32 x 3 x 3000 x 4000 values (4.6 GB in float32)
    big = torch.randint(0, 256, (3, 3000, 4000), dtype=torch.uint8)
    small = [smooth(32, 32, seed=i) for i in range(31)]
    mats = [rotation(5, 0.01, 2000, 1500, 8, 8)]  # 32x shrunk, then 2x2 samples
    mats += [rotation(10 * i, 0.45, 16, 16, 8, 8) for i in range(31)]  # 2x2 samples
    with LargestTensor() as largest:
        out = warp_images([big, *small], mats, (16, 16))
    n, channels, samples = 32, 3, 4 * 16 * 16  # 2x2 samples per target pixel
    pixels = 3000 * 4000 + 31 * 32 * 32
    bound = 4 * (channels * pixels + n * channels * samples) * 4  # values of 4 bytes
    assert largest.nbytes <= bound, (largest.nbytes, bound)
    # each image as if warped alone
    alone = torch.cat([warp_images([im], [m], (16, 16)) for im, m in zip(small, mats[1:])])
    assert (out[1:].int() - alone.int()).abs().max().item() <= 1


def test_images_warp_alike_in_any_batch_with_pyramid_levels():
    # the pyramid of each image is its own (its last row and column averaged alone), and
    # bicubic taps stay on their image: results do not depend on the neighbours (the
    # scales give pyramid levels 2, 0, 3, 1 and all 2x2 samples, the batch's k too)
    ims, mats = distinct_batch(8, scales=(0.12, 0.3, 0.05, 0.2))
    for mode in ("bilinear", "bicubic"):
        together = warp_images(ims, mats, (16, 16), border="replicate", interpolation=mode)
        for im, m, got in zip(ims, mats, together):
            alone = warp_images([im], [m], (16, 16), border="replicate", interpolation=mode)[0]
            assert (got.int() - alone.int()).abs().max().item() <= 1, mode


def test_bicubic_keeps_a_flat_image_flat_at_every_pyramid_level():
    im = torch.full((3, 97, 61), 200, dtype=torch.uint8)
    for scale in (0.45, 0.2, 0.1, 0.04):
        out = warp_images(
            [im],
            [rotation(7, scale, 30, 48, 6, 6)],
            (12, 12),
            border="replicate",
            interpolation="bicubic",
        )
        assert out.min().item() == out.max().item() == 200, scale


def test_nearest_rounds_half_pixels_as_cv2():
    row = torch.arange(16, dtype=torch.uint8).repeat(4, 1)[None] * 10
    # target u samples source x = 2u + 0.5: cv2 takes x + 0.5 rounded down (half up),
    # and rounds to even with BORDER_REFLECT_101
    halve = [[0.5, 0, -0.25], [0, 1.0, 0]]
    up = warp_images([row], [halve], (4, 8), border="replicate", interpolation="nearest")
    even = warp_images([row], [halve], (4, 8), border="reflect", interpolation="nearest")
    assert up[0, 0, 0].tolist() == [10, 30, 50, 70, 90, 110, 130, 150]
    assert even[0, 0, 0].tolist() == [0, 20, 40, 60, 80, 100, 120, 140]
