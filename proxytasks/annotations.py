"""Naming rounds a person typed, read into :class:`Annotations`: names (``id,name`` or
``cluster,name``), removals (``id,not_name``), same/different answers (``id,id2,answer``)
and filled suggestion sheets, in CSV or JSONL (gzip allowed). Later rounds win; a name a
person removed from a face never comes back to it. :mod:`proxytasks.naming` names the
faces from them.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

import numpy as np

from .errors import ProxytasksError

logger = logging.getLogger("proxytasks.naming")  # the app quiets this logger while it replays rounds


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


LABEL_COLUMNS = ("id", "name", "cluster", "not_name", "id2", "answer")
ANSWERS = {"same": True, "yes": True, "different": False, "no": False}


def _rows(path: Path) -> tuple[list[tuple[int, dict[str, object]]], bool]:
    """(line, record) of every record in a CSV or JSONL label file, and whether the file
    is a suggestion sheet (a ``kind`` column): there a row left blank is unanswered."""
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ProxytasksError(f"{path}: cannot read labels: {e}") from None
    if stem.endswith((".jsonl", ".json")) or (not stem.endswith(".csv") and text.lstrip().startswith("{")):
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ProxytasksError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not ({"id", "cluster"} & set(rec)):
                raise ProxytasksError(f"{path}:{line_no}: each line must be an object with 'id' "
                                      "(or 'cluster') and 'name', 'not_name' or 'id2'+'answer'")
            rows.append((line_no, rec))
        return rows, False
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    cols = [h.strip().lower() for h in header] if header else []
    if not ({"id", "cluster"} & set(cols)) or not ({"name", "not_name", "answer"} & set(cols)):
        raise ProxytasksError(f"{path}:1: the header must name the columns 'id' and 'name' "
                              f"(or cluster,name / id,not_name / id,id2,answer; got {header!r})")
    rows = []
    for rec in reader:
        if not rec or not any(cell.strip() for cell in rec):
            continue
        rows.append((reader.line_num, {c: rec[k] for k, c in enumerate(cols) if k < len(rec) and c}))
    return rows, "kind" in cols


@dataclass
class Annotations:
    """What a person said, accumulated over naming rounds (later rounds win).

    ``named``: face index -> name; ``forbidden``: face index -> names a person removed
    from that face (it never gets them back automatically); ``same`` / ``different``:
    answered face pairs ``(i, j)`` with ``i < j``; ``typed``: names typed so far (a
    cluster named at once counts one).
    """

    named: dict[int, str] = field(default_factory=dict)
    forbidden: dict[int, set[str]] = field(default_factory=dict)
    same: set[tuple[int, int]] = field(default_factory=set)
    different: set[tuple[int, int]] = field(default_factory=set)
    typed: int = 0
    _by_cluster: set[int] = field(default_factory=set, repr=False)

    def name(self, i: int, name: str) -> None:
        """Face ``i`` is ``name`` (also lifts an earlier removal of that name)."""
        self.named[i] = name
        self._by_cluster.discard(i)
        self.forbidden.get(i, set()).discard(name)
        self.typed += 1

    def name_cluster(self, faces: Sequence[int], name: str) -> None:
        """Every face of a cluster is ``name``, except faces named one by one or that a
        person removed from ``name``."""
        for i in faces:
            if (i not in self.named or i in self._by_cluster) and name not in self.forbidden.get(i, ()):
                self.named[i] = name
                self._by_cluster.add(i)
        self.typed += 1

    def remove(self, i: int, name: str) -> None:
        """Face ``i`` is not ``name``: it loses that name and never gets it back automatically."""
        self.forbidden.setdefault(i, set()).add(name)
        if self.named.get(i) == name:
            del self.named[i]
            self._by_cluster.discard(i)

    def answer(self, i: int, j: int, same: bool) -> None:
        """Faces ``i`` and ``j`` are (not) the same person."""
        key = (min(i, j), max(i, j))
        (self.same if same else self.different).add(key)
        (self.different if same else self.same).discard(key)


def read_annotations(paths: Sequence[str | os.PathLike] | str | os.PathLike, ids: Sequence[str],
                     clusters: np.ndarray | None = None, into: Annotations | None = None) -> Annotations:
    """Read naming rounds, in order, into :class:`Annotations`.

    Each file is CSV (header required) or JSONL; a record is one of
    ``id,name`` (a face named), ``cluster,name`` (every face of a cluster of ``clusters``),
    ``id,not_name`` (a name removed from a face) or ``id,id2,answer`` (``same`` or
    ``different``). A suggestion sheet from ``proxytasks suggest`` is such a file; its
    rows left blank are skipped. Every defect (unknown id or cluster, empty name, one id
    named twice differently in one file, a bad answer) is reported with the file and line
    in one :class:`ProxytasksError`.
    """
    ann = into if into is not None else Annotations()
    index = {str(face_id): i for i, face_id in enumerate(ids)}
    members: dict[str, list[int]] = {}
    if clusters is not None:
        for i, c in enumerate(np.asarray(clusters).tolist()):
            if c >= 0:
                members.setdefault(str(c), []).append(i)
    problems: list[str] = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(path)
        if not path.is_file():
            raise ProxytasksError(f"{path}: label file not found")
        rows, sheet = _rows(path)
        seen: dict[int, tuple[str, int]] = {}
        for line_no, rec in rows:
            cell = {k: "" if rec.get(k) is None else str(rec.get(k)).strip() for k in LABEL_COLUMNS}
            where = f"{path}:{line_no}"
            if cell["id"] and cell["id"] not in index:
                problems.append(f"{where}: id {cell['id']!r} is not a face of the manifest")
                continue
            i = index.get(cell["id"])
            if cell["answer"] or (cell["id2"] and not sheet):
                if cell["answer"].lower() not in ANSWERS:
                    problems.append(f"{where}: answer {cell['answer']!r} must be 'same' or 'different'")
                elif i is None or cell["id2"] not in index:
                    problems.append(f"{where}: an answer needs two faces of the manifest in 'id' and "
                                    f"'id2' (got {cell['id']!r}, {cell['id2']!r})")
                else:
                    ann.answer(i, index[cell["id2"]], ANSWERS[cell["answer"].lower()])
            elif cell["not_name"]:
                if i is None:
                    problems.append(f"{where}: 'not_name' needs the face's 'id'")
                else:
                    ann.remove(i, cell["not_name"])
            elif cell["name"] and i is None and cell["cluster"]:
                if clusters is None:
                    problems.append(f"{where}: naming cluster {cell['cluster']!r} needs the clusters file")
                elif cell["cluster"] not in members:
                    problems.append(f"{where}: cluster {cell['cluster']!r} is not a cluster of the clusters file")
                else:
                    ann.name_cluster(members[cell["cluster"]], cell["name"])
            elif cell["name"] and i is not None:
                if i in seen and seen[i][0] != cell["name"]:
                    problems.append(f"{where}: id {cell['id']!r} is named {cell['name']!r} here but "
                                    f"{seen[i][0]!r} on line {seen[i][1]}")
                elif i not in seen:
                    seen[i] = (cell["name"], line_no)
                    ann.name(i, cell["name"])
            elif not sheet:
                what = f"id {cell['id']!r}" if cell["id"] else f"cluster {cell['cluster']!r}"
                problems.append(f"{where}: {what} has an empty name")
    if problems:
        more = f"\n... and {len(problems) - 20} more problem(s)" if len(problems) > 20 else ""
        raise ProxytasksError("\n".join(problems[:20]) + more)
    logger.info("labels: %d named faces, %d names typed, %d removals, %d same / %d different answers",
                len(ann.named), ann.typed, sum(map(len, ann.forbidden.values())), len(ann.same),
                len(ann.different))
    return ann


def read_labels(path: str | os.PathLike, ids: Sequence[str]) -> dict[int, str]:
    """Names a person gave in one file: face index (position in ``ids``) -> name.

    CSV ``id,name`` (header required) or JSONL ``{"id", "name"}``; see
    :func:`read_annotations` for the other record kinds and the error reporting.
    """
    return read_annotations([path], ids).named
