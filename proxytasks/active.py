"""Active learning: which faces a person should name next, and a simulated person.

A :class:`Pool` is what every strategy looks at: the embeddings, the must-link units
(tracks, joined by "same" answers), the clusters, what a person said so far
(:class:`~proxytasks.naming.Annotations`) and the current naming. Strategies are small
classes in :data:`SUGGESTION_STRATEGIES`, each returning :class:`Suggestion` s that say why they
were chosen:

- ``clusters``: the most central face of the largest cluster nobody named yet;
- ``margin``: the unit whose two best names are closest, weighted by the faces that
  follow the answer (uncertainty near the decision boundary);
- ``breadth``: the cluster farthest from every named face: likely a new person (new
  classes help far more than more examples of known ones);
- ``random``: faces drawn at random, the baseline every strategy must beat.

A strategy that runs out of candidates is topped up by ``margin``, then ``breadth``,
then ``random``. :func:`pair_questions` adds "are these two the same person?" questions
for clusters that may need merging or splitting. :class:`SimulatedAnnotator` answers
from ground truth, so :func:`active_curve` can measure naming accuracy against the
number of names typed, for each strategy.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ProxytasksError
from .fileio import atomic_write
from .naming import Annotations, NamingResult, name_from_annotations
from .registry import Registry
from .vectors import l2_normalize

logger = logging.getLogger(__name__)

SHEET_COLUMNS = ("rank", "kind", "strategy", "id", "id2", "cluster", "score", "reason", "name", "answer")
IMAGE_COLUMNS = ("image", "image2")  # the faces' pictures, relative to the sheet's folder (optional when read)
FALLBACK = ("margin", "breadth", "random")


@dataclass
class Suggestion:
    """A question for a person: name face ``face`` (kind "name"), or say whether faces
    ``face`` and ``other`` are one person (kind "same")."""

    kind: str
    face: int
    strategy: str
    score: float
    reason: str
    cluster: int = -1
    other: int = -1


class Pool:
    """The faces as strategies see them (vectors are L2-normalised here)."""

    def __init__(self, vectors: np.ndarray, tracks: np.ndarray | None = None,
                 clusters: np.ndarray | None = None, annotations: Annotations | None = None,
                 naming: NamingResult | None = None) -> None:
        from .cluster import join_groups

        x = np.asarray(vectors, dtype=np.float32)
        self.vectors = l2_normalize(x, axis=1)
        n = len(x)
        self.annotations = annotations if annotations is not None else Annotations()
        groups = join_groups(tracks, sorted(self.annotations.same), n)
        loose = groups < 0
        self.units = np.empty(n, dtype=np.int64)
        self.units[~loose] = np.unique(groups[~loose], return_inverse=True)[1].reshape(-1)
        n_tracked = int(self.units[~loose].max()) + 1 if (~loose).any() else 0
        self.units[loose] = n_tracked + np.arange(int(loose.sum()))
        self.clusters = np.asarray(clusters, dtype=np.int64) if clusters is not None else None
        self.naming = naming

    def __len__(self) -> int:
        return len(self.vectors)

    def open_units(self) -> np.ndarray:
        """Per face: True when no face of its unit is named (naming it would add information)."""
        named_units = self.units[list(self.annotations.named)] if self.annotations.named else []
        return ~np.isin(self.units, named_units)

    def groups(self) -> np.ndarray:
        """The cluster of each face, or its unit when there are no clusters (or none for it)."""
        if self.clusters is None:
            return self.units
        return np.where(self.clusters >= 0, self.clusters, self.clusters.max(initial=0) + 1 + self.units)

    def central(self, members: np.ndarray) -> tuple[int, np.ndarray]:
        """The face of ``members`` closest to their mean direction, and that direction."""
        mean = l2_normalize(self.vectors[members].mean(axis=0))
        return int(members[np.argmax(self.vectors[members] @ mean)]), mean


class Strategy:
    """Picks up to ``n`` faces to name, none of them in an already named unit."""

    name = "base"

    def pick(self, pool: Pool, n: int, rng: np.random.Generator, taken: set[int]) -> list[Suggestion]:
        raise NotImplementedError


SUGGESTION_STRATEGIES: Registry[type[Strategy]] = Registry("suggestion strategy")


def _members(labels: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Faces per label among ``mask``, largest group first (ties by label)."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    order = np.argsort(labels[idx], kind="stable")
    idx = idx[order]
    bounds = np.flatnonzero(np.diff(labels[idx])) + 1
    groups = np.split(idx, bounds)
    return sorted(groups, key=lambda g: (-len(g), int(labels[g[0]])))


@SUGGESTION_STRATEGIES.register("clusters")
class ClusterRepresentatives(Strategy):
    """The most central face of each cluster without a named face, largest first; once
    some faces are named, a cluster's size is weighted by how unsure the naming is of it
    (one minus its mean margin), so clusters the classifier already names confidently
    wait and clusters of people nobody named come first."""

    name = "clusters"

    def pick(self, pool: Pool, n: int, rng: np.random.Generator, taken: set[int]) -> list[Suggestion]:
        groups = pool.groups()
        named_groups = groups[list(pool.annotations.named)] if pool.annotations.named else []
        open_ = pool.open_units() & ~np.isin(groups, named_groups) & ~np.isin(pool.units, _units(pool, taken))
        cands = _members(groups, open_)
        unsure = (np.array([1.0 - float(pool.naming.margin[m].mean()) for m in cands])
                  if pool.naming is not None and len(pool.naming.margin) else np.ones(len(cands)))
        score = unsure * np.array([len(m) for m in cands])
        out = []
        for k in np.argsort(-score, kind="stable")[:n]:
            members = cands[k]
            face, _ = pool.central(members)
            why = f"unnamed cluster of {len(members)} faces"
            if pool.naming is not None:
                why += f", named with mean margin {1.0 - unsure[k]:.2f}"
            out.append(Suggestion("name", face, self.name, float(score[k]), f"{why}; its most central face",
                                  cluster=_cluster(pool, face)))
        return out


@SUGGESTION_STRATEGIES.register("margin")
class Margin(Strategy):
    """Units whose two best names are closest, weighted by how many faces follow the answer."""

    name = "margin"

    def pick(self, pool: Pool, n: int, rng: np.random.Generator, taken: set[int]) -> list[Suggestion]:
        r = pool.naming
        if r is None or len(r.classes) < 2:
            return []
        open_ = pool.open_units() & ~np.isin(pool.units, _units(pool, taken))
        size = np.bincount(pool.units, minlength=int(pool.units.max()) + 1)
        score = (1.0 - r.margin) * np.sqrt(size[pool.units])
        groups = pool.groups()
        out, used_groups, used_units = [], set(), set()
        for i in np.argsort(-score, kind="stable"):
            i = int(i)
            if len(out) >= n:
                break
            if not open_[i] or pool.units[i] in used_units or groups[i] in used_groups:
                continue
            used_units.add(pool.units[i])
            used_groups.add(groups[i])
            face, _ = pool.central(np.flatnonzero(pool.units == pool.units[i]))
            out.append(Suggestion("name", face, self.name, float(score[i]),
                                  f"uncertain: {r.names[i]} or {r.runner_up[i]} (margin {r.margin[i]:.2f}); "
                                  f"{size[pool.units[i]]} face(s) follow the answer", cluster=_cluster(pool, face)))
        return out


@SUGGESTION_STRATEGIES.register("breadth")
class Breadth(Strategy):
    """Clusters farthest from every named cluster, picked one after another (k-center):
    likely new people. Once every cluster is named, the same over tracks, which finds a
    person hidden inside another person's cluster."""

    name = "breadth"

    def pick(self, pool: Pool, n: int, rng: np.random.Generator, taken: set[int]) -> list[Suggestion]:
        out = self._far(pool, pool.groups(), n, taken, "cluster")
        if len(out) < n:
            out += self._far(pool, pool.units, n - len(out), taken | {s.face for s in out}, "track")
        return out

    def _far(self, pool: Pool, labels: np.ndarray, n: int, taken: set[int], what: str) -> list[Suggestion]:
        done = sorted(set(pool.annotations.named) | taken)
        open_ = pool.open_units() & ~np.isin(labels, labels[done] if done else [])
        cands = _members(labels, open_)
        cands = [m for m in cands if len(m) >= 2] or cands  # a lone face is more often an outlier
        if not cands:
            return []
        centres = [pool.central(m) for m in cands]
        dirs = np.stack([c[1] for c in centres])
        # the named groups, each by its mean direction (steadier than single faces)
        ref = [pool.central(np.flatnonzero(labels == g))[1] for g in np.unique(labels[done])] if done else []
        nearest = (dirs @ np.stack(ref).T).max(axis=1) if ref else np.full(len(cands), -1.0)
        out: list[Suggestion] = []
        for _ in range(min(n, len(cands))):
            k = int(np.argmin(nearest)) if ref or out else 0  # nothing named yet: the largest
            face = centres[k][0]
            reason = (f"far from every named {what} (nearest similarity {nearest[k]:.2f}): likely a new person"
                      if ref or out else f"nothing named yet: the largest {what}")
            out.append(Suggestion("name", face, self.name, float(1.0 - nearest[k]), reason,
                                  cluster=_cluster(pool, face)))
            nearest = np.maximum(nearest, dirs @ dirs[k])
            nearest[k] = np.inf
        return out


@SUGGESTION_STRATEGIES.register("random")
class Random(Strategy):
    """Faces drawn uniformly at random among faces of units nobody named (the baseline)."""

    name = "random"

    def pick(self, pool: Pool, n: int, rng: np.random.Generator, taken: set[int]) -> list[Suggestion]:
        cand = np.flatnonzero(pool.open_units() & ~np.isin(pool.units, _units(pool, taken)))
        out, used = [], set()
        for i in rng.permutation(cand).tolist():
            if len(out) >= n:
                break
            if pool.units[i] not in used:
                used.add(pool.units[i])
                out.append(Suggestion("name", i, self.name, 0.0, "drawn at random", cluster=_cluster(pool, i)))
        return out


def _units(pool: Pool, faces: set[int]) -> np.ndarray:
    return pool.units[sorted(faces)] if faces else np.zeros(0, np.int64)


def _cluster(pool: Pool, face: int) -> int:
    return int(pool.clusters[face]) if pool.clusters is not None else -1


def suggest(pool: Pool, strategy: str = "clusters", n: int = 20, pairs: int = 0,
            seed: int = 0) -> list[Suggestion]:
    """Up to ``n`` faces to name by ``strategy`` (topped up by the fallbacks), then up to
    ``pairs`` same-person questions."""
    rng = np.random.default_rng(seed)
    out: list[Suggestion] = []
    taken: set[int] = set()
    for name in [strategy] + [f for f in FALLBACK if f != strategy]:
        if len(out) >= n:
            break
        got = SUGGESTION_STRATEGIES.get(name)().pick(pool, n - len(out), rng, taken)
        if name != strategy:
            for s in got:
                s.reason = f"{s.reason} (fallback: {strategy} had no more candidates)"
        out.extend(got)
        taken.update(s.face for s in got)
    return out + pair_questions(pool, pairs)


def pair_questions(pool: Pool, n: int) -> list[Suggestion]:
    """Same-person questions: half for the closest pairs of clusters (merge?), half for
    the most spread clusters (split?), skipping pairs already answered."""
    if n <= 0 or pool.clusters is None:
        return []
    answered = pool.annotations.same | pool.annotations.different
    groups = _members(pool.clusters, pool.clusters >= 0)
    centres = [pool.central(m) for m in groups]
    out: list[Suggestion] = []
    if len(groups) >= 2:
        dirs = np.stack([c[1] for c in centres])
        sims = dirs @ dirs.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.triu_indices(len(groups), 1)
        for k in np.argsort(-sims[a, b], kind="stable"):
            if len(out) >= (n + 1) // 2:
                break
            fa, fb = centres[a[k]][0], centres[b[k]][0]
            if (min(fa, fb), max(fa, fb)) not in answered:
                out.append(Suggestion("same", fa, "merge", float(sims[a[k], b[k]]),
                                      f"clusters {pool.clusters[fa]} and {pool.clusters[fb]} are close "
                                      f"(similarity {sims[a[k], b[k]]:.2f}): one person?",
                                      cluster=int(pool.clusters[fa]), other=fb))
    spread = []
    for members, (_, mean) in zip(groups, centres):
        units = np.unique(pool.units[members])
        if len(units) < 2:
            continue
        reps = [pool.central(members[pool.units[members] == u]) for u in units]
        dirs = np.stack([r[1] for r in reps])
        s = dirs @ dirs.T
        i, j = np.unravel_index(np.argmin(s), s.shape)
        spread.append((float(s[i, j]), reps[i][0], reps[j][0]))
    for s, fa, fb in sorted(spread):
        if len(out) >= n:
            break
        if (min(fa, fb), max(fa, fb)) not in answered:
            out.append(Suggestion("same", fa, "split", 1.0 - s,
                                  f"cluster {pool.clusters[fa]} is spread: its two most different tracks "
                                  f"(similarity {s:.2f}): one person?", cluster=int(pool.clusters[fa]), other=fb))
    return out


def write_suggestions(path: str | os.PathLike, ids: Sequence[str], suggestions: Sequence[Suggestion],
                      answers: dict[int, str] | None = None, images: Sequence[str | None] | None = None) -> None:
    """Write the suggestion sheet (columns :data:`SHEET_COLUMNS`, then ``image`` and
    ``image2``: each face's picture, see :func:`face_images`); a person fills ``name``
    (or ``answer``: same/different) and gives the sheet back as labels."""
    answers = answers or {}

    def pic(i: int) -> str:
        return (images[i] or "") if images is not None and i >= 0 else ""

    with atomic_write(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(SHEET_COLUMNS + IMAGE_COLUMNS)
        for rank, s in enumerate(suggestions, 1):
            w.writerow([rank, s.kind, s.strategy, ids[s.face], ids[s.other] if s.other >= 0 else "",
                        s.cluster if s.cluster >= 0 else "", f"{s.score:.4f}", s.reason,
                        answers.get(rank, "") if s.kind == "name" else "",
                        answers.get(rank, "") if s.kind == "same" else "", pic(s.face), pic(s.other)])


def face_images(manifest, sheet: str | os.PathLike) -> list[str | None]:
    """Per face of ``manifest``: the file that shows it (its crop, else the frame or photo
    its box is in), relative to the folder of ``sheet`` when it lies under a common root."""
    base = os.path.abspath(os.path.dirname(os.path.abspath(sheet)))
    out: list[str | None] = []
    for f in manifest.faces:
        rel = f.crop if f.crop is not None else f.image
        if rel is None:
            out.append(None)
            continue
        path = os.path.abspath(os.path.join(manifest.root, rel)) if not os.path.isabs(rel) else rel
        try:
            out.append(os.path.relpath(path, base))
        except ValueError:  # another drive (Windows)
            out.append(path)
    return out


def sheet_answers(path: str | os.PathLike) -> int:
    """How many rows of the sheet (or label file) at ``path`` a person filled: a non-empty
    ``name``, ``not_name`` or ``answer`` cell; 0 when it is absent or unreadable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return sum(any((row.get(c) or "").strip() for c in ("name", "not_name", "answer"))
                       for row in csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0


def read_suggestions(path: str | os.PathLike, ids: Sequence[str]) -> list[Suggestion]:
    """The questions of a suggestion sheet (answers in it are ignored here)."""
    index = {face_id: i for i, face_id in enumerate(ids)}
    out = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = set(SHEET_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ProxytasksError(f"{path}:1: not a suggestion sheet: no column(s) {', '.join(sorted(missing))}")
            for line, row in enumerate(reader, 2):
                kind = row["kind"]
                if kind not in ("name", "same") or row["id"] not in index or (
                        kind == "same" and row["id2"] not in index):
                    raise ProxytasksError(f"{path}:{line}: kind must be name or same and id (and id2 "
                                          f"for same) faces of the manifest (got {kind!r}, {row['id']!r}, "
                                          f"{row['id2']!r})")
                try:
                    score = float(row["score"] or 0.0)
                except ValueError:
                    raise ProxytasksError(f"{path}:{line}: score {row['score']!r} is not a number") from None
                out.append(Suggestion(kind, index[row["id"]], row["strategy"], score, row["reason"],
                                      cluster=int(row["cluster"]) if row["cluster"].lstrip("-").isdigit() else -1,
                                      other=index[row["id2"]] if kind == "same" else -1))
    except (OSError, UnicodeDecodeError) as e:
        raise ProxytasksError(f"{path}: cannot read the suggestion sheet: {e}") from None
    return out


class SimulatedAnnotator:
    """Answers suggestions from ground truth (``identity`` per face, None = unknown to it)."""

    def __init__(self, identity: Sequence[str | None]) -> None:
        self.identity = list(identity)

    def answer(self, s: Suggestion) -> str | None:
        """The name of face ``s.face``, or "same"/"different" for a pair; None when unknown."""
        a = self.identity[s.face]
        if s.kind == "name":
            return a
        b = self.identity[s.other]
        return None if a is None or b is None else ("same" if a == b else "different")

    def apply(self, suggestions: Sequence[Suggestion], annotations: Annotations) -> dict[int, str]:
        """Answer every suggestion into ``annotations``; returns rank -> answer."""
        out = {}
        for rank, s in enumerate(suggestions, 1):
            a = self.answer(s)
            if a is None:
                continue
            out[rank] = a
            if s.kind == "name":
                annotations.name(s.face, a)
            else:
                annotations.answer(s.face, s.other, a == "same")
        return out


def active_curve(vectors: np.ndarray, identity: Sequence[str | None], strategy: str,
                 tracks: np.ndarray | None = None, clusters: np.ndarray | None = None,
                 budget: int = 40, batch: int = 5, seed: int = 0, **naming_options) -> list[list[float]]:
    """Naming accuracy against names typed, for rounds of ``batch`` suggestions answered
    by a :class:`SimulatedAnnotator`, up to ``budget`` names.

    Accuracy is over the faces with an identity that nobody named by hand; a face of a
    person nobody named yet counts as wrong. The curve starts at ``[0, 0.0]``.
    """
    from .metrics import naming_accuracy

    identity = list(identity)
    truth = np.array([t if t is not None else "" for t in identity], dtype=object)
    annotator = SimulatedAnnotator(identity)
    ann = Annotations()
    result: NamingResult | None = None
    curve: list[list[float]] = [[0, 0.0]]
    for round_ in range(budget):
        if ann.typed >= budget:
            break
        pool = Pool(vectors, tracks, clusters, ann, result)
        todo = suggest(pool, strategy, min(batch, budget - ann.typed), seed=seed + round_)
        if not todo:
            break
        annotator.apply(todo, ann)
        result = name_from_annotations(vectors, ann, tracks=tracks, clusters=clusters, seed=seed,
                                       **naming_options)
        evaluated = truth != ""
        evaluated[list(ann.named)] = False
        pred = [result.names[i] for i in np.flatnonzero(evaluated)]
        curve.append([ann.typed, round(float(naming_accuracy(truth[evaluated], pred) or 0.0), 4)])
    return curve


def names_to_reach(curve: Sequence[Sequence[float]], accuracy: float = 0.9) -> int | None:
    """The fewest names typed at which ``curve`` reaches ``accuracy`` (None: never)."""
    return next((int(n) for n, acc in curve if acc >= accuracy), None)


def best_strategy(reach: dict[str, int | None]) -> tuple[str, int, float] | None:
    """From the names typed to reach an accuracy per strategy (:func:`names_to_reach`), the
    best strategy other than "random", its names, and how many times fewer names it needs
    than random; None when no strategy reached it, or random never did."""
    found = [(v, k) for k, v in reach.items() if k != "random" and v is not None]
    if not found or not reach.get("random"):
        return None
    names, name = min(found)
    return name, names, reach["random"] / names


def check_strategies(names: Sequence[str]) -> list[str]:
    """The strategy names, each checked against :data:`SUGGESTION_STRATEGIES`."""
    for name in names:
        SUGGESTION_STRATEGIES.get(name)
    if not names:
        raise ProxytasksError("no strategy named")
    return list(names)


def human_pairs(ann: Annotations, max_faces_per_name: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A person's answers as face pairs ``(same (M, 2), different (K, 2))`` for training
    and clustering: every answered pair; faces of one name pairwise "same" and of two
    names "different" (at most ``max_faces_per_name`` faces of a name, drawn seeded);
    a face and every face named what a person removed from it, "different"."""
    rng = np.random.default_rng(seed)
    by_name: dict[str, list[int]] = {}
    for i, name in sorted(ann.named.items()):
        by_name.setdefault(name, []).append(i)
    faces = {k: np.array(v if len(v) <= max_faces_per_name else
                         sorted(rng.choice(v, max_faces_per_name, replace=False)), dtype=np.int64)
             for k, v in by_name.items()}
    same = [np.array(sorted(ann.same), dtype=np.int64).reshape(-1, 2)]
    diff = [np.array(sorted(ann.different), dtype=np.int64).reshape(-1, 2)]
    names = sorted(faces)
    for a, name in enumerate(names):
        f = faces[name]
        ia, ib = np.triu_indices(len(f), 1)
        same.append(np.stack([f[ia], f[ib]], 1))
        for other in names[a + 1:]:
            g = faces[other]
            diff.append(np.stack(np.meshgrid(f, g, indexing="ij"), -1).reshape(-1, 2))
    for i, removed in ann.forbidden.items():
        for name in removed & set(faces):
            diff.append(np.stack([np.full(len(faces[name]), i), faces[name]], 1))
    return np.concatenate(same), np.concatenate(diff)
