"""Find the face inside a crop, once per face, before it is aligned.

Crops from other tools carry wide margins (hair, shoulders, a neighbour's face): taking
the whole crop as the face box puts dlib's 5-point predictor on the wrong points, and
the chips stop being faces. :class:`FaceLocator` looks for the face inside a crop the
way face_recognition's users find it in a photo, then falls back step by step:

1. ``"hog"``: dlib's HOG detector (``dlib.get_frontal_face_detector()``, upsampled once,
   as ``face_recognition.face_locations(image)`` runs it by default), where dlib is
   installed;
2. ``"mtcnn"``: MTCNN (box and 5 landmarks) on the crop padded by a quarter of its side
   (tight crops leave MTCNN no context), where its weights are installed;
3. ``"center"``: nothing found: the central region of the crop, ``1 / (1 + 2 margin)``
   of each side (``fallback_margin`` 0.25: the central 2/3). These faces are counted and
   reported: see :func:`location_summary`.

Among a detector's faces, the one nearest the crop centre wins, among those of a
plausible size (side at least ``min_share`` of the crop's short side). What was found
(box, landmarks, source, all in crop pixels) is kept in a per-process cache keyed by
the crop file, its size and mtime, so a crop is searched once however many times it is
aligned.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .errors import ProxytasksError
from .manifest import Face, Manifest
from .media import read_image

logger = logging.getLogger(__name__)

SOURCES = ("hog", "mtcnn", "center")
FOUND = ("hog", "mtcnn")


@dataclass(frozen=True)
class Location:
    """The face found in a crop, in crop pixels.

    Attributes:
        box: ``(x, y, w, h)``.
        landmarks: (5, 2) points in MTCNN order (eyes, nose, mouth corners), or None.
        source: which of :data:`SOURCES` gave it.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None
    source: str

    @property
    def found(self) -> bool:
        """True when a detector found the face (not the central fallback)."""
        return self.source in FOUND


def needs_location(face: Face) -> bool:
    """A face given only as a crop: no ``image`` + ``bbox`` says where the face is."""
    return face.crop is not None and (face.image is None or face.bbox is None)


@functools.lru_cache(maxsize=None)
def _hog_detector() -> Any:
    try:
        dlib = importlib.import_module("dlib")
    except ImportError:
        return None
    return dlib.get_frontal_face_detector()


_CACHE: dict[tuple[str, int, int, tuple], Location] = {}


class FaceLocator:
    """Finds the face inside crops (see the module docstring); picklable.

    Args:
        detectors: the detectors to try in order, from ``("hog", "mtcnn")``; one that is
            not installed is skipped.
        upsample: times dlib's HOG detector upsamples the crop (face_recognition's 1).
        min_share: smallest plausible face side, as a share of the crop's short side.
        fallback_margin: the margin assumed when nothing is found (central region).
    """

    def __init__(self, detectors: Iterable[str] = FOUND, upsample: int = 1, min_share: float = 0.2,
                 fallback_margin: float = 0.25) -> None:
        self.detectors = tuple(detectors)
        unknown = set(self.detectors) - set(FOUND)
        if unknown:
            raise ProxytasksError(f"unknown face locator detector(s) {', '.join(sorted(unknown))}: "
                                  f"use {' and/or '.join(FOUND)}")
        if upsample < 0 or not 0 < min_share <= 1 or fallback_margin < 0:
            raise ProxytasksError(f"FaceLocator: upsample >= 0, 0 < min_share <= 1 and fallback_margin >= 0 "
                                  f"(got {upsample}, {min_share}, {fallback_margin})")
        self.upsample, self.min_share, self.fallback_margin = int(upsample), float(min_share), float(fallback_margin)
        self._mtcnn: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mtcnn": None}

    def _key(self) -> tuple:
        return (self.detectors, self.upsample, self.min_share, self.fallback_margin)

    # ------------------------------------------------------------------ one image
    def locate(self, image: Image.Image) -> Location:
        """The face of one crop (never None: the central region when nothing is found)."""
        rgb = image.convert("RGB")
        width, height = rgb.size
        for name in self.detectors:
            boxes, marks = self._hog(rgb) if name == "hog" else self._mtcnn_faces(rgb)
            best = self._nearest_centre(boxes, width, height)
            if best is not None:
                points = None if marks is None else np.asarray(marks[best], dtype=np.float64)
                return Location(tuple(float(v) for v in boxes[best]), points, name)
        m = self.fallback_margin
        w, h = width / (1 + 2 * m), height / (1 + 2 * m)
        return Location((m * w, m * h, w, h), None, "center")

    def _nearest_centre(self, boxes: np.ndarray, width: int, height: int) -> int | None:
        if not len(boxes):
            return None
        side = np.sqrt(boxes[:, 2] * boxes[:, 3])
        plausible = side >= self.min_share * min(width, height)
        if not plausible.any():
            return None
        centre = boxes[:, :2] + boxes[:, 2:] / 2
        dist = np.hypot((centre[:, 0] - width / 2) / width, (centre[:, 1] - height / 2) / height)
        dist[~plausible] = np.inf
        return int(np.argmin(dist))

    def _hog(self, rgb: Image.Image) -> tuple[np.ndarray, None]:
        detector = _hog_detector()
        if detector is None:
            return np.zeros((0, 4)), None
        rects, _, _ = detector.run(np.asarray(rgb), self.upsample, 0)
        # dlib's rectangles are inclusive: right = left + width - 1
        boxes = np.array([[r.left(), r.top(), r.right() - r.left() + 1, r.bottom() - r.top() + 1] for r in rects],
                         dtype=np.float64).reshape(-1, 4)
        return boxes, None

    def _mtcnn_faces(self, rgb: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        if self._mtcnn is None:
            from .detect import create_detector
            from .models import WeightsNotFoundError

            try:
                self._mtcnn = create_detector("mtcnn", min_face=12)
            except (ProxytasksError, WeightsNotFoundError, ImportError) as e:
                logger.debug("face locator: MTCNN unavailable (%s)", e)
                self._mtcnn = False
        if self._mtcnn is False:
            return np.zeros((0, 4)), None
        pad = int(round(0.25 * max(rgb.size)))
        found = self._mtcnn.detect([ImageOps.expand(rgb, pad, fill=(0, 0, 0))])[0]
        boxes = found.boxes.astype(np.float64) - [pad, pad, 0, 0]
        marks = None if found.landmarks is None else found.landmarks.astype(np.float64) - pad
        return boxes, marks

    # ------------------------------------------------------------------ a manifest
    def locate_faces(self, manifest: Manifest, progress: bool = True) -> dict[str, Location]:
        """The location of every crop-only face of ``manifest`` (:func:`needs_location`), by id.

        Crops already searched in this process (same file, size and mtime) are not
        searched again. Logs how many faces were found and how many fell back.

        Raises:
            ProxytasksError: a crop cannot be read; the message names the face.
        """
        todo = [f for f in manifest.faces if needs_location(f)]
        out: dict[str, Location] = {}
        if not todo:
            return out
        for face in tqdm(todo, desc="finding faces in crops", unit="face", disable=not progress):
            path = manifest.resolve(face.crop)
            try:
                st = os.stat(path)
            except OSError as e:
                raise ProxytasksError(f"face {face.id!r}: cannot read its crop {path}: {e.strerror}") from None
            key = (str(path), st.st_size, st.st_mtime_ns, self._key())
            if key not in _CACHE:
                try:
                    image = read_image(path)
                except ProxytasksError as e:
                    raise ProxytasksError(f"face {face.id!r}: {e}") from None
                _CACHE[key] = self.locate(image)
            out[face.id] = _CACHE[key]
        summary = location_summary(out)
        logger.info("faces in crops: %d of %d found by a detector, %d fell back to the central region (%.1f%%)",
                    summary["found"], summary["faces"], summary["fallback"],
                    100.0 * summary["fallback"] / max(summary["faces"], 1))
        return out


def location_summary(locations: dict[str, Location]) -> dict[str, int]:
    """``{"faces", "found", "fallback"}``: crop-only faces, found by a detector, central fallback."""
    found = sum(loc.found for loc in locations.values())
    return {"faces": len(locations), "found": found, "fallback": len(locations) - found}
