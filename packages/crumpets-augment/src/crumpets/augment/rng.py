"""Random augmentation parameters: RNG objects draw plain dicts, kernels apply them.

An :class:`RNG` never uses the global numpy generator or :mod:`random`: every value comes
from the ``np.random.Generator`` passed to its ``__call__``. The loader gives each sample its
own generator, seeded from (seed, epoch, sample index), so parameters are reproducible for
any number of workers, and every sample can be replayed from its parameter dict.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from crumpets.core.params import INTERPOLATIONS, PARAMS, Param

__all__ = [
    "INTERPOLATIONS",
    "INTERP_AREA",
    "INTERP_CUBIC",
    "INTERP_LANCZOS4",
    "INTERP_LINEAR",
    "INTERP_NEAREST",
    "RNG",
    "MixtureRNG",
    "NoRNG",
    "check_interpolation",
    "human2gamma",
]

INTERP_NEAREST = int(cv2.INTER_NEAREST)
INTERP_LINEAR = int(cv2.INTER_LINEAR)
INTERP_CUBIC = int(cv2.INTER_CUBIC)
INTERP_AREA = int(cv2.INTER_AREA)
INTERP_LANCZOS4 = int(cv2.INTER_LANCZOS4)

# INTERPOLATIONS (name -> value) is declared with the other parameters in crumpets.core.params.


def check_interpolation(value: int | str) -> int:
    """Check an interpolation method and return its OpenCV value.

    Args:
        value: one of the ``INTERP_*`` values, or its name in :data:`INTERPOLATIONS`.

    Returns:
        The ``cv2.INTER_*`` value as an int.

    Raises:
        ValueError: if ``value`` is not an allowed name or value; the message lists them.
    """
    if isinstance(value, str) and value.lower() in INTERPOLATIONS:
        return INTERPOLATIONS[value.lower()]
    # bool is an int subclass; True would silently mean INTERP_LINEAR.
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if int(value) in INTERPOLATIONS.values():
            return int(value)
    allowed = ", ".join(f"{name}={v}" for name, v in INTERPOLATIONS.items())
    raise ValueError(f"interpolation must be one of {allowed}; got {value!r}")


def human2gamma(human: float) -> float:
    """Convert a human-understandable brightness to a gamma for gamma correction.

    Values outside [-1, 1] are clipped. The result is ``4 ** -human``: +1 brightens
    strongly (gamma 0.25), -1 darkens strongly (gamma 4), 0 is the identity (gamma 1).

    Args:
        human: value to convert to gamma.

    Returns:
        A gamma value in [0.25, 4].

    Raises:
        ValueError: if ``human`` is NaN.
    """
    human = float(human)
    if math.isnan(human):
        raise ValueError("human must be a number, got nan")
    return 4.0 ** -min(max(human, -1.0), 1.0)


class RNG(ABC):
    """Abstract base class for augmentation random number generators.

    Subclasses draw a plain dict of augmentation parameters (see
    ``crumpets.augment.augmentation.randomize_image`` for their meaning) from the generator
    they are given, and from nothing else. They must pickle: they are copied to worker
    processes.

    Attributes:
        checked: True when every dict the RNG draws is valid by construction (its ranges
            were checked against ``crumpets.core.params.PARAMS`` when it was built), so
            workers need not check each draw. False (the default) for other RNGs.
    """

    checked: bool = False

    @abstractmethod
    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the augmentation parameters of one sample.

        Args:
            rng: the sample's own generator; the only source of randomness.

        Returns:
            A dict of plain Python values (msgpack-able).
        """


class NoRNG(RNG):
    """Decidedly non-random RNG that returns an empty dict. Useful for validation runs."""

    checked = True

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "NoRNG()"


def _number(name: str, value: Any) -> float:
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


def _probability(name: str, value: Any) -> float:
    p = _number(name, value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return p


def _sigma(name: str, value: Any) -> float:
    s = _number(name, value)
    if s < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return s


def _range(name: str, value: Any, param: Param | None = None) -> tuple[float, float] | None:
    """Check a ``*_range`` parameter: None, or 2 finite numbers (a, b), a <= b, each valid
    for the augmentation parameter ``param`` it draws (any finite number if None)."""
    if value is None:
        return None
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"{name} must be 2 numbers (a, b), got {value!r}") from None
    if isinstance(value, (str, bytes)) or len(items) != 2:
        raise ValueError(f"{name} must be 2 numbers (a, b), got {value!r}")
    a, b = (_number(name, v) for v in items)
    if a > b:
        raise ValueError(f"{name} must have a <= b, got {value!r}")
    if param is not None and not param.contains(a, b):
        raise ValueError(f"{name} values must be in {param.bounds()} ({param.name}), got {value!r}")
    return a, b


class MixtureRNG(RNG):
    """Old crumpets 2-style RNG: a base probability, Gaussian and uniform distributions.

    ``*_range`` parameters are 2 numbers (a, b) that define a uniform distribution U[a, b];
    ``*_sigma`` parameters are the standard deviation of a Gaussian. Every call returns a
    dict with all of these keys (the contract the image code consumes):

    - ``angle``: degrees, Normal(0, rotation_sigma)
    - ``scale``: U(scale_range), else 1.0
    - ``aspect``: exp(Normal(0, aspect_sigma))
    - ``shift``: [x, y], each U(shift_range) independently, else [0.0, 0.0]
    - ``hmirror``, ``vmirror``: bool, True with probability hmirror / vmirror
    - ``shear``: U(shear_range), else 0.0
    - ``interp_method``: uniform choice from interpolations, else None
    - ``gamma_gray``: human2gamma(U(brightness_range)), or None
    - ``gamma_color``: [human2gamma(U(color_range)) for each of 3 channels], or None
    - ``contrast``: U(contrast_range), or None
    - ``noise``: U(noise_range), or None
    - ``blur``: U(blur_range), relative to the image width, or None
    - ``noise_seed``: int in [0, 2**31), always drawn, so noise replays from the dict

    The pixel parameters (gamma_gray, gamma_color, contrast, noise, blur) are set only with
    probability ``prob``, each rolling separately, and only when their range is given.

    Draw order, the same on every call whatever the options: ``z = rng.standard_normal(2)``
    (angle, aspect), then ``u = rng.random(19)`` (scale, shift x, shift y, hmirror, vmirror,
    shear, interpolation, brightness roll and value, color roll and 3 values, contrast roll
    and value, noise roll and value, blur roll and value), then
    ``rng.integers(0, 2**31)`` (noise_seed). Because every call consumes the same draws and
    each value has its own slot, enabling one option does not change the others' values.

    Args:
        prob: probability that each pixel-based augmentation is applied; each rolls
            separately; does not apply to spatial transforms like scale, rotation, etc.
        scale_range: range of the ``scale`` value; both > 0.
        shift_range: range of each of the ``shift`` values.
        noise_range: range of the ``noise`` value; both >= 0.
        brightness_range: range of brightness, converted to ``gamma_gray`` by human2gamma.
        color_range: range of color, converted to ``gamma_color`` by human2gamma.
        contrast_range: range of the ``contrast`` value; within [-1, 1].
        blur_range: range of the ``blur`` value; within [0, 1]. The Gaussian blur's sigma is
            ``blur * image_width``.
        rotation_sigma: standard deviation of the ``angle`` value, in degrees.
        aspect_sigma: standard deviation of the log of the ``aspect`` value.
        interpolations: interpolation methods to choose from for ``interp_method``
            (``INTERP_*`` values or names).
        hmirror: probability that the ``hmirror`` value is True.
        vmirror: probability that the ``vmirror`` value is True.
        shear_range: range of the ``shear`` value.

    Raises:
        ValueError: naming the parameter, for any invalid argument.

    Example:
        >>> rng = MixtureRNG(prob=1.0, brightness_range=(-0.4, 0.4), hmirror=0.5)
        >>> params = rng(np.random.default_rng(0))
        >>> sorted(params)[:3]
        ['angle', 'aspect', 'blur']
    """

    _N_UNIFORM = 19
    checked = True

    def __init__(
        self,
        prob: float = 1,
        scale_range: Sequence[float] | None = None,
        shift_range: Sequence[float] | None = None,
        noise_range: Sequence[float] | None = None,
        brightness_range: Sequence[float] | None = None,
        color_range: Sequence[float] | None = None,
        contrast_range: Sequence[float] | None = None,
        blur_range: Sequence[float] | None = None,
        rotation_sigma: float = 0,
        aspect_sigma: float = 0,
        interpolations: Sequence[int | str] | None = None,
        hmirror: float = 0,
        vmirror: float = 0,
        shear_range: Sequence[float] | None = None,
    ):
        self.prob = _probability("prob", prob)
        # Every range is checked against the parameter it draws (crumpets.core.params), so
        # each draw is valid by construction (``checked``): a bad range fails here, not in
        # a worker.
        self.scale_range = _range("scale_range", scale_range, PARAMS["scale"])
        self.shift_range = _range("shift_range", shift_range, PARAMS["shift"])
        self.noise_range = _range("noise_range", noise_range, PARAMS["noise"])
        # brightness and color go through human2gamma, which gives a valid gamma for any number
        self.brightness_range = _range("brightness_range", brightness_range)
        self.color_range = _range("color_range", color_range)
        self.contrast_range = _range("contrast_range", contrast_range, PARAMS["contrast"])
        self.blur_range = _range("blur_range", blur_range, PARAMS["blur"])
        self.rotation_sigma = _sigma("rotation_sigma", rotation_sigma)
        self.aspect_sigma = _sigma("aspect_sigma", aspect_sigma)
        self.interpolations = self._check_interpolations(interpolations)
        self.hmirror = _probability("hmirror", hmirror)
        self.vmirror = _probability("vmirror", vmirror)
        self.shear_range = _range("shear_range", shear_range, PARAMS["shear"])

    @staticmethod
    def _check_interpolations(value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
            raise ValueError(f"interpolations must be a non-empty sequence, got {value!r}")
        if len(value) == 0:
            raise ValueError("interpolations must be a non-empty sequence, got an empty one")
        try:
            return tuple(check_interpolation(v) for v in value)
        except ValueError as e:
            raise ValueError(f"interpolations: {e}") from None

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        # Written out, without helper calls: it runs once per sample. Each value is the
        # formula the class docstring gives, term for term.
        z_angle, z_aspect = rng.standard_normal(2).tolist()  # plain floats
        # the 19 uniform draws, in the order of the class docstring
        (
            u_scale,
            u_shift_x,
            u_shift_y,
            u_hmirror,
            u_vmirror,
            u_shear,
            u_interp,
            roll_brightness,
            u_brightness,
            roll_color,
            u_color_0,
            u_color_1,
            u_color_2,
            roll_contrast,
            u_contrast,
            roll_noise,
            u_noise,
            roll_blur,
            u_blur,
        ) = rng.random(self._N_UNIFORM).tolist()
        noise_seed = int(rng.integers(0, 2**31))
        prob = self.prob

        interp = None
        if self.interpolations is not None:
            n = len(self.interpolations)
            interp = self.interpolations[min(int(u_interp * n), n - 1)]

        # uniform(bounds, x) = min(max(a + (b - a) * x, a), b): a + (b - a) * x may round
        # one ulp past b. human2gamma(h) = 4.0 ** -min(max(h, -1.0), 1.0).
        gamma_gray = gamma_color = contrast = noise = blur = None
        bounds = self.brightness_range
        if bounds is not None and roll_brightness < prob:
            a, b = bounds
            gamma_gray = 4.0 ** -min(max(min(max(a + (b - a) * u_brightness, a), b), -1.0), 1.0)
        bounds = self.color_range
        if bounds is not None and roll_color < prob:
            a, b = bounds
            gamma_color = [
                4.0 ** -min(max(min(max(a + (b - a) * x, a), b), -1.0), 1.0)
                for x in (u_color_0, u_color_1, u_color_2)
            ]
        bounds = self.contrast_range
        if bounds is not None and roll_contrast < prob:
            a, b = bounds
            contrast = min(max(a + (b - a) * u_contrast, a), b)
        bounds = self.noise_range
        if bounds is not None and roll_noise < prob:
            a, b = bounds
            noise = min(max(a + (b - a) * u_noise, a), b)
        bounds = self.blur_range
        if bounds is not None and roll_blur < prob:
            a, b = bounds
            blur = min(max(a + (b - a) * u_blur, a), b)

        scale = shear = 0.0
        shift_x = shift_y = 0.0
        bounds = self.scale_range
        if bounds is None:
            scale = 1.0
        else:
            a, b = bounds
            scale = min(max(a + (b - a) * u_scale, a), b)
        bounds = self.shift_range
        if bounds is not None:
            a, b = bounds
            shift_x = min(max(a + (b - a) * u_shift_x, a), b)
            shift_y = min(max(a + (b - a) * u_shift_y, a), b)
        bounds = self.shear_range
        if bounds is not None:
            a, b = bounds
            shear = min(max(a + (b - a) * u_shear, a), b)

        return {
            # The conditionals avoid -0.0 when a sigma is 0.
            "angle": z_angle * self.rotation_sigma if self.rotation_sigma else 0.0,
            "scale": scale,
            "aspect": math.exp(z_aspect * self.aspect_sigma) if self.aspect_sigma else 1.0,
            "shift": [shift_x, shift_y],
            "hmirror": u_hmirror < self.hmirror,
            "vmirror": u_vmirror < self.vmirror,
            "shear": shear,
            "interp_method": interp,
            "gamma_gray": gamma_gray,
            "gamma_color": gamma_color,
            "contrast": contrast,
            "noise": noise,
            "blur": blur,
            "noise_seed": noise_seed,
        }

    def __repr__(self) -> str:
        defaults = {"prob": 1.0, "rotation_sigma": 0.0, "aspect_sigma": 0.0}
        defaults.update(hmirror=0.0, vmirror=0.0)
        options = [
            f"{name}={value!r}"
            for name, value in vars(self).items()
            if value is not None and value != defaults.get(name)
        ]
        return f"MixtureRNG({', '.join(options)})"
