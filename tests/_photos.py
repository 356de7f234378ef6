"""Real photos for tests, from scikit-image's bundled data, encoded as a dataset would
store them, and how close an image comes to a reference."""

from __future__ import annotations

import functools

import cv2
import numpy as np


@functools.cache
def photo(name: str = "coffee") -> np.ndarray:
    """RGB uint8 photo: astronaut (512x512), chelsea (300x451), coffee (400x600) ..."""
    import skimage.data

    return getattr(skimage.data, name)()


def encode(rgb: np.ndarray, ext: str = ".jpg", quality: int = 90) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, bgr, params)
    assert ok
    return buf.tobytes()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 ``a`` against ``b`` (any dtype), in dB."""
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))
