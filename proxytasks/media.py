"""Reading media: videos frame by frame (streamed, never held in memory) and photos.

Videos are decoded with PyAV. Frame indices always count every decoded frame, so a
face found in frame 1234 of a stride-10 pass is in frame 1234 of a full pass too.
Every failure on a user's file becomes a :class:`ProxytasksError` naming the file.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ProxytasksError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".pgm", ".ppm", ".bmp", ".tif",
                    ".tiff"}
# Suffixes never sniffed for image content when walking folders.
_NOT_MEDIA = {".txt", ".md", ".json", ".jsonl", ".gz", ".csv", ".tsv", ".yaml", ".yml", ".py",
              ".xml", ".html", ".pdf", ".zip", ".tar", ".npy", ".npz", ".pt", ".log", ".mat"}
# Images above this many pixels are refused (a decompression bomb or a mistake).
MAX_IMAGE_PIXELS = 300_000_000


@dataclass
class Frame:
    """One decoded frame, or a photo.

    Attributes:
        index: 0-based index counting every decoded frame of the video; 0 for a photo.
        time: seconds from the start of the video (pts * time_base, less the stream's
            start time); None for a photo.
        image: the RGB picture.
        small: the picture downscaled for a detector (``detect_size``), or None when
            ``image`` is already small enough.
    """

    index: int
    time: float | None
    image: Image.Image
    small: Image.Image | None = None

    @property
    def detect_image(self) -> Image.Image:
        """The picture a detector should see: ``small`` where there is one."""
        return self.small if self.small is not None else self.image


def detect_scale(width: int, height: int, detect_size: int | None) -> float:
    """The factor that brings a ``width`` x ``height`` picture's shorter side down to
    ``detect_size`` (1.0 when it is already that small, or when ``detect_size`` is None/0)."""
    short = min(width, height)
    if not detect_size or short <= detect_size:
        return 1.0
    return detect_size / short


def small_size(width: int, height: int, detect_size: int | None) -> tuple[int, int] | None:
    """The downscaled size for a detector (even sides), or None to keep the picture."""
    s = detect_scale(width, height, detect_size)
    if s >= 1.0:
        return None
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def downscale(image: Image.Image, detect_size: int | None) -> Image.Image | None:
    """``image`` brought down to ``detect_size`` on its shorter side (None when it is small)."""
    size = small_size(image.width, image.height, detect_size)
    return None if size is None else image.resize(size, Image.BILINEAR, reducing_gap=2.0)


def is_sequence(path: str | Path) -> bool:
    """True for an image-sequence folder: two or more images named by frame number
    (``000001.jpg``, ``12.png``, ...) and no other media."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = [c for c in path.iterdir() if c.is_file() and not c.name.startswith(".")]
    images = [c for c in files if c.suffix.lower() in IMAGE_EXTENSIONS]
    return len(images) >= 2 and all(c.stem.isdigit() for c in images) and \
        not any(c.suffix.lower() in VIDEO_EXTENSIONS for c in files)


def is_video(path: str | Path) -> bool:
    """True for a video file (by extension) or an image-sequence folder."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS or is_sequence(path)


def _sequence_files(path: str | Path) -> list[Path]:
    return sorted((c for c in Path(path).iterdir() if c.is_file() and c.stem.isdigit()
                   and c.suffix.lower() in IMAGE_EXTENSIONS), key=lambda c: int(c.stem))


def iter_sequence(path: str | Path, stride: int | None = None,
                  detect_size: int | None = None) -> Iterator[Frame]:
    """The frames of an image-sequence folder, in frame-number order; the frame index is
    the number in the file name (``time`` is None: a sequence carries no time stamps)."""
    for k, file in enumerate(_sequence_files(path)):
        if stride is None or k % stride == 0:
            image = read_image(file)
            yield Frame(index=int(file.stem), time=None, image=image, small=downscale(image, detect_size))


def expected_frames(path: str | Path, fps: float | None = None, stride: int | None = None) -> int | None:
    """How many frames :func:`iter_video` will yield, from the header (frame count, else
    duration x frame rate) and the sampling; None when the header says nothing."""
    if is_sequence(path):
        n = len(_sequence_files(path))
        return -(-n // stride) if stride else n
    try:
        info = video_info(path)
    except ProxytasksError:
        return None
    n = info["frames"]
    if n <= 0:
        return None
    if stride:
        return -(-n // stride)
    if fps and info["fps"] > 0 and fps < info["fps"]:
        return max(1, int(round(n * fps / info["fps"])))
    return n


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - depends on the environment
        raise ProxytasksError("reading videos needs PyAV: pip install 'av>=12' "
                              "(or pip install -e '.[video]')") from None
    return av


def _open_container(path: Path) -> Any:
    """Open ``path`` with PyAV; errors name the file."""
    av = _av()
    if not path.is_file():
        raise ProxytasksError(f"video {path}: no such file")
    if path.stat().st_size == 0:
        raise ProxytasksError(f"video {path}: the file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ProxytasksError(f"video {path}: cannot be opened as a video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise ProxytasksError(f"video {path}: holds no video stream")
    return container


def _stream_fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def video_info(path: str | Path) -> dict[str, Any]:
    """Frame count, frame rate, duration and size of a video, read from its header.

    Returns:
        ``{"frames": int, "fps": float, "duration": float, "width": int, "height": int,
        "frames_estimated": bool}``; ``frames`` is estimated from duration x fps when
        the container does not store it.
    """
    path = Path(path)
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = int(stream.frames or 0)
        estimated = frames <= 0
        if estimated:
            frames = int(round(duration * fps)) if fps and duration else 0
        return {"frames": frames, "fps": fps, "duration": duration,
                "width": int(stream.codec_context.width),
                "height": int(stream.codec_context.height), "frames_estimated": estimated}
    finally:
        container.close()


def iter_video(path: str | Path, fps: float | None = None,
               stride: int | None = None, detect_size: int | None = None) -> Iterator[Frame]:
    """Decode a video lazily, one RGB frame at a time.

    Args:
        path: the video file.
        fps: keep about this many frames per second, chosen by time stamps.
        stride: keep every ``stride``-th frame (0, stride, 2*stride, ...).
        detect_size: also give each kept frame downscaled to this shorter side
            (``Frame.small``), scaled by FFmpeg's scaler straight from the decoded
            picture; frames already that small get none.

    Yields:
        :class:`Frame` objects; ``index`` counts every decoded frame, kept or not.

    Raises:
        ProxytasksError: the file cannot be opened or decoding fails (the message names
            the file and the frame index reached).
    """
    if fps is not None and stride is not None:
        raise ProxytasksError("iter_video: give fps or stride, not both")
    if is_sequence(path):
        if fps is not None:
            raise ProxytasksError(f"{path}: an image sequence has no time stamps; use a stride, not fps")
        yield from iter_sequence(path, stride, detect_size)
        return
    if stride is not None and stride < 1:
        raise ProxytasksError(f"iter_video: stride must be >= 1, got {stride}")
    if fps is not None and not fps > 0:
        raise ProxytasksError(f"iter_video: fps must be > 0, got {fps}")
    path = Path(path)
    av = _av()
    container = _open_container(path)
    index = -1
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native_fps = _stream_fps(stream) or 25.0
        # Times count from the stream's start (its first time stamp may be 0.85 s, say).
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None \
            and stream.time_base is not None else 0.0
        t0: float | None = None
        next_time = 0.0
        try:
            for frame in container.decode(stream):
                index += 1
                if frame.pts is not None and frame.time_base is not None:
                    time = max(0.0, float(frame.pts * frame.time_base) - start)
                else:
                    time = index / native_fps
                if stride is not None and index % stride:
                    continue
                if fps is not None:
                    if t0 is None:
                        t0 = time
                    rel = time - t0
                    # Half a native frame of tolerance, so 30 fps -> 5 fps keeps every 6th.
                    if rel + 0.5 / native_fps < next_time:
                        continue
                    next_time = (math.floor(rel * fps + 0.5) + 1) / fps
                image = Image.fromarray(frame.to_ndarray(format="rgb24"))
                small = None
                size = small_size(frame.width, frame.height, detect_size)
                if size is not None:
                    # swscale's bilinear filter widens with the ratio (no aliasing); its area
                    # filter cost 2.4x more at 720p -> 540 (16.6 against 6.8 ms a frame).
                    small = Image.fromarray(frame.reformat(width=size[0], height=size[1], format="rgb24",
                                                           interpolation="BILINEAR").to_ndarray())
                yield Frame(index=index, time=time, image=image, small=small)
        except (av.FFmpegError, OSError, ValueError, MemoryError) as exc:
            raise ProxytasksError(
                f"video {path}: decoding failed at frame {index + 1} ({exc}); the file may be "
                f"truncated or corrupt: re-encode it (e.g. ffmpeg -i in.mp4 out.mp4)") from None
        if index < 0:
            raise ProxytasksError(f"video {path}: no frame could be decoded; the file may be "
                                  f"truncated or corrupt")
        expected = int(stream.frames or 0)
        if expected and index + 1 < 0.98 * expected:
            logger.warning("video %s: decoded %d frames but its header promises %d; the file "
                           "may be truncated", path, index + 1, expected)
    finally:
        container.close()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (grey, 16-bit, float, palette, RGBA, CMYK, ...) to RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        arr = np.asarray(image).astype(np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if image.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255:
            arr = arr / 257.0  # 16-bit data
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """Read a photo as RGB with its EXIF orientation applied.

    Raises:
        ProxytasksError: missing, empty, truncated, not an image, or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise ProxytasksError(f"image {path}: no such file")
    if path.stat().st_size == 0:
        raise ProxytasksError(f"image {path}: the file is empty (0 bytes)")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError("too many pixels")
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = to_rgb(image)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProxytasksError(f"image {path}: larger than {MAX_IMAGE_PIXELS} pixels; refused "
                              f"as a possible decompression bomb (downscale it first)") from None
    except UnidentifiedImageError:
        raise ProxytasksError(f"image {path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ProxytasksError(f"image {path}: cannot be read, truncated or corrupt ({exc})") \
            from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return image


def _natural_key(path: Path) -> list[Any]:
    """Sort key that orders 'f2.jpg' before 'f10.jpg' inside each folder."""
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", str(path))]


def _looks_like_image(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return bool(im.format)
    except Exception:  # any failure: not an image we can use
        return False


def _is_media(path: Path, sniff: bool) -> bool:
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS or suffix in IMAGE_EXTENSIONS:
        return True
    if not sniff or suffix in _NOT_MEDIA:
        return False
    # Extension-less or oddly named photos (e.g. Yale 'subject01.glasses').
    return _looks_like_image(path)


def find_media(paths: Sequence[str | Path]) -> list[Path]:
    """Videos and images among files and folders (folders walked recursively).

    Hidden files and folders (names starting with '.') are skipped; image files without a
    known extension are recognised by content. An image-sequence folder (000001.jpg,
    ...) comes back as the folder itself: one media whose frames are its images.

    Raises:
        ProxytasksError: a path does not exist, or a named file is not a video or image.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ProxytasksError(f"media {path}: no such file or folder")
        if path.is_file():
            if not _is_media(path, sniff=True):
                known = ", ".join(sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS))
                raise ProxytasksError(f"media {path}: neither a video nor an image (known "
                                      f"extensions: {known})")
            found[path] = None
            continue
        if is_sequence(path):
            found[path] = None
            continue
        sequences = [d for d in path.rglob("*") if d.is_dir() and is_sequence(d)]
        for child in sorted(path.rglob("*"), key=_natural_key):
            rel = child.relative_to(path)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if child in sequences:
                found[child] = None
            elif child.is_file() and child.parent not in sequences and _is_media(child, sniff=True):
                found[child] = None
    return sorted(found, key=_natural_key)
