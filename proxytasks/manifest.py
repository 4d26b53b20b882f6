"""The face manifest (Contract 1): one JSON object per line, one face per line.

Read, validate and write ``.jsonl`` / ``.jsonl.gz`` manifests. Validation happens
before any work and reports every defect with the file, line and field, e.g.::

    faces.jsonl:12: field 'bbox': box [300, 10, 50, 50] lies outside image 'f/0001.jpg' (320x240)

Relative paths inside a manifest are relative to the manifest file's folder; a
:class:`Manifest` keeps that folder as ``root`` and rebases paths when written elsewhere.
After :func:`confine_to` (the CLI's ``--root``), a path that resolves outside the given
folder (``..``, an absolute path, a symbolic link leading out) is refused.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import count
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import ManifestError, ProxytasksError
from .fileio import atomic_write

logger = logging.getLogger(__name__)

FIELDS = ("id", "media", "frame", "time", "image", "bbox", "crop", "score", "landmarks",
          "track", "shot", "identity", "quality")
PATH_FIELDS = ("image", "crop")
# Small slack for boxes computed in floating point (pixels).
BOX_SLACK = 1.0
NOT_A_MANIFEST = 5  # reading stops after this many bad records before the first face
_confined: Path | None = None  # see confine_to


def confine_to(root: str | os.PathLike | None) -> None:
    """From now on, refuse manifest paths that resolve outside ``root`` (its real path:
    symbolic links followed); None lifts the confinement."""
    global _confined
    if root is not None and not Path(root).is_dir():
        raise ProxytasksError(f"--root {root}: not a folder")
    _confined = None if root is None else Path(os.path.realpath(root))


def _escapes(path: Path) -> bool:
    """Whether ``path`` resolves outside the folder of :func:`confine_to`."""
    return _confined is not None and not Path(os.path.realpath(path)).is_relative_to(_confined)


@dataclass(slots=True)
class Face:
    """One face: a line of the manifest. ``extra`` keeps fields outside the contract."""

    id: str
    media: str
    frame: int | None = None
    time: float | None = None
    image: str | None = None
    bbox: list[float] | None = None
    crop: str | None = None
    score: float | None = None
    landmarks: list[list[float]] | None = None
    track: str | None = None
    shot: int | None = None
    identity: str | None = None
    quality: float | None = None  # face quality 0..1 (proxytasks.quality); low: marked
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this face; ``frame`` is always written (null for photos)."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None or name == "frame":
                out[name] = value
        out.update(self.extra)
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    try:
        return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _is_text(v: Any) -> bool:
    """A non-empty string that UTF-8 can encode (no lone surrogates such as "\\ud800")."""
    if not isinstance(v, str) or not v.strip():
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(v), type(v).__name__)


def _check_fields(obj: dict[str, Any]) -> list[str]:
    """Problems with the fields of one record, each as ``"field 'x': ..."``."""
    problems = []

    def bad(name: str, want: str) -> None:
        v = obj[name]
        problems.append(f"field '{name}': expected {want}, got {_type_name(v)} {json.dumps(v)[:60]}")

    for name in ("id", "media"):
        if name not in obj or obj[name] is None:
            problems.append(f"field '{name}' is required and missing")
        elif not _is_text(obj[name]):
            bad(name, "a non-empty string of valid Unicode")
    for name in ("image", "crop", "track", "identity"):
        if obj.get(name) is not None and not _is_text(obj[name]):
            bad(name, "a non-empty string of valid Unicode")
    for name in ("frame", "shot"):
        if obj.get(name) is not None and (not _is_int(obj[name]) or not 0 <= obj[name] < 2**63):
            bad(name, "a non-negative integer below 2**63 or null")
    for name in ("time", "score"):
        if obj.get(name) is not None and not _is_number(obj[name]):
            bad(name, "a finite number")
    if obj.get("time") is not None and _is_number(obj["time"]) and obj["time"] < 0:
        bad("time", "a non-negative number of seconds")
    if obj.get("quality") is not None and (not _is_number(obj["quality"]) or not 0 <= obj["quality"] <= 1):
        bad("quality", "a number from 0 to 1")
    box = obj.get("bbox")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            bad("bbox", "[x, y, w, h] with 4 finite numbers")
        elif box[2] <= 0 or box[3] <= 0:
            bad("bbox", "a box with positive width and height")
    marks = obj.get("landmarks")
    if marks is not None and not (
        isinstance(marks, list)
        and all(isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in marks)
    ):
        bad("landmarks", "a list of [x, y] pairs of finite numbers")
    if obj.get("crop") is None and (obj.get("image") is None or obj.get("bbox") is None):
        have = [n for n in ("image", "bbox") if obj.get(n) is not None]
        problems.append("a face needs 'crop', or 'image' with 'bbox'"
                        + (f" (only {have[0]!r} is given)" if have else ""))
    return problems


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid number (NaN and Infinity are refused)")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:30]} is out of the range of a float")
    return value


def parse_line(text: str) -> dict[str, Any]:
    """Parse one manifest line; NaN/Infinity (or 1e999), non-objects raise ``ValueError``."""
    obj = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_type_name(obj)}")
    return obj


def face_from_dict(obj: dict[str, Any]) -> Face:
    """Build a :class:`Face` from an already checked record."""
    known = {k: obj.get(k) for k in FIELDS}
    extra = {k: v for k, v in obj.items() if k not in FIELDS}
    if known["bbox"] is not None:
        known["bbox"] = [float(v) for v in known["bbox"]]
    return Face(**known, extra=extra)


def _open_text(path: Path):
    # bytes that are not UTF-8 become lone surrogates, refused line by line in Manifest.read
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of the upright image, from its header; raises ``OSError`` with a reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            # images are read upright (EXIF orientation applied): 5-8 swap the sides
            return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except FileNotFoundError:
        raise OSError("file not found") from None
    except IsADirectoryError:
        raise OSError("is a directory, not an image") from None
    except UnidentifiedImageError:
        raise OSError("not a readable image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(str(e) or type(e).__name__) from None


class Manifest:
    """An ordered list of faces plus the folder their relative paths start from.

    Face indices (positions in ``faces``) are what rules, pairs and embeddings refer to.
    """

    def __init__(self, faces: Iterable[Face], root: str | os.PathLike = ".") -> None:
        self.faces: list[Face] = list(faces)
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.faces)

    def __iter__(self) -> Iterator[Face]:
        return iter(self.faces)

    def __getitem__(self, i: int) -> Face:
        return self.faces[i]

    # ----------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str | os.PathLike, check_files: bool = True) -> "Manifest":
        """Read and validate a manifest; raises :class:`ManifestError` listing every defect.

        Args:
            path: a ``.jsonl`` or ``.jsonl.gz`` file.
            check_files: open every referenced image header (readable, box inside it).
        """
        path = Path(path)
        if not path.is_file():
            raise ManifestError([f"{path}: manifest not found" if not path.exists()
                                 else f"{path}: not a file"])
        faces: list[Face] = []
        lines: list[int] = []
        problems: list[str] = []
        try:
            with _open_text(path) as fh:
                for lineno, text in enumerate(fh, 1):
                    if not text.strip():
                        continue
                    if not faces and len(problems) >= NOT_A_MANIFEST:
                        problems.append(f"{path}: this does not look like a manifest (none of its first "
                                        f"{NOT_A_MANIFEST} records is a face); stopped reading. A manifest "
                                        "holds one JSON object per line with at least 'id', 'media' and "
                                        "'crop' or 'image' + 'bbox'")
                        break
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as e:
                        problems.append(f"{path}:{lineno}: not valid UTF-8: byte "
                                        f"0x{ord(text[e.start]) - 0xdc00:02x} at column {e.start + 1}")
                        continue
                    try:
                        obj = parse_line(text)
                    except ValueError as e:
                        problems.append(f"{path}:{lineno}: not valid JSON: {e}")
                        continue
                    found = _check_fields(obj)
                    if found:
                        problems.extend(f"{path}:{lineno}: {p}" for p in found)
                        continue
                    faces.append(face_from_dict(obj))
                    lines.append(lineno)
        except (UnicodeDecodeError, OSError, EOFError) as e:
            raise ManifestError([f"{path}: cannot read the manifest: {e}"]) from None
        manifest = cls(faces, path.parent)
        problems.extend(manifest._check_records(path, lines, check_files))
        if not problems and not faces:
            problems.append(f"{path}: the manifest holds no faces")
        if problems:
            raise ManifestError(problems)
        return manifest

    def _check_records(self, path: Path, lines: list[int], check_files: bool) -> list[str]:
        problems = []
        first_line: dict[str, int] = {}
        for face, lineno in zip(self.faces, lines):
            if face.id in first_line:
                problems.append(f"{path}:{lineno}: field 'id': duplicate id {face.id!r} "
                                f"(first on line {first_line[face.id]})")
            else:
                first_line[face.id] = lineno
        outside: set[str] = set()
        if _confined is not None:
            for face, lineno in zip(self.faces, lines):
                for name in PATH_FIELDS:
                    rel = getattr(face, name)
                    if rel is not None and (rel in outside or _escapes(self.root / rel)):
                        outside.add(rel)
                        problems.append(f"{path}:{lineno}: field '{name}': {rel!r} resolves outside the root "
                                        f"{str(_confined)!r} (--root)")
        if not check_files:
            return problems
        sizes: dict[str, tuple[int, int] | str] = {}
        for face, lineno in zip(self.faces, lines):
            for name in PATH_FIELDS:
                rel = getattr(face, name)
                if rel is None or rel in outside:
                    continue
                if rel not in sizes:
                    try:
                        sizes[rel] = image_size(self.resolve(rel))
                    except OSError as e:
                        sizes[rel] = str(e)
                        problems.append(f"{path}:{lineno}: field '{name}': cannot read "
                                        f"{str(self.resolve(rel))!r}: {e}")
            size = sizes.get(face.image) if face.image is not None else None
            if face.bbox is not None and isinstance(size, tuple):
                x, y, w, h = face.bbox
                width, height = size
                if x < -BOX_SLACK or y < -BOX_SLACK or x + w > width + BOX_SLACK \
                        or y + h > height + BOX_SLACK:
                    problems.append(f"{path}:{lineno}: field 'bbox': box {face.bbox} lies outside "
                                    f"image {face.image!r} ({width}x{height})")
        return problems

    # ----------------------------------------------------------------- writing
    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (gzip when the name ends in ``.gz``), rebasing relative paths."""
        path = Path(path)
        out_dir = path.parent
        with atomic_write(path) as fh:
            for face in self.faces:
                record = face.to_dict()
                for name in PATH_FIELDS:
                    if record.get(name) is not None:
                        record[name] = self._rebase(record[name], out_dir)
                fh.write(json.dumps(record, allow_nan=False) + "\n")
        return path

    def _rebase(self, rel: str, out_dir: Path) -> str:
        if os.path.isabs(rel):
            return rel
        absolute = os.path.abspath(os.path.join(self.root, rel))
        return Path(os.path.relpath(absolute, os.path.abspath(out_dir))).as_posix()

    # ----------------------------------------------------------------- access
    def resolve(self, rel: str) -> Path:
        """The file a manifest path points to (refused outside the root of :func:`confine_to`)."""
        path = Path(rel) if os.path.isabs(rel) else self.root / rel
        if _escapes(path):
            raise ProxytasksError(f"{rel!r} resolves outside the root {str(_confined)!r} (--root)")
        return path

    def replace(self, **changes: list) -> "Manifest":
        """A copy with whole columns replaced, e.g. ``replace(track=[...], shot=[...])``."""
        faces = []
        for i, face in enumerate(self.faces):
            faces.append(dataclasses.replace(face, **{k: v[i] for k, v in changes.items()}))
        return Manifest(faces, self.root)

    def codes(self, name: str) -> tuple[np.ndarray, list]:
        """Integer code per face for a field (-1 where it is null) and the code table."""
        table: dict[Any, int] = {}
        out = np.full(len(self.faces), -1, dtype=np.int64)
        for i, face in enumerate(self.faces):
            v = getattr(face, name)
            if v is not None:
                out[i] = table.setdefault(v, len(table))
        return out, list(table)

    def frames(self) -> np.ndarray:
        """Frame index per face, -1 for photos."""
        return np.array([-1 if f.frame is None else f.frame for f in self.faces], dtype=np.int64)

    def summary(self) -> dict[str, int]:
        """Counts: faces, media, frames (distinct media+frame), tracks, shots, identities."""
        media = {f.media for f in self.faces}
        frames = {(f.media, f.frame) for f in self.faces if f.frame is not None}
        tracks = {(f.media, f.track) for f in self.faces if f.track is not None}
        shots = {(f.media, f.shot) for f in self.faces if f.shot is not None}
        ids = Counter(f.identity for f in self.faces if f.identity is not None)
        return {"faces": len(self.faces), "media": len(media), "frames": len(frames),
                "tracks": len(tracks), "shots": len(shots), "identities": len(ids),
                "named_faces": sum(ids.values())}

    def columns(self) -> "FaceColumns":
        """The media, frame and track codes of the faces (:class:`FaceColumns`)."""
        return FaceColumns.from_manifest(self)


def _first_codes(values: Sequence, n: int) -> tuple[np.ndarray, list]:
    """Integer code per value, numbered by first occurrence, and the code table."""
    table: defaultdict = defaultdict(count().__next__)
    codes = np.fromiter(map(table.__getitem__, values), np.int64, n)
    return codes, list(table)


@dataclass
class FaceColumns:
    """A column view of a manifest: media, frame and track of every face as integer codes
    (-1 = absent), the columns rules and constraints read (:meth:`Manifest.columns`)."""

    media: np.ndarray
    frame: np.ndarray
    track: np.ndarray
    # results derived from the columns, kept only while a RuleSet applies its rules
    _memo: dict | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_manifest(cls, manifest: "Manifest") -> "FaceColumns":
        """Codes for media, frame (-1 for photos) and track (scoped by media), numbered
        by first occurrence; one pass over the faces per column, at C speed."""
        faces, n = manifest.faces, len(manifest.faces)
        media, _ = _first_codes(map(attrgetter("media"), faces), n)
        try:
            frame = np.fromiter(map(attrgetter("frame"), faces), np.int64, n)
        except TypeError:  # photos: frame None
            frame = np.fromiter(map(attrgetter("frame"), faces), object, n)
            frame[frame == None] = -1  # noqa: E711 (elementwise)
            frame = frame.astype(np.int64)
        names, table = _first_codes(map(attrgetter("track"), faces), n)
        if None in table:  # untracked faces: -1, and the codes after None's one down
            none = table.index(None)
            tracked = names != none
            names = np.where(tracked, names - (names > none), -1)
        else:
            tracked = np.ones(n, dtype=bool)
        # a track is (media, name): the names are the tracks when each name is in one media
        first = np.flatnonzero(tracked & (names > np.maximum.accumulate(np.r_[-1, names[:-1]])))
        if (media[first][names[tracked]] == media[tracked]).all():
            track = names
        else:
            key = media[tracked] * (len(first) + 1) + names[tracked]
            _, first_at, inverse = np.unique(key, return_index=True, return_inverse=True)
            rank = np.empty(len(first_at), dtype=np.int64)
            rank[np.argsort(first_at, kind="stable")] = np.arange(len(first_at))
            track = np.full(n, -1, dtype=np.int64)
            track[tracked] = rank[inverse.reshape(-1)]
        return cls(media=media, frame=frame, track=track)

    def __len__(self) -> int:
        return len(self.media)

    def _cached(self, key: str, make: Callable):
        memo = self.__dict__.get("_memo")
        if memo is None:
            return make()
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def frame_key(self) -> np.ndarray:
        """One code per (media, frame); -1 for photos."""
        span = int(self.frame.max(initial=0)) + 1
        if (int(self.media.max(initial=0)) + 1) * span < 2**63:
            return np.where(self.frame >= 0, self.media * span + self.frame, -1)
        # media * span + frame would overflow int64: rank the distinct (media, frame) instead
        key = np.full(len(self.frame), -1, dtype=np.int64)
        idx = np.flatnonzero(self.frame >= 0)
        order = idx[np.lexsort((self.frame[idx], self.media[idx]))]
        m, f = self.media[order], self.frame[order]
        key[order] = np.cumsum(np.r_[False, (m[1:] != m[:-1]) | (f[1:] != f[:-1])])
        return key
