"""Ready-made augmentation settings and normalisation constants.

``AUGMENTATION_TRAIN`` is a sensible default for training classifiers; ``AUGMENTATION_ALL``
turns on every augmentation the Augmentation Guide shows, more strongly. ``AUGMENTATION_VAL``
and ``NO_AUGMENTATION`` draw no parameters at all.

Example:
    >>> import numpy as np
    >>> from crumpets.augment.presets import AUGMENTATION_TRAIN
    >>> params = AUGMENTATION_TRAIN(np.random.default_rng(0))
    >>> sorted(params)[:3]
    ['angle', 'aspect', 'blur']
"""

from __future__ import annotations

from .rng import INTERP_CUBIC, INTERP_LINEAR, RNG, MixtureRNG, NoRNG

__all__ = [
    "AUGMENTATION_ALL",
    "AUGMENTATION_TRAIN",
    "AUGMENTATION_VAL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_PARAMS_TRAIN",
    "INPUT_PARAMS_VAL",
    "NO_AUGMENTATION",
    "RNG",
    "MixtureRNG",
    "NoRNG",
]

AUGMENTATION_TRAIN = MixtureRNG(
    prob=0.5,
    scale_range=(1.0, 1.25),
    shift_range=(-1, 1),
    noise_range=(0.01, 0.1),
    brightness_range=(-0.3, 0.3),
    color_range=(-0.2, 0.2),
    contrast_range=(-0.3, 0.3),
    blur_range=(0, 1 / 448),
    rotation_sigma=10,
    aspect_sigma=0.1,
    # linear only: cubic costs three times as much per warp for no measurable gain here
    hmirror=0.5,
    shear_range=(-0.05, 0.05),
)

# The guide's example RNG (every pixel operation on every sample, prob=1), plus the options it
# shows one at a time (hmirror, shear, interpolations), at about the strengths it shows.
AUGMENTATION_ALL = MixtureRNG(
    prob=1.0,
    scale_range=(0.5, 1.5),
    shift_range=(-1, 1),
    noise_range=(0.01, 0.2),
    brightness_range=(-0.45, 0.45),
    color_range=(-0.3, 0.3),
    contrast_range=(-0.5, 0.5),
    blur_range=(0, 1.5 / 448),
    rotation_sigma=18,
    aspect_sigma=0.15,
    interpolations=(INTERP_LINEAR, INTERP_CUBIC),
    hmirror=0.5,
    vmirror=0.5,
    shear_range=(-0.06, 0.06),
)

AUGMENTATION_VAL = NoRNG()
NO_AUGMENTATION = NoRNG()

INPUT_PARAMS_TRAIN = dict(scale_mode="shortest")
INPUT_PARAMS_VAL = dict(scale_mode="shortest", interp_method=INTERP_LINEAR)

# ImageNet channel statistics, RGB order, on the 0-255 scale.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
