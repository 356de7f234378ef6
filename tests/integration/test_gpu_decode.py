"""gpu_decode on CPU tensors: the batched warp against cv2.warpAffine and the CPU workers'
warp, the whole loader path against the CPU workers, the per-sample fallback (CMYK, PNG,
corrupt JPEG in one batch), the byte buffers' bound, and torch calls flat in the batch
size. The same code runs on a GPU with nvJPEG (tests/torch, CUDA tests)."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from crumpets.augment import (
    ClassificationWorker,
    FCNWorker,
    SaliencyWorker,
    SegmentationWorker,
)
from crumpets.augment.augmentation import transform_image
from crumpets.augment.presets import AUGMENTATION_TRAIN
from crumpets.core import pack
from crumpets.torch import TorchTurboDataLoader
from crumpets.torch.decode import CPUDecoder, decode_sample, nvjpeg_refusal
from crumpets.torch.randomizer import randomize_sample
from crumpets.torch.warp import warp_images

# The whole path against the CPU workers, both with the pixel operations on the torch side
# (the same code): what differs is decoding (libjpeg's reduced-size decoding against a
# full decode and 2x2 means) and the warp's antialiasing. Measured: 39.5 dB at worst on
# the training preset at 224x224.
PSNR_DB = 35.0

BORDERS = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}


def photo(name):
    return getattr(skimage.data, name)()  # RGB uint8


def chw(im):
    return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))


def jpeg(im, quality=95):
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return data.tobytes()


def psnr(a, b):
    mse = float(((np.asarray(a, float) - np.asarray(b, float)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def random_matrix(rng, source, target):
    """A rotation, scale, shear and shift about the centres, as augmentation draws them."""
    (h, w), (th, tw) = source, target
    angle = math.radians(rng.uniform(-180, 180))
    scale = rng.uniform(0.3, 1.6) * min(th / h, tw / w)
    shear = rng.uniform(-0.2, 0.2)
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    lin = np.array([[a, b], [-b, a]]) @ np.array([[1, 0], [shear, 1]])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    shift = np.array([(tw - 1) / 2, (th - 1) / 2]) + rng.uniform(-0.3, 0.3, 2) * (tw, th)
    return np.hstack([lin, (shift - lin @ centre)[:, None]])


@pytest.mark.parametrize("border", list(BORDERS))
def test_warp_matches_cv2_on_photos_of_different_sizes_in_one_batch(border):
    names = ["astronaut", "chelsea", "coffee", "rocket", "chelsea"]
    ims = [photo(n) for n in names]
    rng = np.random.default_rng(len(border))
    size = (150, 200)
    mats = [random_matrix(rng, im.shape[:2], size) for im in ims]
    mats[-1] = np.array([[1.0, 0, 0.5], [0, 1.0, -0.5]])  # half-pixel shift, not shrunk
    fill = (30, 200, 90)
    got = warp_images(
        [chw(im) for im in ims], mats, size, border=border, fill=fill, antialias=False
    )
    for i, (im, m) in enumerate(zip(ims, mats)):
        expected = cv2.warpAffine(
            im, m, size[::-1], flags=cv2.INTER_LINEAR, borderMode=BORDERS[border], borderValue=fill
        )
        diff = np.abs(got[i].numpy().transpose(1, 2, 0).astype(int) - expected)
        assert diff.max() <= 1, (border, names[i], diff.max())


@pytest.mark.parametrize("border", list(BORDERS))
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 2)])
def test_warp_matches_cv2_on_one_pixel_edge_cases(border, shape):
    rng = np.random.default_rng(sum(shape))
    im = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mats = [
        np.array([[3.0, 0, 2.5], [0, 3.0, 2.5]]),  # enlarged, edges at half pixels
        np.array([[0.0, 2.0, 1.0], [-2.0, 0.0, 12.0]]),  # turned 90 degrees
        np.array([[1.0, 0, -0.5], [0, 1.0, 0.5]]),
    ]
    got = warp_images([chw(im)] * 3, mats, (9, 11), border=border, fill=77, antialias=False)
    for i, m in enumerate(mats):
        expected = cv2.warpAffine(
            im,
            m,
            (11, 9),
            flags=cv2.INTER_LINEAR,
            borderMode=BORDERS[border],
            borderValue=(77,) * 3,
        )
        diff = np.abs(got[i].numpy().transpose(1, 2, 0).astype(int) - expected)
        assert diff.max() <= 1, (border, shape, i, diff.max())


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_antialiased_warp_follows_the_cpu_workers_warp(name):
    # the workers' rule at the border and their antialiasing, on the same pixels
    im = photo(name)
    for scale, angle in [(1.0, 0), (0.5, 10), (0.3, 0), (0.2, 25), (1.5, 5), (0.1, 3)]:
        out, matrix = transform_image(im, (224, 224), scale=scale, angle=angle, background=7)
        got = warp_images([chw(im)], [matrix], (224, 224), fill=7)[0].numpy().transpose(1, 2, 0)
        close = np.abs(got.astype(int) - out).max(2) <= 1
        assert psnr(got, out) > 45, (name, scale, angle)
        assert close.mean() > 0.995, (name, scale, angle)  # the rest: pixels at the border


def dataset(n=16, quality=95):
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    return [pack({"image": jpeg(photo(names[i % 4]), quality), "label": i}) for i in range(n)]


def test_loader_path_agrees_with_the_cpu_workers():
    data = dataset()
    worker = ClassificationWorker(
        ((3, 224, 224), np.uint8, 0), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
    )
    on_cpu = TorchTurboDataLoader(data, 8, worker, 2, device="cpu", seed=3, gpu_augmentation=True)
    decoded = TorchTurboDataLoader(data, 8, worker, 2, device="cpu", seed=3, gpu_decode=True)
    worst = math.inf
    with on_cpu, decoded:
        for (_, (a,)), (_, (b,)) in zip(on_cpu, decoded):
            assert a["augmentation"] == b["augmentation"]
            assert torch.equal(a["label"], b["label"])
            assert set(b) == set(a)  # the byte buffers are gone
            assert b["image"].shape == a["image"].shape and b["image"].dtype == torch.uint8
            for x, y in zip(a["image"], b["image"]):
                worst = min(worst, psnr(x.numpy(), y.numpy()))
    assert worst > PSNR_DB, worst


def test_fcn_target_image_is_decoded_too():
    data = [
        pack({"image": jpeg(photo("chelsea")), "target_image": jpeg(photo("coffee"))})
        for _ in range(4)
    ]
    spec = ((3, 64, 64), np.uint8, 0)
    worker = FCNWorker(spec, spec, image_rng=AUGMENTATION_TRAIN)
    on_cpu = TorchTurboDataLoader(data, 4, worker, 1, device="cpu", seed=1, gpu_augmentation=True)
    decoded = TorchTurboDataLoader(data, 4, worker, 1, device="cpu", seed=1, gpu_decode=True)
    with on_cpu, decoded:
        for (_, (a,)), (_, (b,)) in zip(on_cpu, decoded):
            assert a["target_augmentation"] == b["target_augmentation"]
            for key in ("image", "target_image"):
                assert psnr(a[key].numpy(), b[key].numpy()) > PSNR_DB, key


def test_segmentation_label_maps_are_warped_nearest_exactly():
    im = photo("chelsea")
    labels = (cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) // 40).astype(np.uint8)
    sample = {"image": jpeg(im), "target_image": cv2.imencode(".png", labels)[1].tobytes()}
    data = [pack(sample)] * 8
    worker = SegmentationWorker(
        ((3, 64, 64), np.uint8, 0), ((1, 64, 64), np.uint8, 255), image_rng=AUGMENTATION_TRAIN
    )
    on_cpu = TorchTurboDataLoader(data, 4, worker, 1, device="cpu", seed=2, gpu_augmentation=True)
    decoded = TorchTurboDataLoader(data, 4, worker, 1, device="cpu", seed=2, gpu_decode=True)
    with on_cpu, decoded:
        for (_, (a,)), (_, (b,)) in zip(on_cpu, decoded):
            assert torch.equal(a["target_image"], b["target_image"])
            assert 255 in b["target_image"]  # the fill where the image does not reach
    # the label map (a PNG, which nvJPEG does not take) stays with the workers
    assert set(worker.set_gpu_decode(True)) == {"image"}


def cmyk_jpeg(im):
    out = io.BytesIO()
    Image.fromarray(im).convert("CMYK").save(out, "JPEG", quality=95)
    return out.getvalue()


def png(im):
    return cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes()


def mixed_batch(corrupt=True):
    chelsea = photo("chelsea")
    gray = cv2.cvtColor(photo("coffee"), cv2.COLOR_RGB2GRAY)
    good = jpeg(photo("astronaut"))
    files = [
        good,
        cmyk_jpeg(chelsea),
        png(photo("rocket")),
        cv2.imencode(".jpg", gray)[1].tobytes(),  # gray file, RGB wanted
        good[: len(good) // 2] if corrupt else good,  # truncated: header intact
        good,
    ]
    return [pack({"image": f, "label": i}) for i, f in enumerate(files)]


def nvjpeg_like():
    """The CPU decoder refusing what nvJPEG refuses: the GPU's fallback path, on the CPU."""
    return CPUDecoder(refuse=nvjpeg_refusal)


def test_fallback_decodes_cmyk_png_and_gray_beside_jpegs():
    data = mixed_batch(corrupt=False)
    assert nvjpeg_refusal(np.frombuffer(pack_image(data, 1), np.uint8)) is not None
    worker = ClassificationWorker(((3, 96, 96), np.uint8, 0), ((1,), np.int64))
    on_cpu = TorchTurboDataLoader(data, 6, worker, 1, device="cpu", seed=0, gpu_augmentation=True)
    decoded = TorchTurboDataLoader(
        data, 6, worker, 1, device="cpu", seed=0, gpu_decode=nvjpeg_like()
    )
    with on_cpu, decoded:
        (_, (a,)), (_, (b,)) = next(iter(on_cpu)), next(iter(decoded))
    for i in range(6):
        assert psnr(a["image"][i].numpy(), b["image"][i].numpy()) > PSNR_DB, i
    assert torch.equal(b["image"][3][0], b["image"][3][1])  # gray as RGB


def pack_image(data, i):
    from crumpets.core import unpack

    return unpack(data[i])["image"]


def test_a_corrupt_jpeg_is_the_cpu_paths_error_naming_its_sample():
    data = mixed_batch()
    worker = ClassificationWorker(((3, 96, 96), np.uint8, 0), ((1,), np.int64))
    on_cpu = TorchTurboDataLoader(data, 6, worker, 1, device="cpu", seed=0)
    decoded = TorchTurboDataLoader(
        data, 6, worker, 1, device="cpu", seed=0, gpu_decode=nvjpeg_like()
    )
    with on_cpu, pytest.raises(ValueError) as cpu_error:
        next(iter(on_cpu))
    with decoded, pytest.raises(ValueError) as gpu_error:
        next(iter(decoded))
    first = str(cpu_error.value).splitlines()[0]
    assert first.startswith("ValueError: truncated JPEG")
    assert str(gpu_error.value).splitlines()[0] == first
    assert "sample 4 (epoch 0)" in str(gpu_error.value)
    assert gpu_error.value.sample_index == cpu_error.value.sample_index == 4


def test_a_file_larger_than_the_byte_buffer_names_the_sample_and_the_option():
    data = dataset(4)
    worker = ClassificationWorker(((3, 32, 32), np.uint8, 0), ((1,), np.int64))
    loader = TorchTurboDataLoader(
        data, 4, worker, 1, device="cpu", gpu_decode=True, gpu_decode_bytes=1000
    )
    with loader, pytest.raises(ValueError, match="gpu_decode_bytes") as error:
        next(iter(loader))
    assert "sample 0" in str(error.value)


def test_workers_that_read_their_pixels_refuse_gpu_decode():
    worker = SaliencyWorker(((3, 32, 32), np.uint8, 0), ((1, 32, 32), np.float32, 0))
    with pytest.raises(TypeError, match="gpu_decode"):
        TorchTurboDataLoader(dataset(2), 2, worker, 1, device="cpu", gpu_decode=True)
    # the user's worker is left as it was
    plain = ClassificationWorker(((3, 32, 32), np.uint8, 0), ((1,), np.int64))
    TorchTurboDataLoader(dataset(2), 2, plain, 1, device="cpu", gpu_decode=True)
    assert "image" in plain.buffer_specs and "image_bytes" not in plain.buffer_specs


class BytesLoader(TorchTurboDataLoader):
    """Hands out the workers' byte buffers as they are (deliver is the loader's extension
    point), to time decode_sample alone."""

    def deliver(self, mini_batches):
        return mini_batches


def encoded(n):
    """A batch as workers write it under gpu_decode, with every pixel operation on."""
    worker = ClassificationWorker(
        ((3, 64, 64), np.uint8, 0), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
    )
    loader = BytesLoader(
        dataset(n, quality=80), n, worker, 1, device="cpu", seed=5, gpu_decode=True
    )
    with loader:
        (_, (batch,)) = next(iter(loader))
        batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    assert batch["image_bytes"].dtype == torch.uint8 and batch["image_info"].shape == (n, 3)
    return batch, {"image": ((3, 64, 64), np.dtype(np.uint8), 0)}


def test_torch_calls_per_batch_do_not_grow_with_the_batch():
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    for n in (4, 32):
        batch, specs = encoded(n)
        decoder = CPUDecoder()

        def run(batch=batch, specs=specs, decoder=decoder):
            return randomize_sample(decode_sample(batch, specs, torch.device("cpu"), decoder))

        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        # torch.from_numpy (aten::lift_fresh: no kernel) wraps each image OpenCV decoded
        counts[n] = len(
            [
                e
                for e in prof.events()
                if e.name.startswith("aten::")
                and e.cpu_parent is None
                and e.name != "aten::lift_fresh"
            ]
        )
    assert counts[4] == counts[32], counts


def _nvjpeg_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # not installed, or a wheel built for another torch
        return False
    return True


@pytest.mark.skipif(not _nvjpeg_available(), reason="needs a CUDA device and torchvision")
def test_nvjpeg_path_on_cuda_agrees_with_the_cpu_workers_and_falls_back():
    data = dataset(8) + mixed_batch(corrupt=False)[:4]  # then CMYK, PNG, gray beside JPEGs
    worker = ClassificationWorker(
        ((3, 224, 224), np.uint8, 0), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
    )
    on_cpu = TorchTurboDataLoader(data, 4, worker, 2, device="cpu", seed=3, gpu_augmentation=True)
    decoded = TorchTurboDataLoader(data, 4, worker, 2, device="cuda:0", seed=3, gpu_decode=True)
    with on_cpu, decoded:
        for (_, (a,)), (_, (b,)) in zip(on_cpu, decoded):
            assert a["augmentation"] == b["augmentation"]
            assert b["image"].device.type == "cuda"
            for x, y in zip(a["image"], b["image"].cpu()):
                # nvJPEG's IDCT and upsampling differ from libjpeg's by a grey level or two
                assert psnr(x.numpy(), y.numpy()) > PSNR_DB - 3
