"""Naming decisions under constraints, for :func:`proxytasks.naming.name_faces`.

Two parts:

- **The unknown threshold** (:func:`calibrate_unknown`). A unit (a track, or a single
  face) is compared with every name by the cosine between the unit's mean vector and the
  name's prototype (the normalised mean of the faces named so); its *similarity* is the
  best of these. Leave-one-out over the named units gives two samples: with a named
  unit's own faces left out of its name's prototype, its similarity is that of a face of a
  *known* person (when the name has named faces in another unit); with its whole name
  left out, the best of the other names is that of a person *never named*. The threshold
  is the one with the fewest errors on both samples together (each sample weighing one
  half). Without a sample of each kind (one named unit per name, or a single name) there
  is nothing to calibrate on and no face is rejected (a warning says so).
- **Joint assignment** (:func:`assign_units`). Two units with cannot-linked faces (faces
  of one frame; co-occurring tracks) are two people and never get the same name; a unit
  cannot-linked to a face a person named never gets that face's name. "Unknown" is
  always allowed, to any number of units. Units are solved per connected component of the
  cannot-link graph, and only in components where the best names clash: a component in
  which every unit meets every other one (the units of one frame or of one shot, as in
  TV footage) by the Hungarian algorithm on the expected number of faces named right
  (``faces * share``, one column per name and one "unknown" column per unit); other
  components greedily, most confident unit first, each unit taking its best name that no
  decided neighbour holds.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

KNOWN_WEIGHT = 0.5  # weight of a known face rejected against a never-named face named
MAX_HUNGARIAN = 400  # units of one component solved exactly; larger ones greedily


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def best_similarity(views: list[np.ndarray], protos: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Per unit, the largest cosine of one of its views (its mean vector, its cluster's)
    to a prototype (``-inf`` when there is none)."""
    out = np.full(len(views[0]), -np.inf, np.float32)
    if protos.shape[0] == 0:
        return out
    for v in views:
        for s in range(0, len(v), chunk):
            out[s:s + chunk] = np.maximum(out[s:s + chunk], (v[s:s + chunk] @ protos.T).max(axis=1))
    return out


def calibrate_unknown(views: list[np.ndarray], unit: np.ndarray, x_given: np.ndarray, given_idx: np.ndarray,
                      given_lab: np.ndarray, n_classes: int, known_weight: float | None = None
                      ) -> tuple[float | None, dict[str, Any]]:
    """The unknown threshold from the named faces by leave-one-out (module docstring).

    Args:
        views: (U, d) unit vectors of the units (the normalised mean of their faces);
            with several views a unit is as close to a name as its closest view.
        unit: (N,) unit of each face.
        x_given: (G, d) normalised vectors of the named faces.
        given_idx: (G,) their face indices.
        given_lab: (G,) their name codes.
        n_classes: number of names.

    Returns:
        (threshold or None when it cannot be calibrated, info: the samples' sizes and the
        leave-one-out error rates at the threshold).
    """
    info: dict[str, Any] = {"rule": "leave-one-out"}
    sums = np.zeros((n_classes, x_given.shape[1]), np.float64)
    np.add.at(sums, given_lab, x_given)
    counts = np.bincount(given_lab, minlength=n_classes)
    keys, inv = np.unique(unit[given_idx].astype(np.int64) * n_classes + given_lab, return_inverse=True)
    inv = inv.reshape(-1)
    own_sum = np.zeros((len(keys), x_given.shape[1]), np.float64)
    np.add.at(own_sum, inv, x_given)
    own_cnt = np.bincount(inv, minlength=len(keys))
    units, labs = keys // n_classes, keys % n_classes
    mixed = np.bincount(units, minlength=int(units.max()) + 1)[units] > 1  # a unit named two ways
    units, labs, own_sum, own_cnt = units[~mixed], labs[~mixed], own_sum[~mixed], own_cnt[~mixed]
    rest = _normalise(sums[labs] - own_sum)
    neg = np.full(len(labs), -np.inf)
    own = np.full(len(labs), -np.inf)
    for view in views:
        v = view[units].astype(np.float64)
        others = v @ _normalise(sums).T
        others[np.arange(len(labs)), labs] = -np.inf
        neg = np.maximum(neg, others.max(axis=1))
        own = np.maximum(own, np.einsum("ij,ij->i", v, rest))
    has_pos = counts[labs] > own_cnt
    pos = np.maximum(own, neg)[has_pos]
    neg = neg[np.isfinite(neg)]
    info.update({"known_samples": int(len(pos)), "never_named_samples": int(len(neg))})
    if len(pos) == 0 or len(neg) == 0:
        why = ("every name has named faces in one track only" if len(pos) == 0 else "there is one name only")
        logger.warning("unknown threshold: cannot be calibrated (%s), so no face is rejected; give one "
                       "(--unknown-threshold) or name faces of one person in two tracks or more", why)
        info["rule"] = "none: " + why
        return None, info
    values = np.unique(np.r_[pos, neg])
    cuts = np.r_[values[0] - 1e-6, (values[1:] + values[:-1]) / 2.0, values[-1] + 1e-6]
    miss = np.searchsorted(np.sort(pos), cuts, side="left") / len(pos)        # known faces below the cut
    forced = 1.0 - np.searchsorted(np.sort(neg), cuts, side="left") / len(neg)  # never-named faces at or above
    w = KNOWN_WEIGHT if known_weight is None else known_weight
    err = w * miss + (1.0 - w) * forced
    best = np.flatnonzero(err <= err.min() + 1e-12)
    k = best[len(best) // 2]  # the middle of the best cuts
    info.update({"known_rejected": round(float(miss[k]), 4), "never_named_accepted": round(float(forced[k]), 4)})
    return float(cuts[k]), info


def frame_cannot_links(media: Sequence[str], frame: Sequence[int | None]) -> np.ndarray:
    """Face pairs (M, 2) that share a frame or a photo (same ``media`` and ``frame``)."""
    keys: dict[tuple[str, int | None], list[int]] = {}
    for i, key in enumerate(zip(media, frame)):
        keys.setdefault(key, []).append(i)
    pairs = [(a, b) for faces in keys.values() if len(faces) > 1
             for k, a in enumerate(faces) for b in faces[k + 1:]]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def unit_pairs(cannot: np.ndarray, unit: np.ndarray, given: np.ndarray, given_name: np.ndarray
               ) -> tuple[np.ndarray, dict[int, set[int]], int, int]:
    """Cannot-linked face pairs lifted to units.

    Returns:
        (distinct unit pairs (P, 2) with a < b; unit -> name codes it may not take (those
        of named faces cannot-linked to one of its faces); pairs inside one unit (ignored:
        the track or the "same" answer wins); pairs of two faces named the same by a person).
    """
    i, j = cannot[:, 0], cannot[:, 1]
    ui, uj = unit[i], unit[j]
    inside = int((ui == uj).sum())
    banned: dict[int, set[int]] = {}
    both = given[i] & given[j]
    clash = int((both & (given_name[i] == given_name[j])).sum())
    for a, b in ((i, j), (j, i)):
        one = given[a] & ~given[b] & (ui != uj)
        for u, c in zip(unit[b[one]].tolist(), given_name[a[one]].tolist()):
            banned.setdefault(u, set()).add(c)
    keep = ui != uj
    pairs = np.unique(np.sort(np.stack([ui[keep], uj[keep]], 1), axis=1), axis=0).reshape(-1, 2)
    return pairs, banned, inside, clash


def assign_units(dist: np.ndarray, mass: np.ndarray, pairs: np.ndarray, banned: dict[int, set[int]],
                 unknown: int) -> tuple[np.ndarray, dict[str, int]]:
    """The column (name, or ``unknown``) of each unit, no two paired units on one name.

    Args:
        dist: (U, C) each unit's distribution over the columns (names and ``unknown``).
        mass: (U,) faces per unit (weights of the objective).
        pairs: (P, 2) unit pairs that cannot share a name.
        banned: unit -> columns it may not take.
        unknown: the column of "unknown" (any number of units may take it).

    Returns:
        (column per unit, counts: components solved exactly / greedily, units moved off
        their best column).
    """
    d = dist.copy()
    for u, cols in banned.items():
        d[u, list(cols)] = -1.0
    choice = d.argmax(axis=1)
    stats = {"components_hungarian": 0, "components_greedy": 0, "units_moved": 0}
    if not len(pairs):
        return choice, stats
    a, b = pairs[:, 0], pairs[:, 1]
    clash = (choice[a] == choice[b]) & (choice[a] != unknown)
    if not clash.any():
        return choice, stats
    n = len(dist)
    graph = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)).tocsr()
    _, comp = sp.csgraph.connected_components(graph, directed=False)
    todo = np.unique(comp[a[clash]])
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.r_[todo, todo + 1].reshape(2, -1))
    edge_comp = comp[a]
    by = np.argsort(edge_comp, kind="stable")
    lo = np.searchsorted(edge_comp[by], todo)
    hi = np.searchsorted(edge_comp[by], todo, side="right")
    edges_of = {c: (a[by[s:e]], b[by[s:e]]) for c, s, e in zip(todo.tolist(), lo.tolist(), hi.tolist())}
    before = choice.copy()
    for c, s, e in zip(todo.tolist(), bounds[0].tolist(), bounds[1].tolist()):
        members = order[s:e]
        ea, eb = edges_of[c]
        m = len(members)
        if m <= MAX_HUNGARIAN and len(ea) == m * (m - 1) // 2:
            choice[members] = _hungarian(d[members], mass[members], unknown)
            stats["components_hungarian"] += 1
        else:
            choice[members] = _greedy(d, mass, members, ea, eb, unknown)
            stats["components_greedy"] += 1
    stats["units_moved"] = int((choice != before).sum())
    return choice, stats


def _hungarian(d: np.ndarray, mass: np.ndarray, unknown: int) -> np.ndarray:
    """Units that all meet each other: the best one-to-one names, "unknown" shared."""
    from scipy.optimize import linear_sum_assignment

    m, c = d.shape
    names = [k for k in range(c) if k != unknown]
    gain = np.concatenate([d[:, names], np.repeat(d[:, [unknown]], m, axis=1)], axis=1) * mass[:, None]
    gain = np.where(d[:, names + [unknown] * m] < 0, -1e9, gain)  # banned columns
    rows, cols = linear_sum_assignment(gain, maximize=True)
    out = np.full(m, unknown, np.int64)
    picked = np.array(names + [unknown] * m)[cols]
    out[rows] = picked
    return out


def _greedy(d: np.ndarray, mass: np.ndarray, members: np.ndarray, ea: np.ndarray, eb: np.ndarray,
            unknown: int) -> np.ndarray:
    """Most confident unit first; each takes its best column no decided neighbour holds."""
    nbrs: dict[int, list[int]] = {}
    for x, y in zip(ea.tolist(), eb.tolist()):
        nbrs.setdefault(x, []).append(y)
        nbrs.setdefault(y, []).append(x)
    score = d[members].max(axis=1) * mass[members]
    taken: dict[int, int] = {}
    for u in members[np.argsort(-score, kind="stable")].tolist():
        used = {taken[v] for v in nbrs.get(u, ()) if v in taken} - {unknown}
        row = d[u]
        for col in np.argsort(-row, kind="stable").tolist():
            if col == unknown or (col not in used and row[col] >= 0):
                taken[u] = col
                break
        else:
            taken[u] = unknown
    return np.array([taken[u] for u in members.tolist()], np.int64)
