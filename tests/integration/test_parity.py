"""The torch pixel kernels agree with crumpets.augment's CPU kernels for the same
parameters: within 1 grey level (mean absolute difference) for gamma, color, contrast and
blur, and at most 1 at any pixel for blur; noise is the same pattern (the same table
window), so it agrees per pixel too, not only in distribution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from crumpets.augment import augmentation_cpu as cpu
from crumpets.augment.presets import MixtureRNG
from crumpets.augment.workers import ClassificationWorker, FCNWorker
from crumpets.core import pack
from crumpets.torch import TorchTurboDataLoader
from crumpets.torch import augmentation_cuda as gpu


def photo(name="chelsea", size=(160, 120)):
    return cv2.resize(getattr(skimage.data, name)(), size, interpolation=cv2.INTER_AREA)


def as_batch(im):
    return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None]


def mad(cpu_image, torch_batch):
    return np.abs(cpu_image.astype(float) - torch_batch[0].permute(1, 2, 0).numpy()).mean()


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
@pytest.mark.parametrize(
    ("gray", "color", "contrast"),
    [
        (0.6, None, None),
        (1.8, None, None),
        (None, [0.7, 1.1, 1.5], None),
        (None, None, 0.5),
        (None, None, -0.5),
        (0.9, [1.2, 0.8, 1.0], 0.3),
    ],
)
@pytest.mark.parametrize("flag", [True, False], ids=["color", "gray-only"])
def test_gamma_color_contrast_parity(name, gray, color, contrast, flag):
    im = photo(name)
    # the documented color flag: False leaves gamma_color out, on either side
    expected = cpu.add_gamma(im, flag, gray, color, contrast)
    augs = [{"gamma_gray": gray, "gamma_color": color, "contrast": contrast, "color": flag}]
    got = gpu.add_gamma(as_batch(im), augs)
    assert mad(expected, got) <= 1.0
    # the same float64 table: equal but for a rounding tie
    assert np.abs(expected.astype(int) - got[0].permute(1, 2, 0).numpy()).max() <= 1
    if flag or gray is not None or contrast is not None:
        assert mad(im, got) > 1.0  # the operation did something


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
@pytest.mark.parametrize("blur", [0.5 / 160, 2.0 / 160, 5.0 / 160])
def test_blur_parity(name, blur):
    im = photo(name)
    expected = cpu.add_blur(im, blur * im.shape[1])
    got = gpu.add_blur(as_batch(im), [{"blur": blur}])
    assert mad(expected, got) <= 1.0
    assert np.abs(expected.astype(int) - got[0].permute(1, 2, 0).numpy()).max() <= 1
    assert mad(im, got) > 0.5


@pytest.mark.parametrize("strength", [0.05, 0.2])
def test_noise_matches_in_distribution(strength):
    flat = np.full((256, 256, 3), 128, np.uint8)
    expected = cpu.add_noise_rgb(flat, strength, 3).astype(float) - 128
    got = gpu.add_noise_rgb(as_batch(flat), [{"noise": strength, "noise_seed": 3}])
    got = got[0].permute(1, 2, 0).numpy().astype(float) - 128
    for c in range(3):
        assert abs(got[:, :, c].std() / expected[:, :, c].std() - 1) < 0.1
    # the same window of the same table: the same noise, up to float rounding
    assert np.abs(got - expected).max() <= 1 and np.abs(got - expected).mean() < 0.01


def test_loader_with_gpu_augmentation_matches_cpu_augmentation():
    rng = MixtureRNG(
        prob=1,
        brightness_range=(-0.4, 0.4),
        color_range=(-0.3, 0.3),
        contrast_range=(-0.4, 0.4),
        blur_range=(0.002, 0.01),
        rotation_sigma=10,
    )
    im = skimage.data.coffee()
    data = [
        pack({"image": cv2.imencode(".jpg", np.roll(im, 9 * i, 1))[1].tobytes(), "label": i})
        for i in range(12)
    ]
    worker = ClassificationWorker(((3, 96, 96), np.uint8), ((1,), np.int64), image_rng=rng)
    on_cpu = TorchTurboDataLoader(data, 4, worker, 2, device="cpu", seed=7)
    on_gpu = TorchTurboDataLoader(data, 4, worker, 2, device="cpu", seed=7, gpu_augmentation=True)
    with on_cpu, on_gpu:
        for (_, (a,)), (_, (b,)) in zip(on_cpu, on_gpu):
            assert [x["gpu_ops"] for x in a["augmentation"]] == [[]] * 4
            diff = (a["image"].float() - b["image"].float()).abs().mean(dim=(1, 2, 3))
            assert (diff <= 1.0).all(), diff


def test_fcn_image_and_target_get_their_pixel_operations_on_the_gpu_path():
    rng = MixtureRNG(
        prob=1,
        brightness_range=(-0.4, 0.4),
        color_range=(-0.3, 0.3),
        contrast_range=(-0.4, 0.4),
        blur_range=(0.002, 0.01),
        noise_range=(0.02, 0.05),
        rotation_sigma=10,
    )
    image, target = skimage.data.coffee(), skimage.data.chelsea()
    data = [
        pack(
            {
                "image": cv2.imencode(".jpg", np.roll(image, 9 * i, 1))[1].tobytes(),
                "target_image": cv2.imencode(".png", np.roll(target, 5 * i, 0))[1].tobytes(),
            }
        )
        for i in range(8)
    ]
    worker = FCNWorker(((3, 80, 96), np.uint8), ((3, 80, 96), np.uint8), image_rng=rng)
    on_cpu = TorchTurboDataLoader(data, 4, worker, 2, device="cpu", seed=3)
    on_gpu = TorchTurboDataLoader(data, 4, worker, 2, device="cpu", seed=3, gpu_augmentation=True)
    with on_cpu, on_gpu:
        for (_, (a,)), (_, (b,)) in zip(on_cpu, on_gpu):
            for key, params in (("image", "augmentation"), ("target_image", "target_augmentation")):
                assert [x["gpu_ops"] for x in b[params]] == [[]] * 4  # applied, then emptied
                diff = (a[key].float() - b[key].float()).abs().mean(dim=(1, 2, 3))
                assert (diff <= 1.0).all(), (key, diff)
                plain = (a[key].float() - a[key].float().mean()).abs().mean()
                assert plain > 5  # photos, not flat images
