"""Torch pixel kernels against straightforward float64 references of the documented
formulas. (Parity with crumpets.augment's CPU kernels: tests/integration.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _profile import top_level_ops

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
    given = {"image": im.clone(), "augmentation": augs}
    out = net(given)
    assert torch.equal(out["image"][1], im[1])  # its worker applied gamma already
    assert (out["image"][0].float().mean() > im[0].float().mean() + 20).item()
    assert torch.equal(seen[0], out["image"])
    # new parameter dicts with nothing left to do; the caller's sample is as it was
    assert [a["gpu_ops"] for a in out["augmentation"]] == [[], []]
    assert augs[0]["gpu_ops"] == ["gamma"] and torch.equal(given["image"], im)
    again, _ = randomize(out["image"].clone(), out["augmentation"])  # nothing applied twice
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


# --- batched: a fixed number of ops, every sample its own parameters --------------------
def every_op(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "gamma_gray": float(rng.uniform(0.5, 2)),
            "gamma_color": rng.uniform(0.7, 1.4, 3).tolist(),
            "contrast": float(rng.uniform(-0.5, 0.5)),
            "blur": float(rng.uniform(0.02, 0.06)),
            "noise": float(rng.uniform(0.02, 0.1)),
            "noise_seed": int(rng.integers(2**31)),
        }
        for _ in range(n)
    ]


def test_ops_per_batch_do_not_grow_with_the_batch():
    counts = {}
    for n in (2, 16):
        im = photo_like(n, h=24, w=32)
        augs = every_op(n)

        def chain(im=im, augs=augs):
            return add_noise_rgb(add_blur(add_gamma(im, augs), augs), augs)

        chained = top_level_ops(chain)
        randomized = top_level_ops(lambda im=im, augs=augs: randomize(im, augs))
        counts[n] = len(chained), len(randomized)
    assert counts[2] == counts[16], counts
    assert max(counts[16]) <= 60, counts


@pytest.mark.parametrize("op", ["gamma", "blur", "noise", "all"])
def test_samples_with_the_operation_off_are_untouched(device, op):
    im = photo_like(6, h=24, w=32).to(device)
    augs = every_op(6)
    off = {"gamma_gray": None, "gamma_color": None, "contrast": 0, "blur": 0, "noise": None}
    for i in (1, 4):
        augs[i] = {**augs[i], **off}
    out = {
        "gamma": lambda: add_gamma(im, augs),
        "blur": lambda: add_blur(im, augs),
        "noise": lambda: add_noise_rgb(im, augs),
        "all": lambda: randomize(im, augs)[0],
    }[op]()
    for i in range(6):
        same = torch.equal(out[i], im[i])
        assert same == (i in (1, 4)), (i, op)


def test_each_sample_as_if_alone(device):
    """The batch shares its calls, not its parameters: a sample's result is the one it
    gets alone (blur: the batch pads the taps to its largest radius)."""
    im = photo_like(5, h=24, w=32).to(device)
    augs = every_op(5, seed=3)
    augs[2]["blur"] = 0.003  # small radius in a batch of larger ones
    for kernel in (add_gamma, add_blur, add_noise_rgb, add_noise_other):
        batch = kernel(im, augs)
        for i in range(5):
            alone = kernel(im[i : i + 1], augs[i : i + 1])[0]
            diff = (batch[i].int() - alone.int()).abs()
            assert diff.max() <= (1 if kernel is add_blur else 0), (kernel.__name__, i)


def test_noise_is_the_table_window_the_cpu_uses():
    from crumpets.core.params import NOISE_TABLE_SEED, NOISE_TABLE_SIZE

    im = photo_like(2, h=20, w=30)
    augs = [{"noise": 0.1, "noise_seed": 123456789}, {"noise": 0.05, "noise_seed": 7}]
    out = add_noise_rgb(im, augs).numpy().astype(int)
    table = np.random.default_rng(NOISE_TABLE_SEED).standard_normal(NOISE_TABLE_SIZE, np.float32)
    size = im[0].numel()
    for i, aug in enumerate(augs):
        offset = aug["noise_seed"] % (NOISE_TABLE_SIZE - size + 1)
        z = table[offset : offset + size].reshape(3, 20, 30).astype(np.float64)
        sigma = 64 * aug["noise"] * np.array([1, 1 / math.sqrt(2), 1])[:, None, None]
        expected = np.clip(np.rint(im[i].numpy() + z * sigma), 0, 255)
        assert np.abs(out[i] - expected).max() <= 1  # float32 against float64 rounding
        assert (out[i] != expected).mean() < 0.01


def test_noise_beyond_the_table_is_reproducible_per_batch():
    im = torch.full((2, 3, 840, 840), 128, dtype=torch.uint8)  # 2.1M values per image
    augs = [{"noise": 0.2, "noise_seed": 1}, {"noise": 0.2, "noise_seed": 2}]
    out = add_noise_other(im, augs)
    assert torch.equal(out, add_noise_other(im, augs))
    std = (out.float() - 128).std(dim=(1, 2, 3))
    assert ((std / (0.2 * 64) - 1).abs() < 0.1).all()


def test_float_images_keep_their_range_and_dtype():
    im = photo_like(2).float()
    augs = every_op(2)
    for kernel in (add_gamma, add_blur, add_noise_rgb):
        out = kernel(im, augs)
        assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
        assert (out - im).abs().mean() > 0.5
    blurred = add_blur(im, augs)
    as_uint8 = add_blur(im.to(torch.uint8), augs).float()
    assert (blurred - as_uint8).abs().max() <= 0.5 + 1e-3  # the same filter, unrounded


@pytest.mark.parametrize(
    ("key", "value"),
    [("gamma_gray", 0.0), ("contrast", 1.5), ("blur", -0.1), ("noise", float("nan"))],
)
def test_invalid_parameters_name_the_sample(key, value):
    augs = every_op(3)
    augs[1][key] = value
    kernel = {"gamma_gray": add_gamma, "contrast": add_gamma, "blur": add_blur}.get(
        key, add_noise_rgb
    )
    with pytest.raises(ValueError, match=f"sample 1 .*'{key}'"):
        kernel(photo_like(3), augs)


def test_gpu_ops_are_the_schemas_pixel_operations():
    from crumpets.core.params import PIXEL_OPS
    from crumpets.torch.randomizer import GPU_OPS

    assert GPU_OPS == tuple(PIXEL_OPS)


# --- the reference's calls: 'color' in add_gamma, noise without a seed --------------------
COLOR_GAMMA = {"gamma_gray": 0.8, "gamma_color": [0.6, 1.0, 1.7], "contrast": 0.2}


def test_gamma_color_flag_per_sample(device):
    """'color': False ignores gamma_color (as the CPU twin's argument); True or absent uses
    it; each sample of the batch by its own flag."""
    im = photo_like(3).to(device)
    augs = [{**COLOR_GAMMA, "color": True}, {**COLOR_GAMMA, "color": False}, COLOR_GAMMA]
    out = add_gamma(im, augs).cpu().numpy().astype(float)
    src = im.cpu().numpy()
    with_color = reference_gamma(np.arange(256.0), 0.8, COLOR_GAMMA["gamma_color"], 0.2)
    gray_only = reference_gamma(np.arange(256.0), 0.8, None, 0.2)
    for i, table in enumerate((with_color, gray_only, with_color)):
        expected = np.stack([table[c][src[i, c]] for c in range(3)])
        assert np.abs(out[i] - expected).max() <= 0.5 + 1e-9, i


@pytest.mark.parametrize("kernel", [add_noise_rgb, add_noise_other])
def test_noise_without_a_seed_draws_one(device, kernel):
    """The reference's dicts carry only 'noise': like the CPU twin without a seed, each call
    draws a fresh pattern per sample, of the requested strength."""
    flat = torch.full((2, 3, 128, 128), 128, dtype=torch.uint8, device=device)
    augs = [{"noise": 0.25}, {"noise": 0.25, "noise_seed": None}]
    out = kernel(flat, augs).float() - 128
    std = out.std(dim=(2, 3)).cpu()
    assert ((std[:, [0, 2]] / (0.25 * 64) - 1).abs() < 0.1).all()
    assert not torch.equal(out[0], out[1])
    assert not torch.equal(out, kernel(flat, augs).float() - 128)
