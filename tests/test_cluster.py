"""cluster_faces on Gaussian blobs with track must-links and same-frame cannot-links."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from proxytasks.cluster import cluster_faces
from proxytasks.errors import ProxytasksError
from proxytasks.index import knn_graph


def blobs(n_clusters: int = 8, per: int = 60, dim: int = 32, spread: float = 0.6,
          seed: int = 0, centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random unit centres; noise of norm about ``spread``."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.standard_normal((n_clusters, dim))
    centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(centers)), per)
    x = centers[truth] + spread * rng.standard_normal((len(truth), centers.shape[1])) / np.sqrt(centers.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def tracks_and_frames(truth: np.ndarray, track_len: int = 5, per_frame: int = 3,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the faces in tracks of one blob; frames of random faces give cannot-links."""
    rng = np.random.default_rng(seed)
    groups = np.full(len(truth), -1)
    code = 0
    for c in np.unique(truth):
        members = rng.permutation(np.flatnonzero(truth == c))
        for start in range(0, len(members) - track_len + 1, 2 * track_len):
            groups[members[start:start + track_len]] = code
            code += 1
    order = rng.permutation(len(truth))
    pairs = [(a, b) for s in range(0, len(order) - per_frame + 1, per_frame)
             for i, a in enumerate(order[s:s + per_frame]) for b in order[s + i + 1:s + per_frame]
             if truth[a] != truth[b]]
    return groups, np.array(pairs, dtype=np.int64)


def bcubed_f1(labels: np.ndarray, truth: np.ndarray) -> float:
    """BCubed F1 from the contingency table."""
    _, li = np.unique(labels, return_inverse=True)
    _, ti = np.unique(truth, return_inverse=True)
    table = np.zeros((li.max() + 1, ti.max() + 1))
    np.add.at(table, (li, ti), 1)
    sq = table ** 2
    p = (sq.sum(1) / table.sum(1)).sum() / len(labels)
    r = (sq.sum(0) / table.sum(0)).sum() / len(labels)
    return 2 * p * r / (p + r)


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    return sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / len(labels)


def test_blobs_without_constraints(caplog):
    x, truth = blobs()
    with caplog.at_level(logging.WARNING, logger="proxytasks.cluster"):
        result = cluster_faces(x, seed=0)
    assert "no cannot-links" in caplog.text
    assert abs(result.n_clusters - 8) <= 1
    assert purity(result.labels, truth) >= 0.95
    assert result.labels.dtype == np.int64
    assert sorted(np.unique(result.labels)) == list(range(result.n_clusters))
    assert result.labels[0] == 0
    assert result.info["threshold_rule"] == "nearest-neighbour-mad"


@pytest.mark.parametrize("spread", [0.6, 0.9])
def test_constraints_are_honoured(spread):
    x, truth = blobs(spread=spread, seed=1)
    groups, cannot = tracks_and_frames(truth, seed=1)
    result = cluster_faces(x, groups=groups, cannot_links=cannot, seed=0)
    labels = result.labels
    for g in np.unique(groups[groups >= 0]):
        assert len(np.unique(labels[groups == g])) == 1
    assert (labels[cannot[:, 0]] != labels[cannot[:, 1]]).all()
    assert bcubed_f1(labels, truth) >= 0.85  # a few untracked faces stay apart: the rule errs on splitting
    info = result.info
    assert info["threshold_rule"] == "cannot-link-violations"
    assert info["components_after_must_links"] == len(x) - sum(
        np.sum(groups == g) - 1 for g in np.unique(groups[groups >= 0]))
    assert info["heldout_violations"] <= info["heldout_allowed"]
    assert info["must_link_conflicts"] == 0


def close_centers(sim: float, n: int = 3, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Random unit centres, the first two at cosine ``sim``."""
    rng = np.random.default_rng(seed + 100)
    c = rng.standard_normal((n, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    u = c[1] - (c[1] @ c[0]) * c[0]
    c[1] = sim * c[0] + np.sqrt(1 - sim ** 2) * u / np.linalg.norm(u)
    return c


def test_cannot_links_keep_close_blobs_apart():
    x, truth = blobs(centers=close_centers(0.6), per=50, spread=0.4, seed=0)
    free = cluster_faces(x, k=50, threshold=0.3)  # k = 50: the graph holds edges across blobs
    assert free.labels[0] == free.labels[50]  # without cannot-links blobs 0 and 1 merge
    rng = np.random.default_rng(0)
    cannot = np.concatenate([np.stack([rng.choice(np.flatnonzero(truth == a), 4, replace=False),
                                       rng.choice(np.flatnonzero(truth == b), 4, replace=False)], 1)
                             for a, b in [(0, 1), (0, 2), (1, 2)]])
    given = cluster_faces(x, cannot_links=cannot, k=50, threshold=0.3)
    assert (given.labels[cannot[:, 0]] != given.labels[cannot[:, 1]]).all()
    assert given.labels[0] != given.labels[50]
    auto = cluster_faces(x, cannot_links=cannot, k=50, seed=0)
    assert (auto.labels[cannot[:, 0]] != auto.labels[cannot[:, 1]]).all()
    assert bcubed_f1(auto.labels, truth) >= 0.9


def test_threshold_from_held_out_links_alone():
    """All links held out (none enforced while calibrating): the threshold alone separates."""
    x, truth = blobs(centers=close_centers(0.5, seed=1), per=50, spread=0.4, seed=1)
    cannot = np.stack([np.arange(0, 20), np.arange(50, 70)], axis=1)  # blob 0 vs blob 1 only
    result = cluster_faces(x, cannot_links=cannot, k=50, holdout=1.0, max_violation=0.0, seed=0)
    assert result.info["heldout_links"] == 20 and result.info["heldout_violations"] == 0
    plain = cluster_faces(x, k=50, threshold=result.threshold)  # same threshold, no links
    assert plain.n_clusters == 3 and bcubed_f1(plain.labels, truth) == 1.0
    looser = cluster_faces(x, k=50, threshold=result.threshold - 0.05)
    assert looser.labels[0] == looser.labels[50]  # a bit lower and blobs 0 and 1 merge


def test_threshold_rule_ignores_monotone_rescaling():
    """Training that pushes pairs apart keeps their order: the same clusters come out."""
    x, truth = blobs(centers=close_centers(0.5, n=4, seed=2), per=50, spread=0.4, seed=2)
    groups, _ = tracks_and_frames(truth, seed=2)
    cannot = np.stack([np.arange(0, 50, 2), np.arange(50, 100, 2)], axis=1)
    sims, idx = knn_graph(x, 50)
    stretch = lambda s: np.sign(s) * np.abs(s) ** 3 - 0.5  # noqa: E731 - increasing on [-1, 1]
    base = cluster_faces(x, groups, cannot, knn=(sims, idx), holdout=1.0, seed=0)
    pushed = cluster_faces(x, groups, cannot, knn=(stretch(sims), idx), holdout=1.0,
                           seed=0)
    assert base.threshold > sims.min() + 0.1  # the held-out links stopped the sweep
    np.testing.assert_array_equal(base.labels, pushed.labels)
    assert (sims >= base.threshold).sum() == (stretch(sims) >= pushed.threshold).sum()
    assert base.info["heldout_violations"] == pushed.info["heldout_violations"]
    assert bcubed_f1(base.labels, truth) >= 0.9
    median_rule = float(np.median(np.sum(x[cannot[:, 0]] * x[cannot[:, 1]], axis=1)))
    merged = cluster_faces(x, groups, knn=(sims, idx), threshold=median_rule)
    assert merged.labels[0] == merged.labels[50]  # the median of cannot-links merges blobs 0, 1
    assert base.labels[0] != base.labels[50]


def test_deterministic_with_seed():
    x, truth = blobs(spread=1.0, seed=4)
    groups, cannot = tracks_and_frames(truth, per_frame=2, seed=4)
    cannot = cannot[:80]
    runs = [cluster_faces(x, groups, cannot, seed=7) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].labels, runs[1].labels)
    assert runs[0].threshold == runs[1].threshold


def test_must_link_wins_over_conflicting_cannot_link(caplog):
    x, truth = blobs(n_clusters=3, per=20, seed=6)
    groups = np.full(len(x), -1)
    groups[:5] = 0
    cannot = np.array([[0, 3], [0, 25], [1, 45]])
    with caplog.at_level(logging.WARNING, logger="proxytasks.cluster"):
        result = cluster_faces(x, groups, cannot, seed=0)
    assert "must-link wins" in caplog.text
    assert result.info["must_link_conflicts"] == 1
    assert len(np.unique(result.labels[:5])) == 1
    assert result.labels[0] != result.labels[25] and result.labels[1] != result.labels[45]


def test_given_threshold_and_bad_input():
    x, _ = blobs(n_clusters=2, per=10, seed=0)
    groups = np.repeat(np.arange(5), 4)
    result = cluster_faces(x, groups, threshold=1.5)
    assert result.n_clusters == 5 and result.info["merges"] == 0
    with pytest.raises(ProxytasksError, match="cannot_links"):
        cluster_faces(x, cannot_links=np.array([[0, 20]]))
    with pytest.raises(ProxytasksError, match="cannot_links"):
        cluster_faces(x, cannot_links=np.array([[3, 3]]))
    with pytest.raises(ProxytasksError, match="groups"):
        cluster_faces(x, groups=np.zeros(5, int))
    with pytest.raises(ProxytasksError, match="holdout"):
        cluster_faces(x, cannot_links=np.array([[0, 19]]), holdout=0.0)


def test_fifty_thousand_faces_fast():
    x, truth = blobs(n_clusters=500, per=100, dim=128, spread=0.8, seed=0)
    groups, cannot = tracks_and_frames(truth, seed=0)
    start = time.perf_counter()
    result = cluster_faces(x, groups, cannot, seed=0)
    assert time.perf_counter() - start < 60
    assert bcubed_f1(result.labels, truth) >= 0.95
