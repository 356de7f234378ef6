"""Workers through the real loader: Quick Start, reproducibility, targets, points, errors."""

from __future__ import annotations

import copy
import io
import os
import pickle
from itertools import cycle

import cv2
import msgpack
import numpy as np
import pytest
from _photos import encode, photo

from crumpets.augment.presets import AUGMENTATION_TRAIN, MixtureRNG
from crumpets.augment.rng import INTERP_NEAREST, RNG
from crumpets.augment.workers import (
    ClassificationWorker,
    FCNWorker,
    ImageWorker,
    SegmentationWorker,
)
from crumpets.core import TurboDataLoader, pack
from crumpets.core.broker import Request
from crumpets.core.shm import DummyBufferManager, SharedBufferManager

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def make_tinyset(root):
    """The Quick Start's folder tree, from real photos: tinyset/<class>/<n>.jpg"""
    for name in PHOTOS:
        folder = os.path.join(root, "tinyset", name)
        os.makedirs(folder)
        im = photo(name)
        for n in range(3):
            crop = im[n * 20 :, n * 30 :]
            with open(os.path.join(folder, f"{n}.jpg"), "wb") as f:
                f.write(encode(crop))
    return os.path.join(root, "tinyset")


def prepare_dataset(dsdir):
    # The reference's Quick Start code, verbatim but for the folder name.
    iterable = []
    for cls_id, (cls_dir, _, imgs) in enumerate(sorted(os.walk(dsdir))[1:]):
        for img_path in sorted(imgs):
            with io.FileIO(os.path.join(cls_dir, img_path)) as f:
                img = f.read()
            dic = {"image": img, "label": cls_id}
            iterable.append(msgpack.packb(dic, use_bin_type=True))
    return iterable


def test_quick_start_loader_example(tmp_path):
    batch_size, epochs, nworkers = 2, 3, 2
    sample_size = (3, 224, 224)
    iterable = prepare_dataset(make_tinyset(tmp_path))
    num_samples = len(iterable)
    cyclr = cycle(iterable)
    loader = TurboDataLoader(
        cyclr,
        batch_size,
        ClassificationWorker(
            (sample_size, np.uint8), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
        ),
        nworkers,
        length=num_samples,
    )
    labels = []
    with loader:
        for epoch in range(epochs):  # noqa: B007 - the reference's code, verbatim
            for iteration, mini_batch in loader:  # noqa: B007
                for sample in mini_batch:
                    image = sample["image"]
                    label = sample["label"]
                    assert image.shape == (2, 3, 224, 224) and image.dtype == np.uint8
                    assert image.std() > 20  # a photo, not background
                    assert len(sample["augmentation"]) == 2
                    labels += label[:, 0].tolist()
    assert labels == sorted(labels[:12]) * 3  # every sample once per epoch, in order


def samples(n=16, **extra):
    im = photo("coffee")
    return [
        pack({"image": encode(np.roll(im, 7 * i, axis=1)), "label": i % 4, **extra})
        for i in range(n)
    ]


def run(worker, data, nworkers, seed=0, **kwargs):
    with TurboDataLoader(data, 4, worker, nworkers, seed=seed, **kwargs) as loader:
        return [
            {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in mb.items()}
            for _, (mb,) in loader
        ]


def test_same_seed_same_pixels_and_parameters_for_any_worker_count():
    worker = ClassificationWorker(
        ((3, 96, 96), np.uint8), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
    )
    one, two = run(worker, samples(), 1, seed=4), run(worker, samples(), 2, seed=4)
    other = run(worker, samples(), 2, seed=5)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["augmentation"] == b["augmentation"]
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(one, other))


def test_returned_parameters_replay_the_image():
    rng = MixtureRNG(
        prob=1,
        scale_range=(0.8, 1.3),
        rotation_sigma=20,
        hmirror=0.5,
        brightness_range=(-0.3, 0.3),
        noise_range=(0.05, 0.1),
        blur_range=(0, 0.01),
    )
    worker = ClassificationWorker(((3, 64, 64), np.uint8), ((1,), np.int64), image_rng=rng)
    (batch, *_) = run(worker, samples(4), 1)
    data = msgpack.unpackb(samples(4)[2])["image"]
    params = {k: v for k, v in batch["augmentation"][2].items() if k != "transform"}
    replay = ClassificationWorker(((3, 64, 64), np.uint8), ((1,), np.int64), image_params=params)
    buffers = {"image": np.zeros((3, 64, 64), np.uint8), "label": np.zeros(1, np.int64)}
    replay.rng = np.random.default_rng(0)
    replay.prepare({"image": data, "label": 0}, {"augmentation": []}, buffers)
    np.testing.assert_array_equal(buffers["image"], batch["image"][2])


def test_keypoints_and_boxes_follow_the_matrix():
    rng = MixtureRNG(scale_range=(1.2, 1.6), rotation_sigma=30, shift_range=(-1, 1), hmirror=0.5)
    keypoints = [[300, 200], [10, 10], [590, 390], [-50, 20]]
    bboxes = [[250, 150, 350, 250], [0, 0, 5, 5]]
    data = samples(8, keypoints=keypoints, bboxes=bboxes)
    for outside in ("drop", "clip"):
        worker = ImageWorker(((3, 128, 128), np.uint8), image_rng=rng, outside=outside)
        for batch in run(worker, data, 2):
            for aug, kps, kidx, boxes, bidx in zip(
                batch["augmentation"],
                batch["keypoints"],
                batch["keypoints_index"],
                batch["bboxes"],
                batch["bboxes_index"],
            ):
                m = np.asarray(aug["transform"])
                expected = np.asarray(keypoints, float) @ m[:, :2].T + m[:, 2]
                inside = ((expected >= -0.5) & (expected <= 127.5)).all(1)
                if outside == "drop":
                    assert kidx == np.flatnonzero(inside).tolist()
                    np.testing.assert_allclose(kps, expected[inside], atol=1e-3)
                else:
                    assert kidx == [0, 1, 2, 3]
                    np.testing.assert_allclose(kps, np.clip(expected, -0.5, 127.5), atol=1e-3)
                assert ((boxes >= -0.5) & (boxes <= 127.5)).all()
                assert (boxes[:, 2:] >= boxes[:, :2]).all()
                if 0 in bidx:  # the centre box always stays partly visible here
                    centre = (
                        np.asarray([[250, 150], [350, 250], [250, 250], [350, 150]]) @ m[:, :2].T
                        + m[:, 2]
                    )
                    box = boxes[bidx.index(0)]
                    np.testing.assert_allclose(box[:2], np.maximum(centre.min(0), -0.5), atol=1e-3)


def test_segmentation_target_keeps_labels_and_skips_pixel_ops():
    labels = np.zeros((400, 600), np.uint8)
    labels[100:300, 150:450] = 3
    labels[:, 500:] = 7
    rng = MixtureRNG(
        prob=1,
        rotation_sigma=25,
        scale_range=(0.7, 1.4),
        brightness_range=(-0.5, 0.5),
        noise_range=(0.2, 0.3),
        blur_range=(0.01, 0.02),
    )
    data = [pack({"image": encode(photo("coffee")), "target_image": encode(labels, ".png")})] * 8
    worker = SegmentationWorker(
        ((3, 96, 96), np.uint8), ((1, 96, 96), np.uint8, 255), image_rng=rng
    )
    for batch in run(worker, data, 2):
        assert set(np.unique(batch["target_image"])) <= {0, 3, 7, 255}
        for aug, taug in zip(batch["augmentation"], batch["target_augmentation"]):
            assert aug["transform"] == taug["transform"]
            assert taug["interp_method"] == INTERP_NEAREST and taug["noise"] is None
            assert aug["noise"] is not None


def _leftovers_workers():
    # leaves background around the image; one warp straight into the buffer where it can
    small = {"scale_mode": "longest", "scale": 0.6, "supersampling": 1}
    labels = np.full((200, 300), 3, np.uint8)
    seg = [pack({"image": encode(photo("coffee")), "target_image": encode(labels, ".png")})] * 3
    return [
        (ImageWorker(((3, 40, 40), np.uint8, (1, 2, 3)), image_params=small), samples(3)),
        (
            ImageWorker(((3, 40, 40), np.uint8, 9), image_params={**small, "colorspace": "bgr"}),
            samples(3),
        ),
        (ImageWorker(((1, 40, 40), np.uint8, 5), image_params=small), samples(3)),
        (ImageWorker(((1, 40, 40), np.float32, 5), image_params=small), samples(3)),
        (
            SegmentationWorker(
                ((3, 40, 40), np.uint8), ((1, 40, 40), np.uint8, 255), image_params=small
            ),
            seg,
        ),
    ]


@pytest.mark.parametrize("worker, data", _leftovers_workers())
def test_buffers_written_in_full_hold_nothing_of_the_previous_batch(worker, data):
    # Buffers in written_in_full are not reset between batches: what a batch leaves in a
    # shared slot must not show in the next, background included.
    assert "image" in worker.written_in_full
    fresh = copy.copy(worker)
    fresh.set_buffer_manager(DummyBufferManager(len(data), worker.buffer_specs))
    manager = SharedBufferManager(1, len(data), worker.buffer_specs)
    try:
        worker.set_buffer_manager(manager)
        for buffer in manager.buffers(0).values():
            buffer[...] = 77  # a previous batch's pixels
        request = Request(0, 0, 0, 0, list(range(len(data))), data)
        reused, expected = worker.process(request), fresh.process(request)
        for key in worker.written_in_full:
            np.testing.assert_array_equal(reused[key], expected[key])
    finally:
        manager.close()


def test_gpu_augmentation_leaves_the_pixel_ops_to_the_gpu():
    rng = MixtureRNG(prob=1, brightness_range=(0.5, 0.5), noise_range=(0.2, 0.2))
    data = samples(4)
    cpu = run(
        ClassificationWorker(((3, 64, 64), np.uint8), ((1,), np.int64), image_rng=rng), data, 1
    )
    plain = run(ClassificationWorker(((3, 64, 64), np.uint8), ((1,), np.int64)), data, 1)
    gpu = run(
        ClassificationWorker(
            ((3, 64, 64), np.uint8), ((1,), np.int64), image_rng=rng, gpu_augmentation=True
        ),
        data,
        1,
    )
    np.testing.assert_array_equal(gpu[0]["image"], plain[0]["image"])
    assert not np.array_equal(cpu[0]["image"], plain[0]["image"])
    assert gpu[0]["augmentation"][0]["gamma_gray"] == cpu[0]["augmentation"][0]["gamma_gray"]
    # only the operations that are on are left to the GPU (blur is off here)
    assert gpu[0]["augmentation"][0]["gpu_ops"] == ["gamma", "noise"]
    assert cpu[0]["augmentation"][0]["gpu_ops"] == []
    # a loader that applies only gamma on the GPU says so: the worker adds the noise itself
    gamma_only = ClassificationWorker(((3, 64, 64), np.uint8), ((1,), np.int64), image_rng=rng)
    gamma_only.set_gpu_augmentation(True, ["gamma"])
    partial = run(gamma_only, data, 1)
    assert partial[0]["augmentation"][0]["gpu_ops"] == ["gamma"]
    assert not np.array_equal(partial[0]["image"], plain[0]["image"])
    with pytest.raises(ValueError, match=r"ops must name pixel operations.*\['contrast'\]"):
        gamma_only.set_gpu_augmentation(True, ["gamma", "contrast"])
    with pytest.raises(TypeError, match="collection of operation names, got 'gamma'"):
        gamma_only.set_gpu_augmentation(True, "gamma")
    gamma_only.set_gpu_augmentation(True)  # no ops: all of them again
    assert run(gamma_only, data, 1)[0]["augmentation"][0]["gpu_ops"] == ["gamma", "noise"]


def test_gpu_augmentation_lists_what_each_image_leaves_and_converts_on_the_cpu():
    rng = MixtureRNG(prob=0.5, brightness_range=(0.3, 0.3), blur_range=(0.01, 0.01))
    data = samples(24)
    seg = SegmentationWorker(
        ((3, 48, 48), np.uint8), ((1, 48, 48), np.uint8), image_rng=rng, gpu_augmentation=True
    )
    seg_data = [
        pack({"image": encode(photo("coffee")), "target_image": encode(photo("coffee")[..., 0])})
    ] * 4
    for batch in run(seg, seg_data, 1):
        assert all(aug["gpu_ops"] == [] for aug in batch["target_augmentation"])
    listed = [
        aug["gpu_ops"]
        for batch in run(
            ImageWorker(((3, 48, 48), np.uint8), image_rng=rng, gpu_augmentation=True), data, 1
        )
        for aug in batch["augmentation"]
    ]
    assert {tuple(ops) for ops in listed} == {(), ("gamma",), ("blur",), ("gamma", "blur")}
    # in another colour space the pixel operations come before the conversion: on the CPU
    hsv = {"colorspace": "hsv"}
    on_cpu = run(ImageWorker(((3, 48, 48), np.uint8), hsv, rng), data, 1)
    left = run(ImageWorker(((3, 48, 48), np.uint8), hsv, rng, gpu_augmentation=True), data, 1)
    for a, b in zip(on_cpu, left):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert all(aug["gpu_ops"] == [] for aug in b["augmentation"])


def test_draws_of_unchecked_rngs_are_checked_per_sample():
    class Wild(RNG):
        def __call__(self, rng):
            return {"gamma_gray": -1.0}

    class Tame(Wild):
        checked = True  # claims its draws are valid: not checked again

    worker = ImageWorker(((3, 32, 32), np.uint8), image_rng=Wild())
    with pytest.raises(Exception, match="'gamma_gray' must be in \\(0, inf\\)"):
        run(worker, samples(2), 1)
    assert not Wild.checked and AUGMENTATION_TRAIN.checked
    with pytest.raises(Exception, match="gamma_gray must be a finite number > 0"):
        run(ImageWorker(((3, 32, 32), np.uint8), image_rng=Tame()), samples(2), 1)


def test_colorspaces_and_gray_buffers():
    data = samples(4)
    rgb = run(ImageWorker(((3, 32, 32), np.uint8)), data, 1)[0]["image"]
    bgr = run(ImageWorker(((3, 32, 32), np.uint8), image_params={"colorspace": "bgr"}), data, 1)[0][
        "image"
    ]
    gray = run(ImageWorker(((1, 32, 32), np.float32)), data, 1)[0]["image"]
    np.testing.assert_array_equal(rgb[:, ::-1], bgr)
    assert gray.shape == (4, 1, 32, 32) and gray.dtype == np.float32
    expected = cv2.cvtColor(np.ascontiguousarray(rgb[0].transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
    assert np.abs(gray[0, 0] - expected).mean() < 2


def _fcn_samples(n=8):
    im = photo("coffee")
    return [
        pack({"image": encode(np.roll(im, 7 * i, axis=1)), "target_image": encode(im[:, :, 0])})
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("make", "data"),
    [
        (lambda: ClassificationWorker(((3, 48, 64), np.uint8), ((1,), np.int64)), samples),
        (lambda: ImageWorker(((1, 40, 40), np.uint8)), samples),
        (lambda: FCNWorker(((3, 32, 32), np.uint8), ((1, 32, 32), np.uint8)), _fcn_samples),
    ],
    ids=["classification", "gray", "fcn"],
)
def test_deferred_pixels_are_the_pixels_written_at_once(make, data):
    deferred, at_once = make(), make()
    for worker in (deferred, at_once):
        worker.image_rng = AUGMENTATION_TRAIN
    at_once.defer_pixels = False
    assert deferred._defers() and not at_once._defers()
    for a, b in zip(run(deferred, data(8), 2), run(at_once, data(8), 2), strict=True):
        for key in ("image", "target_image"):
            if key in a:
                np.testing.assert_array_equal(a[key], b[key])
                assert a[key].std() > 20  # photos, not background
        assert a["augmentation"] == b["augmentation"]


def test_a_prepare_that_reads_its_pixels_gets_them_written():
    class Mean(ClassificationWorker):
        def prepare(self, sample, batch, buffers):
            super().prepare(sample, batch, buffers)
            batch["mean"].append(float(buffers["image"].mean()))

    worker = Mean(((3, 32, 32), np.uint8), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN)
    assert not worker._defers()  # its own prepare: the pixels are written at once
    for batch in run(worker, samples(8), 2):
        assert batch["mean"] == [float(image.mean()) for image in batch["image"]]
    worker.defer_pixels = True  # a subclass's word that it reads none: not written yet
    for batch in run(worker, samples(8), 2):
        assert all(m != float(image.mean()) for m, image in zip(batch["mean"], batch["image"]))


def test_workers_run_opencv_single_threaded():
    class Probe(ImageWorker):
        def prepare(self, sample, batch, buffers):
            super().prepare(sample, batch, buffers)
            batch["threads"].append(cv2.getNumThreads())

    batches = run(Probe(((3, 16, 16), np.uint8)), samples(8), 2)
    assert {t for b in batches for t in b["threads"]} == {1}


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"image_params": {"scale_mode": "middle"}}, ValueError, "shortest"),
        ({"image_params": {"colorspace": "cmyk"}}, ValueError, "hsv"),
        ({"image_params": {"interp_method": 99}}, ValueError, "INTERP|nearest|linear"),
        ({"image_params": {"blur": -1}}, ValueError, "'blur'"),
        ({"image_params": {"scale": 0}}, ValueError, "'scale'"),
        ({"image_params": {"angle": float("nan")}}, ValueError, "'angle'"),
        ({"image_params": {"zoom": 2}}, ValueError, "zoom"),
        ({"image_rng": {"scale": 2}}, TypeError, "image_rng"),
        ({"outside": "wrap"}, ValueError, "outside"),
        ({"image": ((224, 224, 3), np.uint8)}, ValueError, r"\(C, H, W\)"),
    ],
)
def test_bad_settings_fail_when_the_worker_is_built(kwargs, error, text):
    args = {"image": ((3, 32, 32), np.uint8), **kwargs}
    with pytest.raises(error, match=text):
        ImageWorker(**args)


@pytest.mark.parametrize(
    ("sample", "error", "text"),
    [
        ({"image": encode(photo())[:4000], "label": 1}, ValueError, "truncated JPEG"),
        ({"image": b"\x00" * 100, "label": 1}, ValueError, "cannot decode"),
        ({"label": 1}, KeyError, "no 'image' field"),
        ({"image": encode(photo()), "label": [1, 2]}, ValueError, "label"),
        ({"image": encode(photo()), "label": "cat"}, ValueError, "label"),
    ],
)
def test_bad_samples_name_the_sample(sample, error, text):
    data = samples(8)
    data[5] = pack(sample)
    worker = ClassificationWorker(((3, 32, 32), np.uint8), ((1,), np.int64))
    with pytest.raises(error, match=text) as info:
        run(worker, data, 2)
    assert "on sample 5" in str(info.value)


def test_worker_template_pickles():
    worker = ClassificationWorker(
        ((3, 32, 32), np.uint8, (1, 2, 3)),
        ((1,), np.int64),
        image_rng=AUGMENTATION_TRAIN,
        image_params={"scale_mode": "longest"},
    )
    clone = pickle.loads(pickle.dumps(worker))
    assert clone.buffer_specs == worker.buffer_specs and clone.params == worker.params
    rng = np.random.default_rng(1)
    assert clone.image_rng(np.random.default_rng(1)) == worker.image_rng(rng)


def test_workers_are_registered_entry_points():
    from crumpets.core.plugins import load_entry_point

    assert load_entry_point("crumpets.workers", "classification") is ClassificationWorker
    assert load_entry_point("crumpets.workers", "segmentation") is SegmentationWorker


def test_the_references_worker_modules_import():
    # crumpets.workers.saliency and crumpets.workers.segmentation in crumpets 3
    from crumpets.augment.workers.saliency import (
        SaliencyWorker,
        check_range,
        discretize_points,
        interpolate_points,
    )
    from crumpets.augment.workers.segmentation import SegmentationWorker as Seg

    assert Seg is SegmentationWorker and SaliencyWorker.__module__.endswith("workers.saliency")
    assert callable(check_range) and callable(discretize_points) and callable(interpolate_points)
