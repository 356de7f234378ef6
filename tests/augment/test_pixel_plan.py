"""The pixel plan: one image's pixel work as plain data, built from checked parameters with
the schema's neutral values, and which workers defer it (no registry: a class attribute)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _photos import encode, photo

from crumpets.augment._pixel_plan import plan_pixels
from crumpets.augment.augmentation import transform_image
from crumpets.augment.workers import ClassificationWorker, ImageWorker
from crumpets.augment.workers.saliency import SaliencyWorker
from crumpets.core.params import PARAMS, check_params

GEOMETRY = (
    "angle",
    "scale",
    "aspect",
    "shift",
    "hmirror",
    "vmirror",
    "shear",
    "scale_mode",
    "interp_method",
    "supersampling",
)


def _plan(params, shape=(3, 40, 48), skip=frozenset()):
    im = photo()
    return plan_pixels(
        check_params(params), im, im.shape[:2], shape, border=(0.0, 0.0, 0.0, 0.0), skip=skip
    )


def test_missing_parameters_are_the_schemas_neutral_values():
    empty = _plan({})
    neutral = _plan({name: PARAMS[name].neutral for name in GEOMETRY})
    assert empty.matrix == neutral.matrix
    assert (empty.interpolation, empty.supersampling) == (1, 0)
    assert empty.gamma is None and empty.blur is None and empty.noise_sigmas is None
    out_a, out_b = np.empty((2, 3, 40, 48), np.uint8)
    empty.run(out_a)
    neutral.run(out_b)
    np.testing.assert_array_equal(out_a, out_b)


def test_the_plan_is_frozen_and_writes_what_transform_image_writes():
    params = {"angle": 10, "scale": 1.2, "gamma_gray": 0.8, "blur": 0.02, "noise": 0.1}
    plan = _plan({**params, "noise_seed": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.blur = None  # type: ignore[misc]
    assert plan.gamma is not None and plan.blur is not None and plan.noise_sigmas is not None
    out = np.empty(plan.shape, np.uint8)
    plan.run(out)
    expected, matrix = transform_image(photo(), (40, 48), noise_seed=3, **params)
    np.testing.assert_array_equal(out.transpose(1, 2, 0), expected)
    np.testing.assert_array_equal(matrix, np.array(plan.matrix))


def test_operations_left_to_the_gpu_are_not_planned():
    plan = _plan(
        {"gamma_gray": 0.8, "blur": 0.02, "noise": 0.1}, skip=frozenset({"gamma", "blur", "noise"})
    )
    assert plan.gamma is None and plan.blur is None and plan.noise_sigmas is None


def test_gray_plans_one_plane():
    plan = _plan({"gamma_gray": 0.8}, shape=(1, 20, 20))
    out = np.empty((1, 20, 20), np.uint8)
    plan.run(out)
    assert out.std() > 10


def test_which_workers_defer_their_pixels_is_said_by_their_classes():
    image = ((3, 16, 16), np.uint8)
    assert ImageWorker(image)._defers()
    assert ClassificationWorker(image, ((1,), np.int64))._defers()
    assert SaliencyWorker(image, ((1, 8, 8), np.float32))._defers()

    class Reads(ClassificationWorker):
        def prepare(self, sample, batch, buffers):
            super().prepare(sample, batch, buffers)

    class SaysItReadsNone(Reads):
        prepare_reads_pixels = False

    class Inherits(SaysItReadsNone):  # does not override prepare: its parent's word holds
        pass

    class OwnImage(ClassificationWorker):
        def prepare_image(self, im, buffers, params, key):
            return super().prepare_image(im, buffers, params, key)

    label = ((1,), np.int64)
    assert not Reads(image, label)._defers()
    assert SaysItReadsNone(image, label)._defers()
    assert Inherits(image, label)._defers()
    assert not OwnImage(image, label)._defers()


def test_an_overridden_prepare_image_is_called():
    from crumpets.core import pack
    from crumpets.core.broker import Request
    from crumpets.core.shm import DummyBufferManager

    calls = []

    class OwnImage(ClassificationWorker):
        def prepare_image(self, im, buffers, params, key):
            calls.append(key)
            return super().prepare_image(im, buffers, params, key)

    worker = OwnImage(((3, 16, 16), np.uint8), ((1,), np.int64))
    worker.set_buffer_manager(DummyBufferManager(2, worker.buffer_specs))
    items = [pack({"image": encode(photo()), "label": 1})] * 2
    out = worker.process(Request(0, 0, 0, 0, [0, 1], items))
    assert calls == ["image", "image"] and out["image"].std() > 10
