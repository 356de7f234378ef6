"""Torch pixel kernels against straightforward float64 references of the documented
formulas. (Parity with crumpets.augment's CPU kernels: tests/integration.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crumpets.torch.augmentation_cuda import add_blur, add_gamma, add_noise_other, add_noise_rgb
from crumpets.torch.randomizer import Randomizer, randomize


def photo_like(n=2, c=3, h=48, w=64, seed=0):
    """Smooth images with edges: what blur and gamma act on in photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    ims = []
    for _ in range(n):
        base = 128 + 90 * np.sin(xx / rng.uniform(3, 9) + yy / rng.uniform(3, 9))
        base[h // 3 : h // 2, w // 4 :] = rng.uniform(0, 255)
        ims.append(np.stack([np.roll(base, 5 * k, axis=1) for k in range(c)]))
    return torch.from_numpy(np.clip(ims, 0, 255).astype(np.uint8))


def reference_gamma(x, gray, color, k):
    y = (x / 255.0)[None, :] ** ((gray or 1) * np.asarray(color or [1, 1, 1]))[:, None]
    if k and k > 0:
        y = y + k * (0.5 - 0.5 * np.cos(np.pi * y) - y)
    elif k and k < 0:
        y = 0.5 + (y - 0.5) * (1 + k)
    return 255 * y


@pytest.mark.parametrize(
    ("gray", "color", "contrast"),
    [
        (0.5, None, None),
        (None, [0.7, 1.0, 1.6], None),
        (1.3, None, 0.6),
        (None, None, -0.4),
        (0.8, [1.2, 0.9, 1], 0.3),
    ],
)
def test_gamma_matches_formula(device, gray, color, contrast):
    im = photo_like().to(device)
    aug = {"gamma_gray": gray, "gamma_color": color, "contrast": contrast}
    out = add_gamma(im, [aug, aug]).cpu().numpy().astype(float)
    table = reference_gamma(np.arange(256.0), gray, color, contrast)
    src = im.cpu().numpy()
    expected = np.stack([table[c][src[:, c]] for c in range(3)], axis=1)
    assert np.abs(out - expected).max() <= 0.5 + 1e-9  # rounding of the same float
    floats = add_gamma(im.float(), [aug, aug]).cpu().numpy()
    assert np.abs(floats - expected).max() < 1e-3


def reference_blur(im, sigma):
    k = int(round(6 * sigma + 1)) | 1
    j = np.arange(k) - (k - 1) / 2
    taps = np.exp(-(j**2) / (2 * sigma**2))
    taps /= taps.sum()
    r = k // 2
    padded = np.pad(im.astype(float), ((0, 0), (r, r), (r, r)), mode="reflect")
    rows = sum(taps[t] * padded[:, :, t : t + im.shape[2]] for t in range(k))
    return sum(taps[t] * rows[:, t : t + im.shape[1], :] for t in range(k))


def test_blur_matches_separable_gaussian(device):
    im = photo_like().to(device)
    augs = [{"blur": 2.0 / 64}, {"blur": None}]
    out = add_blur(im, augs).cpu().numpy().astype(float)
    expected = reference_blur(im[0].cpu().numpy(), 2.0)
    assert np.abs(out[0] - expected).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(out[1], im[1].cpu().numpy())


def test_noise_strength_green_and_seed(device):
    flat = torch.full((2, 3, 256, 256), 128, dtype=torch.uint8, device=device)
    augs = [{"noise": 0.25, "noise_seed": 1}, {"noise": 0.25, "noise_seed": 2}]
    out = add_noise_rgb(flat, augs).float() - 128
    std = out[0].std(dim=(1, 2)).cpu()
    sigma = 0.25 * 64
    assert abs(std[0] / sigma - 1) < 0.1 and abs(std[2] / sigma - 1) < 0.1
    assert abs(std[1] / (sigma / math.sqrt(2)) - 1) < 0.1
    assert not torch.equal(out[0], out[1])
    again = add_noise_rgb(flat, augs).float() - 128
    assert torch.equal(out, again)
    other = add_noise_other(flat, augs).float() - 128
    assert abs(other[0, 1].std().cpu() / sigma - 1) < 0.1


def test_randomizer_applies_listed_ops_once_and_forwards(device):
    im = photo_like().to(device)
    augs = [
        {"gamma_gray": 0.5, "gamma_color": None, "contrast": None, "gpu_ops": ["gamma"]},
        {"gamma_gray": 0.5, "gamma_color": None, "contrast": None, "gpu_ops": []},
    ]
    seen = []
    net = Randomizer(lambda sample: seen.append(sample["image"].clone()) or sample)
    out = net({"image": im.clone(), "augmentation": augs})
    assert torch.equal(out["image"][1], im[1])  # its worker applied gamma already
    assert (out["image"][0].float().mean() > im[0].float().mean() + 20).item()
    assert torch.equal(seen[0], out["image"])
    again = randomize(out["image"].clone(), augs)  # consumed: nothing applied twice
    assert torch.equal(again, out["image"])


def test_randomizer_names_a_missing_parameter():
    im = photo_like()
    augs = [
        {"gamma_gray": 0.5, "contrast": None},
        {"gamma_gray": None, "gamma_color": None, "contrast": None},
    ]
    with pytest.raises(KeyError, match="sample 0 .* lacks 'gamma_color'"):
        Randomizer()({"image": im, "augmentation": augs})
    with pytest.raises(KeyError, match="'augmentation'"):
        Randomizer()({"image": im})
