"""Fidelity of the fast downscaling path: PSNR of a 4x downscale against a float64
area average of the same geometry, for real photos as array, PNG and JPEG (quality 90).

JPEGs are decoded at reduced scale by libjpeg; arrays and PNGs are area-averaged before
the warp. The reference averages what the decoder returns at full size.

Run: nox -s bench   (or: python benchmarks/fidelity.py)
"""

from __future__ import annotations

import platform

import cv2
import numpy as np
import skimage.data

from crumpets.augment.augmentation import transform_image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def main() -> None:
    print(
        "4x downscale PSNR (dB) vs float64 area average; "
        f"{platform.machine()}, OpenCV {cv2.__version__}"
    )
    print(f"{'photo':<10} {'array':>7} {'png':>7} {'jpeg':>7}")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        im = getattr(skimage.data, name)()
        h, w = im.shape[0] // 4 * 4, im.shape[1] // 4 * 4
        im = im[:h, :w]
        bgr = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        png = cv2.imencode(".png", bgr)[1].tobytes()
        jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        full = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), 1), cv2.COLOR_BGR2RGB)
        scores = []
        for src, decoded in ((im, im), (png, im), (jpg, full)):
            ref = decoded.astype(np.float64).reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3))
            out, _ = transform_image(src, (h // 4, w // 4))
            scores.append(psnr(out, ref))
        print(f"{name:<10} " + " ".join(f"{s:7.1f}" for s in scores))


if __name__ == "__main__":
    main()
