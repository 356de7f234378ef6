"""The augmentation parameters, declared once: names, types, valid values, and which pixel
operation reads which of them.

Plain Python (no numpy, OpenCV or torch), so every package reads the same declaration: the
RNGs of crumpets-augment check their ranges against it, its workers check parameters with
:func:`check_params` and leave the operations of :data:`PIXEL_OPS` to a GPU when asked to,
and crumpets-torch's Randomizer gathers each operation's parameters by the names listed
here.

A parameter dict (one per image, what an RNG draws and a worker returns in
``batch['augmentation']``) maps names of :data:`PARAMS` to values; None, or a missing
name, means "not applied" (the parameter's ``neutral`` value).

Example:
    >>> check_params({"angle": 10, "gamma_gray": 0.8, "interp_method": "linear"})
    {'angle': 10, 'gamma_gray': 0.8, 'interp_method': 1}
    >>> PIXEL_OPS["noise"]
    ('noise', 'noise_seed')
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "AUGMENTED_IMAGES",
    "INTERPOLATIONS",
    "NOISE_SCALE",
    "NOISE_TABLE_SEED",
    "NOISE_TABLE_SIZE",
    "OUTPUT_KEYS",
    "PARAMS",
    "PIXEL_OPS",
    "Param",
    "check_param",
    "check_params",
    "enabled_ops",
]

# OpenCV's cv2.INTER_* values (fixed by OpenCV's API; crumpets-augment checks they match).
INTERPOLATIONS: dict[str, int] = {"nearest": 0, "linear": 1, "cubic": 2, "area": 3, "lanczos4": 4}


@dataclass(frozen=True)
class Param:
    """One augmentation parameter.

    Attributes:
        name: its key in a parameter dict.
        kind: 'number' (a finite real), 'int', 'bool', 'numbers' (``length`` finite reals),
            'choice' (one of ``choices``) or 'any' (checked where it is used).
        doc: what it means.
        low, high: the valid range of a number (of each of 'numbers').
        low_open: True if ``low`` itself is not allowed.
        length: how many values 'numbers' has.
        choices: the allowed values of a 'choice'.
        neutral: the value that changes nothing, which None stands for.
    """

    name: str
    kind: str
    doc: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    length: int = 1
    choices: tuple = ()
    neutral: Any = None

    def bounds(self) -> str:
        """The valid range as text, e.g. '(0, inf)' or '[-1, 1]'."""
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]".replace(
            "inf]", "inf)"
        )

    def contains(self, low: float, high: float) -> bool:
        """Whether every number in [low, high] is valid for this parameter."""
        above = low > self.low if self.low_open else low >= self.low
        return above and high <= self.high


PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        # geometry: one affine warp in the workers
        Param("angle", "number", "degrees of counter-clockwise rotation", neutral=0.0),
        Param(
            "scale", "number", "1 fits the image by scale_mode", low=0, low_open=True, neutral=1.0
        ),
        Param(
            "aspect",
            "number",
            "x stretched by sqrt(aspect), y by 1/sqrt(aspect)",
            low=0,
            low_open=True,
            neutral=1.0,
        ),
        Param("shift", "numbers", "(x, y) move, 1 is the whole slack", length=2, neutral=[0, 0]),
        Param("hmirror", "bool", "mirror horizontally", neutral=False),
        Param("vmirror", "bool", "mirror vertically", neutral=False),
        Param("shear", "number", "gradient of horizontal edges", neutral=0.0),
        Param(
            "interp_method",
            "choice",
            "OpenCV interpolation (a value or name of INTERPOLATIONS)",
            choices=tuple(INTERPOLATIONS.values()),
            neutral=INTERPOLATIONS["linear"],
        ),
        Param(
            "scale_mode",
            "choice",
            "which edge fits at scale 1",
            choices=("shortest", "longest"),
            neutral="shortest",
        ),
        Param(
            "supersampling",
            "int",
            "k x k samples per pixel; 0 where downscaling aliases",
            low=0,
            high=8,  # 8 is already 64 samples per pixel; memory grows with k squared
            neutral=0,
        ),
        Param("background", "any", "fill where the image does not reach: one value or per channel"),
        Param(
            "colorspace",
            "choice",
            "colour space of the result",
            choices=("rgb", "bgr", "hsv", "lab", "ycrcb", "gray"),
        ),
        # pixel operations: in the workers, or on the GPU (PIXEL_OPS)
        Param("gamma_gray", "number", "gamma of every channel", low=0, low_open=True, neutral=1.0),
        Param(
            "gamma_color",
            "numbers",
            "gamma per channel (r, g, b), times gamma_gray",
            low=0,
            low_open=True,
            length=3,
            neutral=[1.0, 1.0, 1.0],
        ),
        Param("contrast", "number", "> 0 steepens mid tones, < 0 flattens", -1, 1, neutral=0.0),
        Param("blur", "number", "Gaussian sigma relative to the image width", 0, 1, neutral=0.0),
        # sigma = blur * width: beyond 1 the image is one colour, and the kernel keeps growing
        Param("noise", "number", "noise strength: sigma = 64 * noise grey levels", 0, neutral=0.0),
        Param("noise_seed", "int", "places the noise pattern", neutral=0),
    )
}

# Pixel operations in the order they are applied, and the parameters each reads. A worker
# with gpu_augmentation leaves them to the GPU Randomizer and lists them in 'gpu_ops'.
PIXEL_OPS: dict[str, tuple[str, ...]] = {
    "gamma": ("gamma_gray", "gamma_color", "contrast"),
    "blur": ("blur",),
    "noise": ("noise", "noise_seed"),
}

# The noise operation's constants, shared by the CPU and GPU kernels: sigma is
# NOISE_SCALE * noise grey levels, and the pattern is a window, placed by noise_seed, of a
# table of NOISE_TABLE_SIZE standard normal float32 samples drawn once per process from
# numpy.random.default_rng(NOISE_TABLE_SEED).
NOISE_SCALE = 64.0
NOISE_TABLE_SIZE = 1 << 21  # 8 MB
NOISE_TABLE_SEED = 0x5EED

# What a worker reports besides the parameters: the 2x3 matrix it applied and the pixel
# operations it left to the GPU. Ignored when fed back as parameters.
OUTPUT_KEYS = frozenset({"transform", "gpu_ops"})

# Image buffers that workers augment, and the batch key of their parameter dicts.
AUGMENTED_IMAGES: dict[str, str] = {
    "image": "augmentation",
    "target_image": "target_augmentation",
}


def _bad(name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"augmentation parameter {name!r} must be {what}, got {value!r}")


def _real(p: Param, value: Any) -> None:
    # numbers.Real covers numpy's numbers too; bool is an int, but not a number here
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(p.name, "a number", value)
    if not math.isfinite(value):
        raise _bad(p.name, "a finite number", value)
    number = cast(float, value)  # any numbers.Real compares like a float
    if not p.contains(number, number):
        raise _bad(p.name, f"in {p.bounds()}", value)


def check_param(name: str, value: Any) -> Any:
    """Check one parameter; return it (an interpolation name becomes its value).

    Raises:
        ValueError: naming the parameter, for an unknown name or an invalid value.
    """
    p = PARAMS.get(name)
    if p is None:
        raise ValueError(f"unknown augmentation parameter {name!r}; allowed: {sorted(PARAMS)}")
    if value is None or p.kind == "any":
        return value
    if p.kind == "number":
        _real(p, value)
    elif p.kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _bad(name, "an int", value)
        _real(p, int(value))
    elif p.kind == "bool":
        # numpy's bool is no bool subclass; 0 and 1 are accepted as the reference's code did
        if type(value).__name__ not in ("bool", "bool_") and value not in (0, 1):
            raise _bad(name, "a bool", value)
    elif p.kind == "numbers":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise _bad(name, f"{p.length} numbers", value)
        if len(value) != p.length:
            raise _bad(name, f"{p.length} numbers", value)
        for v in value:
            _real(p, v)
    elif p.kind == "choice":
        if name == "interp_method" and isinstance(value, str):
            value = INTERPOLATIONS.get(value.lower(), value)
        if isinstance(value, bool) or value not in p.choices:
            names = list(INTERPOLATIONS.items()) if name == "interp_method" else list(p.choices)
            raise _bad(name, f"one of {names}", value)
        if name == "interp_method":
            value = int(value)
    return value


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a parameter dict; return a checked copy (:data:`OUTPUT_KEYS` pass unchanged).

    Raises:
        ValueError: naming the first unknown or invalid parameter.
    """
    unknown = set(params) - PARAMS.keys() - OUTPUT_KEYS
    if unknown:
        raise ValueError(
            f"unknown augmentation parameters {sorted(unknown)}; allowed: {sorted(PARAMS)}"
        )
    return {k: v if k in OUTPUT_KEYS else check_param(k, v) for k, v in params.items()}


def enabled_ops(params: Mapping[str, Any], color: bool = True) -> list[str]:
    """The pixel operations of :data:`PIXEL_OPS` that ``params`` switch on, in order.

    An operation is on when one of its parameters (other than the seed) is set to
    something other than None or 0; ``gamma_color`` counts only for colour images.
    """
    on = []
    for op, names in PIXEL_OPS.items():
        for name in names:
            value = params.get(name)
            if name == "noise_seed" or value is None or (name == "gamma_color" and not color):
                continue
            if PARAMS[name].kind == "numbers" or value:  # a gamma of 0 is invalid, not off
                on.append(op)
                break
    return on
