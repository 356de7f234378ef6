"""Seeded batches stay bit-identical: pixels and 'augmentation' dicts against golden digests.

Two sets of digests, each through the real loader with 1 worker; the test checks 1, 2 and 4
workers against them. A change of any pixel, label or parameter (value or type: 1.0 is not
1, True is not 1) changes a digest. They are values of earlier code, not of the code under
test:

- ``GOLDEN_DEFAULT_RNG``, parameters from the code of commit 7459448 (before the workers'
  per-sample Python was trimmed), when each sample drew from
  ``numpy.random.default_rng((seed, epoch, index))``. The test gives the workers that
  generator again: the same numbers must still give the same batches, so the change of
  generator below changed nothing else.
- ``GOLDEN``, parameters from the code that made each sample's generator
  ``crumpets.core.plan.sample_rng`` (PCG64DXSM jumped streams, the one deliberate change of
  the random streams; docs/workers.md says so), computed when that change was made.

The parameters (and the 2x3 matrices) depend only on numpy's generators and Python's
arithmetic, so their digest is checked everywhere. The pixels also depend on the JPEG/PNG
encoder that makes the inputs and on OpenCV's kernels, so their digests are kept per
OpenCV version (``GOLDEN_PIXELS``, ``GOLDEN_PIXELS_DEFAULT_RNG``) and checked where the
inputs encode to the same bytes and OpenCV is a version with digests; elsewhere skipped,
saying why, except where ``CRUMPETS_GOLDEN_PIXELS=required`` (nox's test sessions, which pin
OpenCV to a version with digests): there a skip would be a failure. Both pixel sets are
of the code that antialiased every downscale from 1.8x
(the source shrunk to 2x-4x the target's scale, then 2x2 samples) and gave target pixels
whose centres map into the source only source pixels and the others the background (the
source's edge repeated a few pixels outward before the warp, its coverage carried in the
alpha channel; issue 20, items 7 and 8): every pixel digest changed then.
Digests of OpenCV 5.0.0 were of the code before that, and could not be made again where
that change was made (OpenCV 5.1.0 only): add a version's digests with
``python tests/augment/test_seeded_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from _photos import encode, photo

from crumpets.augment.presets import AUGMENTATION_ALL, AUGMENTATION_TRAIN, INPUT_PARAMS_TRAIN
from crumpets.augment.workers import ClassificationWorker, FCNWorker, ImageWorker
from crumpets.core import TurboDataLoader, broker, pack
from crumpets.core.broker import workers_are_forked

# sha256 of the encoded inputs, so a different encoder (or photo) skips the pixel check
GOLDEN_INPUTS = {
    "image": "f08fe0e8b2219849f5d68e58176b6e35997d4972def1bba796a3104144fa9a9d",
    "fcn": "6b376ce1e25f8d0a33cd47d8f31e8c04b6ab6c2da4104d4ecc2acb42dc2e2797",
}
# case: sha256 of the parameters
GOLDEN = {
    "train-224": "355cefe7645ca551b7750fb27bce1b80b933593c5cc85af9b26c6c6548c5cb1c",
    "all-96x128": "9877e78e11b21822020286109a3d3f32f361897348cb8b610f968b97f7d1db06",
    "gpu-split-64": "3874f8cf0872ef612dd466547853c1b1643b11eb94265d90a11a30951e2be263",
    "fcn-64": "ab3211ee4417c6bad6b880eaa978e6a98f8e598b7f426b7618d04bfd4b933b0f",
}
GOLDEN_DEFAULT_RNG = {
    "train-224": "895cebcf4655664d7fa91bd7f829d5efe25c5fc36bcb9f975a1e6600e0211104",
    "all-96x128": "3e82d4684d5a13e28a5dda418459951c0426cd400f280270ee2c37ef1a540846",
    "gpu-split-64": "4f6dd2e0641ce36ecd7ee5cac2488a42c2b0f19ebd62e57081223c383b4292f4",
    "fcn-64": "bbe20becf02205e0d360e8858d79766cee331205156b388c9870824bdfc28395",
}
# OpenCV version: {case: sha256 of the buffers}
GOLDEN_PIXELS = {
    "5.1.0": {
        "train-224": "561d8a97c7532e57461210775f0debff70bcecb896d50b539bc0b11a92d834af",
        "all-96x128": "6b1429a5e560169d6e260722e5237e8382f18d011a3ffa82c6937f09d3840114",
        "gpu-split-64": "e8505524750acc44268ccce2176cae52fb314310dcbc008f06715f2b81a2867f",
        "fcn-64": "ee867bff75a1ad8bd084c9bf3dcf30dea3cd078d4293d19f60af62eb80116932",
    },
}
GOLDEN_PIXELS_DEFAULT_RNG = {
    "5.1.0": {
        "train-224": "a492a36b512cc2fe33f68622eb5d3f1a6823df76fbe64c655fd6fd3ae7e72535",
        "all-96x128": "e4458fac225c21cbaa8dbbc308e29d48024bab49b8cdb378925f20155b02543f",
        "gpu-split-64": "7a8793e15b139e98269bbfb02467857b4bb79ed08eef713986338e31628d599a",
        "fcn-64": "2f29a590486e637e368754ae56eef215f41f3a5ab6e7490e27f376b13ee994eb",
    },
}


def _crops() -> list[np.ndarray]:
    # Sizes around the benchmark's 500x375 (landscape and portrait), larger and smaller, so
    # full, 1/2 and 1/4 JPEG decoding, area pre-reduction and supersampling all occur.
    out = []
    for i, name in enumerate(("astronaut", "chelsea", "coffee", "rocket")):
        im = photo(name)
        for j, (h, w) in enumerate(((375, 500), (500, 375), (180, 260), (427, 640))):
            y, x = 5 * i + 3 * j, 7 * j
            crop = im[y:, x:]
            out.append(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    return out


def image_samples() -> list[bytes]:
    samples = []
    for i, im in enumerate(_crops()):
        ext = ".png" if i % 5 == 4 else ".jpg"  # mostly JPEG, some PNG
        samples.append(pack({"image": encode(im, ext), "label": i % 7}))
    return samples


def fcn_samples() -> list[bytes]:
    samples = []
    for i, im in enumerate(_crops()[:10]):
        target = im[:, :, i % 3].copy()
        samples.append(pack({"image": encode(im), "target_image": encode(target, ".png")}))
    return samples


def make_case(case: str):
    """(worker, samples) of a case."""
    if case == "train-224":
        worker = ClassificationWorker(
            ((3, 224, 224), np.uint8),
            ((1,), np.int64),
            image_params=INPUT_PARAMS_TRAIN,
            image_rng=AUGMENTATION_TRAIN,
        )
        return worker, image_samples()
    if case == "all-96x128":
        worker = ClassificationWorker(
            ((3, 96, 128), np.uint8, (10, 20, 30)), ((1,), np.int64), image_rng=AUGMENTATION_ALL
        )
        return worker, image_samples()
    if case == "gpu-split-64":
        worker = ImageWorker(
            ((3, 64, 64), np.uint8), image_rng=AUGMENTATION_ALL, gpu_augmentation=True
        )
        return worker, image_samples()
    if case == "fcn-64":
        worker = FCNWorker(
            ((3, 64, 64), np.uint8),
            ((1, 64, 64), np.uint8, 255),
            target_image_params={"interp_method": "nearest", "noise": 0.0},
            image_rng=AUGMENTATION_ALL,
        )
        return worker, fcn_samples()
    raise KeyError(case)


def digests(case: str, nworkers: int, epochs: int = 2) -> tuple[str, str]:
    """sha256 of every batch's parameter lists and of its buffers, over two epochs."""
    worker, samples = make_case(case)
    params, pixels = hashlib.sha256(), hashlib.sha256()
    with TurboDataLoader(samples, 4, worker, nworkers, seed=11) as loader:
        for _ in range(epochs):
            for _, (batch,) in loader:
                for key in sorted(batch):
                    value = batch[key]
                    if isinstance(value, np.ndarray):
                        pixels.update(f"{key} {value.dtype} {value.shape}".encode())
                        pixels.update(np.ascontiguousarray(value).tobytes())
                    else:  # lists of per-sample values: json keeps 1.0, 1 and true apart
                        params.update(f"{key} ".encode())
                        params.update(json.dumps(value, sort_keys=True).encode())
    return params.hexdigest(), pixels.hexdigest()


def inputs_digest(samples: list[bytes]) -> str:
    return hashlib.sha256(b"".join(samples)).hexdigest()


class DefaultRNG:
    """Each sample's generator as it was before crumpets.core.plan.SampleRNG."""

    def __call__(self, seed: int, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng((seed, epoch, index))


@pytest.fixture
def default_rng(monkeypatch):
    # the workers make their SampleRNG in their process: forked ones inherit this patch
    monkeypatch.setattr(broker, "SampleRNG", DefaultRNG)


def check(case: str, nworkers: int, golden: dict, golden_pixels: dict) -> None:
    params, pixels = digests(case, nworkers)
    assert params == golden[case], f"{case}: parameters differ from the golden batches"
    inputs = "fcn" if case.startswith("fcn") else "image"
    # nox's test sessions pin OpenCV and say so: there the pixels are checked, never skipped
    not_here = (
        pytest.fail if os.environ.get("CRUMPETS_GOLDEN_PIXELS") == "required" else pytest.skip
    )
    if cv2.__version__ not in golden_pixels:
        versions = ", ".join(sorted(golden_pixels))
        not_here(f"pixels: golden digests are of OpenCV {versions}, not {cv2.__version__}")
    if inputs_digest(make_case(case)[1]) != GOLDEN_INPUTS[inputs]:
        not_here("pixels: this encoder (or scikit-image) makes other input bytes")
    expected = golden_pixels[cv2.__version__][case]
    assert pixels == expected, f"{case}: pixels differ from the golden batches"


@pytest.mark.parametrize("nworkers", [1, 2, 4])
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_seeded_batches_match_the_golden_ones(case, nworkers):
    check(case, nworkers, GOLDEN, GOLDEN_PIXELS)


@pytest.mark.skipif(not workers_are_forked(), reason="spawned workers do not inherit the patch")
@pytest.mark.parametrize("nworkers", [1, 2])
@pytest.mark.parametrize("case", sorted(GOLDEN_DEFAULT_RNG))
def test_with_the_old_generator_batches_match_the_previous_implementation(
    case, nworkers, default_rng
):
    check(case, nworkers, GOLDEN_DEFAULT_RNG, GOLDEN_PIXELS_DEFAULT_RNG)


if __name__ == "__main__":  # print the digests of the code as it is (to make the golden ones)
    print(f"OpenCV {cv2.__version__}")
    print({"image": inputs_digest(image_samples()), "fcn": inputs_digest(fcn_samples())})
    for case in sorted(GOLDEN):
        print(case, digests(case, 1))
    broker.SampleRNG = DefaultRNG  # forked workers inherit it
    for case in sorted(GOLDEN_DEFAULT_RNG):
        print("default_rng", case, digests(case, 1))
