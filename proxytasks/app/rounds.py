"""The app's round files: one small CSV per action, written whole or not at all.

Every action a person takes in the app (a name, a removal, a merge, a split, an answer,
an undo) becomes one new file ``DIR/app/rounds/NNNNNN-<action>.csv``, numbered in the
order the actions happened (``000007-undo-000005.csv`` undoes action 5). Each is a naming round in the formats ``proxytasks name`` already
reads (:func:`proxytasks.naming.read_annotations`): ``id,name``, ``cluster,name``,
``id,not_name`` and ``id,id2,answer`` rows under one header, plus an ``action`` column
(the file name's too) that the app uses to replay merges and splits; ``name`` ignores
it. Later rounds win, as for any rounds: ``proxytasks name RUN EMB DIR/app/rounds/*.csv``
reads them in order.

A file is written to a temporary name, flushed to disk, then linked under its number
(a link never replaces a file) while an exclusive ``flock`` on
``DIR/app/rounds/.lock`` is held: a server killed mid-action leaves every earlier file
whole, and two tabs or two servers on one folder never take the same number.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import ProxytasksError

COLUMNS = ("id", "name", "cluster", "not_name", "id2", "answer", "action", "time")
ACTIONS = ("name", "name-cluster", "not", "merge", "split", "answer", "undo")
_FILE = re.compile(r"^(\d{6,})-([a-z]+(?:-[a-z]+)*)(?:-(\d{6,}))?\.csv$")


@dataclass
class Round:
    """One action file: its number, what it did and its rows (dicts of :data:`COLUMNS`)."""

    seq: int
    path: Path
    action: str
    rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def undoes(self) -> int | None:
        """The number of the action this one undoes (an ``undo N`` action), else None."""
        kind, _, target = self.action.partition(" ")
        return int(target) if kind == "undo" and target.isdigit() else None

    @property
    def kind(self) -> str:
        return self.action.partition(" ")[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RoundLog:
    """The numbered action files of one folder (``DIR/app/rounds``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._cache: dict[int, Round] = {}
        self._paths: dict[int, Path] = {}

    def numbers(self) -> list[int]:
        """The numbers of the finished action files, in order."""
        if not self.folder.is_dir():
            return []
        found = {}
        for name in os.listdir(self.folder):
            if m := _FILE.match(name):
                found[int(m.group(1))] = self.folder / name
        self._paths.update(found)
        return sorted(found)

    def path(self, seq: int) -> Path:
        if seq not in self._paths:
            self.numbers()
        if seq not in self._paths:
            raise ProxytasksError(f"{self.folder}: no action {seq}")
        return self._paths[seq]

    def read(self, seq: int) -> Round:
        """One action file (parsed once: the files never change)."""
        if seq not in self._cache:
            path = self.path(seq)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ProxytasksError(f"{path}: cannot read the app's round file: {e}") from None
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames is None or "action" not in reader.fieldnames:
                raise ProxytasksError(f"{path}:1: not a round file of the app (no 'action' column)")
            rows = [{k: (v or "") for k, v in row.items() if k in COLUMNS} for row in reader]
            _, kind, target = _FILE.match(path.name).groups()
            action = f"{kind} {int(target)}" if target else kind
            if any(r["action"] != action for r in rows):
                raise ProxytasksError(f"{path}: its rows' action differs from its name's ({action!r})")
            if kind not in ACTIONS:
                raise ProxytasksError(f"{path}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
            self._cache[seq] = Round(seq, path, action, rows)
        return self._cache[seq]

    def rounds(self) -> list[Round]:
        return [self.read(k) for k in self.numbers()]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (other threads and processes wait)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, action: str, rows: Sequence[dict[str, str]]) -> Round:
        """Write one action as the next numbered file; call with :meth:`locked` held."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for row in rows:
            w.writerow([row.get(c, "") for c in COLUMNS[:-2]] + [action, stamp])
        data = buf.getvalue().encode("utf-8")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".action.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            kind, _, target = action.partition(" ")
            suffix = f"{kind}-{int(target):06d}" if target else kind
            seq = max(self.numbers(), default=0) + 1
            while True:
                path = self.folder / f"{seq:06d}-{suffix}.csv"
                try:
                    os.link(tmp, path)  # never replaces an existing file
                    break
                except FileExistsError:
                    seq += 1
            self._paths[seq] = path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(self.folder)
        return self.read(seq)


def earlier_rounds(folder: str | os.PathLike) -> list[Path]:
    """The naming rounds a recipe left in ``folder``, in order: per ``round<k>/`` folder
    (by number), its ``answers.csv`` (a simulated person's), else its ``suggestions.csv``
    (a sheet a person may have filled; rows left blank count as unanswered)."""
    found = []
    for sub in Path(folder).glob("round*"):
        m = re.fullmatch(r"round(\d+)", sub.name)
        if m and sub.is_dir():
            for name in ("answers.csv", "suggestions.csv"):
                if (sub / name).is_file():
                    found.append((int(m.group(1)), sub / name))
                    break
    return [p for _, p in sorted(found)]
