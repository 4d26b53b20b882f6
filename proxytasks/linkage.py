"""Agglomeration engines of :mod:`proxytasks.cluster`: link tables and average linkage.

:func:`average_linkage` merges *nodes* (tracks, i.e. must-link components, each the
normalised mean of its faces) by **average linkage**: the similarity of two clusters is
the mean cosine over every pair of their nodes, which for unit vectors is exactly
``S_A . S_B / (n_A * n_B)`` with ``S`` the sum of a cluster's node vectors and ``n`` its
number of nodes, so any pair's linkage costs one dot product and no N x N matrix is
made. Only pairs of clusters joined by a candidate edge (a kNN edge between two of their
nodes) are considered; they are merged best first, each merge recomputing the exact
linkage of the merged cluster to all its candidate neighbours. A chain of look-alike
faces cannot glue two people together as it does in single linkage: one close pair
weighs ``1 / (n_A * n_B)`` of the linkage.

The pairs waiting to be merged are kept in two places: a heap of those at or above the
current *floor*, and a flat store of the others (numpy arrays); when the heap runs dry
the floor drops to the next level (the best waiting pairs) and those pairs move to the
heap. The result is the same as a heap of every pair (the heap always holds every live
pair at or above the floor, with its current linkage) at a fraction of its memory.
Pairs are invalidated by version stamps: a merge bumps both clusters' stamps.
"""
from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from array import array
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

THRESHOLD_RULES = ("auto", "violations", "midpoint")
TRAINED_GAP = -0.05  # cannot-linked pairs this much less alike than random pairs: vectors trained on the links
PAIR_SAMPLE = 100_000  # face pairs behind each median of the link statistics (a seeded sample when more)


class Links:
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


class _Waiting:
    """Candidate pairs below the floor, as compact arrays: node a, node b, the stamps of
    both when the pair's linkage was computed, and that linkage."""

    def __init__(self) -> None:
        self.a, self.b, self.va, self.vb = (array("q") for _ in range(4))
        self.s = array("d")
        self.parts: list[tuple[np.ndarray, ...]] = []

    @property
    def size(self) -> int:
        return len(self.s) + sum(len(p[0]) for p in self.parts)

    def take(self, version: list[int], floor: float, level: int) -> tuple[float, tuple[np.ndarray, ...]]:
        """Drop stale pairs; remove and return the live pairs at or above the next floor
        (at most ``floor``, low enough to release about ``level`` pairs)."""
        fresh = tuple(np.frombuffer(c, dtype=np.int64 if c.typecode == "q" else np.float64).copy()
                      for c in (self.a, self.b, self.va, self.vb, self.s))
        self.a, self.b, self.va, self.vb = (array("q") for _ in range(4))
        self.s = array("d")
        a, b, va, vb, s = (np.concatenate(c) for c in zip(*self.parts, fresh))
        stamp = np.asarray(version, np.int64)
        live = (stamp[a] == va) & (stamp[b] == vb)
        a, b, va, vb, s = a[live], b[live], va[live], vb[live], s[live]
        if not len(s):
            self.parts = []
            return -math.inf, ()
        nxt = min(floor, float(np.partition(s, len(s) - level)[len(s) - level]) if level < len(s) else -math.inf)
        up = s >= nxt
        self.parts = [(a[~up], b[~up], va[~up], vb[~up], s[~up])]
        return nxt, (a[up], b[up], va[up], vb[up], s[up])


def average_linkage(unit: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float,
                    cannot: Links | None = None, watch: Links | None = None,
                    window: int = 0, max_share: float = 1.0, min_count: int = 2,
                    max_links: int | None = None) -> dict:
    """Average linkage over nodes, merging while the best candidate pair's linkage is at
    least ``threshold``.

    Args:
        unit: (T, d) unit vectors of the nodes.
        a, b: candidate node pairs (each pair once).
        threshold: the lowest linkage merged (``-inf``: merge until no candidate is left).
        cannot: node pairs never merged (blocked); updated in place as clusters merge.
        watch: node pairs watched, not enforced: a merge that brings one of them inside a
            cluster is a *violating* merge.
        window: with ``window > 0``, the run stops before the first merge that would make
            more than ``max(min_count, max_share * window)`` of the last ``window`` merges
            violating ones.
        max_share: see ``window``.
        min_count: see ``window`` (a few violating merges are always tolerated: a wrong
            cannot-link, or two look-alike people among many merges).
        max_links: the run also stops before a merge that alone would bring more than
            this many watched pairs inside one cluster.

    Returns:
        ``{"owner": (T,) int64 cluster root of each node, "merges", "blocked",
        "violations": watched pairs inside clusters, "violating_merges", "stop": linkage of
        the merge that was refused (None when none was), "lowest": the lowest linkage
        merged (None when no merge)}``.
    """
    t = len(unit)
    mean = np.array(unit, dtype=np.float64)  # mean of each cluster's node vectors
    count = [1] * t
    version = [0] * t
    parent = np.arange(t, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    nbrs: list[set[int] | None] = [set() for _ in range(t)]
    for x, y in zip(a.tolist(), b.tolist()):
        nbrs[x].add(y)
        nbrs[y].add(x)
    cannot = cannot if cannot is not None else Links()
    watch = watch if watch is not None else Links()
    waiting = _Waiting()
    zero = np.zeros(len(a), np.int64)
    first = np.empty(len(a))
    for s in range(0, len(a), 65536):  # in blocks: two (pairs, d) gathers at once would be large
        first[s:s + 65536] = np.einsum("ij,ij->i", mean[a[s:s + 65536]], mean[b[s:s + 65536]])
    waiting.parts.append((a, b, zero, zero, first))
    level = max(1024, t // 8)
    heap: list[tuple[float, int, int, int, int]] = []
    push = heapq.heappush
    floor = math.inf
    merges = blocked = violations = violating = 0
    stop = low = None
    recent: deque[int] = deque(maxlen=max(window, 1))
    in_window, limit = 0, max(min_count, max_share * window)
    while True:
        if not heap:
            if floor <= threshold or waiting.size == 0:
                break
            nxt, released = waiting.take(version, floor, level)
            floor = max(nxt, threshold)
            if released:
                ra, rb, rva, rvb, rs = released
                up = rs >= floor
                heap = list(zip((-rs[up]).tolist(), ra[up].tolist(), rb[up].tolist(), rva[up].tolist(),
                                rvb[up].tolist()))
                heapq.heapify(heap)
            continue
        neg, x, y, vx, vy = heapq.heappop(heap)
        if version[x] != vx or version[y] != vy:
            continue
        if cannot.count(x, y):
            blocked += 1
            nbrs[x].discard(y)
            nbrs[y].discard(x)
            continue
        inside = watch.count(x, y)
        if max_links is not None and inside > max_links:
            stop = -neg
            break
        bad = 1 if inside else 0
        if window:
            full = len(recent) == window
            if in_window + bad - (recent[0] if full else 0) > limit:
                stop = -neg
                break
            in_window += bad - (recent[0] if full else 0)
            recent.append(bad)
        violating += bad
        nx, ny = nbrs[x], nbrs[y]
        if len(nx) + cannot.size(x) + watch.size(x) < len(ny) + cannot.size(y) + watch.size(y):
            x, y, nx, ny = y, x, ny, nx
        parent[y] = x
        cx, cy = count[x], count[y]
        count[x] = cx + cy
        mean[x] = (cx * mean[x] + cy * mean[y]) / (cx + cy)
        version[x] += 1
        version[y] += 1
        nbrs[y] = None
        ny.discard(x)
        nx.discard(y)
        for z in ny:
            nz = nbrs[z]
            nz.discard(y)
            nz.add(x)
        nx |= ny
        cannot.merge(x, y)
        violations += watch.merge(x, y)
        merges += 1
        low = -neg if low is None or -neg < low else low
        if nx:
            others = list(nx)
            sims = (mean[others] @ mean[x]).tolist()
            vx = version[x]
            for z, sz in zip(others, sims):
                if sz >= floor:
                    push(heap, (-sz, x, z, vx, version[z]))
                else:
                    waiting.a.append(x)
                    waiting.b.append(z)
                    waiting.va.append(vx)
                    waiting.vb.append(version[z])
                    waiting.s.append(sz)
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            break
        parent = up
    return {"owner": parent, "merges": merges, "blocked": blocked, "violations": violations,
            "violating_merges": violating, "stop": stop, "lowest": low}


def link_statistics(vectors: Any, parent: np.ndarray, cannot_links: np.ndarray, seed: int = 0,
                    sample: int = PAIR_SAMPLE) -> dict[str, float | None]:
    """Median cosine similarity of must-linked, cannot-linked and random face pairs.

    Args:
        vectors: (N, d) face vectors (any norm).
        parent: (N,) must-link group of each face, a face alone in a group of its own
            (e.g. the root face of its track).
        cannot_links: (M, 2) face index pairs.
        seed: seeds the samples.
        sample: the most pairs behind each median (a seeded sample when more), so a
            million faces cost a few dot products per face at most.

    Returns:
        ``{"must_link_cosine", "cannot_link_cosine", "random_pair_cosine"}``: must-linked
        pairs are each face of a group of two or more with another face of its group
        drawn at random, random pairs two faces of different groups drawn at random;
        None where there is no such pair.
    """
    rng = np.random.default_rng(seed)
    parent = np.asarray(parent, np.int64)
    n = len(parent)
    pairs = np.asarray(cannot_links, np.int64).reshape(-1, 2)

    def median(a: np.ndarray, b: np.ndarray) -> float | None:
        if len(a) > sample:
            keep = rng.choice(len(a), sample, replace=False)
            a, b = a[keep], b[keep]
        if not len(a):
            return None
        va, vb = (np.asarray(vectors[i], np.float32) for i in (a, b))
        norm = np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12)
        return float(np.median(np.einsum("ij,ij->i", va, vb) / norm))

    order = np.argsort(parent, kind="stable")
    p = parent[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    size_of, start_of = np.repeat(sizes, sizes), np.repeat(starts, sizes)
    grouped = size_of >= 2
    other = start_of + (np.arange(n) - start_of + rng.integers(1, np.maximum(size_of, 2))) % np.maximum(size_of, 1)
    a, b = rng.integers(0, max(n, 1), min(sample, 4 * n)), rng.integers(0, max(n, 1), min(sample, 4 * n))
    apart = parent[a] != parent[b]
    return {"must_link_cosine": median(order[grouped], order[other[grouped]]),
            "cannot_link_cosine": median(pairs[:, 0], pairs[:, 1]),
            "random_pair_cosine": median(a[apart], b[apart])}


def link_threshold(vectors: Any, parent: np.ndarray, cannot_links: np.ndarray, rule: str,
                   trained: bool | None, seed: int, info: dict[str, Any]) -> float | None:
    """The threshold of the midpoint rule, or None where the violation sweep applies.

    ``rule`` (one of :data:`THRESHOLD_RULES`) is resolved as in
    :func:`proxytasks.cluster.cluster_faces`: ``"auto"`` is ``"midpoint"`` for vectors
    ``trained`` on the links, else ``"violations"``. ``trained=None`` (not known) counts as
    untrained, with a warning when :func:`link_statistics` says the vectors look trained
    (cannot-linked pairs less alike than random pairs by more than ``-TRAINED_GAP``; not
    proof: with few people, random pairs are often of one person). ``info`` gets the
    statistics and the choice. The midpoint is halfway between the median cosine of
    must-linked and of cannot-linked face pairs; without a must-linked pair it cannot apply
    (a warning; None).
    """
    stats = link_statistics(vectors, parent, cannot_links, seed)
    info.update({k: None if v is None else round(v, 4) for k, v in stats.items()})
    must, cannot, rand = stats["must_link_cosine"], stats["cannot_link_cosine"], stats["random_pair_cosine"]
    looks_trained = cannot is not None and rand is not None and cannot - rand < TRAINED_GAP
    info.update({"trained_on_links": trained, "looks_trained_on_links": bool(looks_trained)})
    if rule == "auto":
        rule = "midpoint" if trained else "violations"
    if rule == "violations" and looks_trained and trained is None:
        logger.warning("cannot-linked faces are less alike than random pairs of faces (median cosine %.3f vs %.3f): "
                       "the vectors look trained on these links, where the violation rule errs on merging; if they "
                       "are, the midpoint rule suits them (trained_on_links=True)", cannot, rand)
    if rule == "violations" or cannot is None:
        return None
    if must is None:
        logger.warning("no must-linked pair of faces (no track of two faces): the midpoint rule cannot apply, "
                       "the threshold comes from cannot-link violations")
        return None
    return (must + cannot) / 2.0
