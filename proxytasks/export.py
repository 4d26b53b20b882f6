"""Export the named dataset: one folder of face crops per name, unknown faces apart.

:func:`export_dataset` reads a face manifest (Contract 1) and the names written by
``proxytasks name`` (CSV ``id,name,confidence,source``) and writes::

    DIR/<name>/<face id>.jpg     one folder per name, the face crops as JPEG
    DIR/_unknown/<face id>.jpg   faces without a name (or below --min-confidence)
    DIR/manifest.jsonl           a Contract 1 manifest of the exported crops
    DIR/names.json               folder -> original name and face count

Names and face ids are user data and become file names only through
:func:`safe_name`: one path component, never ``.``/``..``, no separators or control
characters, bounded length, no Windows device names. Names that collide after
sanitising (``a/b`` and ``a_b``, or ``Ann`` and ``ann`` on a case-insensitive disk)
get distinct folders with a ``-2``, ``-3`` suffix. The export is built in a hidden
sibling folder and renamed into place at the end, so an interrupted run leaves no
half-written DIR; ``overwrite`` replaces only an earlier export (one with names.json).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable

from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Face, Manifest

logger = logging.getLogger(__name__)

UNKNOWN = "_unknown"
MANIFEST_NAME = "manifest.jsonl"
INDEX_NAME = "names.json"
SOURCES = ("given", "track", "cluster", "classifier", "unknown")
COLUMNS = ("id", "name", "confidence", "source")
MAX_CHARS = 100
MAX_BYTES = 200  # UTF-8 bytes: leaves room for a suffix and ".jpg" under the usual 255
JPEG_QUALITY = 95
_SEPARATORS = ("/", "\\")
_PUNCTUATION = frozenset(" -_.'()")
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(10)])
# Names the export itself uses at the top of DIR: no person's folder may take them.
_RESERVED = (UNKNOWN, MANIFEST_NAME, INDEX_NAME)


# --------------------------------------------------------------------------- names -> paths
def _safe_char(ch: str) -> str:
    if ch in _PUNCTUATION or unicodedata.category(ch)[0] in "LMN":
        return ch
    return "_"


def _cap(text: str, max_chars: int) -> str:
    text = text[:max_chars]
    while len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        text = text[:-1]
    return text.rstrip(". ")


def safe_name(text: str, max_chars: int = MAX_CHARS) -> str:
    """A name or id as one safe path component; ``""`` when nothing usable is left.

    Unicode NFKC first; the text is split on ``/`` and ``\\``, parts that are empty,
    ``.`` or ``..`` are dropped and the rest joined with ``_`` (``../../etc`` ->
    ``etc``); characters other than letters, digits, marks, space and ``-_.'()``
    become ``_``; leading and trailing dots and spaces go; the result is capped at
    ``max_chars`` characters (and ``MAX_BYTES`` UTF-8 bytes); a Windows device name
    (``CON``, ``nul.txt``, ...) gets a leading ``_``.
    """
    text = unicodedata.normalize("NFKC", text)
    for sep in _SEPARATORS[1:]:
        text = text.replace(sep, _SEPARATORS[0])
    parts = ("".join(map(_safe_char, part)).strip(". ") for part in text.split(_SEPARATORS[0]))
    out = _cap("_".join(p for p in parts if p), max_chars)
    if out.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        out = _cap("_" + out, max_chars)
    return out


def _allocate(wanted: Iterable[tuple[str, str]], taken: Iterable[str] = ()) -> dict[str, str]:
    """Distinct safe components for keys: ``{key: safe}`` from ``(key, safe)`` in order.

    A component already used (compared case-insensitively, as on macOS and Windows
    disks) gets the first free ``-2``, ``-3``, ... suffix.
    """
    used = {t.casefold() for t in taken}
    out: dict[str, str] = {}
    for key, base in wanted:
        candidate, n = base, 1
        while candidate.casefold() in used:
            n += 1
            suffix = f"-{n}"
            candidate = _cap(base, MAX_CHARS - len(suffix)) + suffix
        used.add(candidate.casefold())
        out[key] = candidate
    return out


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved; refuses anything that is not strictly inside ``root``."""
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ProxytasksError(f"refusing to write {path}: it lies outside the export folder {root}")
    return resolved


# --------------------------------------------------------------------------- reading NAMES
def read_export_names(path: str | os.PathLike, manifest: Manifest,
                      ) -> dict[str, tuple[str | None, float, str, int]]:
    """The rows of a names CSV: face id -> (name or None, confidence, source, line).

    Every defect (missing column, id not in the manifest, duplicate id, confidence
    not in [0, 1], unknown source, a name with nothing usable for a folder) is
    reported with the file and line in one :class:`ProxytasksError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ProxytasksError(f"{path}: names file not found (write it with `proxytasks name`)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ProxytasksError(f"{path}: cannot read the names file ({e})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error as e:
        raise ProxytasksError(f"{path}:1: not valid CSV ({e})") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ProxytasksError(f"{path}:1: the header must name the columns {','.join(COLUMNS)} "
                              f"(missing {', '.join(missing)}); write the file with `proxytasks name`")
    col = {c: header.index(c) for c in COLUMNS}
    known = {f.id for f in manifest.faces}
    rows: dict[str, tuple[str | None, float, str, int]] = {}
    problems: list[str] = []
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(f"{path}:{reader.line_num}: not valid CSV ({e})")
            break
        where = f"{path}:{reader.line_num}"
        if not any(cell.strip() for cell in rec):
            continue
        if len(rec) <= max(col.values()):
            problems.append(f"{where}: expected {len(header)} columns, got {len(rec)}")
            continue
        face_id, name_cell = rec[col["id"]], rec[col["name"]]
        if face_id not in known:
            face_id = face_id.strip()
        if face_id not in known:
            problems.append(f"{where}: id {face_id!r} is not a face of the manifest")
            continue
        if face_id in rows:
            problems.append(f"{where}: id {face_id!r} appears again (first on line {rows[face_id][3]})")
            continue
        try:
            confidence = float(rec[col["confidence"]])
        except ValueError:
            confidence = math.nan
        if not 0.0 <= confidence <= 1.0:
            problems.append(f"{where}: confidence {rec[col['confidence']]!r} of id {face_id!r} "
                            f"is not a number in [0, 1]")
            continue
        source = rec[col["source"]].strip()
        if source not in SOURCES:
            problems.append(f"{where}: source {source!r} of id {face_id!r} is not one of "
                            f"{', '.join(SOURCES)}")
            continue
        name = name_cell.strip() if name_cell else None
        if name_cell and not safe_name(name):
            problems.append(f"{where}: name {name_cell!r} of id {face_id!r} leaves nothing usable "
                            f"as a folder name; fix the name (an empty cell means unknown)")
            continue
        rows[face_id] = (name, confidence, source, reader.line_num)
    if problems:
        more = f"\n... and {len(problems) - 20} more problem(s)" if len(problems) > 20 else ""
        raise ProxytasksError("\n".join(problems[:20]) + more)
    return rows


# --------------------------------------------------------------------------- the output folder
def _check_out_dir(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier export to replace; refuses anything else non-empty."""
    if out.is_symlink():
        raise ProxytasksError(f"{out} is a symbolic link; give the real folder to export into")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ProxytasksError(f"{out} exists and is not a folder; choose another output folder")
    if not any(out.iterdir()):
        return False
    if not overwrite:
        raise ProxytasksError(f"{out} exists and is not empty; choose another folder, or pass "
                              f"--overwrite to replace an earlier export there")
    index = out / INDEX_NAME
    try:
        earlier = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else None
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("folders"), dict):
        raise ProxytasksError(f"{out} is not an earlier export (no valid {INDEX_NAME}); refusing to "
                              f"delete it with --overwrite: choose another folder or empty it yourself")
    return True


def _swap_in(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished export to ``out``; an earlier export there is removed last."""
    if not replace:
        if out.is_dir():
            out.rmdir()  # empty: checked before the export started
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / out.name, out)
        old.rmdir()
        raise
    shutil.rmtree(old)


# --------------------------------------------------------------------------- export
def _record(face: Face, crop: str, name: str | None, confidence: float | None, source: str) -> Face:
    extra = dict(face.extra)
    extra.update(confidence=confidence, source=source)
    return Face(id=face.id, media=face.media, frame=face.frame, time=face.time, crop=crop,
                score=face.score, track=face.track, shot=face.shot, identity=name, extra=extra)


def export_dataset(manifest_path: str | os.PathLike, names_path: str | os.PathLike,
                   out_dir: str | os.PathLike, min_confidence: float | None = None,
                   overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Write the named face dataset to ``out_dir``; returns counts.

    Args:
        manifest_path: the face manifest the names refer to.
        names_path: CSV ``id,name,confidence,source`` from ``proxytasks name``; faces
            of the manifest it does not list are unknown.
        out_dir: folder to create; it must not exist or be empty, unless ``overwrite``
            and it holds an earlier export.
        min_confidence: predicted names below this confidence go to ``_unknown``;
            names a person gave (source "given") always stay.
        overwrite: replace an earlier export in ``out_dir``.
        progress: show a progress bar over the faces.

    Returns:
        ``faces``, ``named``, ``unknown`` (faces), ``names`` and ``folders``.
    """
    from tqdm.auto import tqdm

    from .embed import load_face

    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ProxytasksError(f"min_confidence {min_confidence!r}: expected a number in [0, 1]")
    manifest = Manifest.read(manifest_path, check_files=False)
    rows = read_export_names(names_path, manifest)
    out = Path(out_dir)
    replace = _check_out_dir(out, overwrite)
    out = out.resolve()
    if out.parent == out:
        raise ProxytasksError(f"{out_dir}: cannot export into a file system root; choose a folder")

    # who goes where: faces in manifest order, names as given
    assigned: list[tuple[Face, str | None, float | None, str]] = []
    for face in manifest.faces:
        name, confidence, source, _ = rows.get(face.id, (None, None, "unknown", 0))
        if name is not None and min_confidence is not None and source != "given" \
                and confidence < min_confidence:
            name = None
        assigned.append((face, name, confidence, source))
    absent = len(manifest) - len(rows)
    if absent:
        logger.warning("%d of %d faces of %s are not in %s: exported as unknown",
                       absent, len(manifest), manifest_path, names_path)
    names = sorted({n for _, n, _, _ in assigned if n is not None},
                   key=lambda n: (safe_name(n) != n, n))
    folders = _allocate(((n, safe_name(n)) for n in names), taken=_RESERVED)
    for n, folder in folders.items():
        if folder != n:
            logger.info("name %r is exported to folder %r", n, folder)
    ids = sorted(range(len(manifest)), key=lambda i: safe_name(manifest[i].id) != manifest[i].id)
    files = _allocate((manifest[i].id, safe_name(manifest[i].id) or "face") for i in ids)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # not mkdtemp: the finished folder gets the usual permissions, not 0700
    tmp = tmp.resolve()
    try:
        counts: dict[str, int] = {}
        records: list[Face] = []
        for face, name, confidence, source in tqdm(assigned, desc="export", unit="face",
                                                   disable=not progress):
            folder = UNKNOWN if name is None else folders[name]
            target = _inside(tmp, tmp / folder / f"{files[face.id]}.jpg")
            if folder not in counts:
                target.parent.mkdir()
                counts[folder] = 0
            image = load_face(manifest, face)
            with open(target, "xb") as fh:
                image.save(fh, format="JPEG", quality=JPEG_QUALITY)
            counts[folder] += 1
            records.append(_record(face, f"{folder}/{target.name}", name, confidence, source))
        Manifest(records, tmp).write(_inside(tmp, tmp / MANIFEST_NAME))
        by_folder = {UNKNOWN: None, **{f: n for n, f in folders.items()}}
        index = {
            "format": "proxytasks-export", "version": 1,
            "manifest": str(manifest_path), "names": str(names_path),
            "min_confidence": min_confidence,
            "folders": {f: {"name": by_folder[f], "faces": c} for f, c in sorted(counts.items())},
        }
        with atomic_write(_inside(tmp, tmp / INDEX_NAME)) as fh:
            json.dump(index, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        _swap_in(tmp, out, replace)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    unknown = counts.get(UNKNOWN, 0)
    summary = {"faces": len(records), "named": len(records) - unknown, "unknown": unknown,
               "names": len(folders), "folders": len(counts)}
    logger.info("exported %s: %s", out, summary)
    return summary
