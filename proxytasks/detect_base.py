"""The detector interface (``Detector``, ``Detections``), its registry and box clipping:
what every backend and ingest share, with no backend's imports (``detect`` and
``detect_mtcnn`` both build on it)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .errors import ProxytasksError
from .registry import Registry

DETECTORS: Registry[type["Detector"]] = Registry("detector")


@dataclass
class Detections:
    """Faces found in one image.

    Attributes:
        boxes: (n, 4) float32 ``[x, y, w, h]`` in image pixels, clipped to the image.
        scores: (n,) float32 confidences in 0..1.
        landmarks: (n, 5, 2) float32 points, or None when the backend has none.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.boxes))

    @classmethod
    def empty(cls, with_landmarks: bool = False) -> "Detections":
        """No faces."""
        marks = np.zeros((0, 5, 2), np.float32) if with_landmarks else None
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), marks)


def clip_boxes(xyxy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``[x1, y1, x2, y2]`` boxes to a ``width`` x ``height`` image.

    Returns:
        ``(xywh, keep)``: clipped float32 ``[x, y, w, h]`` boxes with ``w, h >= 1`` and a
        mask of the boxes that overlapped the image at all.
    """
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    keep = ((xyxy[:, 2] > 0) & (xyxy[:, 3] > 0) & (xyxy[:, 0] < width)
            & (xyxy[:, 1] < height))
    x1 = np.clip(xyxy[:, 0], 0, max(width - 1, 0))
    y1 = np.clip(xyxy[:, 1], 0, max(height - 1, 0))
    x2 = np.minimum(np.maximum(xyxy[:, 2], x1 + 1), width)
    y2 = np.minimum(np.maximum(xyxy[:, 3], y1 + 1), height)
    out = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).astype(np.float32)
    return out[keep], keep


class Detector:
    """Base class: ``detect(images) -> list[Detections]``, one per image."""

    name: str = "base"
    default_threshold: float = 0.5
    #: the score from which the detector is certain (the face quality's confidence term is 1)
    sure_score: float = 0.999

    def __init__(self, min_face: int = 20, threshold: float | None = None,
                 device: str = "cpu", **kw: Any) -> None:
        if kw:
            raise ProxytasksError(f"detector {self.name!r}: unknown option(s) "
                                  f"{', '.join(sorted(kw))}")
        if min_face < 1:
            raise ProxytasksError(f"detector {self.name!r}: min_face must be >= 1 pixel")
        self.min_face = int(min_face)
        self.threshold = self.default_threshold if threshold is None else float(threshold)
        self.device = device

    def detect(self, images: list[Image.Image]) -> list[Detections]:
        """Faces in each image (a batch), in the order given."""
        raise NotImplementedError

    @contextlib.contextmanager
    def one_thread(self) -> Iterator[None]:
        """Run the block on one thread (following faces: many tiny calls, where a second
        thread only waits). The base class changes nothing."""
        yield
