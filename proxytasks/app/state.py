"""What the naming app shows: a working folder, and what a person did to it.

:class:`Workspace` reads a working folder (the output of the ``video_face_naming`` or
``photo_album`` recipe, or any folder with a manifest, embeddings and clusters), then
replays, in order, the naming rounds a recipe left there and the app's own action files
(:mod:`proxytasks.app.rounds`) into :class:`~proxytasks.naming.Annotations` with the
library's own reader, and into the clusters as the person reshaped them (merges, splits,
"same person?" answers). Nothing is kept that is not in a file: a restarted server, a
second tab or a second server on the same folder shows the same state.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ProxytasksError
from ..naming import Annotations, NamingResult, read_annotations
from ..vectors import l2_normalize
from .rounds import Round, RoundLog, earlier_rounds

logger = logging.getLogger(__name__)

MANIFESTS = ("tracked.jsonl", "tracked.jsonl.gz", "faces.jsonl", "faces.jsonl.gz", "manifest.jsonl",
             "manifest.jsonl.gz")
APP = "app"  # the app's own subfolder of the working folder
SAMPLE = 8   # faces shown on a person's card


class ApiError(Exception):
    """A request the app refuses: ``status`` (4xx) and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Sources:
    """The files of a working folder the app reads."""

    folder: Path
    manifest: Path
    emb: Path
    clusters: Path
    run: Path | None
    pairs: Path | None

    @property
    def app(self) -> Path:
        return self.folder / APP


def _numbered(folder: Path, stem: str, suffix: str) -> Path | None:
    """``stem+suffix``, else the highest ``stem<k>+suffix``."""
    if (folder / f"{stem}{suffix}").exists():
        return folder / f"{stem}{suffix}"
    found = [(int(m.group(1)), p) for p in folder.glob(f"{stem}*{suffix}")
             if (m := re.fullmatch(rf"{re.escape(stem)}(\d+){re.escape(suffix)}", p.name))]
    return max(found)[1] if found else None


def find_sources(folder: str | Path) -> Sources:
    """The manifest, embeddings, clusters, training run and rule pairs of ``folder``
    (the app's retrained embeddings in ``folder/app`` first)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProxytasksError(f"{folder}: not a folder; give the output folder of a recipe "
                              f"(e.g. runs/video) or any folder with a manifest, embeddings and clusters")
    manifest = next((folder / m for m in MANIFESTS if (folder / m).is_file()), None)
    app = folder / APP
    if (app / "embeddings.npz").is_file():
        emb, run = app / "embeddings.npz", app / "run"
    else:
        emb = _numbered(folder, "embeddings", ".npz")
        run = folder / ("run" + emb.stem[len("embeddings"):]) if emb is not None else None
    clusters = _numbered(folder, "clusters", ".csv")
    missing = [what for what, p in (("a manifest (tracked.jsonl, faces.jsonl or manifest.jsonl)", manifest),
                                    ("embeddings (embeddings.npz)", emb), ("clusters (clusters.csv)", clusters))
               if p is None]
    if missing:
        raise ProxytasksError(f"{folder}: no {', no '.join(missing)}; run the first part of a recipe there "
                              f"(proxytasks run recipes/video_face_naming.yaml --to suggest)")
    pairs = folder / "pairs.npz"
    return Sources(folder, manifest, emb, clusters, run if run is not None and run.is_dir() else None,
                   pairs if pairs.is_file() else None)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """The library's per-file INFO lines muted while many round files are replayed."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _members(labels: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    keys, starts = np.unique(labels[order], return_index=True)
    return {int(k): g for k, g in zip(keys, np.split(order, starts[1:]))}


class Workspace:
    """A working folder, its faces and everything a person said about them."""

    def __init__(self, folder: str | Path) -> None:
        from ..cluster import read_clusters
        from ..embed import Embeddings
        from ..manifest import Manifest

        self.sources = src = find_sources(folder)
        self.folder = src.folder
        self.manifest = Manifest.read(src.manifest, check_files=False)
        self.ids = [f.id for f in self.manifest.faces]
        self.index = {face_id: i for i, face_id in enumerate(self.ids)}
        emb = Embeddings.load(src.emb)
        if emb.ids != self.ids:
            raise ProxytasksError(f"{src.emb} does not hold the faces of {src.manifest} in order")
        self.set_vectors(emb.vectors)
        self.tracks = self.manifest.columns().track
        base = read_clusters(src.clusters, self.ids)
        free = base < 0
        if free.any():  # unclustered faces: a person of their own per track (or face)
            unit = np.where(self.tracks[free] >= 0, self.tracks[free], -2 - np.flatnonzero(free))
            base[free] = base.max(initial=-1) + 1 + np.unique(unit, return_inverse=True)[1].reshape(-1)
        self.base_labels = base
        self.log = RoundLog(src.app / "rounds")
        self.earlier = earlier_rounds(self.folder)
        self.lock = threading.RLock()
        self.result: NamingResult | None = None
        self.result_version = -1
        self.version = 0
        self._rebuild()
        if self.applied:
            self.write_labels()

    # ------------------------------------------------------------ replay
    def set_vectors(self, vectors: np.ndarray) -> None:
        x = np.asarray(vectors, dtype=np.float32)
        self.vectors = l2_normalize(x, axis=1)

    def replay(self, rounds: list[Round]) -> tuple[Annotations, np.ndarray, int]:
        """Annotations, clusters and the next free cluster id after the earlier rounds
        and ``rounds`` (app actions, in order; an undone one reshapes no cluster)."""
        ann = Annotations()
        labels = self.base_labels.copy()
        next_id = int(labels.max(initial=-1)) + 1
        undone = {r.undoes for r in rounds if r.undoes is not None}
        with _quiet("proxytasks.naming"):
            for path in self.earlier:
                read_annotations([path], self.ids, labels, into=ann)
            for r in rounds:
                read_annotations([r.path], self.ids, labels, into=ann)
                if r.seq not in undone:
                    next_id = self._reshape(r, labels, next_id)
        return ann, labels, next_id

    def _reshape(self, r: Round, labels: np.ndarray, next_id: int) -> int:
        """Apply the cluster change of one action to ``labels``; returns the next free id."""
        rows = [(self.index[row["id"]], self.index.get(row["id2"], -1), row["answer"]) for row in r.rows
                if row["id"] in self.index]
        if r.kind == "merge" or (r.kind == "answer" and rows and rows[0][2] == "same"):
            for i, j, _ in rows:
                if j >= 0 and labels[i] != labels[j]:
                    labels[labels == labels[j]] = labels[i]
        elif r.kind == "split" and rows:
            labels[[i for i, _, _ in rows]] = next_id
            next_id += 1
        elif r.kind == "answer" and rows and rows[0][1] >= 0:
            i, j, _ = rows[0]
            if labels[i] == labels[j]:  # "different" inside one cluster: j's track leaves it
                unit = np.flatnonzero((self.tracks == self.tracks[j]) & (labels == labels[j])) \
                    if self.tracks[j] >= 0 else np.array([j])
                unit = unit[unit != i]
                labels[unit] = next_id
                next_id += 1
        return next_id

    def _rebuild(self) -> None:
        rounds = self.log.rounds()
        self.ann, self.labels, self.next_id = self.replay(rounds)
        self.applied = rounds[-1].seq if rounds else 0
        self.undone = {r.undoes for r in rounds if r.undoes is not None}
        self.version += 1

    def refresh(self) -> None:
        """Take in the action files written since (by this or another process)."""
        with self.lock:
            new = [k for k in self.log.numbers() if k > self.applied]
            if not new:
                return
            fresh = [self.log.read(k) for k in new]
            if any(r.kind == "undo" for r in fresh):
                self._rebuild()
                return
            with _quiet("proxytasks.naming"):
                for r in fresh:
                    read_annotations([r.path], self.ids, self.labels, into=self.ann)
                    self.next_id = self._reshape(r, self.labels, self.next_id)
                    self.applied = r.seq
            self.version += 1

    def write_labels(self) -> Path:
        """Everything said so far (earlier rounds and the app's) as one label file,
        ``DIR/app/labels.csv``, for ``proxytasks name``/``pairs --labels`` and recipes."""
        import csv

        from ..fileio import atomic_write

        path = self.sources.app / "labels.csv"
        ann, ids = self.ann, self.ids
        with atomic_write(path) as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["id", "name", "not_name", "id2", "answer"])
            for i, names in sorted(ann.forbidden.items()):
                w.writerows([ids[i], "", n, "", ""] for n in sorted(names))
            w.writerows([ids[i], n, "", "", ""] for i, n in sorted(ann.named.items()))
            for pairs, said in ((ann.same, "same"), (ann.different, "different")):
                w.writerows([ids[a], "", "", ids[b], said] for a, b in sorted(pairs))
        return path

    # ------------------------------------------------------------ views
    def face_view(self, i: int) -> tuple[str | None, float, str]:
        """(name, confidence, source) of face ``i``: a person's name first, then the last
        naming's, unless a person removed that name from the face."""
        if i in self.ann.named:
            return self.ann.named[i], 1.0, "given"
        r = self.result
        if r is not None and r.names[i] is not None and r.names[i] not in self.ann.forbidden.get(i, ()):
            return r.names[i], float(r.confidence[i]), r.source[i]
        return None, 0.0, "unknown"

    def _cluster_name(self, members: np.ndarray) -> tuple[str | None, float]:
        """The cluster's name (most confidence mass) and its mean confidence over the faces."""
        mass: dict[str, float] = {}
        for i in members.tolist():
            name, conf, _ = self.face_view(i)
            if name is not None:
                mass[name] = mass.get(name, 0.0) + conf
        if not mass:
            return None, 0.0
        name = max(sorted(mass), key=mass.__getitem__)
        return name, round(mass[name] / len(members), 4)

    def central(self, members: np.ndarray, k: int = 1) -> list[int]:
        """The ``k`` faces of ``members`` closest to their mean direction."""
        mean = self.vectors[members].mean(axis=0)
        order = np.argsort(-(self.vectors[members] @ mean), kind="stable")
        return members[order[:k]].tolist()

    def people(self) -> dict:
        with self.lock:
            self.refresh()
            groups = _members(self.labels)
            out = []
            for c, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                name, conf = self._cluster_name(members)
                out.append({"cluster": c, "name": name, "confidence": conf, "faces": int(len(members)),
                            "named": sum(int(i) in self.ann.named for i in members),
                            "sample": [self.ids[i] for i in self.central(members, SAMPLE)]})
            return {"people": out, "faces": len(self.ids), "named": len(self.ann.named),
                    "version": self.applied, "names_version": self.result_version,
                    "stale": self.result_version != self.applied}

    def cluster_members(self, cluster: object) -> np.ndarray:
        if isinstance(cluster, bool) or not isinstance(cluster, int):
            if isinstance(cluster, str) and re.fullmatch(r"-?\d{1,18}", cluster):
                cluster = int(cluster)
            else:
                raise ApiError(400, f"cluster must be a whole number, got {cluster!r}")
        members = np.flatnonzero(self.labels == cluster)
        if not len(members):
            raise ApiError(404, f"no cluster {cluster}: it may have been merged into another; reload the page")
        return members

    def person(self, cluster: object) -> dict:
        with self.lock:
            self.refresh()
            members = self.cluster_members(cluster)
            name, conf = self._cluster_name(members)
            tracks: dict[str | None, list[dict]] = {}
            for i in members.tolist():
                face = self.manifest[i]
                n, c, s = self.face_view(i)
                tracks.setdefault(face.track, []).append({"id": face.id, "name": n, "confidence": round(c, 4),
                                                          "source": s})
            return {"cluster": int(self.labels[members[0]]), "name": name, "confidence": conf,
                    "faces": int(len(members)), "named": sum(int(i) in self.ann.named for i in members),
                    "tracks": [{"track": t, "faces": f} for t, f in tracks.items()]}

    def suggestions(self, strategy: str, n: int, pairs: int) -> dict:
        """The next faces to name (an active-learning strategy) and "same person?" questions."""
        from ..active import SUGGESTION_STRATEGIES, Pool, suggest

        with self.lock:
            self.refresh()
            try:
                SUGGESTION_STRATEGIES.get(strategy)
            except ProxytasksError as e:
                raise ApiError(400, str(e)) from None
            pool = Pool(self.vectors, self.tracks, self.labels, self.ann, self.result)
            todo = suggest(pool, strategy, n, pairs)
            faces, questions = [], []
            for s in todo:
                if s.kind == "name":
                    faces.append({"id": self.ids[s.face], "cluster": int(self.labels[s.face]),
                                  "name": self.face_view(s.face)[0], "strategy": s.strategy, "reason": s.reason})
                else:
                    questions.append({"id": self.ids[s.face], "id2": self.ids[s.other],
                                      "cluster": int(self.labels[s.face]), "cluster2": int(self.labels[s.other]),
                                      "kind": s.strategy, "reason": s.reason})
            return {"faces": faces, "questions": questions}

    def history(self, limit: int = 50) -> dict:
        with self.lock:
            self.refresh()
            rounds = self.log.rounds()
            out = [{"seq": r.seq, "action": r.action, "rows": len(r.rows), "undone": r.seq in self.undone,
                    "file": str(r.path.relative_to(self.folder))} for r in rounds[-limit:]]
            return {"actions": out[::-1], "total": len(rounds),
                    "earlier_rounds": [str(p.relative_to(self.folder)) for p in self.earlier]}

    def image_path(self, face_id: str) -> tuple[int, Path | None]:
        """The face's index and its crop file when it has one (looked up, never built from
        the request)."""
        i = self.index.get(face_id)
        if i is None:
            raise ApiError(404, f"no face {face_id!r} in the manifest")
        face = self.manifest[i]
        return i, self.manifest.resolve(face.crop) if face.crop is not None else None
