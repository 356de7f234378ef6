"""SaliencyWorker through the real loader: maps follow the image's geometry exactly."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from _photos import encode, photo

from crumpets.augment import SaliencyWorker
from crumpets.augment.presets import MixtureRNG
from crumpets.augment.workers.saliency import (
    check_range,
    discretize_points,
    interpolate_points,
    saliency_map,
)
from crumpets.core import TurboDataLoader, pack
from crumpets.core.plugins import load_entry_point

H, W = 120, 160
IMAGE = ((3, H, W), np.uint8)
TARGET = ((1, H, W), np.float32)


def small_photo():
    return cv2.resize(photo("coffee"), (W, H), interpolation=cv2.INTER_AREA)


def sample(experiments, image=None):
    image = small_photo() if image is None else image
    return pack({"image": encode(image, ".png"), "experiments": experiments})


def run(worker, data, nworkers=1, seed=0):
    with TurboDataLoader(data, 4, worker, nworkers, seed=seed) as loader:
        return [
            {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in mb.items()}
            for _, (mb,) in loader
        ]


def maps(worker, data, **kwargs):
    """Every sample's (map H x W, augmentation) in order."""
    out = []
    for batch in run(worker, data, **kwargs):
        out += [(m[0], aug) for m, aug in zip(batch["target_image"], batch["augmentation"])]
    return out


def test_identity_geometry_puts_the_fixations_on_their_pixels():
    experiments = [
        {"fixations": [[20, 30], [100, 50], [140, 110], [140, 110]], "locations": [[1, 1]]},
        {"fixations": [], "locations": [[60, 60]]},  # no fixations: raw gaze locations
        {"locations": [[10, 100, 12345.0]]},  # extra columns (timestamps) are ignored
        {"fixations": [[-5, 10], [160, 10], [10, 120]]},  # outside: dropped
    ]
    worker = SaliencyWorker(IMAGE, TARGET)
    ((saliency, aug),) = maps(worker, [sample(experiments)])
    np.testing.assert_allclose(aug["transform"], [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    expected = np.zeros((H, W), np.float32)
    for x, y in [(20, 30), (100, 50), (140, 110), (140, 110), (60, 60), (10, 100)]:
        expected[y, x] += 1
    np.testing.assert_array_equal(saliency, expected)


def test_smaller_target_gets_the_resized_image_geometry():
    worker = SaliencyWorker(IMAGE, ((1, H // 2, W // 2), np.float32))
    ((saliency, _),) = maps(worker, [sample([{"fixations": [[41, 21], [0, 0], [159, 119]]}])])
    # pixel centres: x_target = (x + 0.5) / 2 - 0.5
    assert saliency.shape == (H // 2, W // 2)
    assert sorted(zip(*np.nonzero(saliency))) == [(0, 0), (10, 20), (59, 79)]


def test_random_geometry_maps_points_with_the_images_matrix():
    rng = MixtureRNG(rotation_sigma=30, scale_range=(0.8, 1.5), hmirror=0.5, vmirror=0.5)
    rng_shift = MixtureRNG(rotation_sigma=30, shift_range=(-1, 1), aspect_sigma=0.2)
    point = np.array([52.0, 37.0])
    # a white dot on a darkened photo at the fixation: the augmented image shows where it went
    image = small_photo() // 3
    cv2.circle(image, (52, 37), 3, (255, 255, 255), -1)
    data = [sample([{"fixations": [point.tolist()]}], image) for _ in range(12)]
    inside = 0
    for image_rng in (rng, rng_shift):
        worker = SaliencyWorker(IMAGE, TARGET, image_rng=image_rng)
        for batch in run(worker, data, nworkers=2):
            for im, saliency, aug in zip(
                batch["image"], batch["target_image"][:, 0], batch["augmentation"]
            ):
                m = np.asarray(aug["transform"])
                x, y = m[:, :2] @ point + m[:, 2]
                if not (2 <= x <= W - 3 and 2 <= y <= H - 3):
                    assert saliency.sum() <= 1
                    continue
                inside += 1
                assert saliency.sum() == 1
                py, px = np.unravel_index(saliency.argmax(), saliency.shape)
                assert abs(px - x) <= 1 and abs(py - y) <= 1
                # the map's peak sits on the dot in the augmented image
                gray = im.mean(0)
                assert gray[py, px] > 200, (gray[py, px], aug)
    assert inside >= 18  # most samples keep the point inside, so the test means something


def test_sample_ratio_uses_a_random_subset_of_experiments():
    experiments = [{"fixations": [[5 + 6 * i, 60]]} for i in range(25)]
    data = [sample(experiments)] * 8
    seen = set()
    for saliency, _ in maps(
        SaliencyWorker(IMAGE, TARGET, target_image_params={"sample_ratio": 0.28}), data
    ):
        assert saliency.sum() == 7  # 25 * 0.28 experiments of one point each
        seen.add(tuple(np.flatnonzero(saliency[60])))
    assert len(seen) > 4
    tiny = SaliencyWorker(IMAGE, TARGET, target_image_params={"sample_ratio": 0.01})
    assert all(s.sum() == 1 for s, _ in maps(tiny, data))  # at least one
    full = SaliencyWorker(IMAGE, TARGET)
    assert all(s.sum() == 25 for s, _ in maps(full, data))


def test_sampling_skips_experiments_without_points():
    experiments = [{"fixations": []}, {"locations": []}, {}, {"fixations": [[5, 5]]}]
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params={"sample_ratio": 0.25})
    for saliency, _ in maps(worker, [sample(experiments)] * 4):
        assert saliency[5, 5] == 1 and saliency.sum() == 1


def test_jitter_spreads_points_with_sigma_jitter_times_width():
    experiments = [{"fixations": [[80, 60]] * 400}]
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params={"jitter": 0.05})
    (saliency, _), (other, _) = maps(worker, [sample(experiments)] * 2)
    ys, xs = np.nonzero(saliency)
    assert len(xs) > 100 and saliency.sum() == 400  # sigma 8 px: nothing falls off the map
    weights = saliency[ys, xs]
    for coords, centre in ((xs, 80), (ys, 60)):
        mean = np.average(coords, weights=weights)
        sigma = np.sqrt(np.average((coords - mean) ** 2, weights=weights))
        assert abs(mean - centre) < 1.5 and 6.5 < sigma < 9.5
    assert not np.array_equal(saliency, other)  # every sample draws its own noise


def test_interpolate_splats_bilinearly_and_conserves_mass():
    points = [[20.25, 30.5], [-0.4, 10], [159.4, 119.4], [-0.6, 10], [200, 5], [70, 80]]
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params={"interpolate": True})
    ((saliency, _),) = maps(worker, [sample([{"fixations": points}])])
    assert saliency.sum() == pytest.approx(4, abs=1e-5)  # 4 points inside
    np.testing.assert_allclose(saliency[30:32, 20:22], [[0.375, 0.125], [0.375, 0.125]], atol=1e-6)
    assert saliency[80, 70] == pytest.approx(1)
    assert saliency[10, 0] == pytest.approx(1)  # weight beyond the border stays on it


def test_blur_is_gaussian_with_sigma_blur_times_width():
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params={"blur": 0.02})
    ((saliency, _),) = maps(worker, [sample([{"fixations": [[80, 60]]}])])
    sigma = 0.02 * W
    assert np.unravel_index(saliency.argmax(), saliency.shape) == (60, 80)
    assert saliency.sum() == pytest.approx(1, abs=1e-3)
    assert saliency.max() == pytest.approx(1 / (2 * np.pi * sigma**2), rel=0.05)


def test_maxnorm_scales_the_peak_to_one_and_leaves_empty_maps_zero():
    params = {"blur": 0.02, "maxnorm": True}
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params=params)
    points = [[80, 60], [80, 60], [20, 20]]
    data = [sample([{"fixations": points}]), sample([{"fixations": [[500, 500]]}])]
    (saliency, _), (empty, _) = maps(worker, data)
    assert saliency.max() == pytest.approx(1)
    assert saliency[60, 80] == pytest.approx(1) and 0.4 < saliency[20, 20] < 0.6
    assert not empty.any()


def test_same_seed_same_maps_for_any_worker_count():
    rng = MixtureRNG(rotation_sigma=20, scale_range=(0.9, 1.3), hmirror=0.5)
    params = {"sample_ratio": 0.5, "jitter": 0.02, "interpolate": True, "blur": 0.01}
    experiments = [{"fixations": [[10 + 12 * i, 20 + 8 * i]]} for i in range(10)]
    data = [sample(experiments)] * 8
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params=params, image_rng=rng)
    one, two = maps(worker, data, seed=3), maps(worker, data, nworkers=2, seed=3)
    other = maps(worker, data, seed=4)
    for (a, aug_a), (b, aug_b) in zip(one, two):
        np.testing.assert_array_equal(a, b)
        assert aug_a == aug_b
    assert any(not np.array_equal(a, c) for (a, _), (c, _) in zip(one, other))


def test_each_map_replays_from_its_recorded_parameters():
    # randomness never mixed with the map: the draws (experiment subset, jitter) are
    # recorded, and the map is a function of them
    rng = MixtureRNG(rotation_sigma=20, scale_range=(0.9, 1.3), hmirror=0.5)
    params = {"sample_ratio": 0.5, "jitter": 0.02, "blur": 0.01, "maxnorm": True}
    experiments = [{"fixations": [[10 + 12 * i, 20 + 8 * i]]} for i in range(10)]
    experiments.insert(3, {"fixations": []})  # no points: never counted or chosen
    worker = SaliencyWorker(IMAGE, ((1, 60, 80), np.float32), target_image_params=params)
    worker.image_rng = rng
    points = [np.asarray(e["fixations"], np.float64).reshape(-1, 2) for e in experiments]
    chosen = set()
    for batch in run(worker, [sample(experiments)] * 8):
        for target, aug, drawn in zip(
            batch["target_image"], batch["augmentation"], batch["target_augmentation"]
        ):
            assert len(drawn["experiments"]) == 5 and 3 not in drawn["experiments"]
            chosen.add(tuple(drawn["experiments"]))
            m = worker._target_matrix(aug["transform"], 60, 80)
            np.testing.assert_array_equal(saliency_map(points, m, (60, 80), drawn), target[0])
    assert len(chosen) > 1  # drawn per sample


@pytest.mark.parametrize(
    "params, key",
    [
        ({"smaple_ratio": 0.5}, "smaple_ratio"),
        ({"sample_ratio": 0}, "sample_ratio"),
        ({"sample_ratio": 1.5}, "sample_ratio"),
        ({"sample_ratio": "half"}, "sample_ratio"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": True}, "jitter"),
        ({"blur": float("nan")}, "blur"),
        ({"interpolate": "yes"}, "interpolate"),
        ({"maxnorm": 1}, "maxnorm"),
    ],
)
def test_bad_target_params_are_rejected_at_construction(params, key):
    with pytest.raises(ValueError, match=key):
        SaliencyWorker(IMAGE, TARGET, target_image_params=params)


def test_bad_target_buffers_are_rejected_at_construction():
    with pytest.raises(ValueError, match="shape"):
        SaliencyWorker(IMAGE, ((3, H, W), np.float32))
    with pytest.raises(ValueError, match="float"):
        SaliencyWorker(IMAGE, ((1, H, W), np.uint8))


def test_helpers():
    points = np.array([[0, 0], [-0.5, 3], [9.49, 4.49], [9.5, 0], [3, -0.6], [np.nan, 1]])
    np.testing.assert_array_equal(check_range(points, 5, 10), [1, 1, 1, 0, 0, 0])
    counts = discretize_points(points, 5, 10)
    assert counts.shape == (5, 10) and counts.dtype == np.float32
    assert counts[0, 0] == 1 and counts[3, 0] == 1 and counts[4, 9] == 1 and counts.sum() == 3
    # half-way points round up, consistently (numpy's round would send 2.5 to 2)
    assert discretize_points(np.array([[2.5, 1.5]]), 5, 10)[2, 3] == 1
    splat = interpolate_points(np.array([[1.5, 2.5], [7.0, 1.0]]), 5, 10)
    np.testing.assert_allclose(splat[2:4, 1:3], 0.25)
    assert splat[1, 7] == 1 and splat.sum() == pytest.approx(2)


def test_registered_exported_and_picklable():
    assert load_entry_point("crumpets.workers", "saliency") is SaliencyWorker
    worker = SaliencyWorker(IMAGE, TARGET, target_image_params={"blur": 0.01})
    copy = pickle.loads(pickle.dumps(worker))
    assert copy.params["target_image"] == worker.params["target_image"]
