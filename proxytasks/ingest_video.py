"""Ingesting one video (:func:`_ingest_video`): frames streamed from the decoder, shot
cuts from the colour histogram of every kept frame, and faces detected either in batches
or, with a detector that can follow faces (MTCNN), by the full detector on key frames
only (every N-th kept frame, a possible cut, the first) and followed in between, looked
for again around where one was lost. :mod:`proxytasks.ingest` drives it per media.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import ProxytasksError
from .track import TrackerConfig, detect_cuts, frame_histogram

if TYPE_CHECKING:  # pragma: no cover
    from .detect import Detections
    from .ingest import IngestReport, _Writer

logger = logging.getLogger("proxytasks.ingest")  # one logger for ingestion, as before the split


class _BadMedia(Exception):
    """A media file that cannot be decoded (raised from inside the frame loop)."""


def _frames(it: Iterator) -> Iterator:
    """Re-raise decoding errors of a media iterator as :class:`_BadMedia`."""
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except (ProxytasksError, OSError, ValueError, EOFError) as e:
            raise _BadMedia(str(e) or type(e).__name__) from e
        yield item


def _no_faces() -> "Detections":
    from .detect import Detections

    return Detections.empty(True)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``[x, y, w, h]`` boxes."""
    a, b = a.reshape(-1, 1, 4), b.reshape(1, -1, 4)
    w = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    return inter / np.maximum(a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter, 1e-9)


def _redetect_around(detector, image: Image.Image, lost: np.ndarray, found: "Detections",
                     grow: float = 1.0) -> "Detections":
    """``found`` plus the faces the detector finds in the regions around the ``lost``
    boxes (each grown by ``grow`` of its size on every side), less those that overlap a
    face already found."""
    from .detect import Detections

    regions, offsets = [], []
    for x, y, w, h in lost:
        side = max(w, h) * (1 + 2 * grow)
        cx, cy = x + w / 2, y + h / 2
        box = (int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0)),
               int(min(cx + side / 2, image.width)), int(min(cy + side / 2, image.height)))
        if box[2] - box[0] >= 12 and box[3] - box[1] >= 12:
            regions.append(image.crop(box))
            offsets.append(box[:2])
    boxes, scores, marks = [found.boxes], [found.scores], [found.landmarks]
    for det, (ox, oy) in zip(detector.detect(regions) if regions else [], offsets):
        if not len(det.boxes):
            continue
        b = det.boxes + np.array([ox, oy, 0, 0], np.float32)
        have = np.concatenate(boxes)
        keep = _iou(b, have).max(axis=1) < 0.3 if len(have) else np.ones(len(b), bool)
        boxes.append(b[keep])
        scores.append(det.scores[keep])
        if marks[0] is not None and det.landmarks is not None:
            marks.append(det.landmarks[keep] + np.array([ox, oy], np.float32))
    if len(boxes) == 1:
        return found
    landmarks = np.concatenate(marks) if marks[0] is not None and len(marks) == len(boxes) else None
    return Detections(np.concatenate(boxes), np.concatenate(scores), landmarks)


def _ingest_video(path: Path, writer: _Writer, get_detector, frames: Iterator, batch_size: int,
                  cfg: TrackerConfig, bar: tqdm, report: IngestReport,
                  faces_before: int, detect_every: int = 1) -> tuple[list[dict], int, int, str | None]:
    """Faces, frames read, shots and a warning (corrupt tail) for one video.

    With a detector that can follow faces (a ``track(image, boxes)`` method) and
    ``detect_every`` above 1, the full detector runs on key frames only: every
    ``detect_every``-th kept frame, a frame whose colour histogram moved enough to be a
    possible shot cut (above ``cfg.shot_min``, the least cut threshold), and a frame where
    a followed face was lost; in between, the faces of the previous frame are followed.
    Other detectors see batches of ``batch_size`` frames."""
    faces: list[dict] = []
    hists: list[np.ndarray] = []
    index: list[int] = []
    batch: list = []
    warning = None
    t0 = time.perf_counter()
    detector = get_detector()
    follow = detect_every > 1 and callable(getattr(detector, "track", None))
    state: dict[str, Any] = {"boxes": None, "since": 0}
    keyframes: dict[str, int] = {}  # full detections by reason
    local: dict[str, int] = {}  # faces looked for again around where they were lost

    def emit(fr, det) -> None:
        scale = fr.detect_image.width / fr.image.width
        faces.extend(writer.faces(fr.image, det, fr.index, fr.time, None, scale, fr.small))

    def progress(n: int) -> None:
        bar.update(n)
        report.frames += n
        rate = len(index) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(fps=f"{rate:.1f}", faces=faces_before + len(faces), refresh=False)

    def flush() -> None:
        dets = detector.detect([f.detect_image for f in batch])
        for fr, det in zip(batch, dets):
            emit(fr, det)
        progress(len(batch))
        batch.clear()

    def step(fr, moved: float) -> None:
        det = None
        boxes = state["boxes"]
        if boxes is None:
            why = "first"
        elif state["since"] >= detect_every:
            why = "every"
        elif moved > cfg.shot_min:
            why = "cut"
        elif not len(boxes):
            why, det = None, _no_faces()
        else:
            det, found = detector.track(fr.detect_image, boxes)
            if not found.all() and not getattr(detector, "searches_around", False):
                # Look again where a face was lost, with the full detector on the region
                # around it only (a face at the detector's limit flickers; one that moved
                # fast is found again).
                det = _redetect_around(detector, fr.detect_image, boxes[~found], det)
            local["lost"] = local.get("lost", 0) + int((~found).sum())
            why = None
        if why is not None:
            det = detector.detect([fr.detect_image])[0]
            state["since"] = 0
            keyframes[why] = keyframes.get(why, 0) + 1
        state["boxes"] = det.boxes
        state["since"] += 1
        emit(fr, det)
        progress(1)

    # A detector may run on one thread for the whole video while it follows faces
    # (``one_thread``; MTCNN: its calls are small, FFmpeg's decoding threads and the JPEG
    # writer take the other core, and switching the thread count per frame costs more than
    # it gives, tens of ms on a busy machine).
    one_thread = getattr(detector, "one_thread", None)
    try:
        with one_thread() if follow and one_thread else contextlib.nullcontext():
            for fr in _frames(frames):
                hists.append(frame_histogram(fr.detect_image))
                index.append(fr.index)
                if follow:
                    moved = 0.5 * float(np.abs(hists[-1] - hists[-2]).sum()) if len(hists) > 1 else 0.0
                    step(fr, moved)
                    continue
                batch.append(fr)
                if len(batch) >= batch_size:
                    flush()
    except _BadMedia as e:
        if not index:
            raise
        warning = f"decoding stopped after {len(index)} frames (last frame {index[-1]}): {e}"
    if batch:
        flush()
    if not index:
        raise _BadMedia("no frame could be decoded")
    if follow:
        logger.info("%s: full detection on %d of %d frames (%s); %d followed faces lost, looked for again around "
                    "where they were", path, sum(keyframes.values()), len(index),
                    ", ".join(f"{k} {v}" for k, v in keyframes.items()), local.get("lost", 0))
    d = np.array([0.5 * np.abs(a - b).sum() for a, b in zip(hists[:-1], hists[1:])])
    shot_of = dict(zip(index, np.r_[0, np.cumsum(detect_cuts(d, cfg))].tolist()))
    for rec in faces:
        rec["shot"] = int(shot_of[rec["frame"]])
    return faces, len(index), int(shot_of[index[-1]]) + 1, warning
