"""Importers for common face-dataset layouts: each writes a manifest (Contract 1).

Every importer is a library function that builds the faces, writes the manifest
atomically with :meth:`Manifest.write` and returns the :class:`Manifest` as written
(paths relative to the output manifest's folder, ``root`` = that folder).

Layouts:
- :func:`import_folders`: identity folders, ``ROOT/<identity>/<image>``.
- :func:`import_pattern`: flat files with the identity in the name (regex).
- :func:`import_crops`: frame-indexed crops of one video,
  ``ROOT[/<identity>]/<prefix>_<frame>_<k>.<ext>``.
- :func:`import_detections`: a CSV/TSV/JSONL table of boxes from any detector.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import re
import string
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest, image_size

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".pgm", ".ppm", ".bmp",
                              ".tif", ".tiff"})
# <prefix>_<frame>_<k>.<ext> on the file name, e.g. "ep01_000123_0.jpg".
DEFAULT_CROP_REGEX = r"^(?P<prefix>.+)_(?P<frame>\d+)_(?P<k>\d+)\.[^.]+$"
REQUIRED_COLUMNS = ("media", "frame", "x", "y", "w", "h")
OPTIONAL_COLUMNS = ("score", "image", "time", "identity", "track", "id")
TEMPLATE_FIELDS = ("media", "media_stem", "frame")
_SHOWN_NAMES = 5


# --------------------------------------------------------------------------- helpers
def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _natural_key(rel: str) -> tuple:
    """Sort key: per path part, digit runs compared as numbers ("s3/2" < "s3/10")."""
    parts = tuple(
        tuple(int(t) if i % 2 else t.lower() for i, t in enumerate(re.split(r"([0-9]+)", part)))
        for part in rel.split("/")
    )
    return parts, rel


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.exists():
        raise ProxytasksError(f"{path}: folder not found; give the dataset's root folder")
    if not path.is_dir():
        raise ProxytasksError(f"{path}: not a folder; give the dataset's root folder")
    return path


def _walk(root: Path, max_depth: int | None = None) -> list[str]:
    """Non-hidden files under ``root`` as relative posix paths, in natural order.

    Hidden files and folders (name starting with ``.``) are ignored; symbolic links to
    folders are followed once (a link back to a visited folder is not re-entered).

    Args:
        root: the folder to walk.
        max_depth: 1 lists only files directly in ``root``; None walks everything.
    """
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        rel_dir = os.path.relpath(dirpath, root)
        depth = 0 if rel_dir == "." else len(Path(rel_dir).parts)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if max_depth is not None and depth + 1 >= max_depth:
            dirnames[:] = []
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{name}"
            found.append(rel)
    found.sort(key=_natural_key)
    return found


def _shorten(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN_NAMES])
    more = len(names) - _SHOWN_NAMES
    return shown + (f", +{more} more" if more > 0 else "")


def _report_skipped(what: str, root: Path, total: int, skipped: dict[str, list[str]],
                    level: int = logging.INFO) -> None:
    """One log line: how many files were skipped, why, and a few names per reason."""
    count = sum(len(v) for v in skipped.values())
    if not count:
        return
    reasons = "; ".join(f"{len(v)} {reason} ({_shorten(v)})" for reason, v in skipped.items() if v)
    logger.log(level, "%s: skipped %d of %d file(s) in %s: %s", what, count, total, root, reasons)


def _strip_image_ext(rel: str) -> str:
    """``rel`` without its extension when that is a known image extension."""
    return rel[: -len(PurePosixPath(rel).suffix)] if _is_image_name(rel) else rel


def _file_ids(rels: list[str]) -> list[str]:
    """Ids from relative paths without extension; colliding ones keep their extension."""
    ids = [_strip_image_ext(rel) for rel in rels]
    counts = Counter(ids)
    return [i if counts[i] == 1 else rel for i, rel in zip(ids, rels)]


def _relative_to(path: str | os.PathLike, out_dir: Path) -> str:
    """``path`` (absolute or relative to the cwd) relative to ``out_dir``, posix style."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


def _finish(what: str, faces: list[Face], out: str | os.PathLike, source: Path) -> Manifest:
    """Write the manifest (paths already relative to ``out``'s folder) and log a summary."""
    out = Path(out)
    manifest = Manifest(faces, out.parent)
    manifest.write(out)
    s = manifest.summary()
    logger.info("%s: %d face(s), %d identit%s, %d media from %s -> %s", what, s["faces"],
                s["identities"], "y" if s["identities"] == 1 else "ies", s["media"], source, out)
    return manifest


def _compile(regex: str, required: tuple[str, ...], allowed: tuple[str, ...],
             example: str) -> re.Pattern:
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise ProxytasksError(f"invalid regex {regex!r}: {e}") from None
    missing = [g for g in required if g not in pattern.groupindex]
    if missing:
        raise ProxytasksError(
            f"regex {regex!r} has no named group {', '.join(repr(g) for g in missing)}; "
            f"write it as (?P<{missing[0]}>...), e.g. r'{example}' "
            f"(named groups read: {', '.join(allowed)})")
    return pattern


def _frame_value(text: str | None, where: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ProxytasksError(f"{where}: group 'frame' matched {text!r}, which is not an "
                              f"integer; make the group match digits only, e.g. (?P<frame>\\d+)"
                              ) from None


# --------------------------------------------------------------------------- folders
def import_folders(root: str | os.PathLike, out: str | os.PathLike) -> Manifest:
    """Import identity folders ``ROOT/<identity>/<image>``; each image is a face crop.

    Images nested deeper inside an identity folder belong to that identity. Files
    directly in ROOT and files without an image extension are skipped (one log line).

    Args:
        root: the dataset folder.
        out: the manifest to write (``.jsonl`` or ``.jsonl.gz``).

    Returns:
        The manifest as written: ``media`` = path relative to ROOT, ``frame`` = None,
        ``crop`` = the image, ``identity`` = folder name, ``id`` = path without extension.
    """
    root = _check_root(root)
    files = _walk(root)
    skipped: dict[str, list[str]] = {"not in an identity folder": [], "not an image": []}
    rels = []
    for rel in files:
        if "/" not in rel:
            skipped["not in an identity folder"].append(rel)
        elif not _is_image_name(rel):
            skipped["not an image"].append(rel)
        else:
            rels.append(rel)
    _report_skipped("import_folders", root, len(files), skipped)
    if not rels:
        raise ProxytasksError(
            f"{root}: no images found; expected ROOT/<identity>/<image> with an extension among "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    out_dir = Path(out).parent
    faces = [Face(id=face_id, media=rel, frame=None, crop=_relative_to(root / rel, out_dir),
                  identity=rel.split("/", 1)[0])
             for rel, face_id in zip(rels, _file_ids(rels))]
    return _finish("import_folders", faces, out, root)


# --------------------------------------------------------------------------- pattern
def import_pattern(root: str | os.PathLike, regex: str, out: str | os.PathLike,
                   recursive: bool = False) -> Manifest:
    """Import flat files whose path relative to ROOT names the identity.

    ``re.search(regex, relative_path)`` must match; the regex needs a named group
    ``identity`` and may have ``frame`` (digits) and ``media``. Extensions are not
    required: a matching file is kept when PIL reads its header, else it is skipped
    with a warning. Files that do not match are skipped (one log line).

    Args:
        root: the dataset folder.
        regex: e.g. ``r"(?P<identity>subject\\d+)\\."`` for the Yale faces.
        out: the manifest to write.
        recursive: also look in sub-folders (the regex then sees ``sub/name``).

    Returns:
        The manifest as written; ``media`` defaults to the relative path, ``frame`` to None.
    """
    pattern = _compile(regex, ("identity",), ("identity", "frame", "media"),
                       r"(?P<identity>subject\d+)\.")
    root = _check_root(root)
    files = _walk(root, None if recursive else 1)
    unmatched: list[str] = []
    unreadable: list[str] = []
    kept: list[tuple[str, re.Match]] = []
    for rel in files:
        m = pattern.search(rel)
        if m is None or not m.group("identity"):
            unmatched.append(rel)
            continue
        try:
            image_size(root / rel)
        except OSError as e:
            unreadable.append(f"{rel} ({e})")
            continue
        kept.append((rel, m))
    _report_skipped("import_pattern", root, len(files), {"not matching the regex": unmatched})
    _report_skipped("import_pattern", root, len(files), {"matching but not readable images":
                                                         unreadable}, logging.WARNING)
    if not kept:
        raise ProxytasksError(
            f"{root}: no readable image matches regex {regex!r} ({len(files)} file(s) looked at"
            f"{'' if recursive else ', sub-folders not searched'}); the regex is searched in "
            f"each file's path relative to ROOT")
    out_dir = Path(out).parent
    has = pattern.groupindex
    faces = []
    for (rel, m), face_id in zip(kept, _file_ids([rel for rel, _ in kept])):
        media = m.group("media") if "media" in has else None
        frame = _frame_value(m.group("frame"), str(root / rel)) if "frame" in has else None
        faces.append(Face(id=face_id, media=media or rel, frame=frame,
                          crop=_relative_to(root / rel, out_dir), identity=m.group("identity")))
    return _finish("import_pattern", faces, out, root)


# --------------------------------------------------------------------------- crops
def import_crops(root: str | os.PathLike, out: str | os.PathLike, media: str | None = None,
                 regex: str = DEFAULT_CROP_REGEX) -> Manifest:
    """Import frame-indexed crops of one video: ``ROOT[/<identity>]/<prefix>_<frame>_<k>.<ext>``.

    Files directly in ROOT have no identity; files in ``ROOT/<identity>/`` carry it.
    Both layouts may be mixed. Non-images, deeper files and names the regex does not
    match are skipped (one log line).

    Args:
        root: the crops folder.
        out: the manifest to write.
        media: the video's name for every face; default: the regex's ``prefix`` group
            (or ROOT's folder name when the regex has none).
        regex: searched in the file name; needs a named group ``frame`` (digits), may
            have ``prefix``.

    Returns:
        The manifest as written: ``frame`` = int(frame), ``crop`` = the file,
        ``id`` = path relative to ROOT without extension.
    """
    pattern = _compile(regex, ("frame",), ("frame", "prefix", "k"), DEFAULT_CROP_REGEX)
    root = _check_root(root)
    files = _walk(root)
    skipped: dict[str, list[str]] = {"nested deeper than ROOT/<identity>/": [],
                                     "not an image": [], "not matching the crop name pattern": []}
    kept: list[tuple[str, str | None, re.Match]] = []
    for rel in files:
        parts = rel.split("/")
        m = pattern.search(parts[-1])
        if len(parts) > 2:
            skipped["nested deeper than ROOT/<identity>/"].append(rel)
        elif not _is_image_name(rel):
            skipped["not an image"].append(rel)
        elif m is None:
            skipped["not matching the crop name pattern"].append(rel)
        else:
            kept.append((rel, parts[0] if len(parts) == 2 else None, m))
    _report_skipped("import_crops", root, len(files), skipped)
    if not kept:
        raise ProxytasksError(
            f"{root}: no crops found; expected ROOT/<prefix>_<frame>_<k>.<ext> or "
            f"ROOT/<identity>/<prefix>_<frame>_<k>.<ext> (regex {regex!r} on the file name)")
    out_dir = Path(out).parent
    has_prefix = "prefix" in pattern.groupindex
    fallback = Path(os.path.abspath(root)).name
    faces = []
    for (rel, identity, m), face_id in zip(kept, _file_ids([rel for rel, _, _ in kept])):
        name = media or (m.group("prefix") if has_prefix else None) or fallback
        frame = _frame_value(m.group("frame"), str(root / rel))
        faces.append(Face(id=face_id, media=name, frame=frame,
                          crop=_relative_to(root / rel, out_dir), identity=identity))
    return _finish("import_crops", faces, out, root)


# --------------------------------------------------------------------------- detections
def _table_kind(path: Path) -> tuple[str, bool]:
    """("csv" | "tsv" | "jsonl", gzipped) from the file name."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for ext in ("csv", "tsv", "jsonl"):
        if name.endswith("." + ext):
            return ext, gz
    raise ProxytasksError(f"{path}: unknown table format; name it .csv, .tsv, .jsonl or "
                          f".jsonl.gz (optionally gzipped: .csv.gz, .tsv.gz)")


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each data row of a CSV/TSV (header row) or JSONL table."""
    kind, gz = _table_kind(path)
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            if kind == "jsonl":
                for lineno, text in enumerate(fh, 1):
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text)
                    except ValueError as e:
                        raise ProxytasksError(f"{path}:{lineno}: not valid JSON: {e}") from None
                    if not isinstance(obj, dict):
                        raise ProxytasksError(f"{path}:{lineno}: expected a JSON object per line")
                    yield lineno, obj
                return
            reader = csv.reader(fh, delimiter="\t" if kind == "tsv" else ",")
            header = next(reader, None)
            if header is None:
                raise ProxytasksError(f"{path}: the table is empty; expected a header row with "
                                      f"columns {', '.join(REQUIRED_COLUMNS)}")
            header = [h.strip() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ProxytasksError(
                    f"{path}:1: missing required column(s) {', '.join(missing)}; header found: "
                    f"{', '.join(header) or '(empty)'}; required: {', '.join(REQUIRED_COLUMNS)}")
            lineno = reader.line_num
            for values in reader:
                start, lineno = lineno + 1, reader.line_num
                if not any(v.strip() for v in values):
                    continue
                if len(values) > len(header):
                    raise ProxytasksError(f"{path}:{start}: {len(values)} fields but the header "
                                          f"has {len(header)}")
                yield start, dict(zip(header, values))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise ProxytasksError(f"{path}: cannot read the table: {e}") from None


def _cell(row: dict[str, Any], column: str) -> Any:
    """The row's value, with empty strings (and whitespace) read as missing."""
    value = row.get(column)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _number(row: dict[str, Any], column: str, where: str, required: bool) -> float | None:
    value = _cell(row, column)
    if value is None:
        if required:
            what = "missing" if column not in row else "empty"
            raise ProxytasksError(f"{where}: column '{column}': value {what}; a number is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ProxytasksError(f"{where}: column '{column}': expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ProxytasksError(f"{where}: column '{column}': {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ProxytasksError(f"{where}: column '{column}': {value!r} is not a finite number")
    return number


def _text(row: dict[str, Any], column: str, where: str) -> str | None:
    value = _cell(row, column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProxytasksError(f"{where}: column '{column}': expected text, got {value!r}")
    return str(value)


def _frame_cell(row: dict[str, Any], where: str) -> int | None:
    number = _number(row, "frame", where, required=False)
    if number is None:
        return None
    if number < 0 or number != int(number):
        raise ProxytasksError(f"{where}: column 'frame': {_cell(row, 'frame')!r} is not a "
                              f"non-negative integer (leave it empty for a photo)")
    return int(number)


def _template_uses_frame(template: str) -> bool:
    """Check the template's fields once; True when it refers to ``{frame}``."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        template.format(media="m.mp4", media_stem="m", frame=0)
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        raise ProxytasksError(f"image template {template!r} is not valid: {e!r}; use the "
                              f"fields {{{'}, {'.join(TEMPLATE_FIELDS)}}}, e.g. "
                              f"'frames/{{media_stem}}/{{frame:06d}}.jpg'") from None
    return any(re.split(r"[.\[]", n, maxsplit=1)[0] == "frame" for n in names)


def _detection_image(row: dict[str, Any], media: str, frame: int | None, template: str | None,
                     uses_frame: bool, where: str) -> str:
    """The image the box refers to, as written in the table (relative to its folder)."""
    image = _text(row, "image", where)
    if image is not None:
        return image
    if template is not None and (frame is not None or not uses_frame):
        return template.format(media=media, media_stem=PurePosixPath(media).stem, frame=frame)
    if frame is None and _is_image_name(media):
        return media
    raise ProxytasksError(
        f"{where}: no image for the box of media {media!r} frame {frame}: give an 'image' "
        f"column or an image template such as 'frames/{{media_stem}}/{{frame:06d}}.jpg'")


def import_detections(table: str | os.PathLike, out: str | os.PathLike,
                      image_template: str | None = None) -> Manifest:
    """Import a detections table (CSV/TSV with a header row, or JSONL) from any detector.

    Columns ``media, frame, x, y, w, h`` are required; ``score, image, time, identity,
    track, id`` are optional; others are ignored. An empty ``frame`` means a photo.
    The box's image comes from the ``image`` column, else ``image_template`` (fields
    ``{media}``, ``{media_stem}``, ``{frame}``), else, for a photo whose ``media`` is an
    image file, ``media`` itself. Relative paths are relative to the table's folder.

    Args:
        table: ``.csv``, ``.tsv``, ``.jsonl`` or ``.jsonl.gz`` (``.csv.gz``/``.tsv.gz`` too).
        out: the manifest to write.
        image_template: e.g. ``"frames/{media_stem}/{frame:06d}.jpg"``.

    Returns:
        The manifest as written. Default id: ``{media_stem}_{frame}_{k}`` (photos:
        ``{media_stem}_{k}``), k = the box's index within its (media, frame) in table order;
        the full media path (without extension) replaces the stem when two media share a stem.

    Raises:
        ProxytasksError: naming the table, line and column of the first bad row.
    """
    table = Path(table)
    out = Path(out)
    if not table.is_file():
        raise ProxytasksError(f"{table}: detections table not found" if not table.exists()
                              else f"{table}: not a file")
    if os.path.abspath(table) == os.path.abspath(out):
        raise ProxytasksError(f"{out}: the output manifest would overwrite the detections table")
    uses_frame = _template_uses_frame(image_template) if image_template is not None else False
    table_dir, out_dir = table.parent, out.parent
    records: list[tuple[int, Face, int]] = []  # (line, face without default id, k)
    per_frame: Counter = Counter()
    ignored: set[str] = set()
    for lineno, row in _read_rows(table):
        where = f"{table}:{lineno}"
        for column in REQUIRED_COLUMNS:
            if column not in row:
                raise ProxytasksError(f"{where}: column '{column}' missing; keys found: "
                                      f"{', '.join(map(str, row)) or '(none)'}")
        ignored.update(k for k in row if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        media = _text(row, "media", where)
        if media is None:
            raise ProxytasksError(f"{where}: column 'media': value empty; name the video or photo")
        frame = _frame_cell(row, where)
        x, y, w, h = (_number(row, c, where, required=True) for c in ("x", "y", "w", "h"))
        for column, size in (("w", w), ("h", h)):
            if size <= 0:
                raise ProxytasksError(f"{where}: column '{column}': {_cell(row, column)!r}; "
                                      f"box width and height must be positive")
        time = _number(row, "time", where, required=False)
        if time is not None and time < 0:
            raise ProxytasksError(f"{where}: column 'time': {_cell(row, 'time')!r} is negative")
        image = _detection_image(row, media, frame, image_template, uses_frame, where)
        k = per_frame[(media, frame)]
        per_frame[(media, frame)] += 1
        if not os.path.isabs(image):
            image = _relative_to(table_dir / image, out_dir)
        face = Face(id=_text(row, "id", where) or "", media=media, frame=frame, time=time,
                    image=image,
                    bbox=[x, y, w, h], score=_number(row, "score", where, required=False),
                    track=_text(row, "track", where), identity=_text(row, "identity", where))
        records.append((lineno, face, k))
    if not records:
        raise ProxytasksError(f"{table}: no detections found; expected one row per face with "
                              f"columns {', '.join(REQUIRED_COLUMNS)}")
    if ignored:
        logger.info("import_detections: ignored column(s) %s in %s",
                    ", ".join(sorted(ignored)), table)
    _assign_default_ids(records)
    first: dict[str, int] = {}
    for lineno, face, _ in records:
        if face.id in first:
            raise ProxytasksError(f"{table}:{lineno}: column 'id': duplicate id {face.id!r} "
                                  f"(first on line {first[face.id]})")
        first[face.id] = lineno
    return _finish("import_detections", [face for _, face, _ in records], out, table)


def _assign_default_ids(records: Iterable[tuple[int, Face, int]]) -> None:
    """Give faces without an ``id`` the default ``{media_stem}_{frame}_{k}``."""
    records = list(records)
    stems: dict[str, set[str]] = defaultdict(set)
    for _, face, _ in records:
        stems[PurePosixPath(face.media).stem].add(face.media)
    for _, face, k in records:
        if face.id:
            continue
        path = PurePosixPath(face.media)
        name = path.stem if len(stems[path.stem]) == 1 else str(path.with_suffix(""))
        face.id = f"{name}_{k}" if face.frame is None else f"{name}_{face.frame}_{k}"
