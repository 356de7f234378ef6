"""crumpets.torch.warp against a float64 reference of bilinear sampling with OpenCV's
border rules (parity with cv2.warpAffine itself and with the CPU workers:
tests/integration/test_gpu_decode.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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


def top_level_ops(fn):
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]


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
