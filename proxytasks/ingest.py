"""Ingest: media (videos, photos) -> a face manifest with frames, crops and shots.

Each video is streamed once: frames are detected in batches, a colour histogram of
every kept frame (with or without faces) gives the shot cuts, and only frames with
faces are written as JPEGs (``frames/<media>/<frame>.jpg``). With ``crops`` every face
also gets a margin-padded crop (``crops/<media>/<id>.jpg``), so later stages never
decode the video again. Photos are referenced in place (a rotated copy is written
only when EXIF orientation turns them).

The run is resumable: every finished media is recorded in
``<manifest>.parts/<media>.json`` (written atomically) together with its faces; a rerun
with the same settings reuses those and processes only the rest. The manifest itself
is rewritten atomically as media finish, so an interruption never leaves it half
written; frames and crops are renamed into place whole, and a media being redone loses
its record before any of its files is rewritten. Even a SIGKILL at any moment leaves
only whole files under their final names (and temporary ``.*.tmp`` files, which a rerun
removes). Unreadable media are reported by name and skipped.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest, face_from_dict
from .track import TrackerConfig, detect_cuts, frame_histogram

if TYPE_CHECKING:  # pragma: no cover
    from .detect import Detections, Detector

logger = logging.getLogger(__name__)

PART_VERSION = 1
JPEG_QUALITY = 92
_EXIF_ORIENTATION = 0x0112
_CHECKPOINT_SECONDS = 5.0  # least time between two manifest rewrites (the parts are always current)


@dataclass
class IngestReport:
    """What an ingest run did.

    Attributes:
        manifest: the manifest written.
        done: media processed in this run (manifest ``media`` paths).
        reused: media finished by an earlier run and taken from its record.
        skipped: media that could not be read, with the reason.
        warnings: media kept only in part (e.g. a video corrupt after some frames).
        frames: frames read in this run.
        faces: faces in the manifest (reused media included).
        shots: number of shots per video.
        seconds: wall time of this run.
        frames_per_second: frames read per second of this run.
    """

    manifest: Path
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    faces: int = 0
    shots: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    frames_per_second: float = 0.0


class _BadMedia(Exception):
    """A media file that cannot be decoded (raised from inside the frame loop)."""


def media_keys(paths: list[Path]) -> list[str]:
    """A unique, filesystem-safe key per media: its stem, disambiguated when stems clash.

    A stem is ambiguous when another media has the same stem, or when face ids of two
    media could collide (``a_000001`` beside a video ``a``); such stems get a short
    hash of the full path.
    """
    import hashlib

    stems = [re.sub(r"[^\w.-]+", "_", p.stem) or "media" for p in paths]
    count: dict[str, int] = {}
    for s in stems:
        count[s] = count.get(s, 0) + 1
    keys = []
    for p, s in zip(paths, stems):
        m = re.fullmatch(r"(.*)_\d{6}", s)
        if count[s] > 1 or (m is not None and m.group(1) in count):
            s = f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
        keys.append(s)
    return keys


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _clip_box(box: np.ndarray, width: int, height: int) -> list[float] | None:
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def crop_face(img: Image.Image, box: list[float], margin: float) -> Image.Image:
    """The face box grown by ``margin`` of its size on every side, clipped to the image."""
    x, y, w, h = box
    dx, dy = margin * w, margin * h
    left, top = max(0, int(round(x - dx))), max(0, int(round(y - dy)))
    right = min(img.width, int(round(x + w + dx)))
    bottom = min(img.height, int(round(y + h + dy)))
    return img.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


def _save_jpeg(img: Image.Image, path: Path) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it (named as
    :func:`~proxytasks.fileio.atomic_write` names them), then a rename. Not synced to
    disk one by one, which would cost a disk flush per face: a killed process leaves no
    half-written image, and the resume record written (and synced) after the media
    vouches only for files present and not empty. The file gets the usual permissions
    (0666 less the umask), as a plain ``save`` would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _remove_temporaries(folder: Path, pattern: str = ".*.tmp") -> None:
    """Temporary files a killed run left in ``folder`` (never read; removed before new writes)."""
    if folder.is_dir():
        for tmp in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


class _Writer:
    """Turns detections on one image into manifest records and writes frame/crop files."""

    def __init__(self, out_dir: Path, key: str, media_rel: str, crops: bool, margin: float) -> None:
        self.out_dir, self.key, self.media_rel = out_dir, key, media_rel
        self.crops, self.margin = crops, margin

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out_dir)).as_posix()

    def faces(self, img: Image.Image, det: "Detections", frame: int | None, t: float | None,
              image_path: Path | None) -> list[dict[str, Any]]:
        """Records for the faces of one frame or photo; writes the frame when it has faces."""
        boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4)
        kept = [(k, b) for k, b in ((k, _clip_box(b, img.width, img.height)) for k, b in enumerate(boxes))
                if b is not None]
        if not kept:
            return []
        # Ids follow one order whatever order the detector gives (OpenCV's threaded Haar
        # cascade varies it from run to run): most confident first, then by box.
        scores = [_finite(det.scores[k]) if det.scores is not None and len(det.scores) > k else None
                  for k, _ in kept]
        kept = [kb for _, kb in sorted(zip(scores, kept), key=lambda sk: (
            -sk[0] if sk[0] is not None else math.inf, sk[1][1]))]
        if image_path is None:
            image_path = self.out_dir / "frames" / self.key / f"{frame:06d}.jpg"
            _save_jpeg(img, image_path)
        records = []
        for n, (k, box) in enumerate(kept):
            fid = f"{self.key}_{n}" if frame is None else f"{self.key}_{frame:06d}_{n}"
            rec: dict[str, Any] = {"id": fid, "media": self.media_rel, "frame": frame}
            if t is not None and math.isfinite(t):
                rec["time"] = round(max(float(t), 0.0), 6)
            rec["image"] = self.rel(image_path)
            rec["bbox"] = box
            if det.scores is not None and len(det.scores) > k and _finite(det.scores[k]) is not None:
                rec["score"] = round(float(det.scores[k]), 6)
            if det.landmarks is not None and len(det.landmarks) > k:
                marks = np.asarray(det.landmarks[k], dtype=np.float64).reshape(-1, 2)
                if np.isfinite(marks).all():
                    rec["landmarks"] = [[round(float(a), 2), round(float(b), 2)] for a, b in marks]
            if self.crops:
                path = self.out_dir / "crops" / self.key / f"{fid}.jpg"
                _save_jpeg(crop_face(img, box, self.margin), path)
                rec["crop"] = self.rel(path)
            records.append(rec)
        return records


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


def _exif_turned(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - a header we cannot parse means no rotation to honour
        return False


def _source_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ingest_media(paths: str | os.PathLike | Iterable[str | os.PathLike], out_manifest: str | os.PathLike,
                 detector: "Detector | str" = "mtcnn", fps: float | None = None, stride: int | None = None,
                 min_face: int = 20, threshold: float | None = None, crops: bool = True,
                 margin: float = 0.2, batch_size: int = 8, progress: bool = True, resume: bool = True,
                 device: str | None = None, shot_config: TrackerConfig | None = None) -> IngestReport:
    """Detect the faces of videos and photos and write them as a manifest.

    Args:
        paths: files and folders (searched recursively) of videos and images.
        out_manifest: the manifest to write; frames, crops and resume records go beside it.
        detector: a :class:`~proxytasks.detect.Detector` or a detector name.
        fps: sample videos at this rate (None: every frame, or ``stride``).
        stride: keep every ``stride``-th frame.
        min_face: least face side in pixels (detector by name only).
        threshold: detector confidence threshold (detector by name only; None: its default).
        crops: write a margin-padded crop per face and set ``crop``.
        margin: crop margin as a fraction of the box size on each side.
        batch_size: video frames per detector call.
        progress: show a progress bar over frames.
        resume: reuse media finished by an earlier run with the same settings.
        device: detector device (detector by name only).
        shot_config: thresholds for shot cuts (``shot_k``, ``shot_min``, ``shot_threshold``).

    Raises:
        ProxytasksError: no media found, or none could be read, or no face at all.
    """
    from .media import find_media, is_video, iter_video, read_image

    start = time.perf_counter()
    out = Path(out_manifest)
    out_dir = out.parent.resolve()
    parts_dir = out.parent / f"{out.name}.parts"
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if batch_size < 1 or margin < 0:
        raise ProxytasksError("batch_size must be >= 1 and margin >= 0")
    media: list[Path] = []
    seen: set[Path] = set()
    for p in find_media(list(paths)):
        if Path(p).resolve() not in seen:
            seen.add(Path(p).resolve())
            media.append(Path(p))
    if not media:
        raise ProxytasksError(f"no videos or images found in {', '.join(map(str, paths))}")
    keys = media_keys(media)
    cfg = shot_config or TrackerConfig()
    det_name = detector if isinstance(detector, str) else getattr(detector, "name", type(detector).__name__)
    settings = {"detector": det_name, "fps": fps, "stride": stride, "min_face": min_face,
                "threshold": threshold, "crops": crops, "margin": margin,
                "shot": [cfg.shot_k, cfg.shot_min, cfg.shot_threshold]}
    det_obj: list[Detector] = [] if isinstance(detector, str) else [detector]

    def get_detector() -> "Detector":
        if not det_obj:
            from .detect import create_detector

            kwargs: dict[str, Any] = {"min_face": min_face}
            if threshold is not None:
                kwargs["threshold"] = threshold
            if device is not None:
                kwargs["device"] = device
            det_obj.append(create_detector(detector, **kwargs))
        return det_obj[0]

    _remove_temporaries(parts_dir)  # what a killed run left half-written (never read)
    _remove_temporaries(out.parent, f".{glob.escape(out.name)}.*.tmp")
    report = IngestReport(manifest=out)
    records: dict[str, list[dict[str, Any]]] = {}
    dirty = False
    last_write = time.perf_counter()

    def write_manifest() -> None:
        nonlocal dirty, last_write
        faces = [face_from_dict(r) for k in keys if k in records for r in records[k]]
        if faces:
            Manifest(faces, out_dir).write(out)
        dirty, last_write = False, time.perf_counter()

    bar = tqdm(desc="ingest", unit="frame", disable=not progress)
    faces_found = 0
    try:
        for path, key in zip(media, keys):
            media_rel = Path(os.path.relpath(path.resolve(), out_dir)).as_posix()
            part_path = parts_dir / f"{key}.json"
            stamp = _source_stamp(path)
            if resume:
                part = _load_part(part_path, media_rel, stamp, settings, out_dir)
                if part is not None:
                    records[key] = part["faces"]
                    if part.get("shots") is not None:
                        report.shots[media_rel] = part["shots"]
                    report.reused.append(media_rel)
                    faces_found += len(part["faces"])
                    dirty = True
                    continue
            # Redo: first drop its record, so that a kill while its files are rewritten (with
            # other settings, say) never leaves a record that vouches for them.
            part_path.unlink(missing_ok=True)
            for sub in ("frames", "crops"):
                _remove_temporaries(out_dir / sub / key)
            writer = _Writer(out_dir, key, media_rel, crops, margin)
            try:
                if is_video(path):
                    faces, n_frames, shots, warning = _ingest_video(
                        path, writer, get_detector, iter_video(path, fps=fps, stride=stride),
                        batch_size, cfg, bar, report, faces_found)
                else:
                    faces, n_frames, shots, warning = _ingest_photo(path, writer, get_detector, read_image)
                    bar.update(1)
                    report.frames += 1
            except _BadMedia as e:
                logger.warning("skipping %s: %s", path, e)
                report.skipped[str(path)] = str(e)
                continue
            if warning:
                logger.warning("%s: %s", path, warning)
                report.warnings[str(path)] = warning
            faces_found += len(faces)
            bar.set_postfix(faces=faces_found, refresh=False)
            with atomic_write(part_path) as fh:
                json.dump({"version": PART_VERSION, "media": media_rel, "source": stamp,
                           "settings": settings, "frames": n_frames, "shots": shots,
                           "warning": warning, "faces": faces}, fh)
            records[key] = faces
            report.done.append(media_rel)
            if shots is not None:
                report.shots[media_rel] = shots
            dirty = True
            if is_video(path) or time.perf_counter() - last_write > _CHECKPOINT_SECONDS:
                write_manifest()
    finally:
        bar.close()
        if dirty:
            write_manifest()
    report.faces = faces_found
    report.seconds = time.perf_counter() - start
    report.frames_per_second = report.frames / max(report.seconds, 1e-9)
    if not records:
        raise ProxytasksError(
            f"none of the {len(media)} media could be read: "
            + "; ".join(f"{k}: {v}" for k, v in list(report.skipped.items())[:5]))
    if not faces_found:
        raise ProxytasksError(f"no face found in {len(records)} media; try a lower --threshold "
                              f"or --min-face (now {threshold}, {min_face})")
    logger.info("ingest: %d media (%d reused, %d skipped), %d frames, %d faces, %.1f frames/s",
                len(records), len(report.reused), len(report.skipped), report.frames, faces_found,
                report.frames_per_second)
    return report


def _load_part(path: Path, media_rel: str, stamp: dict, settings: dict, out_dir: Path) -> dict | None:
    """A finished media's record, or None when absent, stale or its files are gone."""
    if not path.is_file():
        return None
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("ignoring unreadable resume record %s", path)
        return None
    if not isinstance(part, dict) or (part.get("version") != PART_VERSION or part.get("media") != media_rel
                                      or part.get("source") != stamp
                                      or part.get("settings") != json.loads(json.dumps(settings))):
        logger.info("redoing %s: media or settings changed since %s", media_rel, path)
        return None
    for rec in part.get("faces", []):
        for name in ("image", "crop"):
            if rec.get(name) is not None and not _whole_file(out_dir / rec[name]):
                logger.info("redoing %s: %s is missing or empty", media_rel, rec[name])
                return None
    return part


def _whole_file(path: Path) -> bool:
    """A regular file that is not empty (images are renamed into place whole, but not
    synced one by one: after a power cut, one may be empty)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _ingest_video(path: Path, writer: _Writer, get_detector, frames: Iterator, batch_size: int,
                  cfg: TrackerConfig, bar: tqdm, report: IngestReport,
                  faces_before: int) -> tuple[list[dict], int, int, str | None]:
    """Faces, frames read, shots and a warning (corrupt tail) for one video."""
    faces: list[dict] = []
    hists: list[np.ndarray] = []
    index: list[int] = []
    batch: list = []
    warning = None
    t0 = time.perf_counter()

    def flush() -> None:
        dets = get_detector().detect([f.image for f in batch])
        for fr, det in zip(batch, dets):
            faces.extend(writer.faces(fr.image, det, fr.index, fr.time, None))
        bar.update(len(batch))
        report.frames += len(batch)
        rate = len(index) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(fps=f"{rate:.1f}", faces=faces_before + len(faces), refresh=False)
        batch.clear()

    try:
        for fr in _frames(frames):
            hists.append(frame_histogram(fr.image))
            index.append(fr.index)
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
    d = np.array([0.5 * np.abs(a - b).sum() for a, b in zip(hists[:-1], hists[1:])])
    shot_of = dict(zip(index, np.r_[0, np.cumsum(detect_cuts(d, cfg))].tolist()))
    for rec in faces:
        rec["shot"] = int(shot_of[rec["frame"]])
    return faces, len(index), int(shot_of[index[-1]]) + 1, warning


def _ingest_photo(path: Path, writer: _Writer, get_detector,
                  read_image) -> tuple[list[dict], int, None, None]:
    """Faces of one photo; the photo is referenced in place unless EXIF turned it."""
    try:
        img = read_image(path)
    except (ProxytasksError, OSError, ValueError) as e:
        raise _BadMedia(str(e) or type(e).__name__) from e
    det = get_detector().detect([img])[0]
    image_path = path.resolve()
    if len(det.boxes) and _exif_turned(path):
        image_path = writer.out_dir / "frames" / writer.key / "rotated.jpg"
        _save_jpeg(img, image_path)
    return writer.faces(img, det, None, None, image_path), 1, None, None
