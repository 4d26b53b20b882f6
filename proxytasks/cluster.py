"""Group faces into people, number unknown, on the kNN graph with must- and cannot-links.

Every must-link group (a track) becomes one node, the normalised mean of its faces (so a
track's near-duplicate faces do not fill each other's neighbour lists and hide the other
tracks of the same person); the kNN graph between nodes gives the candidate merges
(never an N x N matrix). Two linkages (``linkage=``):

- ``"average"`` (default, issue 16): agglomerative **average linkage at track level**
  (:func:`proxytasks.linkage.average_linkage`): the similarity of two clusters is the
  mean cosine over all pairs of their tracks, exact from the clusters' mean vectors;
  candidate pairs are merged best first while it is at least the threshold. One pair of
  look-alike tracks cannot glue two people together, as it does in single linkage.
- ``"single"`` (issue 8's method): kNN edges visited by decreasing cosine similarity,
  an edge merging its two components when it is at least the threshold (chaining).

In both, cannot-links block merges: each cluster keeps the clusters it cannot join
(merged small into large), so the check is one dictionary look-up. Must-links are never
split and cannot-links never end inside one cluster. A cannot-link whose two faces
already share a must-link group (a tracker error, or a wrong rule) is left out: the
must-link wins, a warning is logged and ``info["must_link_conflicts"]`` counts it.

Threshold rules (``threshold=None``), from the rule pairs and never from labels. Which one
applies depends on whether the vectors were trained on these links (``threshold_rule="auto"``,
the default: ``"midpoint"`` when ``trained_on_links``, else ``"violations"``):

**violations** (vectors never trained on the links: pretrained features): the cannot-links
are a fair sample of pairs of different people, so the merges that bring them together
show where merging starts to join people. A calibration run merges without enforcing
any cannot-link and watches a seeded fraction ``holdout`` of the distinct cannot-linked
pairs of nodes (by default all of them), a merge that brings one inside a cluster being
a *violating* merge. (Enforcing links
during this sweep would hide the mistakes: they block merges between two people before
any watched link is touched.) The threshold is the midpoint between the linkage of the
first merge the rule refuses and the lowest one merged before it, i.e. the loosest
threshold that respects the rule; then the real run enforces every cannot-link.

- average linkage: the sweep stops before the first merge that would make more than
  ``max(2, max_violating_share * window)`` of the last ``window`` merges violating ones
  (``window``: 10, or 1% of the nodes when more; share 0.05), or that alone would bring
  more than a tenth of the watched links inside one cluster. While the merges join
  tracks of one person, violating merges are rare (a wrong cannot-link, look-alikes);
  once they join people they come in a steady stream. A rate over recent merges, not a
  budget over all links: most pairs of people never meet in a frame, so merges across
  people bring few links each, and a budget over all links is spent far too late on
  large sets (1,000 people: BCubed F1 0.57 against 0.91, bench/README.md) and far too
  early on small ones (one or two links allowed).
- single linkage: the sweep stops at the first merge that would put more than
  ``max_violation`` (2%) of the watched pairs inside one cluster. Only the order of the
  edges matters, so any monotone change of the similarities gives the same clusters.

**midpoint** (a head trained on the links): training pushed exactly the cannot-linked
pairs apart, far below other pairs of different people, so the sweep meets no violation
until the threshold is near 0 and merges people (5-6 clusters for 10 people), or stops
early on a few look-alike pairs (bench/README.md, issue 16). The threshold is instead
halfway between the median cosine of must-linked face pairs (each face of a track with
another face of it) and of cannot-linked face pairs: the boundary that the training drew
between its two sides. On six realistic development episodes it gives the trained heads
BCubed F1 0.70 against 0.53 by the violation sweep (1.9 clusters per person against 1.0;
the best threshold by the truth: 0.73 at 1.75), bench/README.md. It errs on splitting:
near-duplicate faces put the must-linked median high (0.96). It needs tracks, and does not
suit untrained features, whose tracks are far more alike inside than one person's faces
across shots (``clustered_vectors``: 486 clusters for 50 people). The medians come from
seeded samples of at most 100,000 pairs (:func:`proxytasks.linkage.link_statistics`),
cheap at a million faces.

Callers that know pass ``trained_on_links`` (the benchmark for each method, and
:func:`proxytasks.pipeline.cluster_people` from the embeddings' header: a head other than
the identity). Not known (None), the vectors count as untrained, with a warning when they
look trained: the median cosine of cannot-linked pairs below that of random pairs of faces
from different tracks by more than ``-linkage.TRAINED_GAP`` (0.05). Untrained,
co-occurring people look as alike as any two people or more (same lighting: +0.03 to +0.07
on the development episodes, +0.23 on ``clustered_vectors``); after training far less
(-0.13 to -0.27). It is a warning, not a switch: with few people, random pairs are often
of one person, and untrained vectors look trained. ``info`` records the three medians,
``trained_on_links`` and ``looks_trained_on_links``.

Without cannot-links (a warning is logged) average linkage falls back to single
linkage with a robust low bound of each node's nearest-neighbour similarity,
``median - 4 * 1.4826 * MAD``: most faces have a same-person nearest neighbour; an edge
far below those is taken for a different person (a bound on edges, not on averages).
This is a heuristic: prefer giving cannot-links.

Results are deterministic for a given seed when the kNN graph is exact (``Flat``, up to
about 60k nodes of 128-d); larger sets use an inverted-file graph (``IVF,Flat``, seeded
k-means, nprobe tuned to a recall of 0.995 against exact search on rows of the data,
:func:`proxytasks.index.knn_graph`).
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
from .linkage import THRESHOLD_RULES, Links, average_linkage, link_threshold

if TYPE_CHECKING:
    from .manifest import Manifest
    from .pairs import PairSet

logger = logging.getLogger(__name__)

MAD_WIDTH = 4.0
LINKAGES = ("average", "single")
WINDOW = 10  # average linkage's calibration: the merges looked at (at least; 1% of the tracks when more)
MAX_VIOLATING_SHARE = 0.05  # ... the share of them that may join two cannot-linked clusters (2 at least)
MAX_LINKS_ONE_MERGE = 0.1  # ... and the share of the watched links one merge may bring inside a cluster


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


class _Components:
    """Union-find whose components carry cannot-links (blocking) and watched links."""

    def __init__(self, parent: np.ndarray) -> None:
        self.parent = parent.tolist()
        self.cannot = Links()
        self.watch = Links()
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
                  knn: tuple[np.ndarray, np.ndarray] | None = None, device: str | None = None,
                  linkage: str = "average", window: int = WINDOW,
                  max_violating_share: float = MAX_VIOLATING_SHARE, threshold_rule: str = "auto",
                  trained_on_links: bool | None = None) -> ClusterResult:
    """Cluster faces with the number of people unknown (see the module docstring).

    Args:
        vectors: (N, d) embeddings (normalised on input); may be None when ``knn`` is given.
        groups: (N,) must-link group code per face (e.g. track code), -1 for none.
        cannot_links: (M, 2) face index pairs known to be different people.
        k: neighbours per face in the kNN graph.
        threshold: cosine similarity needed to merge; None derives it from the links.
        holdout: fraction of cannot-linked component pairs watched to set the threshold.
        max_violation: single linkage: the largest fraction of the watched links allowed
            inside one cluster.
        window: average linkage: the calibration looks at the last ``window`` merges (or
            at 1% of the tracks, when more).
        max_violating_share: average linkage: the largest share of those merges that may
            bring a watched cannot-link inside one cluster (two of them are always allowed).
        seed: seeds the hold-out draw and the index.
        index: an index over exactly ``vectors`` in order, reused for the kNN graph.
        knn: a ready kNN graph ``(sims, idx)`` as from :func:`knn_graph`.
        device: where the kNN graph is searched (``cuda`` with GPU faiss installed, see
            :func:`proxytasks.index.resolve_device`); the CPU by default.
        linkage: ``"average"`` (default: mean cosine between the tracks of two clusters)
            or ``"single"`` (the closest pair of tracks, issue 8's method; works from
            ``knn`` alone).
        threshold_rule: how ``threshold=None`` is set from the links: ``"violations"`` (the
            sweep stops where merges bring watched cannot-linked faces together: for vectors
            never trained on these links), ``"midpoint"`` (halfway between the median cosine
            of must-linked and of cannot-linked face pairs: for vectors trained on them) or
            ``"auto"`` (default: ``"midpoint"`` when ``trained_on_links``, else
            ``"violations"``).
        trained_on_links: whether the vectors come from a head trained on these links (a
            run whose selected head is not the identity); None (not known): untrained, with
            a warning when the vectors look trained (see the module docstring).

    Returns:
        ClusterResult with labels, the threshold and an info dict.

    Raises:
        ProxytasksError: an unknown linkage or threshold rule, malformed groups, links or
            graph, average linkage or the midpoint rule without vectors.
    """
    if linkage not in LINKAGES:
        raise ProxytasksError(f"unknown linkage {linkage!r}: choose one of {', '.join(LINKAGES)}")
    if threshold_rule not in THRESHOLD_RULES:
        raise ProxytasksError(f"unknown threshold rule {threshold_rule!r}: choose one of {', '.join(THRESHOLD_RULES)}")
    if threshold_rule == "midpoint" and vectors is None:
        raise ProxytasksError("the midpoint threshold rule needs the vectors")
    if linkage == "average" and vectors is None:
        raise ProxytasksError("average linkage needs the vectors (linkage='single' works from a kNN graph alone)")
    start = time.perf_counter()
    rows = nodes = None
    if knn is None and groups is not None and index is None:
        parent = _must_link_parent(len(vectors), groups)
        nodes = _node_vectors(vectors, parent)  # reused by average linkage
        sims, idx, rows = _component_knn(vectors, parent, k, seed, device, nodes)
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
    midpoint = None
    if threshold is None and len(root_pairs) and vectors is not None:
        midpoint = link_threshold(vectors, parent, pairs[~conflict], threshold_rule, trained_on_links, seed, info)
        threshold = midpoint
    if linkage == "average" and threshold is None and len(root_pairs) == 0:
        # the nearest-neighbour heuristic is a bound on single-linkage edges, not on averages
        logger.warning("no cannot-links to set an average-linkage threshold: single linkage instead")
        linkage = "single"
    info["linkage"] = linkage
    if linkage == "average":
        nodes = nodes if nodes is not None else _node_vectors(vectors, parent)
        labels, threshold, rule = _cluster_average(nodes, root_pairs, a, b, sims, threshold, holdout,
                                                   (window, max_violating_share), seed, info)
        rule = "must-cannot-midpoint" if midpoint is not None else rule
        info.update({"threshold_rule": rule, "clusters": int(labels.max(initial=-1)) + 1,
                     "knn_seconds": round(knn_seconds, 3), "seconds": round(time.perf_counter() - start, 3)})
        logger.info("%d faces -> %d clusters at threshold %.4f (%s, average linkage)", n, info["clusters"],
                    threshold, rule)
        return ClusterResult(labels=labels, threshold=threshold, info=info)

    rule = "must-cannot-midpoint" if midpoint is not None else "given"
    if threshold is None:
        if len(root_pairs) == 0:
            threshold, rule = _no_links_threshold(sims)
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


def _no_links_threshold(sims: np.ndarray) -> tuple[float, str]:
    """Without cannot-links: a threshold from the nearest-neighbour similarities (a heuristic, said so)."""
    threshold = _fallback_threshold(sims)
    logger.warning("no cannot-links: threshold %.4f from the nearest-neighbour similarity "
                   "distribution (median - %g MAD), a heuristic", threshold, MAD_WIDTH)
    return threshold, "nearest-neighbour-mad"


def _node_vectors(vectors: Any, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Must-link components as nodes: (root face of each node, node of each face, (T, d)
    float32 normalised mean of each node's faces)."""
    from .index import normalize

    x = normalize(vectors)
    roots, inverse = np.unique(parent, return_inverse=True)
    centroids = np.zeros((len(roots), x.shape[1]), np.float64)
    np.add.at(centroids, inverse, x)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return roots, inverse.reshape(-1).astype(np.int64), centroids.astype(np.float32)


def _cluster_average(nodes: tuple[np.ndarray, np.ndarray, np.ndarray], root_pairs: np.ndarray,
                     a: list[int], b: list[int], sims: np.ndarray, threshold: float | None, holdout: float,
                     rate: tuple[int, float], seed: int, info: dict[str, Any]) -> tuple[np.ndarray, float, str]:
    """Average linkage over the must-link components: (labels, threshold, threshold rule)."""
    roots, node_of, unit = nodes
    na, nb = node_of[np.asarray(a, np.int64)], node_of[np.asarray(b, np.int64)]
    keep = na != nb
    pairs = np.unique(np.sort(np.stack([na[keep], nb[keep]], 1), axis=1), axis=0).reshape(-1, 2)
    info["candidate_pairs"] = len(pairs)
    cannot_nodes = np.searchsorted(roots, root_pairs).reshape(-1, 2)
    rule = "given"
    if threshold is None:
        if len(cannot_nodes) == 0:
            threshold, rule = _no_links_threshold(sims)
        else:
            if not 0.0 < holdout <= 1.0:
                raise ProxytasksError(f"holdout must be in (0, 1], got {holdout}")
            if rate[0] < 1 or not 0.0 <= rate[1] < 1.0:
                raise ProxytasksError(f"window must be at least 1 and max_violating_share in [0, 1), got "
                                      f"{rate[0]} and {rate[1]}")
            m = len(cannot_nodes)
            n_hold = min(m, max(1, math.ceil(holdout * m)))
            held = np.random.default_rng(seed).permutation(m)[:n_hold]
            window = max(int(rate[0]), len(unit) // 100)
            watch = Links()
            for x, y in cannot_nodes[np.sort(held)].tolist():
                watch.add(x, y)
            calib = average_linkage(unit, pairs[:, 0], pairs[:, 1], -math.inf, watch=watch, window=window,
                                    max_share=rate[1], max_links=int(MAX_LINKS_ONE_MERGE * n_hold))
            stop, low = calib["stop"], calib["lowest"]
            if stop is None:
                threshold = low if low is not None else 1.0
            elif low is not None and low > stop:
                threshold = (low + stop) / 2.0
            else:
                threshold = float(np.nextafter(stop, np.inf))
            info.update({"heldout_links": n_hold, "heldout_violations": calib["violations"],
                         "heldout_violation_rate": round(calib["violations"] / n_hold, 4),
                         "window": window, "violating_merges": calib["violating_merges"],
                         "calibration_merges": calib["merges"]})
            rule = "cannot-link-violations"
    threshold = float(threshold)
    cannot = Links()
    for x, y in cannot_nodes.tolist():
        cannot.add(x, y)
    run = average_linkage(unit, pairs[:, 0], pairs[:, 1], threshold, cannot=cannot)
    root_of_face = run["owner"][node_of]
    _, first, inverse = np.unique(root_of_face, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    info.update({"merges": run["merges"], "blocked_merges": run["blocked"]})
    return rank[inverse.reshape(-1)].astype(np.int64), threshold, rule


def _component_knn(vectors: Any, parent: np.ndarray, k: int, seed: int, device: str | None = None,
                   nodes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kNN graph between must-link components (normalised mean vectors), with face ids:
    (sims, idx as the root face of each neighbour, root face of each row)."""
    roots, _, centroids = nodes if nodes is not None else _node_vectors(vectors, parent)
    if len(roots) < 2:
        return np.zeros((len(roots), 0)), np.zeros((len(roots), 0), np.int64), roots
    # recall 0.995 where the graph is approximate: at 0.96 BCubed F1 fell 0.80 -> 0.76 on 250k
    # bench faces (50k tracks), at 0.995 it equals the exact graph's (bench/README.md)
    sims, idx = knn_graph(centroids, min(k, len(roots) - 1), seed=seed,
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

    i, j, label, _ = pairs.unique()
    groups = manifest.columns().track
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
