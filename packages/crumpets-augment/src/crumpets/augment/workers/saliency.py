"""Saliency maps from eye-tracking data, with the same geometry as the image.

Gaze points are given in source image pixel coordinates (pixel centres at integers, like
keypoints). They go through the 2x3 matrix the image got, so the map lines up with the
augmented image whatever its rotation, scale, shift or mirror.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .._geometry import resize_matrix
from ..rng import RNG
from ._image import ImageWorker, sample_field

__all__ = [
    "TARGET_PARAMS",
    "SaliencyWorker",
    "check_range",
    "check_target_params",
    "discretize_points",
    "interpolate_points",
    "saliency_map",
]

TARGET_PARAMS = {
    "sample_ratio": 1.0,
    "jitter": 0.0,
    "interpolate": False,
    "blur": 0.0,
    "maxnorm": False,
}


def check_range(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """Which points (N x 2, x y) lie on an h x w map.

    A pixel covers [i - 0.5, i + 0.5) around its centre i, so a point is inside when it
    is finite and rounds (half up) to a pixel of the map.

    Returns:
        Boolean mask of length N.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):  # NaN compares False: outside
        return (
            (points[:, 0] >= -0.5)
            & (points[:, 0] < w - 0.5)
            & (points[:, 1] >= -0.5)
            & (points[:, 1] < h - 0.5)
        )


def discretize_points(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """An h x w float32 map counting the points that round to each pixel; points
    outside are dropped."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    points = points[check_range(points, h, w)]
    x, y = np.floor(points + 0.5).astype(np.intp).T
    out = np.zeros((h, w), np.float32)
    np.add.at(out, (y, x), 1.0)
    return out


def interpolate_points(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """An h x w float32 map with each point splatted bilinearly onto its 4 nearest pixels.

    Each point inside the map adds a total weight of 1 (a neighbour beyond the border
    gives its share to the border pixel), so the map sums to the number of points inside;
    points outside are dropped.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    points = points[check_range(points, h, w)]
    low = np.floor(points)
    frac = points - low
    x0, y0 = low.astype(np.intp).T
    fx, fy = frac.T
    out = np.zeros((h, w), np.float64)
    for dx, wx in ((0, 1 - fx), (1, fx)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            xi = np.clip(x0 + dx, 0, w - 1)
            yi = np.clip(y0 + dy, 0, h - 1)
            np.add.at(out, (yi, xi), wx * wy)
    return out.astype(np.float32)


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if ok and math.isfinite(value) and (value > low if low_open else value >= low):
        if value <= high:
            return float(value)
    bracket = "(" if low_open else "["
    raise ValueError(
        f"target_image_params[{name!r}] must be a number in {bracket}{low}, {high}], got {value!r}"
    )


def check_target_params(params: dict | None) -> dict:
    """Check ``target_image_params`` and fill in the defaults.

    Raises:
        ValueError: naming the first unknown key or bad value.
    """
    params = dict(params or {})
    unknown = set(params) - set(TARGET_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown target_image_params {sorted(unknown)}; allowed: {sorted(TARGET_PARAMS)}"
        )
    out = {**TARGET_PARAMS, **params}
    out["sample_ratio"] = _number("sample_ratio", out["sample_ratio"], 0, 1, low_open=True)
    out["jitter"] = _number("jitter", out["jitter"], 0, math.inf)
    out["blur"] = _number("blur", out["blur"], 0, math.inf)
    for name in ("interpolate", "maxnorm"):
        if not isinstance(out[name], (bool, np.bool_)):
            raise ValueError(f"target_image_params[{name!r}] must be a bool, got {out[name]!r}")
        out[name] = bool(out[name])
    return out


def _experiment_points(experiment: Any) -> np.ndarray:
    """An experiment's fixations, or its raw gaze locations if it has no fixations."""
    if not isinstance(experiment, dict):
        raise TypeError(f"an experiment must be a dict, got {type(experiment).__name__}")
    points = experiment.get("fixations")
    if points is None or len(points) == 0:
        points = experiment.get("locations")
    if points is None or len(points) == 0:
        return np.zeros((0, 2))
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"gaze points must be a list of [x, y], got shape {points.shape}")
    return points[:, :2]  # raw gaze data may carry more columns (e.g. timestamps)


class SaliencyWorker(ImageWorker):
    """Worker that outputs images and saliency maps created from raw gaze locations.

    Expects samples ``{"image": encoded image data, "experiments": [experiment, ...]}``.
    Each experiment is a dict with gaze points ``[x, y]`` in source image pixels under
    "fixations", or, if that is absent or empty, under "locations" (raw gaze data).
    The points follow the image's geometry exactly (``augmentation['transform']``, scaled
    to the target's size); points that leave the target are dropped, and a sample with
    none left gets an all-zero map. What the map was made with, the random draws
    included, goes to ``batch['target_augmentation']``: :func:`saliency_map` makes it
    again from those parameters.

    Args:
        image: image buffer spec ``((C, H, W), dtype[, fill_value])``.
        target_image: saliency map buffer spec, e.g. ``((1, H, W), np.float32)``; its
            size may differ from the image's.
        image_params: fixed image parameters, see :class:`ImageWorker`.
        target_image_params: how points become the map:

            - ``sample_ratio`` (default 1): fraction in (0, 1] of the experiments (those
              with points) used, at least one, drawn at random per sample.
            - ``jitter`` (default 0): Gaussian noise with sigma ``jitter * W`` (target
              width, both axes) added to each mapped point.
            - ``interpolate`` (default False): splat each point bilinearly onto its 4
              nearest pixels instead of adding 1 to the pixel it rounds to.
            - ``blur`` (default 0): Gaussian blur with sigma ``blur * W``.
            - ``maxnorm`` (default False): divide the map by its maximum.

        image_rng: RNG for the image (and so the map's geometry).
        **kwargs: passed to :class:`ImageWorker`.

    Raises:
        ValueError: for a bad target buffer or a bad or unknown ``target_image_params`` key.
    """

    prepare_reads_pixels = False  # its prepare reads the image's matrix, never its pixels

    def __init__(
        self,
        image: Any,
        target_image: Any,
        image_params: dict | None = None,
        target_image_params: dict | None = None,
        image_rng: RNG | None = None,
        **kwargs: Any,
    ):
        super().__init__(image, image_params=image_params, image_rng=image_rng, **kwargs)
        self.add_buffer("target_image", target_image)
        self.written_in_full.add("target_image")  # prepare assigns the whole map
        shape, dtype = self.buffer_specs["target_image"][:2]
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
            raise ValueError(f"buffer 'target_image' must have shape (1, H, W), got {shape}")
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"buffer 'target_image' must have a float dtype, got {dtype}")
        self.add_params("target_image", check_target_params(target_image_params))

    def _target_matrix(self, transform: Any, h: int, w: int) -> np.ndarray:
        """The image's matrix, followed by the resize from the image's size to h x w."""
        _, ih, iw = self.buffer_specs["image"][0]
        fx, fy = w / iw, h / ih
        image = np.vstack([np.asarray(transform, np.float64), [0.0, 0.0, 1.0]])
        return (resize_matrix(fx, fy) @ image)[:2]

    def prepare(self, sample: dict, batch: dict, buffers: dict) -> None:
        super().prepare(sample, batch, buffers)
        assert self.rng is not None  # process() made this sample's generator
        params = self.params["target_image"]
        target = buffers["target_image"]
        h, w = target.shape[-2:]
        experiments = [_experiment_points(e) for e in sample_field(sample, "experiments")]
        # the draws, recorded with the map's parameters so that it can be replayed
        drawn = {**params, "experiments": None, "jitter_seed": None, "gpu_ops": []}
        with_points = [i for i, e in enumerate(experiments) if len(e)]
        if with_points and params["sample_ratio"] < 1:
            # round, not ceil: 25 * 0.28 is 7.000000000000001
            n = max(1, round(len(with_points) * params["sample_ratio"]))
            chosen = np.sort(self.rng.choice(len(with_points), n, replace=False))
            drawn["experiments"] = [with_points[i] for i in chosen.tolist()]
        if params["jitter"]:
            drawn["jitter_seed"] = int(self.rng.integers(2**31))
        m = self._target_matrix(batch["augmentation"][-1]["transform"], h, w)
        target[...] = saliency_map(experiments, m, (h, w), drawn).reshape(target.shape)
        batch["target_augmentation"].append(drawn)


def saliency_map(
    experiments: list[np.ndarray], matrix: np.ndarray, size: tuple[int, int], params: dict
) -> np.ndarray:
    """The saliency map of a sample: a pure function of its gaze points and parameters.

    Args:
        experiments: each experiment's gaze points (N x 2, source image pixels).
        matrix: 2x3 matrix from source pixels to map pixels.
        size: (height, width) of the map.
        params: ``target_image_params`` and the sample's draws, as a
            :class:`SaliencyWorker` records them in ``batch['target_augmentation']``:
            ``experiments`` (indices of the experiments used; None: all) and
            ``jitter_seed`` (seed of the points' jitter; None: none).

    Returns:
        A float32 (height, width) map.
    """
    h, w = size
    used = (
        experiments
        if params["experiments"] is None
        else [experiments[i] for i in params["experiments"]]
    )
    used = [e for e in used if len(e)]
    points = np.concatenate(used) if used else np.zeros((0, 2))
    points = points @ matrix[:, :2].T + matrix[:, 2]
    if params["jitter"] and params["jitter_seed"] is not None:
        jitter = np.random.default_rng(params["jitter_seed"])
        points += jitter.normal(0.0, params["jitter"] * w, points.shape)
    if params["interpolate"]:
        saliency = interpolate_points(points, h, w)
    else:
        saliency = discretize_points(points, h, w)
    if params["blur"]:
        saliency = cv2.GaussianBlur(saliency, (0, 0), params["blur"] * w)
    if params["maxnorm"]:
        peak = saliency.max()
        if peak > 0:  # an empty map stays zero
            saliency /= peak
    return saliency
