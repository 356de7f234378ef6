"""Workers that decode and augment images into the loader's shared buffers: images,
(image, label) pairs, and image pairs for fully convolutional networks.

Each sample's parameters come from the worker's RNG, drawn from the sample's own
generator (``self.rng``), overridden by the fixed ``*_params``; they are returned in
``batch['augmentation']`` with the 2x3 ``transform`` actually applied, so any sample can
be replayed and its keypoints and boxes follow the image exactly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, cast

import cv2
import numpy as np

from crumpets.core.broker import Batch, BufferWorker
from crumpets.core.params import OUTPUT_KEYS, PARAMS, PIXEL_OPS, check_params, enabled_ops

from .._decoding import MAX_PIXELS, check_max_pixels, read_source
from .._geometry import OUTSIDE, map_boxes, map_keypoints
from .._pixel_plan import plan_pixels
from .._warp import fill_values
from ..rng import RNG, NoRNG
from ._encoded import check_encoded, swap_buffers, write_encoded

__all__ = [
    "COLORSPACES",
    "ClassificationWorker",
    "FCNWorker",
    "ImageWorker",
    "check_params",
]

# RGB is what the decoder's BGR becomes; the others are converted from RGB.
COLORSPACES = {
    "rgb": None,
    "bgr": cv2.COLOR_RGB2BGR,
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2LAB,
    "ycrcb": cv2.COLOR_RGB2YCrCb,
    "gray": None,
}
# The names a parameter dict may hold: transform_image's arguments, colorspace and
# background, and what workers report (OUTPUT_KEYS), which is ignored.
_IMAGE_ARGS = frozenset(PARAMS) | OUTPUT_KEYS
_NO_SKIP: frozenset[str] = frozenset()
_ALL_OPS: frozenset[str] = frozenset(PIXEL_OPS)
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})


def _plain(value: Any) -> Any:
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _PLAIN_TYPES else _plain(v) for v in value]
    return value


class _Target:
    """What prepare_image needs of one image buffer, worked out once and kept while the
    buffer's spec, the array's shape and ``gpu_augmentation`` stay: its size, the default
    colour space, the warp's border value for the buffer's fill, and the pixel operations
    left to the GPU."""

    __slots__ = (
        "border",
        "channels",
        "colorspace",
        "gpu_augmentation",
        "gpu_ops",
        "shape",
        "skip",
        "spec",
        "source",
    )

    def __init__(self, worker: ImageWorker, key: str, shape: tuple[int, ...]):
        self.source = worker.buffer_specs[key]
        self.spec, _, fill = self.source
        self.shape = shape  # of the array written to: the spec's, unless prepare is given another
        self.channels = shape[0]
        color = self.channels == 3
        self.colorspace = "rgb" if color else "gray"
        self.border = _border(fill, self.channels)
        # The GPU applies pixel operations to the RGB (or gray) result; for another
        # colour space they must come before the conversion, on the CPU.
        self.gpu_augmentation = worker.gpu_augmentation
        self.gpu_ops = worker.gpu_ops
        self.skip = worker.gpu_ops if worker.gpu_augmentation else _NO_SKIP

    def fits(self, worker: ImageWorker, key: str, shape: tuple[int, ...]) -> bool:
        return (
            self.shape == shape
            and self.gpu_augmentation == worker.gpu_augmentation
            and self.gpu_ops is worker.gpu_ops
            and self.source is worker.buffer_specs[key]
        )


def _border(background: Any, channels: int) -> tuple[float, ...]:
    """The warp's border value for ``background``: one per channel, and 0 for the alpha
    channel of a colour image (warped as RGBA)."""
    fill = fill_values(background, channels)
    return (*fill, 0.0) if channels == 3 else fill


@functools.cache
def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def sample_field(sample: dict, key: str) -> Any:
    try:
        return sample[key]
    except KeyError:
        raise KeyError(f"sample has no {key!r} field; it has {sorted(sample, key=str)}") from None


@functools.cache
def _defers_by_default(cls: type[ImageWorker]) -> bool:
    """Whether ``cls`` defers its pixels when ``defer_pixels`` is None: when
    ``prepare_image`` is ImageWorker's, and ``prepare_reads_pixels = False`` is said in the
    body of ``cls`` or of a base, no lower than the class that defines its ``prepare``: a
    class that overrides ``prepare`` and says nothing is taken to read the pixels."""
    if cls.prepare_image is not ImageWorker.prepare_image:
        return False
    for c in cls.__mro__:
        if "prepare_reads_pixels" in vars(c):
            return vars(c)["prepare_reads_pixels"] is False
        if "prepare" in vars(c):
            return False
    return False


class ImageWorker(BufferWorker):
    """Worker for processing images of any kind.

    Args:
        image: buffer spec ``(shape, dtype[, fill_value])`` with shape (C, H, W), C 1 or
            3; the fill value is the background where the image does not reach.
        image_params: fixed parameters that override the random ones (see
            :func:`crumpets.augment.augmentation.randomize_image`, plus ``colorspace``
            'rgb', 'bgr', 'gray', 'hsv', 'lab' or 'ycrcb').
        image_rng: an :class:`~crumpets.augment.rng.RNG`; default: no augmentation.
        outside: what happens to keypoints that leave the image: 'drop' them (their
            original indices are in ``batch['keypoints_index']``) or 'clip' them to the
            border. Boxes are always clipped; with 'drop', boxes left with no area go.
        max_pixels: refuse an encoded image whose header claims more pixels than this
            (a ``ValueError`` naming the sample and the size), before decoding it: a small
            file can claim a huge image (a decompression bomb). The default is Pillow's
            limit, 89,478,485 pixels (256 MiB as RGB); None decodes any size. The size is
            read from JPEG, PNG, WebP, BMP, GIF and TIFF headers; other formats are left to
            OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2**30 pixels by default).
        **kwargs: passed to :class:`crumpets.core.broker.BufferWorker`
            (e.g. ``gpu_augmentation``).

    ``defer_pixels`` (class attribute): whether :meth:`prepare` may leave the pixels
    (decoding, warping, pixel operations) to the second phase of :meth:`process`, which
    writes them once every sample of the batch is prepared, one sample after another
    (:meth:`crumpets.core.broker.Batch.defer`). The per-sample Python then runs back to
    back while its data is in the caches, and a worker delivers about 5% more images per
    second. Every result is the same either way; an error in the pixels still names its
    sample, but comes after the batch's other samples are prepared, so of two bad samples
    the later one may be named. None (the default) defers when ``prepare_image`` is
    ImageWorker's and the worker's class, or the base that defines its ``prepare`` or one
    below it, says ``prepare_reads_pixels = False`` in its own body, as crumpets' workers
    do (their ``prepare`` reads back no pixel it wrote): a subclass that overrides
    ``prepare`` is taken to read the pixels unless it says otherwise. True defers (the
    subclass's word that it neither reads nor changes the pixels), False never does.
    :meth:`prepare_image` itself always writes at once. Images that are neither JPEG nor
    PNG, and buffers that need a scratch image (another colour space, a dtype other than
    uint8), are written at once: the batch would hold their pixels.
    """

    defer_pixels: bool | None = None
    prepare_reads_pixels = False  # ImageWorker.prepare reads back no pixel (defer_pixels)
    # The image buffers whose encoded bytes the worker hands over under gpu_decode.
    gpu_decode_keys: tuple[str, ...] = ("image",)

    def __init__(
        self,
        image: Any,
        image_params: dict | None = None,
        image_rng: RNG | None = None,
        outside: str = "drop",
        max_pixels: int | None = MAX_PIXELS,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.max_pixels = check_max_pixels(max_pixels)
        self.add_buffer("image", image)
        self._check_image_buffer("image")
        self.written_in_full.add("image")  # prepare_image writes every pixel
        self.add_params("image", check_params(dict(image_params or {})), {})
        if image_rng is None:
            image_rng = NoRNG()
        if not isinstance(image_rng, RNG):
            raise TypeError(
                f"image_rng must be a crumpets.augment.rng.RNG, got {type(image_rng).__name__}"
            )
        self.image_rng = image_rng
        if outside not in OUTSIDE:
            raise ValueError(f"outside must be one of {OUTSIDE}, got {outside!r}")
        self.outside = outside
        # Per image buffer, what prepare_image works out once (see _target).
        self._targets: dict[str, _Target] = {}
        # Under gpu_decode: the image buffers the loader makes, name -> pixel spec.
        self._gpu_decoded: dict[str, Any] = {}

    def _check_image_buffer(self, key: str) -> None:
        shape = self.buffer_specs[key][0]
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"buffer {key!r} must have shape (C, H, W) with C 1 or 3, got {shape}")

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        # OpenCV's thread pool does not survive fork: a child that touches it hangs. With
        # one thread in the parent while forking, children start with a clean pool.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield
        finally:
            cv2.setNumThreads(threads)

    def init(self) -> None:
        # nworkers processes, one thread each: OpenCV's pool would oversubscribe the cores.
        cv2.setNumThreads(1)

    def draw_params(self) -> dict:
        """Draw one sample's parameters from ``image_rng`` with the sample's generator.

        Draws of an RNG that is not valid by construction (``image_rng.checked``) are
        checked here, once per sample; the fixed ``*_params`` were checked when the
        worker was built.
        """
        # process() sets the sample's generator; RNGs that draw nothing (NoRNG) need none
        params = self.image_rng(cast(np.random.Generator, self.rng))
        return params if self.image_rng.checked else check_params(params)

    def _defers(self) -> bool:
        if self.defer_pixels is not None:
            return self.defer_pixels
        return _defers_by_default(type(self))

    def _target(self, key: str, shape: tuple[int, ...]) -> _Target:
        target = self._targets.get(key)
        if target is None or not target.fits(self, key, shape):
            target = self._targets[key] = _Target(self, key, shape)
        return target

    def _image(self, im: Any, batch: dict, buffers: dict, params: dict, key: str) -> dict:
        """:meth:`prepare_image` for :meth:`prepare`: the pixels deferred to ``batch``'s
        second phase where this worker may (``defer_pixels``)."""
        if isinstance(batch, Batch) and self._defers():
            return self._augment(im, buffers, params, key, batch)
        return self.prepare_image(im, buffers, params, key)

    def prepare_image(self, im: Any, buffers: dict, params: dict, key: str) -> dict:
        """Decode and augment ``im`` into ``buffers[key]``; return the parameters used.

        ``params`` must be checked (:func:`check_params`): :meth:`draw_params` and the
        fixed ``*_params`` are. The pixels are written before this returns.
        """
        return self._augment(im, buffers, params, key, None)

    def set_gpu_decode(self, val: bool, max_bytes: int = 1 << 20) -> dict[str, Any]:
        """True: write the encoded bytes of the images in :attr:`gpu_decode_keys` (and
        report their parameters and matrix as always), for a loader that decodes and warps
        them and applies every pixel operation (crumpets-torch's ``gpu_decode``). See
        :meth:`crumpets.core.broker.Worker.set_gpu_decode`.

        Raises:
            TypeError: for a worker whose ``prepare`` is not ImageWorker's,
                ClassificationWorker's or FCNWorker's (it may read the pixels).
            ValueError: ``max_bytes`` is not a positive integer.
        """
        own = (ImageWorker.prepare, ClassificationWorker.prepare, FCNWorker.prepare)
        if val and type(self).prepare not in own:
            raise TypeError(
                f"{type(self).__name__} has a prepare of its own, which may read the pixels: "
                "it cannot leave decoding to the loader (gpu_decode)"
            )
        self._targets = {}
        limit = max_bytes if val else None
        self._gpu_decoded = swap_buffers(self, self.gpu_decode_keys, limit, self._gpu_decoded)
        return dict(self._gpu_decoded)

    def _encoded(self, im: Any, buffers: dict, params: dict, key: str) -> dict:
        """Under gpu_decode: the parameters and matrix of ``im`` as :meth:`_augment`
        reports them; its bytes into the byte buffers (:func:`write_encoded`)."""
        shape = self._gpu_decoded[key][0]
        color = shape[0] == 3
        check_encoded(im, key, params.get("colorspace", "rgb" if color else "gray"), shape)
        if not params.keys() <= _IMAGE_ARGS:
            raise TypeError(f"unexpected image parameters {sorted(params.keys() - _IMAGE_ARGS)}")
        src, source_size = read_source(im, color, self.max_pixels)
        # every pixel operation is the loader's: the plan is wanted for its matrix only
        border = _border(params.get("background", 0), shape[0])
        plan = plan_pixels(params, src, source_size, shape, border=border, skip=_ALL_OPS)
        used = {k: v if type(v) in _PLAIN_TYPES else _plain(v) for k, v in params.items()}
        used["transform"] = plan.matrix
        used["gpu_ops"] = list(enabled_ops(params, color))
        write_encoded(im, buffers, key, self.sample_index, self.epoch)
        return used

    def _augment(self, im: Any, buffers: dict, params: dict, key: str, batch: Batch | None) -> dict:
        """:meth:`prepare_image`; with a ``batch``, the pixels of an image that needs no
        scratch array are deferred to its second phase."""
        if key in self._gpu_decoded:
            return self._encoded(im, buffers, params, key)
        out = buffers[key]
        target = self._target(key, out.shape)
        channels = target.channels
        colorspace = params.get("colorspace", target.colorspace)
        if (channels == 1) != (colorspace == "gray"):
            raise ValueError(
                f"colorspace {colorspace!r} does not fit buffer {key!r} of shape {target.spec}"
            )
        if not params.keys() <= _IMAGE_ARGS:
            unknown = sorted(params.keys() - _IMAGE_ARGS, key=str)
            raise TypeError(f"unexpected image parameters {unknown}")
        convert = COLORSPACES[colorspace]
        border = (
            target.border if "background" not in params else _border(params["background"], channels)
        )
        # another colour space needs the pixel operations before its conversion: on the CPU
        skip = target.skip if convert is None else _NO_SKIP
        # RGB and gray go straight into a uint8 buffer's planes; the rest is converted
        # from an RGB image.
        direct = convert is None and out.dtype == np.uint8 and out.flags.c_contiguous
        src, source_size = read_source(im, channels == 3, self.max_pixels)
        plan = plan_pixels(params, src, source_size, target.shape, border=border, skip=skip)
        # The report is made before the pixels: Python runs faster before decoding and
        # warping an image than after, which flush its data from the caches.
        used = {k: v if type(v) in _PLAIN_TYPES else _plain(v) for k, v in params.items()}
        used["transform"] = plan.matrix  # the matrix's rows as Python floats, as .tolist() gives
        # what the GPU Randomizer still has to apply: the skipped operations that are on
        used["gpu_ops"] = (
            [op for op in enabled_ops(params, channels == 3) if op in skip] if skip else []
        )
        if not direct:
            result = np.empty(target.shape, np.uint8)
            plan.run(result)
            if convert is not None:
                out[...] = cv2.cvtColor(cv2.merge(list(result)), convert).transpose(2, 0, 1)
            else:
                out[...] = result
        elif batch is not None and src is im:
            # written once every sample of the batch is prepared (see defer_pixels); not a
            # source decoded above, which the batch would hold until then
            batch.defer(self.sample_index, functools.partial(plan.run, out))
        else:
            plan.run(out)
        return used

    def prepare_points(self, sample: dict, batch: dict, augmentation: dict, key: str) -> None:
        """Map the sample's 'keypoints' (N x 2) and 'bboxes' (N x 4: x0, y0, x1, y1)
        through the image's matrix into ``batch`` (see :func:`map_keypoints`,
        :func:`map_boxes`)."""
        if "keypoints" not in sample and "bboxes" not in sample:
            return
        _, height, width = (self._gpu_decoded.get(key) or self.buffer_specs[key])[0]
        size, matrix = (height, width), augmentation["transform"]
        if "keypoints" in sample:
            points, index = map_keypoints(sample["keypoints"], matrix, size, self.outside)
            batch["keypoints"].append(points)
            batch["keypoints_index"].append(index)
        if "bboxes" in sample:
            boxes, index = map_boxes(sample["bboxes"], matrix, size, self.outside)
            batch["bboxes"].append(boxes)
            batch["bboxes_index"].append(index)

    def prepare(self, sample: dict, batch: dict, buffers: dict) -> None:
        params = self.draw_params()
        params.update(self.params["image"])
        augmentation = self._image(sample_field(sample, "image"), batch, buffers, params, "image")
        batch["augmentation"].append(augmentation)
        self.prepare_points(sample, batch, augmentation, "image")


class ClassificationWorker(ImageWorker):
    """Worker for (image, label) pairs.

    Args:
        image: image buffer spec ``(shape, dtype[, fill_value])``.
        label: label buffer spec, e.g. ``((1,), np.int64)``.
        image_params: fixed image parameters; override random values.
        image_rng: RNG for image augmentation.
        **kwargs: passed to :class:`ImageWorker`.
    """

    prepare_reads_pixels = False  # its prepare writes the label, reads no pixel

    def __init__(
        self,
        image: Any,
        label: Any,
        image_params: dict | None = None,
        image_rng: RNG | None = None,
        **kwargs: Any,
    ):
        super().__init__(image, image_params=image_params, image_rng=image_rng, **kwargs)
        self.add_buffer("label", label)

    def prepare(self, sample: dict, batch: dict, buffers: dict) -> None:
        super().prepare(sample, batch, buffers)
        label = sample_field(sample, "label")
        out = buffers["label"]
        if type(label) is int and out.size == 1 and out.dtype.kind in "iu":
            # the usual class index: a range check instead of the general conversion below
            low, high = _int_range(out.dtype)
            if low <= label <= high:
                out.flat[0] = label
                return
        label = np.asarray(label)
        fits = label.dtype.kind in "biuf" and label.size == out.size
        if fits:  # the buffer must hold the value exactly (no NaN -> -2**63, no wrap-around)
            with np.errstate(invalid="ignore", over="ignore"):
                cast = label.astype(out.dtype)
            fits = bool(np.array_equal(cast.astype(np.float64), label.astype(np.float64)))
            fits = fits and (label.dtype.kind != "u" or cast.min(initial=0) >= 0)
        if not fits:
            raise ValueError(
                f"label {label.tolist()!r} does not fit label buffer of shape {out.shape} "
                f"and dtype {out.dtype}"
            )
        out[...] = cast.reshape(out.shape)


class FCNWorker(ImageWorker):
    """Worker for fully convolutional networks: image and target image, with the same
    random geometry; ``target_image_params`` override values for the target only.

    Args:
        image: image buffer spec.
        target_image: target image buffer spec.
        image_params: fixed image parameters.
        target_image_params: fixed target image parameters.
        image_rng: RNG for both images.
        **kwargs: passed to :class:`ImageWorker`.
    """

    prepare_reads_pixels = False  # its prepare reads back neither image's pixels
    gpu_decode_keys: tuple[str, ...] = ("image", "target_image")

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
        self._check_image_buffer("target_image")
        self.written_in_full.add("target_image")
        self.add_params("target_image", check_params(dict(target_image_params or {})), {})

    def prepare(self, sample: dict, batch: dict, buffers: dict) -> None:
        params = self.draw_params()
        image_params = {**params, **self.params["image"]}
        augmentation = self._image(
            sample_field(sample, "image"), batch, buffers, image_params, "image"
        )
        target_params = {**params, **self.params["target_image"]}
        target = sample_field(sample, "target_image")
        target_augmentation = self._image(target, batch, buffers, target_params, "target_image")
        batch["augmentation"].append(augmentation)
        batch["target_augmentation"].append(target_augmentation)
        self.prepare_points(sample, batch, augmentation, "image")
