"""Few-shot naming: from a few names a person gave to a name for every face.

Method, in four steps (:func:`name_faces`):

1. **Classifier.** A cosine classifier over the L2-normalised embeddings, fitted on
   the named faces: ``p(c | x) = softmax_c(s * cos(x, w_c))`` with a fixed scale
   ``s = SCALE``. Head ``"prototype"``: ``w_c`` is the normalised mean of the faces
   named ``c``. Head ``"linear"``: ``w_c`` starts at the prototypes and is fine-tuned
   for ``steps`` full-batch (or seeded mini-batch) Adam steps on class-balanced
   cross-entropy, with weight decay *towards the prototypes* (L2-SP).
   Cosine logits with a fixed scale cannot grow without bound and the decay keeps
   ``w_c`` near the prototype, so with one shot per name the head stays close to the
   prototype classifier instead of overfitting. ``steps=0`` is exactly the prototypes.
2. **Propagation.** Faces are grouped into *units*: a track (``tracks >= 0``) or a
   single untracked face. A unit votes: a named face with weight 1 for its given name,
   every other face with its class probabilities; the unit's distribution is the vote
   divided by its number of faces, and all its faces share the unit's name (a track
   carries one name).
3. **Unknown.** With an unknown threshold ``tau`` (a cosine similarity; by default
   calibrated from the named faces by leave-one-out, :func:`proxytasks.assign.calibrate_unknown`),
   each unit without a named face gets a last column, "unknown": its *similarity* ``sim``
   (the cosine between its mean vector and the nearest name's prototype) gives
   ``g = sigmoid(SCALE * (tau - sim))``, and "unknown" weighs ``g * top`` against
   ``(1 - g) * share`` of each name (``top``: the unit's top share), so it beats the top
   name exactly where ``sim < tau``. Clusters (``clusters >= 0``) then vote the same way
   over their units, "unknown" included, with smaller weight: a cluster only speaks when
   its top column holds at least ``cluster_min_share`` of its mass (clusters may be
   impure: two people of about equal weight in one cluster carry nothing), and then a
   unit's distribution becomes ``(1 - cluster_weight) * unit + cluster_weight * cluster``.
   A unit takes the cluster in which most of its faces lie.
4. **Joint decision.** Without cannot-links each unit takes its top column. With them
   (faces of one frame, tracks that co-occur: :func:`proxytasks.assign.assign_units`),
   two cannot-linked units never take the same name and a unit never takes the name a
   person gave a face cannot-linked to it; "unknown" may go to any number of units. The
   units of a frame or shot are solved jointly (Hungarian algorithm on the expected
   number of faces named right), only where the top names clash.

A face a person named always keeps its name, with confidence 1 and source "given".
``source`` of the other faces: "cluster" when the cluster vote changed the unit's top
column, else "track" when the face's track has two faces or more or a named face, else
"classifier"; "unknown" when the face gets no name. ``confidence`` is the share of the
face's column (its name, or "unknown"), ``runner_up`` the best other name, ``margin``
the difference of their shares.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp

from .annotations import ANSWERS, LABEL_COLUMNS, Annotations, read_annotations, read_labels  # noqa: F401
from .errors import ProxytasksError
from .fileio import atomic_write
from .vectors import l2_normalize

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SCALE = 16.0  # cosine-softmax scale: cos margin 0.3 between two names -> ~99% confidence
NAMING_HEADS = ("prototype", "linear")
_CHUNK = 65536


@dataclass
class NamingResult:
    """Per face: ``names`` (None = unknown), ``confidence`` in [0, 1], ``source``;
    ``runner_up`` (the second name) and ``margin`` (top minus second share) say how close
    the decision was."""

    names: list[str | None]
    confidence: np.ndarray
    source: list[str]
    classes: list[str] = field(default_factory=list)
    runner_up: list[str | None] = field(default_factory=list)
    margin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    info: dict = field(default_factory=dict)


def _fit_linear(x: np.ndarray, y: np.ndarray, protos: np.ndarray, steps: int, seed: int,
                lr: float = 0.01, decay: float = 0.2, smoothing: float = 0.0,
                batch: int = 1024) -> np.ndarray:
    """Fine-tune cosine-classifier weights from the prototypes (see module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ys = torch.from_numpy(y.astype(np.int64))
    w0 = torch.from_numpy(protos.astype(np.float32))
    w = w0.clone().requires_grad_(True)
    counts = np.bincount(y, minlength=len(protos)).astype(np.float32)
    cw = torch.from_numpy(1.0 / np.maximum(counts, 1.0))  # class-balanced
    opt = torch.optim.Adam([w], lr=lr)
    # Tiny problems run far faster on one thread (and do not fight other processes);
    # the process-wide thread count is restored afterwards.
    threads = torch.get_num_threads()
    small = min(len(xs), batch) * w.numel() < 50_000_000
    if small:
        torch.set_num_threads(1)
    try:
        _train(xs, ys, w, w0, cw, opt, steps, gen, decay, smoothing, batch)
    finally:
        torch.set_num_threads(threads)
    return l2_normalize(w.detach().numpy().astype(np.float32))


def _train(xs: "torch.Tensor", ys: "torch.Tensor", w: "torch.Tensor", w0: "torch.Tensor",
           cw: "torch.Tensor", opt: "torch.optim.Optimizer", steps: int, gen: "torch.Generator",
           decay: float, smoothing: float, batch: int) -> None:
    """Adam steps on class-balanced cross-entropy plus ``decay * |w - w0|^2``."""
    import torch
    import torch.nn.functional as F

    for _ in range(steps):
        if len(xs) > batch:
            idx = torch.randint(len(xs), (batch,), generator=gen)
            xb, yb = xs[idx], ys[idx]
        else:
            xb, yb = xs, ys
        logits = SCALE * F.normalize(xb, dim=1) @ F.normalize(w, dim=1).T
        loss = F.cross_entropy(logits, yb, weight=cw, label_smoothing=smoothing)
        loss = loss + decay * ((w - w0) ** 2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def classify(vectors: np.ndarray, idx: np.ndarray, labels: np.ndarray, n_classes: int,
             head: str = "linear", steps: int = 200, seed: int = 0) -> np.ndarray:
    """Class probabilities (N, n_classes) of a cosine classifier fitted on ``vectors[idx]``."""
    if head not in NAMING_HEADS:
        raise ProxytasksError(f"unknown naming head {head!r}: choose one of {', '.join(NAMING_HEADS)}")
    x = l2_normalize(np.asarray(vectors, dtype=np.float32))
    protos = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    np.add.at(protos, labels, x[idx])
    protos = l2_normalize(protos)
    weights = protos if head == "prototype" or steps <= 0 else _fit_linear(
        x[idx], labels, protos, steps, seed)
    probs = np.empty((len(x), n_classes), dtype=np.float32)
    for s in range(0, len(x), _CHUNK):
        logits = SCALE * (x[s:s + _CHUNK] @ weights.T)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs[s:s + _CHUNK] = e / e.sum(axis=1, keepdims=True)
    return probs


def _group(codes: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Dense group ids 0..G-1 for ``codes >= 0``; -1 stays -1."""
    out = np.full(n, -1, dtype=np.int64)
    valid = codes >= 0
    if valid.any():
        _, inv = np.unique(codes[valid], return_inverse=True)
        out[valid] = inv.reshape(-1)
        return out, int(inv.max()) + 1
    return out, 0


def _sum_by(groups: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """Row sums of ``values`` per group (rows with group -1 are skipped)."""
    valid = groups >= 0
    m = sp.csr_matrix((np.ones(int(valid.sum()), dtype=values.dtype),
                       (groups[valid], np.flatnonzero(valid))), shape=(n_groups, len(values)))
    return np.asarray(m @ values)


def parse_unknown_threshold(value: float | str | None) -> float | str | None:
    """``"auto"`` (calibrated), None or ``"none"`` (never unknown), or a similarity in
    [-1, 1] (a number or its text)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ProxytasksError(f"unknown threshold {value!r}: give 'auto', 'none' or a cosine "
                              "similarity in [-1, 1]") from None
    if not -1.0 <= t <= 1.0:
        raise ProxytasksError(f"unknown threshold {t}: a cosine similarity must be in [-1, 1]")
    return t


def name_faces(vectors: np.ndarray, named: dict[int, str], tracks: np.ndarray | None = None,
               clusters: np.ndarray | None = None, unknown_threshold: float | str | None = "auto",
               head: str = "linear", steps: int = 200, seed: int = 0,
               cluster_weight: float = 0.5, cluster_min_share: float = 0.5,
               forbidden: dict[int, set[str]] | None = None,
               same: Sequence[tuple[int, int]] = (),
               cannot_links: np.ndarray | None = None) -> NamingResult:
    """Name every face from a few named ones (method in the module docstring).

    Args:
        vectors: (N, D) L2-normalised embeddings.
        named: face index -> the name a person gave.
        tracks: a track code per face, -1 for none.
        clusters: a cluster id per face, -1 for none.
        unknown_threshold: cosine similarity between a unit's mean vector and its nearest
            name's prototype below which the unit leans to "unknown"; ``"auto"`` (default)
            calibrates it from the named faces by leave-one-out
            (:func:`proxytasks.assign.calibrate_unknown`); None never rejects a face.
        head: "linear" or "prototype".
        steps: fine-tuning steps of the linear head.
        seed: seeds the linear head's mini-batches.
        cluster_weight: weight of a cluster's vote against the unit's own.
        cluster_min_share: the share of its mass a cluster's top name needs to vote.
        forbidden: face index -> names a person removed from it: the face never gets
            them (its own evidence for them is dropped, and its share of them is
            taken out of its final distribution).
        same: face pairs a person said are one person: their units are joined.
        cannot_links: (M, 2) face pairs that are two people (faces of one frame, tracks
            that co-occur, "different" answers): the two never get the same name.

    Returns:
        NamingResult; ``info`` holds the unknown threshold used and how it was set.

    Raises:
        ProxytasksError: an unknown head, a bad unknown threshold or bad cannot-links.
    """
    if head not in NAMING_HEADS:
        raise ProxytasksError(f"unknown naming head {head!r}: choose one of {', '.join(NAMING_HEADS)}")
    tau = parse_unknown_threshold(unknown_threshold)
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ProxytasksError(f"vectors must be (N, D), got shape {x.shape}")
    n = len(x)
    from .cluster import _check_cannot_links

    cannot = _check_cannot_links(cannot_links, n)
    given_idx = np.array(sorted(named), dtype=np.int64)
    if len(given_idx) and (given_idx[0] < 0 or given_idx[-1] >= n):
        raise ProxytasksError(f"named face index out of range 0..{n - 1}")
    if len(given_idx) == 0:
        logger.warning("no face is named: every face stays unknown")
        return NamingResult([None] * n, np.zeros(n, np.float32), ["unknown"] * n, [], [None] * n,
                            np.zeros(n, np.float32))
    classes = sorted(set(named.values()))
    code = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    given_lab = np.array([code[named[int(i)]] for i in given_idx], dtype=np.int64)
    evidence = classify(x, given_idx, given_lab, k, head=head, steps=steps, seed=seed)
    evidence[given_idx] = 0.0
    evidence[given_idx, given_lab] = 1.0
    banned = [(i, code[c]) for i, names in (forbidden or {}).items() for c in names if c in code]
    if banned:
        rows_b, cols_b = np.array(banned).T
        evidence[rows_b, cols_b] = 0.0

    # Units: one per track (tracks joined by "same" answers), one per untracked face.
    unit, n_units, n_tracks = _units(tracks, same, n)
    mass = np.bincount(unit, minlength=n_units).astype(np.float32)
    given_per_unit = np.bincount(unit[given_idx], minlength=n_units)
    unit_dist = _sum_by(unit, n_units, evidence) / mass[:, None]
    info: dict[str, object] = {}
    if tau is not None:  # a last column: "unknown", from the unit's similarity to the names
        from .assign import best_similarity, calibrate_unknown

        xn = l2_normalize(x)
        views = [l2_normalize(_sum_by(unit, n_units, xn))]
        if tau == "auto":
            tau, info["calibration"] = calibrate_unknown(views, unit, xn[given_idx], given_idx, given_lab, k)
        if tau is not None:
            protos = np.zeros((k, x.shape[1]), np.float32)
            np.add.at(protos, given_lab, xn[given_idx])
            sim = best_similarity(views, l2_normalize(protos))
            gate = 1.0 / (1.0 + np.exp(np.clip(SCALE * (sim - tau), -60, 60)))
            gate[given_per_unit > 0] = 0.0
            # "unknown" weighs gate * (top name's share) against (1 - gate) * each name's
            # share: it wins over the top name exactly where the similarity is below tau
            ext = np.concatenate([unit_dist * (1.0 - gate[:, None]), (gate * unit_dist.max(axis=1))[:, None]], axis=1)
            unit_dist = ext / np.maximum(ext.sum(axis=1, keepdims=True), 1e-12)
    info["unknown_threshold"] = tau
    final = _cluster_vote(unit_dist, unit, mass, n_units, clusters, n, cluster_weight, cluster_min_share)
    unknown = k  # the column of "unknown" (present only with a threshold)

    # Joint decision: cannot-linked units never share a name.
    pad = final if final.shape[1] > k else np.concatenate([final, np.zeros((n_units, 1), final.dtype)], axis=1)
    choice = pad.argmax(axis=1)
    taken_by_nbrs: dict[int, set[int]] = {}
    if len(cannot):
        from .assign import assign_units, unit_pairs

        is_given = np.zeros(n, bool)
        is_given[given_idx] = True
        given_name = np.full(n, -1, np.int64)
        given_name[given_idx] = given_lab
        pairs, unit_ban, inside, clash = unit_pairs(cannot, unit, is_given, given_name)
        if clash:
            logger.warning("%d cannot-linked face pair(s) were given the same name by a person: kept", clash)
        choice, stats = assign_units(pad, mass, pairs, unit_ban, unknown)
        info.update(stats, cannot_linked_units=len(pairs), cannot_links_inside_units=inside,
                    cannot_linked_given_same_name=clash)
        if banned:
            for u, v in pairs.tolist():
                taken_by_nbrs.setdefault(u, set()).add(int(choice[v]))
                taken_by_nbrs.setdefault(v, set()).add(int(choice[u]))
            for u, cols in unit_ban.items():
                taken_by_nbrs.setdefault(u, set()).update(cols)

    # Per face: its unit's choice, unless a person removed that name from the face.
    face_dist = pad[unit]
    pick = choice[unit].copy()
    if banned:
        face_dist[rows_b, cols_b] = 0.0
        for i in np.unique(rows_b).tolist():
            if face_dist[i, pick[i]] <= 0.0 and pick[i] != unknown:
                used = taken_by_nbrs.get(int(unit[i]), set()) - {unknown}
                order = [c for c in np.argsort(-face_dist[i]).tolist() if c not in used and face_dist[i, c] > 0]
                pick[i] = order[0] if order else unknown
    rows = np.arange(n)
    conf = face_dist[rows, pick].astype(np.float32)
    names_only = face_dist[:, :k].copy()
    on_name = pick < k
    names_only[rows[on_name], pick[on_name]] = -np.inf
    second = names_only.argmax(axis=1)
    second[~np.isfinite(names_only[rows, second])] = -1  # no other name
    runner = np.where(second >= 0, face_dist[rows, np.maximum(second, 0)], 0.0)
    margin = (conf - runner).astype(np.float32)
    names: list[str | None] = [classes[p] if p < k and c > 0 else None for p, c in zip(pick.tolist(), conf.tolist())]
    runner_up = [classes[t] if t >= 0 else None for t in second.tolist()]
    is_track = (np.arange(n_units) < n_tracks) & ((mass >= 2) | (given_per_unit > 0))
    unit_best = unit_dist.argmax(axis=1)
    src_u = np.where(final.argmax(axis=1) != unit_best, "cluster", np.where(is_track, "track", "classifier"))
    source: list[str] = [s if nm is not None else "unknown" for s, nm in zip(src_u[unit].tolist(), names)]
    for i, lab in zip(given_idx.tolist(), given_lab.tolist()):
        names[i], source[i] = classes[lab], "given"
    conf[given_idx] = 1.0
    margin[given_idx] = 1.0
    return NamingResult(names, conf, source, classes, runner_up, margin, info)


def _units(tracks: np.ndarray | None, same: Sequence[tuple[int, int]], n: int) -> tuple[np.ndarray, int, int]:
    """(unit per face, units, units that are tracks): a unit per track (tracks joined by
    "same" answers), one per untracked face."""
    if tracks is not None:
        tracks = np.asarray(tracks).reshape(-1)
        if len(tracks) != n:
            raise ProxytasksError(f"tracks has {len(tracks)} entries for {n} faces")
    if len(same):
        from .cluster import join_groups

        tracks = join_groups(tracks, same, n)
    if tracks is not None:
        unit, n_tracks = _group(tracks.astype(np.int64), n)
    else:
        unit, n_tracks = np.full(n, -1, dtype=np.int64), 0
    loose = unit < 0
    unit[loose] = n_tracks + np.arange(int(loose.sum()))
    return unit, n_tracks + int(loose.sum()), n_tracks


def _unit_clusters(unit: np.ndarray, n_units: int, clusters: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """(the cluster in which most faces of each unit lie, -1 for none; clusters)."""
    if clusters is None:
        return np.full(n_units, -1, np.int64), 0
    clusters = np.asarray(clusters).reshape(-1)
    if len(clusters) != n:
        raise ProxytasksError(f"clusters has {len(clusters)} entries for {n} faces")
    cl, n_cl = _group(clusters.astype(np.int64), n)
    if not n_cl:
        return np.full(n_units, -1, np.int64), 0
    ok = cl >= 0
    table = sp.csr_matrix((np.ones(int(ok.sum())), (unit[ok], cl[ok])), shape=(n_units, n_cl))
    unit_cl = np.asarray(table.argmax(axis=1)).reshape(-1)
    unit_cl[np.diff(table.indptr) == 0] = -1
    return unit_cl, n_cl


def _cluster_vote(unit_dist: np.ndarray, unit: np.ndarray, mass: np.ndarray, n_units: int,
                  clusters: np.ndarray | None, n: int, cluster_weight: float,
                  cluster_min_share: float) -> np.ndarray:
    """Each unit's distribution mixed with its cluster's where the cluster speaks."""
    unit_cl, n_cl = _unit_clusters(unit, n_units, clusters, n)
    if not n_cl:
        return unit_dist
    votes = unit_dist * mass[:, None]
    c_votes = _sum_by(unit_cl, n_cl, votes)
    c_mass = np.bincount(unit_cl[unit_cl >= 0], weights=mass[unit_cl >= 0], minlength=n_cl)
    c_dist = c_votes / np.maximum(c_mass, 1e-12)[:, None]
    speaks = c_dist.max(axis=1) >= cluster_min_share
    use = (unit_cl >= 0) & speaks[np.maximum(unit_cl, 0)]
    final = unit_dist.copy()
    final[use] = (1 - cluster_weight) * unit_dist[use] + cluster_weight * c_dist[unit_cl[use]]
    logger.debug("%d of %d clusters carry a name", int(speaks.sum()), n_cl)
    return final


# ---------------------------------------------------------------- label files

def unname_marked(result: NamingResult, marked: np.ndarray | None, named: dict[int, str]) -> NamingResult:
    """Faces ``marked`` as low quality (:mod:`proxytasks.quality`: the back of a head, a hand)
    are named "unknown" (None, confidence 0, source ``unknown``) unless a person named them:
    no name reaches them along a track or a cluster."""
    if marked is None or not np.any(marked):
        return result
    for i in np.flatnonzero(np.asarray(marked, dtype=bool)):
        if int(i) not in named:
            result.names[i], result.confidence[i], result.source[i] = None, 0.0, "unknown"
    return result


def name_from_annotations(vectors: np.ndarray, ann: "Annotations", **options) -> NamingResult:
    """:func:`name_faces` from what a person said: their names, the names they removed
    from faces, their "same person" answers, and their "different people" answers (which
    join the ``cannot_links`` given in ``options``)."""
    cannot = options.pop("cannot_links", None)
    if ann.different:
        different = np.array(sorted(ann.different), dtype=np.int64)
        cannot = different if cannot is None or not len(cannot) else np.concatenate(
            [np.asarray(cannot, dtype=np.int64).reshape(-1, 2), different])
    return name_faces(vectors, ann.named, forbidden=ann.forbidden, same=sorted(ann.same), cannot_links=cannot,
                      **options)


def write_names(path: str | os.PathLike, ids: Sequence[str], result: NamingResult) -> None:
    """Write ``id,name,confidence,source`` as CSV, atomically; an unknown name is empty."""
    if len(ids) != len(result.names):
        raise ProxytasksError(f"{len(ids)} ids for {len(result.names)} names")
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "name", "confidence", "source"])
        for face_id, name, c, s in zip(ids, result.names, result.confidence.tolist(), result.source):
            w.writerow([face_id, "" if name is None else name, f"{c:.4f}", s])
