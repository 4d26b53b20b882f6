"""Evaluation metrics for the naming benchmark (Contract 2), on numpy arrays.

Pure functions, numpy and scipy only. Labels may be strings or ints; for naming,
a prediction ``None`` or ``"unknown"`` is a miss. All functions scale to millions
of items: clustering metrics go through a sparse contingency table, verification
samples its pairs when there are too many.

Formulas (N items, n_ij items of true class i in predicted cluster j,
a_i = sum_j n_ij, b_j = sum_i n_ij):

- weighted clustering purity: ``sum_j max_i n_ij / N``;
- NMI: ``I(T; P) / ((H(T) + H(P)) / 2)`` (scikit-learn's default "arithmetic"
  normalisation; 1.0 when both sides have a single label, 0.0 when I = 0);
- BCubed (Amigo et al. 2009): item precision ``n_ij / b_j`` and recall ``n_ij / a_i``
  averaged over items, F1 their harmonic mean;
- ROC-AUC: Mann-Whitney statistic on average ranks (ties count one half);
- TAR at FAR 1e-3: the threshold t is the (k+1)-th highest negative similarity with
  k = floor(1e-3 * negatives), so at most k negatives lie strictly above t; TAR is the
  fraction of positives strictly above t.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from .vectors import l2_normalize

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
FAR = 1e-3


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == UNKNOWN) or (
        isinstance(value, float) and value != value)


def _encode(*arrays: Sequence[Any]) -> list[np.ndarray]:
    """Integer codes shared by all ``arrays``; ``None``/``"unknown"``/NaN -> -1."""
    arrs = [np.asarray(a) for a in arrays]
    for a in arrs:
        if a.ndim != 1:
            raise ValueError(f"labels must be 1-d, got shape {a.shape}")
    sizes = [len(a) for a in arrs]
    plain = all(a.dtype.kind in "iub" for a in arrs) or all(a.dtype.kind in "U" for a in arrs)
    if plain:
        _, inv = np.unique(np.concatenate(arrs), return_inverse=True)
        inv = inv.reshape(-1).astype(np.int64)
        joined = np.concatenate(arrs)
        if joined.dtype.kind == "U":
            inv[joined == UNKNOWN] = -1
    else:
        table: dict[Any, int] = {}
        inv = np.empty(sum(sizes), dtype=np.int64)
        pos = 0
        for a in arrs:
            for v in a.tolist():
                inv[pos] = -1 if _is_missing(v) else table.setdefault(v, len(table))
                pos += 1
    out, start = [], 0
    for n in sizes:
        out.append(inv[start:start + n])
        start += n
    return out


def _codes(values: Sequence[Any]) -> np.ndarray:
    return _encode(values)[0]


def _check_same_length(true: np.ndarray, pred: np.ndarray) -> None:
    if len(true) != len(pred):
        raise ValueError(f"true and pred differ in length: {len(true)} != {len(pred)}")


def naming_accuracy(true: Sequence[Any], pred: Sequence[Any]) -> float | None:
    """Fraction of items whose predicted name equals the true one (None if empty).

    A prediction ``None`` or ``"unknown"`` counts as wrong.
    """
    t, p = _encode(true, pred)
    _check_same_length(t, p)
    if len(t) == 0:
        return None
    return float(np.mean((p == t) & (p >= 0)))


def macro_f1(true: Sequence[Any], pred: Sequence[Any]) -> float | None:
    """Unweighted mean over the true classes present of F1 = 2TP / (2TP + FP + FN).

    Unknown predictions are false negatives of their true class; predicted names that
    are no true class only add misses (they are not averaged over). None if empty.
    """
    t, p = _encode(true, pred)
    _check_same_length(t, p)
    known = t >= 0
    t, p = t[known], p[known]
    if len(t) == 0:
        return None
    n = int(max(t.max(), p.max() if len(p) else 0)) + 1
    tp = np.bincount(t[p == t], minlength=n).astype(float)
    support = np.bincount(t, minlength=n).astype(float)
    predicted = np.bincount(p[p >= 0], minlength=n).astype(float)
    classes = np.flatnonzero(support > 0)
    fp = predicted[classes] - tp[classes]
    fn = support[classes] - tp[classes]
    f1 = 2 * tp[classes] / (2 * tp[classes] + fp + fn)
    return float(f1.mean())


def _contingency(true: Sequence[Any], pred: Sequence[Any]) -> sp.csr_matrix:
    t, p = _codes(true), _codes(pred)
    _check_same_length(t, p)
    if (t < 0).any() or (p < 0).any():
        raise ValueError("clustering labels must not be None or 'unknown'")
    data = np.ones(len(t), dtype=np.int64)
    shape = (int(t.max()) + 1 if len(t) else 0, int(p.max()) + 1 if len(p) else 0)
    m = sp.coo_matrix((data, (t, p)), shape=shape).tocsr()
    m.sum_duplicates()
    return m


def _entropy(counts: np.ndarray, n: float) -> float:
    q = counts[counts > 0] / n
    return float(-(q * np.log(q)).sum())


def clustering_metrics(true: Sequence[Any], pred: Sequence[Any]) -> dict[str, Any]:
    """Weighted clustering purity, NMI, BCubed F1 and the number of predicted clusters.

    Every distinct value of ``pred`` is one cluster (a noise label such as -1 counts as
    one cluster: give singletons their own ids). Empty input gives None values.
    """
    m = _contingency(true, pred)
    n = float(m.sum())
    clusters = int(m.shape[1])
    if n == 0:
        return {"wcp": None, "nmi": None, "bcubed_f1": None, "clusters": 0}
    a = np.asarray(m.sum(axis=1)).ravel().astype(float)  # true class sizes
    b = np.asarray(m.sum(axis=0)).ravel().astype(float)  # cluster sizes
    coo = m.tocoo()
    nij = coo.data.astype(float)
    wcp = float(m.max(axis=0).toarray().sum() / n)
    if m.shape[0] == m.shape[1] == 1:
        nmi = 1.0
    else:
        mi = float((nij / n * (np.log(nij * n) - np.log(a[coo.row]) - np.log(b[coo.col]))).sum())
        mi = max(mi, 0.0)
        norm = (_entropy(a, n) + _entropy(b, n)) / 2
        nmi = 0.0 if mi <= 0 or norm <= 0 else min(mi / norm, 1.0)
    precision = float((nij * nij / b[coo.col]).sum() / n)
    recall = float((nij * nij / a[coo.row]).sum() / n)
    f1 = 2 * precision * recall / (precision + recall)
    return {"wcp": wcp, "nmi": float(nmi), "bcubed_f1": float(f1), "clusters": clusters}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC-AUC from average ranks; None without positives or without negatives."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tar_at_far(scores: np.ndarray, positive: np.ndarray, far: float = FAR) -> float | None:
    """True accept rate at the threshold that lets at most ``far`` of negatives above it."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    neg = np.sort(scores[~positive])[::-1]
    pos = scores[positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    k = int(np.floor(far * len(neg)))
    threshold = neg[min(k, len(neg) - 1)]
    return float(np.mean(pos > threshold))


def _sample_pairs(codes: np.ndarray, max_pairs: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i != j: all positive pairs up to half the budget, negatives fill the rest."""
    n = len(codes)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pair_counts = sizes * (sizes - 1) // 2
    total_pos = int(pair_counts.sum())
    half = max_pairs // 2
    if total_pos <= half:
        pi, pj = [], []
        for c in np.flatnonzero(sizes > 1):
            members = order[starts[c]:starts[c] + sizes[c]]
            a, b = np.triu_indices(len(members), k=1)
            pi.append(members[a])
            pj.append(members[b])
        pos_i = np.concatenate(pi) if pi else np.empty(0, np.int64)
        pos_j = np.concatenate(pj) if pj else np.empty(0, np.int64)
    else:  # groups drawn by their pair counts, then a random pair inside the group
        groups = rng.choice(len(sizes), size=half, p=pair_counts / total_pos)
        a = rng.integers(0, sizes[groups])
        b = rng.integers(0, sizes[groups] - 1)
        b = b + (b >= a)
        pos_i, pos_j = order[starts[groups] + a], order[starts[groups] + b]
    want = max_pairs - len(pos_i)
    neg_i, neg_j, got = [], [], 0
    for _ in range(50):
        if got >= want:
            break
        i = rng.integers(0, n, size=2 * (want - got) + 16)
        j = rng.integers(0, n, size=len(i))
        keep = codes[i] != codes[j]
        i, j = i[keep][:want - got], j[keep][:want - got]
        neg_i.append(i)
        neg_j.append(j)
        got += len(i)
    neg_i_a = np.concatenate(neg_i) if neg_i else np.empty(0, np.int64)
    neg_j_a = np.concatenate(neg_j) if neg_j else np.empty(0, np.int64)
    return np.concatenate([pos_i, neg_i_a]), np.concatenate([pos_j, neg_j_a])


def verification_metrics(vectors: np.ndarray, identities: Sequence[Any], max_pairs: int = 2_000_000,
                         seed: int = 0, metric: str = "cosine", groups: Sequence[int] | None = None
                         ) -> dict[str, float | None]:
    """ROC-AUC and TAR at FAR 1e-3 of cosine similarity (or, with ``metric="euclidean"``,
    of minus the Euclidean distance, as dlib compares its descriptors) on face pairs.

    All pairs when ``N(N-1)/2 <= max_pairs``, else a seeded sample: every positive pair
    while they fit in half the budget (else half the budget drawn among them), and
    random negative pairs for the rest. Faces with identity None are left out. With
    ``groups`` (e.g. a track per face), pairs within one group are not scored: only
    pairs across groups count. Values are None when there is no positive or no
    negative pair.
    """
    x = np.asarray(vectors, dtype=np.float32)
    codes = _codes(identities)
    if x.ndim != 2 or len(x) != len(codes):
        raise ValueError(f"vectors {x.shape} do not match {len(codes)} identities")
    group = np.arange(len(codes)) if groups is None else np.asarray(groups).reshape(-1)
    if len(group) != len(codes):
        raise ValueError(f"groups ({len(group)}) do not match {len(codes)} identities")
    keep = codes >= 0
    x, codes, group = x[keep], codes[keep], group[keep]
    _, codes = np.unique(codes, return_inverse=True)
    codes = codes.reshape(-1)
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}: cosine or euclidean")
    norms = np.linalg.norm(x, axis=1)
    if metric == "cosine":
        x, norms = l2_normalize(x, axis=1), np.ones(len(x), np.float32)
    n = len(x)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        dots = (x @ x.T)[i, j]
    else:
        i, j = _sample_pairs(codes, max_pairs, np.random.default_rng(seed))
        dots = np.empty(len(i), dtype=np.float32)
        step = 65536
        for s in range(0, len(i), step):
            dots[s:s + step] = np.einsum("ij,ij->i", x[i[s:s + step]], x[j[s:s + step]])
    # cosine: the dot product of unit vectors; euclidean: -|a - b| = -sqrt(|a|^2 + |b|^2 - 2 a.b)
    sims = dots if metric == "cosine" else -np.sqrt(np.maximum(norms[i] ** 2 + norms[j] ** 2 - 2 * dots, 0.0))
    across = group[i] != group[j]
    sims, i, j = sims[across], i[across], j[across]
    positive = codes[i] == codes[j]
    logger.debug("verification on %d pairs (%d positive)", len(i), int(positive.sum()))
    return {"roc_auc": roc_auc(sims, positive), "tar_at_far_1e-3": tar_at_far(sims, positive)}


def few_shot_draw(identities: Sequence[Any], k: int, rng: np.random.Generator | int) -> np.ndarray:
    """Indices of ``k`` faces per identity drawn at random, sorted.

    Only identities with at least ``k + 1`` faces take part (so that one face at least
    is left to name); faces with identity None never do. Empty when none is left.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    codes = _codes(identities)
    if k <= 0 or len(codes) == 0:
        return np.empty(0, dtype=np.int64)
    valid = np.flatnonzero(codes >= 0)
    c = codes[valid]
    sizes = np.bincount(c)
    order = np.lexsort((rng.random(len(c)), c))
    sorted_c = c[order]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(c)) - starts[sorted_c]
    chosen = (rank < k) & (sizes[sorted_c] >= k + 1)
    return np.sort(valid[order[chosen]]).astype(np.int64)
