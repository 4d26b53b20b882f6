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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .defaults import DEFAULT_DETECTOR, DETECT_EVERY, DETECT_SIZE
from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest, face_from_dict
from .quality import QUALITY_VERSION, SURE_SCORE, face_quality, has_colour
from .ingest_shards import SHARD_VERSION, _write_shard_record, merge_manifests, shard_record_path  # noqa: F401
from .ingest_video import _BadMedia, _ingest_video
from .track import TrackerConfig

if TYPE_CHECKING:  # pragma: no cover
    from .detect import Detections, Detector

logger = logging.getLogger(__name__)

PART_VERSION = 1
JPEG_QUALITY = 92
_EXIF_ORIENTATION = 0x0112
_CHECKPOINT_SECONDS = 5.0  # least time between two manifest rewrites (the parts are always current)
_MAX_PENDING_WRITES = 8  # JPEG files queued for the writer thread at most (bounds memory: 8 full-HD frames ~ 50 MB)


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
    """Turns detections on one image into manifest records and writes frame/crop files.

    JPEG files are encoded on a background thread (Pillow releases the GIL while it
    encodes), so decoding and detection of the next frames go on meanwhile; :meth:`close`
    waits for every file and raises the first error."""

    def __init__(self, out_dir: Path, key: str, media_rel: str, crops: bool, margin: float,
                 quality: bool = True, sure: float = SURE_SCORE) -> None:
        self.out_dir, self.key, self.media_rel = out_dir, key, media_rel
        self.crops, self.margin, self.quality, self.sure = crops, margin, quality, sure
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out_dir)).as_posix()

    def _save(self, img: Image.Image, path: Path) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-jpeg")
        while len(self._pending) >= _MAX_PENDING_WRITES:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_save_jpeg, img, path))

    def close(self) -> None:
        """Wait for every file queued; the first error is raised once all have finished."""
        error = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as e:  # noqa: BLE001 - the first one is raised below
                error = error or e
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if error is not None:
            raise error

    def faces(self, img: Image.Image, det: "Detections", frame: int | None, t: float | None,
              image_path: Path | None, scale: float = 1.0, small: Image.Image | None = None) -> list[dict[str, Any]]:
        """Records for the faces of one frame or photo; writes the frame when it has faces.

        ``scale``: the detections were made on the picture downscaled by this factor
        (boxes and landmarks are brought back to ``img``'s pixels)."""
        boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4) / scale
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
            self._save(img, image_path)
        records = []
        colour = None  # whether the picture has colour (the skin term needs it), measured once
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
                marks = np.asarray(det.landmarks[k], dtype=np.float64).reshape(-1, 2) / scale
                if np.isfinite(marks).all():
                    rec["landmarks"] = [[round(float(a), 2), round(float(b), 2)] for a, b in marks]
            if self.quality:
                if colour is None:
                    colour = has_colour(small if small is not None else img)
                rec["quality"] = face_quality(img, box, rec.get("score"), rec.get("landmarks"), colour, self.sure)
            if self.crops:
                path = self.out_dir / "crops" / self.key / f"{fid}.jpg"
                self._save(crop_face(img, box, self.margin), path)
                rec["crop"] = self.rel(path)
            records.append(rec)
        return records


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
                 detector: "Detector | str" = DEFAULT_DETECTOR, fps: float | None = None, stride: int | None = None,
                 min_face: int = 20, threshold: float | None = None, crops: bool = True,
                 margin: float = 0.2, batch_size: int = 8, progress: bool = True, resume: bool = True,
                 device: str | None = None, shot_config: TrackerConfig | None = None,
                 detect_size: int | None = DETECT_SIZE, detect_every: int = DETECT_EVERY,
                 quality: bool = True, shard: tuple[int, int] | None = None) -> IngestReport:
    """Detect the faces of videos and photos and write them as a manifest.

    Args:
        paths: files and folders (searched recursively) of videos and images.
        out_manifest: the manifest to write; frames, crops and resume records go beside it.
        detector: a :class:`~proxytasks.detect.Detector` or a detector name.
        fps: sample videos at this rate (None: every frame, or ``stride``).
        stride: keep every ``stride``-th frame.
        min_face: least face side in pixels of the picture the detector sees (detector by
            name only): at 1080p with ``detect_size`` 540, faces from 40 pixels.
        threshold: detector confidence threshold (detector by name only; None: its default).
        crops: write a margin-padded crop per face and set ``crop``.
        margin: crop margin as a fraction of the box size on each side.
        batch_size: video frames per detector call (detectors that cannot follow faces).
        progress: show a progress bar over frames, with a total and an ETA.
        resume: reuse media finished by an earlier run with the same settings.
        device: detector device (detector by name only).
        shot_config: thresholds for shot cuts (``shot_k``, ``shot_min``, ``shot_threshold``).
        detect_size: the detector sees pictures whose shorter side is above this downscaled
            to it (boxes and landmarks are brought back to full resolution; frames and crops
            are written at full resolution); None or 0: full resolution.
        detect_every: with a detector that can follow faces (``track``: CenterFace, MTCNN), run
            the full detector on every ``detect_every``-th kept frame only, and follow the
            faces in between; a frame that may start a new shot, or where a followed face is
            lost, is detected in full too. 1: detect every frame.
        quality: score every face (``quality``, see :mod:`proxytasks.quality`).
        shard: ``(i, n)``: process only block ``i`` of ``n`` of the media (contiguous, in
            the order found); ids are those of the whole run, and
            :func:`merge_manifests` joins the ``n`` manifests.

    Raises:
        ProxytasksError: no media found, or none could be read, or no face at all.
    """
    if detector == "precomputed":
        raise ProxytasksError("ingest looks for faces in the pixels; boxes from a detections table come in "
                              "through `proxytasks import detections TABLE -o M` (data_tools.importers."
                              "import_detections), which needs no detector")
    from .media import expected_frames, find_media, is_video, iter_video, read_image

    start = time.perf_counter()
    out = Path(out_manifest)
    out_dir = out.parent.resolve()
    parts_dir = out.parent / f"{out.name}.parts"
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if batch_size < 1 or margin < 0:
        raise ProxytasksError("batch_size must be >= 1 and margin >= 0")
    if detect_every < 1:
        raise ProxytasksError(f"detect_every must be >= 1, got {detect_every}")
    if detect_size is not None and detect_size < 0:
        raise ProxytasksError(f"detect_size must be >= 0 (0: full resolution), got {detect_size}")
    detect_size = detect_size or None
    media: list[Path] = []
    seen: set[Path] = set()
    for p in find_media(list(paths)):
        if Path(p).resolve() not in seen:
            seen.add(Path(p).resolve())
            media.append(Path(p))
    if not media:
        raise ProxytasksError(f"no videos or images found in {', '.join(map(str, paths))}")
    keys = media_keys(media)
    rels = [Path(os.path.relpath(p.resolve(), out_dir)).as_posix() for p in media]
    block = range(len(media))
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise ProxytasksError(f"--shard {i}/{n}: I/N needs N >= 1 and 0 <= I < N (shards count from 0)")
        cut = np.array_split(np.arange(len(media)), n)[i]
        block = range(int(cut[0]), int(cut[-1]) + 1) if len(cut) else range(0)
    cfg = shot_config or TrackerConfig()
    det_name = detector if isinstance(detector, str) else getattr(detector, "name", type(detector).__name__)
    settings = {"detector": det_name, "fps": fps, "stride": stride, "min_face": min_face,
                "threshold": threshold, "crops": crops, "margin": margin,
                "shot": [cfg.shot_k, cfg.shot_min, cfg.shot_threshold],
                "detect_size": detect_size, "detect_every": detect_every,
                "quality": QUALITY_VERSION if quality else None}
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

    # The bar's total: every media's frames from its header (frame count, else duration x
    # rate) and the sampling; corrected as each media finishes or is reused.
    expected = {k: (expected_frames(media[k], fps, stride) if is_video(media[k]) else 1) for k in block}
    unknown = sum(v is None for v in expected.values())
    total = sum(v or 0 for v in expected.values())
    bar = tqdm(desc="ingest", unit="frame", total=total or None, disable=not progress, dynamic_ncols=True)
    if unknown:
        logger.info("%d video(s) give no frame count or duration: the total counts them as they finish",
                    unknown)
    faces_found = 0
    try:
        for k in block:
            path, key, media_rel = media[k], keys[k], rels[k]
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
                    _retotal(bar, -(expected[k] or 0))
                    dirty = True
                    continue
            # Redo: first drop its record, so that a kill while its files are rewritten (with
            # other settings, say) never leaves a record that vouches for them.
            part_path.unlink(missing_ok=True)
            for sub in ("frames", "crops"):
                _remove_temporaries(out_dir / sub / key)
            writer = _Writer(out_dir, key, media_rel, crops, margin, quality,
                             getattr(get_detector(), "sure_score", SURE_SCORE))
            frames_before = report.frames
            try:
                try:
                    if is_video(path):
                        faces, n_frames, shots, warning = _ingest_video(
                            path, writer, get_detector,
                            iter_video(path, fps=fps, stride=stride, detect_size=detect_size),
                            batch_size, cfg, bar, report, faces_found, detect_every)
                    else:
                        faces, n_frames, shots, warning = _ingest_photo(path, writer, get_detector, read_image,
                                                                        detect_size)
                        bar.update(1)
                        report.frames += 1
                finally:
                    writer.close()
            except _BadMedia as e:
                logger.warning("skipping %s: %s", path, e)
                report.skipped[str(path)] = str(e)
                _retotal(bar, (report.frames - frames_before) - (expected[k] or 0))
                continue
            _retotal(bar, (report.frames - frames_before) - (expected[k] or 0))
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
    if shard is not None:
        if not faces_found:
            # A shard may hold only media without faces: an empty manifest says so.
            with atomic_write(out) as fh:
                fh.write("")
            logger.warning("shard %d/%d: no face in its %d media", shard[0], shard[1], len(block))
        _write_shard_record(out, shard, [str(p.resolve()) for p in media], rels, keys, block, settings, report)
        return report
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


def _retotal(bar: tqdm, delta: int) -> None:
    """Move the bar's total by ``delta`` frames (a media reused, or longer or shorter than
    its header said)."""
    if delta and bar.total is not None:
        bar.total = max(bar.total + delta, bar.n)
        bar.refresh()


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


def _ingest_photo(path: Path, writer: _Writer, get_detector, read_image,
                  detect_size: int | None = None) -> tuple[list[dict], int, None, None]:
    """Faces of one photo; the photo is referenced in place unless EXIF turned it."""
    from .media import downscale

    try:
        img = read_image(path)
    except (ProxytasksError, OSError, ValueError) as e:
        raise _BadMedia(str(e) or type(e).__name__) from e
    small = downscale(img, detect_size)
    seen = small if small is not None else img
    det = get_detector().detect([seen])[0]
    image_path = path.resolve()
    if len(det.boxes) and _exif_turned(path):
        image_path = writer.out_dir / "frames" / writer.key / "rotated.jpg"
        _save_jpeg(img, image_path)
    return writer.faces(img, det, None, None, image_path, seen.width / img.width), 1, None, None
