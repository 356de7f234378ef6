"""Fidelity of the fast downscaling path: PSNR against a float64 area average of the same
geometry, at whole and non-integer factors, for real photos as array, PNG and JPEG
(quality 90), with Pillow's antialiased bilinear resize (``Image.resize`` with BILINEAR,
``reducing_gap=None``) of the same pixels beside them.

JPEGs are decoded at reduced scale by libjpeg where the factor allows; arrays and PNGs are
area-averaged before the warp. The reference averages what the decoder returns at full
size (cv2.resize with INTER_AREA on float64: exact at any factor), and so does Pillow for
the JPEG column. The photos are cut to a multiple of 8 pixels, so that 2x, 4x and 8x are
whole factors on both sides; another factor scales each side to the nearest whole pixel,
and the warp gets the scale and aspect that map the photo exactly onto that size, as the
reference does.

Run: nox -s bench   (or: python benchmarks/fidelity.py)
"""

from __future__ import annotations

import platform

import cv2
import numpy as np
import PIL
import skimage.data
from PIL import Image

from crumpets.augment.augmentation import transform_image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# whole factors, where the area average is a plain block mean, and others: between 1x and
# 2x, just above 2x, and those of 512 -> 112, 56, 48 and 40
FACTORS = (1.25, 1.5, 1.75, 2.0, 2.25, 3.0, 4.0, 512 / 112, 8.0, 512 / 56, 512 / 48, 512 / 40)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def pillow(im: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    th, tw = size
    return np.asarray(Image.fromarray(im).resize((tw, th), Image.BILINEAR, reducing_gap=None))


def main() -> None:
    print(
        "Downscale PSNR (dB) vs float64 area average: crumpets (array, PNG, JPEG) | Pillow's "
        f"antialiased bilinear (of the array, of the decoded JPEG); {platform.machine()}, "
        f"OpenCV {cv2.__version__}, Pillow {PIL.__version__}"
    )
    head = ("photo", "factor", "array", "png", "jpeg", "| Pillow", "jpeg")
    print(f"{head[0]:<10} " + " ".join(f"{h:>7}" for h in head[1:]))
    for name in PHOTOS:
        im = getattr(skimage.data, name)()
        h, w = im.shape[0] // 8 * 8, im.shape[1] // 8 * 8
        im = np.ascontiguousarray(im[:h, :w])
        bgr = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        png = cv2.imencode(".png", bgr)[1].tobytes()
        jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        full = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), 1), cv2.COLOR_BGR2RGB)
        for factor in FACTORS:
            size = th, tw = round(h / factor), round(w / factor)
            sx, sy = tw / w, th / h  # scale 1 fits the shorter side's scale: sy here
            geometry = dict(scale=(sx * sy) ** 0.5 / max(sx, sy), aspect=sx / sy)
            scores = []
            for src, decoded in ((im, im), (png, im), (jpg, full)):
                ref = cv2.resize(decoded.astype(np.float64), (tw, th), interpolation=cv2.INTER_AREA)
                out, _ = transform_image(src, size, **geometry)
                scores.append(psnr(out, ref))
            for decoded in (im, full):
                ref = cv2.resize(decoded.astype(np.float64), (tw, th), interpolation=cv2.INTER_AREA)
                scores.append(psnr(pillow(decoded, size), ref))
            line = " ".join(f"{s:7.1f}" for s in scores[:3]) + " | "
            print(f"{name:<10} {factor:6.2f} {line}" + " ".join(f"{s:7.1f}" for s in scores[3:]))


if __name__ == "__main__":
    main()
