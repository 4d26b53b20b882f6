"""Metrics of the naming benchmark: hand-computed values, scikit-learn cross-checks, scale."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from proxytasks.metrics import (_sample_pairs, clustering_metrics, few_shot_draw, macro_f1,
                                naming_accuracy, roc_auc, tar_at_far, verification_metrics)


# ---------------------------------------------------------------- naming

def test_naming_accuracy_counts_unknown_as_wrong():
    # right, None (wrong), right, "unknown" (wrong) -> 2 / 4
    assert naming_accuracy(["a", "b", "c", "a"], ["a", None, "c", "unknown"]) == 0.5
    assert naming_accuracy([1, 2, 3], [1, 2, 4]) == pytest.approx(2 / 3)
    assert naming_accuracy([], []) is None
    with pytest.raises(ValueError):
        naming_accuracy(["a"], ["a", "b"])


def test_macro_f1_by_hand():
    true = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", None, "a"]
    # a: TP 1 (item 0), FP 1 (item 4 is c), FN 1 (item 1)   -> 2/(2+1+1) = 0.5
    # b: TP 1 (item 2), FP 1 (item 1 is a), FN 1 (item 3 unknown) -> 0.5
    # c: TP 0, FP 0, FN 1 -> 0
    assert macro_f1(true, pred) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    # a predicted name that is no true class only adds misses
    assert macro_f1(["a", "b"], ["a", "zzz"]) == pytest.approx((1.0 + 0.0) / 2)
    assert macro_f1([], []) is None


def test_macro_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    true = rng.integers(0, 7, 500).astype(str)
    pred = rng.integers(0, 9, 500).astype(str)  # classes 7, 8 never true
    pred[rng.random(500) < 0.1] = "unknown"
    expected = metrics.f1_score(true, pred, labels=np.unique(true), average="macro")
    assert macro_f1(true, pred) == pytest.approx(expected)


# ---------------------------------------------------------------- clustering

def test_clustering_metrics_by_hand():
    true = ["a", "a", "a", "b", "b", "c"]
    pred = [1, 1, 2, 2, 2, 3]
    # contingency: a -> {1: 2, 2: 1}, b -> {2: 2}, c -> {3: 1}; N = 6
    m = clustering_metrics(true, pred)
    assert m["clusters"] == 3
    assert m["wcp"] == pytest.approx((2 + 2 + 1) / 6)
    # BCubed precision per item n_ij / b_j: 1, 1, 1/3, 2/3, 2/3, 1 -> mean 7/9
    # BCubed recall per item n_ij / a_i: 2/3, 2/3, 1/3, 1, 1, 1  -> mean 7/9
    assert m["bcubed_f1"] == pytest.approx(7 / 9)
    # class sizes (3, 2, 1) and cluster sizes (2, 3, 1): the same entropy H
    h = -(0.5 * math.log(0.5) + (1 / 3) * math.log(1 / 3) + (1 / 6) * math.log(1 / 6))
    mi = (2 / 6) * math.log(6 * 2 / (3 * 2)) + (1 / 6) * math.log(6 * 1 / (3 * 3)) \
        + (2 / 6) * math.log(6 * 2 / (2 * 3)) + (1 / 6) * math.log(6 * 1 / (1 * 1))
    assert m["nmi"] == pytest.approx(mi / ((h + h) / 2))


def test_bcubed_textbook_cases():
    # Amigo et al. (2009): one cluster for everything has recall 1 and precision
    # sum over items of its class share; all singletons have precision 1.
    true = ["A", "A", "B", "B"]
    merged = clustering_metrics(true, [0, 0, 0, 0])
    assert merged["bcubed_f1"] == pytest.approx(2 * 0.5 * 1 / (0.5 + 1))  # P 2/4, R 1
    assert merged["wcp"] == pytest.approx(0.5) and merged["nmi"] == 0.0
    split = clustering_metrics(true, [0, 1, 2, 3])
    assert split["bcubed_f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 1, R 2/4
    assert split["wcp"] == 1.0 and split["clusters"] == 4
    perfect = clustering_metrics(true, ["x", "x", "y", "y"])
    assert perfect == {"wcp": 1.0, "nmi": pytest.approx(1.0), "bcubed_f1": 1.0, "clusters": 2}
    assert clustering_metrics(["A", "A"], [3, 3])["nmi"] == 1.0  # single label both sides


def test_nmi_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    true = rng.integers(0, 12, 2000)
    pred = np.where(rng.random(2000) < 0.7, true, rng.integers(0, 20, 2000))
    expected = metrics.normalized_mutual_info_score(true, pred)
    assert clustering_metrics(true, pred)["nmi"] == pytest.approx(expected, abs=1e-10)


def test_clustering_metrics_million_items_is_fast():
    rng = np.random.default_rng(2)
    n = 1_000_000
    true = rng.integers(0, 1000, n)
    pred = np.where(rng.random(n) < 0.8, true * 3 + rng.integers(0, 3, n), rng.integers(0, 5000, n))
    start = time.perf_counter()
    m = clustering_metrics(true, pred)
    assert time.perf_counter() - start < 10.0
    assert 0.5 < m["wcp"] < 1 and 0 < m["nmi"] < 1 and 0 < m["bcubed_f1"] < 1
    assert m["clusters"] == len(np.unique(pred))


# ---------------------------------------------------------------- verification

def test_roc_auc_and_tar_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.7, 0.1])
    positive = np.array([True, False, True, False, False])
    # 0.9 beats the 3 negatives: 3; 0.7 beats 0.1 (1), ties 0.7 (1/2), loses to 0.8 -> 4.5 / 6
    assert roc_auc(scores, positive) == pytest.approx(0.75)
    # 2000 negatives 0..1999: k = floor(1e-3 * 2000) = 2, so the threshold is the 3rd highest
    # negative, 1997; positives strictly above it: 1998.5 and 3000 out of 4
    neg = np.arange(2000, dtype=float)
    pos = np.array([1997.0, 1998.5, 3000.0, 5.0])
    s = np.concatenate([neg, pos])
    lab = np.r_[np.zeros(2000, bool), np.ones(4, bool)]
    assert tar_at_far(s, lab) == 0.5
    assert roc_auc(s, np.zeros(len(s), bool)) is None and tar_at_far(neg, np.zeros(2000, bool)) is None


def test_roc_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    lab = rng.random(3000) < 0.3
    scores = np.round(rng.normal(size=3000) + lab, 1)  # many ties
    assert roc_auc(scores, lab) == pytest.approx(metrics.roc_auc_score(lab, scores))


def _identical_per_identity(n_id: int, per: int, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_id, d))
    ident = np.repeat(np.arange(n_id), per)
    return centres[ident], ident


def test_verification_perfect_when_identities_share_vectors():
    x, ident = _identical_per_identity(8, 10)
    m = verification_metrics(x, [f"p{i}" for i in ident])
    assert m == {"roc_auc": 1.0, "tar_at_far_1e-3": 1.0}
    # sampled pairs: 600 faces = 179,700 pairs > 5,000
    x, ident = _identical_per_identity(20, 30)
    m = verification_metrics(x, ident, max_pairs=5000, seed=1)
    assert m == {"roc_auc": 1.0, "tar_at_far_1e-3": 1.0}


def test_verification_none_without_positive_pairs():
    x = np.random.default_rng(0).normal(size=(5, 4))
    assert verification_metrics(x, [0, 1, 2, 3, 4]) == {"roc_auc": None, "tar_at_far_1e-3": None}
    assert verification_metrics(x, [0] * 5) == {"roc_auc": None, "tar_at_far_1e-3": None}


def test_sample_pairs_keeps_positives_and_is_seeded():
    codes = np.repeat(np.arange(20), 10)  # 20 * 45 = 900 positive pairs
    i, j = _sample_pairs(codes, 4000, np.random.default_rng(0))
    assert len(i) == 4000 and (i != j).all()
    same = codes[i] == codes[j]
    assert same.sum() == 900
    assert len({(min(a, b), max(a, b)) for a, b in zip(i[same], j[same])}) == 900
    i2, j2 = _sample_pairs(codes, 4000, np.random.default_rng(0))
    assert (i == i2).all() and (j == j2).all()
    # more positives than half the budget: half the budget of positives
    i, j = _sample_pairs(codes, 1000, np.random.default_rng(0))
    assert (codes[i] == codes[j]).sum() == 500 and (i != j).all()


# ---------------------------------------------------------------- few-shot draw

def test_few_shot_draw():
    ident = np.array(["a"] * 6 + ["b"] * 2 + ["c"] * 3 + [None])
    draw = few_shot_draw(ident, 2, np.random.default_rng(0))
    # b has 2 faces < k + 1 = 3: left out; a and c give 2 each; None never drawn
    assert len(draw) == 4
    assert sorted(ident[draw].tolist()) == ["a", "a", "c", "c"]
    assert (few_shot_draw(ident, 2, np.random.default_rng(0)) == draw).all()
    draws = {tuple(few_shot_draw(ident, 2, np.random.default_rng(s))) for s in range(10)}
    assert len(draws) > 1
    assert len(few_shot_draw(ident, 6, np.random.default_rng(0))) == 0
    assert few_shot_draw(ident, 6, 0).dtype == np.int64


def test_euclidean_verification_ranks_by_distance_not_angle():
    # b is a's direction at another length: cosine calls them identical, Euclidean far apart;
    # c is close to a in distance but at an angle.
    a, b, c = [1.0, 0.0], [3.0, 0.0], [1.0, 0.5]
    x = np.array([a, b, c], dtype=np.float32)
    ids = ["r", "q", "r"]  # the only same-identity pair: (a, c)
    # distances: (a,c) 0.5 < (a,b) 2 < (b,c) 2.06: the positive pair ranks first
    assert verification_metrics(x, ids, metric="euclidean")["roc_auc"] == 1.0
    # cosine: (a,b) 1.0 beats (a,c) 0.894, which ties with (b,c): AUC (0 + 0.5) / 2
    assert verification_metrics(x, ids)["roc_auc"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown metric"):
        verification_metrics(x, ids, metric="manhattan")
