"""Group faces into people, number unknown, on the kNN graph with must- and cannot-links.

The method is single linkage on the kNN graph with cannot-link blocking (never an
N x N matrix):

1. every must-link group (a track) becomes one component, represented by the
   normalised mean of its faces (so a track's near-duplicate faces do not fill each
   other's neighbour lists and hide the other tracks of the same person);
2. kNN edges between components are visited by decreasing cosine similarity; an edge
   merges its two components when its similarity is at least the threshold and no
   cannot-link joins them. Each component keeps the components it cannot join (merged small into large),
   so the check is one dictionary look-up.

Must-links are never split and cannot-links never end inside one cluster. A cannot-link
whose two faces already share a must-link group (a tracker error, or a wrong rule) is
left out: the must-link wins, a warning is logged and ``info["must_link_conflicts"]``
counts it.

Threshold rule (``threshold=None``), from the rule pairs and never from labels:

- with cannot-links: a calibration run merges along the edges without enforcing any
  cannot-link (plain single linkage) and watches a seeded fraction ``holdout`` of the
  distinct cannot-linked pairs of components (by default all of them); it stops at the
  first merge that would put more than ``max_violation`` of the watched pairs inside
  one cluster. (Enforcing links during this sweep would hide the chaining: they block
  merges between two people before any watched link is touched. Watching few links
  makes the stop a single noisy event; watching all of them with a 2% budget is
  stable.) The threshold is the midpoint between that edge's similarity and the next
  higher one, i.e. the loosest threshold that respects the budget. Then the real run
  enforces every cannot-link. Only the order of the edges matters, so any monotone
  change of the similarities (training that pushes cannot-links apart) gives the same
  clusters; the median of cannot-link similarities, by contrast, falls below
  everything after training and merges everyone.
- without cannot-links (a warning is logged): a robust low bound of each face's
  nearest-neighbour similarity, ``median - 4 * 1.4826 * MAD``. Most faces have a
  same-person nearest neighbour; an edge far below those is taken for a different
  person. This is a heuristic: prefer giving cannot-links.

Single linkage can chain two people through a few look-alike faces; the held-out rule
then stops early (a high threshold, more clusters), which errs on the side a human can
fix by naming. No average-link check is made. Results are deterministic for a given
seed when the kNN graph is exact (``Flat``, up to about 60k faces of 128-d); larger sets
use an inverted-file graph (``IVF,Flat``, seeded k-means, nprobe tuned to a recall of
0.995 against exact search on rows of the data, :func:`proxytasks.index.knn_graph`).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .errors import ProxytasksError
from .index import FaceIndex, knn_graph

if TYPE_CHECKING:
    from .manifest import Manifest
    from .pairs import PairSet

logger = logging.getLogger(__name__)

MAD_WIDTH = 4.0


@dataclass
class ClusterResult:
    """Clusters of faces.

    Attributes:
        labels: (N,) int64 cluster of each face, consecutive from 0 in order of first face.
        threshold: the similarity threshold used.
        info: counts and timings (components after must-links, merges, blocked merges,
            held-out links and their violations at the threshold, rule, seconds).
    """

    labels: np.ndarray
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max(initial=-1)) + 1


class _Links:
    """Counts of face pairs between components; merged small into large."""

    def __init__(self) -> None:
        self.between: dict[int, dict[int, int]] = {}

    def add(self, a: int, b: int) -> None:
        for x, y in ((a, b), (b, a)):
            row = self.between.setdefault(x, {})
            row[y] = row.get(y, 0) + 1

    def size(self, a: int) -> int:
        return len(self.between.get(a, ()))

    def count(self, a: int, b: int) -> int:
        return self.between.get(a, {}).get(b, 0)

    def merge(self, keep: int, gone: int) -> int:
        """Fold ``gone`` into ``keep``; returns the links that became internal."""
        moved = self.between.pop(gone, None)
        if not moved:
            return 0
        kept = self.between.setdefault(keep, {})
        inside = moved.pop(keep, 0)
        kept.pop(gone, None)
        for other, c in moved.items():
            row = self.between[other]
            del row[gone]
            row[keep] = row.get(keep, 0) + c
            kept[other] = kept.get(other, 0) + c
        return inside


class _Components:
    """Union-find whose components carry cannot-links (blocking) and watched links."""

    def __init__(self, parent: np.ndarray) -> None:
        self.parent = parent.tolist()
        self.cannot = _Links()
        self.watch = _Links()
        self.violations = 0

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        """Merge roots ``a`` and ``b``, moving the smaller link tables."""
        if self.cannot.size(a) + self.watch.size(a) < self.cannot.size(b) + self.watch.size(b):
            a, b = b, a
        self.parent[b] = a
        self.cannot.merge(a, b)
        self.violations += self.watch.merge(a, b)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def _must_link_parent(n: int, groups: np.ndarray | None) -> np.ndarray:
    """Union-find parents with each must-link group rooted at its first face."""
    parent = np.arange(n, dtype=np.int64)
    if groups is None:
        return parent
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise ProxytasksError(f"groups: expected {n} integer codes (-1 = none), got "
                              f"shape {groups.shape} of {groups.dtype}")
    member = np.flatnonzero(groups >= 0)
    _, first, inverse = np.unique(groups[member], return_index=True, return_inverse=True)
    parent[member] = member[first][inverse]
    return parent


def _check_cannot_links(cannot_links: np.ndarray | None, n: int) -> np.ndarray:
    if cannot_links is None:
        return np.zeros((0, 2), np.int64)
    pairs = np.asarray(cannot_links)
    if pairs.size == 0:
        return np.zeros((0, 2), np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ProxytasksError(f"cannot_links: expected an (M, 2) integer array of face indices, "
                              f"got shape {pairs.shape} of {pairs.dtype}")
    bad = (pairs < 0).any(axis=1) | (pairs >= n).any(axis=1) | (pairs[:, 0] == pairs[:, 1])
    if bad.any():
        row = int(np.argmax(bad))
        raise ProxytasksError(f"cannot_links: row {row} {pairs[row].tolist()} is not a pair of two "
                              f"different faces among {n}")
    return pairs.astype(np.int64)


def _edges(sims: np.ndarray, idx: np.ndarray, rows: np.ndarray | None = None
           ) -> tuple[list[int], list[int], np.ndarray]:
    """Undirected kNN edges (a, b, sim), each once, by decreasing similarity; ``rows`` is
    the face id of each row of the graph (default: row i is face i)."""
    n, k = idx.shape
    src = np.repeat(np.arange(n, dtype=np.int64) if rows is None else rows, k)
    n = max(n, int(idx.max(initial=0)) + 1, int(src.max(initial=0)) + 1)
    dst, s = idx.ravel().astype(np.int64), sims.ravel().astype(np.float64)
    ok = (dst >= 0) & (dst != src) & np.isfinite(s)
    a, b, s = np.minimum(src, dst)[ok], np.maximum(src, dst)[ok], s[ok]
    key = a * n + b
    order = np.lexsort((key, -s))
    _, first = np.unique(key[order], return_index=True)
    order = order[np.sort(first)]
    return a[order].tolist(), b[order].tolist(), s[order]


def _run(comp: _Components, a: list[int], b: list[int], s: np.ndarray, threshold: float,
         allowed: int | None = None) -> tuple[int, int, int | None]:
    """Merge along edges with sim >= threshold; returns (merges, blocked, stop edge or None).

    With ``allowed``, stops before the first merge that would bring the watched
    violations above it.
    """
    merges = blocked = 0
    end = int(np.searchsorted(-s, -threshold, side="right"))
    for t in range(end):
        ra, rb = comp.find(a[t]), comp.find(b[t])
        if ra == rb:
            continue
        if comp.cannot.count(ra, rb):
            blocked += 1
            continue
        if allowed is not None and comp.violations + comp.watch.count(ra, rb) > allowed:
            return merges, blocked, t
        comp.union(ra, rb)
        merges += 1
    return merges, blocked, None


def _fallback_threshold(sims: np.ndarray) -> float:
    """Robust low bound of nearest-neighbour similarities: median - 4 * 1.4826 * MAD."""
    if sims.ndim != 2 or sims.shape[1] == 0:  # one component only: no neighbours at all
        return 1.0
    first = sims[:, 0][np.isfinite(sims[:, 0])]
    if len(first) == 0:
        return 1.0
    median = float(np.median(first))
    mad = float(np.median(np.abs(first - median)))
    return median - MAD_WIDTH * 1.4826 * mad


def cluster_faces(vectors: Any, groups: np.ndarray | None = None,
                  cannot_links: np.ndarray | None = None, k: int = 10,
                  threshold: float | None = None, holdout: float = 1.0,
                  max_violation: float = 0.02, seed: int = 0, index: FaceIndex | None = None,
                  knn: tuple[np.ndarray, np.ndarray] | None = None, device: str | None = None) -> ClusterResult:
    """Cluster faces with the number of people unknown (see the module docstring).

    Args:
        vectors: (N, d) embeddings (normalised on input); may be None when ``knn`` is given.
        groups: (N,) must-link group code per face (e.g. track code), -1 for none.
        cannot_links: (M, 2) face index pairs known to be different people.
        k: neighbours per face in the kNN graph.
        threshold: cosine similarity needed to merge; None derives it from the links.
        holdout: fraction of cannot-linked component pairs watched to set the threshold.
        max_violation: largest fraction of held-out links allowed inside one cluster.
        seed: seeds the hold-out draw and the index.
        index: an index over exactly ``vectors`` in order, reused for the kNN graph.
        knn: a ready kNN graph ``(sims, idx)`` as from :func:`knn_graph`.
        device: where the kNN graph is searched (``cuda`` with GPU faiss installed, see
            :func:`proxytasks.index.resolve_device`); the CPU by default.

    Returns:
        ClusterResult with labels, the threshold and an info dict.
    """
    start = time.perf_counter()
    rows = None
    if knn is None and groups is not None and index is None:
        sims, idx, rows = _component_knn(vectors, _must_link_parent(len(vectors), groups), k, seed, device)
    elif knn is None:
        # recall 0.995, not knn_graph's 0.96: single linkage loses merges with each missed edge
        sims, idx = knn_graph(vectors, k, index=index, seed=seed, target_recall=0.995, device=device)
    else:
        sims, idx = (np.asarray(v) for v in knn)
        if sims.shape != idx.shape or idx.ndim != 2:
            raise ProxytasksError(f"knn: sims {sims.shape} and idx {idx.shape} must be equal (N, k)")
        if vectors is not None and len(vectors) != len(idx):
            raise ProxytasksError(f"knn: {len(idx)} rows for {len(vectors)} vectors")
    knn_seconds = time.perf_counter() - start
    n = len(idx) if rows is None else len(vectors)
    parent = _must_link_parent(n, groups)
    pairs = _check_cannot_links(cannot_links, n)
    info: dict[str, Any] = {"faces": n, "k": int(idx.shape[1]) if idx.ndim == 2 else 0,
                            "components_after_must_links": int((parent == np.arange(n)).sum())}
    root_pairs = np.sort(parent[pairs], axis=1)
    conflict = root_pairs[:, 0] == root_pairs[:, 1]
    info["must_link_conflicts"] = int(conflict.sum())
    if conflict.any():
        logger.warning("%d cannot-link(s) join faces of one must-link group; the must-link wins "
                       "and they are ignored", int(conflict.sum()))
    root_pairs = np.unique(root_pairs[~conflict], axis=0)
    info["cannot_linked_component_pairs"] = len(root_pairs)
    a, b, s = _edges(sims, idx, rows)
    info["edges"] = len(s)

    rule = "given"
    if threshold is None:
        if len(root_pairs) == 0:
            threshold, rule = _fallback_threshold(sims), "nearest-neighbour-mad"
            logger.warning("no cannot-links: threshold %.4f from the nearest-neighbour similarity "
                           "distribution (median - %g MAD), a heuristic", threshold, MAD_WIDTH)
        else:
            if not 0.0 < holdout <= 1.0:
                raise ProxytasksError(f"holdout must be in (0, 1], got {holdout}")
            threshold, calib = _calibrate(parent, root_pairs, a, b, s, holdout, max_violation, seed)
            info.update(calib)
            rule = "cannot-link-violations"
    threshold = float(threshold)

    comp = _Components(parent)
    for ra, rb in root_pairs.tolist():
        comp.cannot.add(ra, rb)
    merges, blocked, _ = _run(comp, a, b, s, threshold)
    roots = comp.roots()
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    labels = rank[inverse].astype(np.int64)
    info.update({"threshold_rule": rule, "merges": merges, "blocked_merges": blocked,
                 "clusters": len(first), "knn_seconds": round(knn_seconds, 3),
                 "seconds": round(time.perf_counter() - start, 3)})
    logger.info("%d faces -> %d clusters at threshold %.4f (%s)", n, len(first), threshold, rule)
    return ClusterResult(labels=labels, threshold=threshold, info=info)


def _component_knn(vectors: Any, parent: np.ndarray, k: int, seed: int, device: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kNN graph between must-link components (normalised mean vectors), with face ids:
    (sims, idx as the root face of each neighbour, root face of each row)."""
    from .index import normalize

    x = normalize(vectors)
    roots, inverse = np.unique(parent, return_inverse=True)
    if len(roots) < 2:
        return np.zeros((len(roots), 0)), np.zeros((len(roots), 0), np.int64), roots
    centroids = np.zeros((len(roots), x.shape[1]), np.float64)
    np.add.at(centroids, inverse, x)
    # recall 0.995 where the graph is approximate: at 0.96 BCubed F1 fell 0.80 -> 0.76 on 250k
    # bench faces (50k tracks), at 0.995 it equals the exact graph's (bench/README.md)
    sims, idx = knn_graph(centroids.astype(np.float32), min(k, len(roots) - 1), seed=seed,
                          target_recall=0.995, device=device)
    return sims, np.where(idx >= 0, roots[np.maximum(idx, 0)], -1), roots


def _calibrate(parent: np.ndarray, root_pairs: np.ndarray, a: list[int], b: list[int],
               s: np.ndarray, holdout: float, max_violation: float,
               seed: int) -> tuple[float, dict[str, Any]]:
    """Loosest threshold keeping held-out cannot-links within ``max_violation``."""
    m = len(root_pairs)
    n_hold = min(m, max(1, math.ceil(holdout * m)))
    held = np.zeros(m, bool)
    held[np.random.default_rng(seed).permutation(m)[:n_hold]] = True
    allowed = int(math.floor(max_violation * n_hold + 1e-9))
    comp = _Components(parent.copy())
    for (ra, rb), h in zip(root_pairs.tolist(), held.tolist()):
        if h:
            comp.watch.add(ra, rb)
    _, _, stop = _run(comp, a, b, s, -math.inf, allowed)
    if stop is None:
        threshold = float(s[-1]) if len(s) else 1.0
    else:
        above = int(np.searchsorted(-s, -s[stop], side="left"))  # edges strictly more similar
        threshold = float((s[above - 1] + s[stop]) / 2.0) if above else -math.inf
        if threshold <= s[stop]:
            threshold = float(np.nextafter(s[stop], np.inf))
    info = {"heldout_links": n_hold, "heldout_allowed": allowed,
            "heldout_violations": comp.violations,
            "heldout_violation_rate": round(comp.violations / n_hold, 4)}
    return threshold, info


def write_clusters(path: str | os.PathLike, ids: list[str], labels: np.ndarray) -> None:
    """Write ``id,cluster`` as CSV, atomically."""
    from .fileio import atomic_write

    with atomic_write(path) as fh:
        fh.write("id,cluster\n")
        for face_id, label in zip(ids, labels.tolist()):
            fh.write(f"{face_id},{label}\n")


def read_clusters(path: str | os.PathLike, ids: list[str]) -> np.ndarray:
    """Cluster id per face of ``ids`` from an ``id,cluster`` CSV (-1 where absent)."""
    import csv

    pos = {face_id: i for i, face_id in enumerate(ids)}
    out = np.full(len(ids), -1, np.int64)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"id", "cluster"} <= set(reader.fieldnames):
                raise ProxytasksError(f"{path}: expected a CSV with columns id,cluster")
            for line, row in enumerate(reader, 2):
                if row["id"] not in pos:
                    raise ProxytasksError(f"{path}:{line}: unknown face id {row['id']!r}")
                try:
                    out[pos[row["id"]]] = int(row["cluster"])
                except (TypeError, ValueError):
                    raise ProxytasksError(f"{path}:{line}: cluster {row['cluster']!r} is not an integer") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProxytasksError(f"{path}: cannot read clusters: {e}") from None
    return out


def constraint_arrays(manifest: Manifest, pairs: PairSet) -> tuple[np.ndarray, np.ndarray]:
    """Must-link group per face (its track joined by human "same" pairs, -1 none) and
    cannot-link face pairs (M, 2)."""
    from .pairs import HUMAN_SAME
    from .rules import FaceColumns

    i, j, label, _ = pairs.unique()
    groups = FaceColumns.from_manifest(manifest).track
    human = [k for k, r in enumerate(pairs.rules) if r.name == HUMAN_SAME]
    if human:
        rows = np.isin(pairs.rule, human)
        groups = join_groups(groups, np.stack([pairs.i[rows], pairs.j[rows]], 1), len(groups))
    return groups, np.stack([i[label == 0], j[label == 0]], 1).astype(np.int64)


def join_groups(groups: np.ndarray | None, same: Any, n: int) -> np.ndarray:
    """Must-link group per face (-1 none) with the groups and single faces that the
    face pairs ``same`` (e.g. human "same" answers) join merged into one group each."""
    from scipy.sparse.csgraph import connected_components

    a, b = np.asarray(list(same) if not isinstance(same, np.ndarray) else same, dtype=np.int64).reshape(-1, 2).T
    if groups is not None:
        g = np.asarray(groups, dtype=np.int64).reshape(-1)
        valid = np.flatnonzero(g >= 0)
        _, codes = np.unique(g[valid], return_inverse=True)
        first = np.full(int(codes.max()) + 1 if len(codes) else 0, n, dtype=np.int64)
        np.minimum.at(first, codes, valid)
        a, b = np.r_[a, valid], np.r_[b, first[codes]]
    graph = sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    size = np.bincount(comp, minlength=n)
    return np.where(size[comp] >= 2, comp, -1).astype(np.int64)
