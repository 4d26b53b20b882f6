"""cluster_faces on Gaussian blobs and scenes, with track must-links and same-frame cannot-links."""
from __future__ import annotations

import logging

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
    assert info["threshold_rule"] == "cannot-link-violations" and info["linkage"] == "average"
    assert info["components_after_must_links"] == len(x) - sum(
        np.sum(groups == g) - 1 for g in np.unique(groups[groups >= 0]))
    assert info["heldout_links"] == info["cannot_linked_component_pairs"]  # all watched by default
    assert info["window"] >= 10 and info["violating_merges"] <= info["calibration_merges"]
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


@pytest.mark.parametrize("linkage", ["single", "average"])
def test_threshold_from_held_out_links_alone(linkage):
    """All links held out (none enforced while calibrating): the threshold alone separates."""
    x, truth = blobs(centers=close_centers(0.5, seed=1), per=50, spread=0.4, seed=1)
    cannot = np.stack([np.arange(0, 20), np.arange(50, 70)], axis=1)  # blob 0 vs blob 1 only
    result = cluster_faces(x, cannot_links=cannot, k=50, holdout=1.0, max_violation=0.0, seed=0, linkage=linkage)
    assert result.info["heldout_links"] == 20 and result.info["heldout_violations"] == 0
    plain = cluster_faces(x, k=50, threshold=result.threshold, linkage=linkage)  # same threshold, no links
    assert plain.n_clusters == 3 and bcubed_f1(plain.labels, truth) == 1.0
    # a bit below the similarity that joins blobs 0 and 1 and they merge
    joins = 0.05 if linkage == "single" else result.threshold - float((x[:50] @ x[50:100].T).mean()) + 0.01
    looser = cluster_faces(x, k=50, threshold=result.threshold - joins, linkage=linkage)
    assert looser.labels[0] == looser.labels[50]


def test_threshold_rule_ignores_monotone_rescaling():
    """Single linkage: training that pushes pairs apart keeps their order, so the same
    clusters come out; average linkage reads the vectors, not the graph's similarities."""
    x, truth = blobs(centers=close_centers(0.5, n=4, seed=2), per=50, spread=0.4, seed=2)
    groups, _ = tracks_and_frames(truth, seed=2)
    cannot = np.stack([np.arange(0, 50, 2), np.arange(50, 100, 2)], axis=1)
    sims, idx = knn_graph(x, 50)
    stretch = lambda s: np.sign(s) * np.abs(s) ** 3 - 0.5  # noqa: E731 - increasing on [-1, 1]
    base = cluster_faces(x, groups, cannot, knn=(sims, idx), holdout=1.0, seed=0, linkage="single")
    pushed = cluster_faces(x, groups, cannot, knn=(stretch(sims), idx), holdout=1.0,
                           seed=0, linkage="single")
    assert base.threshold > sims.min() + 0.1  # the held-out links stopped the sweep
    np.testing.assert_array_equal(base.labels, pushed.labels)
    assert (sims >= base.threshold).sum() == (stretch(sims) >= pushed.threshold).sum()
    assert base.info["heldout_violations"] == pushed.info["heldout_violations"]
    assert bcubed_f1(base.labels, truth) >= 0.9
    median_rule = float(np.median(np.sum(x[cannot[:, 0]] * x[cannot[:, 1]], axis=1)))
    merged = cluster_faces(x, groups, knn=(sims, idx), threshold=median_rule, linkage="single")
    assert merged.labels[0] == merged.labels[50]  # the median of cannot-links merges blobs 0, 1
    assert base.labels[0] != base.labels[50]
    avg = [cluster_faces(x, groups, cannot, knn=(s, idx), seed=0) for s in (sims, stretch(sims))]
    np.testing.assert_array_equal(avg[0].labels, avg[1].labels)
    assert avg[0].threshold == avg[1].threshold and avg[0].labels[0] != avg[0].labels[50]
    assert bcubed_f1(avg[0].labels, truth) >= 0.9


def scenes(n_people: int = 8, n_shots: int = 60, per_shot: int = 3, track_len: int = 4, dim: int = 32,
           light: float = 0.8, track_noise: float = 0.5, face_noise: float = 0.2,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TV-like faces: shots of ``per_shot`` people, one track each; a shot's lighting (norm
    ``light``) is shared by everyone in it, so people of one shot look alike. Returns
    (vectors, truth, track per face, one cannot-link per pair of tracks of one shot)."""
    rng = np.random.default_rng(seed)
    noise = lambda scale: scale * rng.standard_normal(dim) / np.sqrt(dim)  # noqa: E731
    centres = rng.standard_normal((n_people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x, truth, cannot = [], [], []
    for _ in range(n_shots):
        lighting, firsts = noise(light), []
        for p in rng.choice(n_people, per_shot, replace=False):
            base = centres[p] + lighting + noise(track_noise)
            firsts.append(len(x))
            for _ in range(track_len):
                v = base + noise(face_noise)
                x.append(v / np.linalg.norm(v))
                truth.append(p)
        cannot += [(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:]]
    return np.array(x, np.float32), np.array(truth), np.arange(len(x)) // track_len, np.array(cannot, np.int64)


@pytest.mark.parametrize("seed", [0, 1])
def test_track_average_linkage_finds_the_people(seed):
    """Known answer: 8 people in 60 shots whose lighting makes co-occurring people look
    alike. Single linkage chains through look-alike tracks, so its threshold stops early
    and the people fall apart; average linkage over tracks finds the 8 people."""
    x, truth, groups, cannot = scenes(seed=seed)
    single = cluster_faces(x, groups, cannot, seed=0, linkage="single")
    average = cluster_faces(x, groups, cannot, seed=0)
    assert average.info["linkage"] == "average"
    assert average.n_clusters == 8 and bcubed_f1(average.labels, truth) == 1.0
    assert single.n_clusters > 1.5 * 8 and bcubed_f1(single.labels, truth) < 0.97
    assert (average.labels[cannot[:, 0]] != average.labels[cannot[:, 1]]).all()


def test_threshold_from_the_constraints_only():
    """Two look-alike people (blobs 0 and 1) are told apart only where cannot-links say so:
    the threshold follows the links given, and nothing else (no identity is read)."""
    x, truth = blobs(centers=close_centers(0.6, n=4, seed=3), per=40, spread=0.4, seed=3)
    groups = np.arange(len(x)) // 4
    pairs = lambda a, b: np.stack([np.arange(a, a + 40, 4), np.arange(b, b + 40, 4)], 1)  # noqa: E731
    apart = cluster_faces(x, groups, np.concatenate([pairs(0, 40), pairs(80, 120)]), seed=0)
    assert apart.labels[0] != apart.labels[40] and apart.n_clusters == 4
    elsewhere = cluster_faces(x, groups, pairs(80, 120), seed=0)  # nothing about blobs 0 and 1
    assert elsewhere.labels[0] == elsewhere.labels[40]
    assert elsewhere.threshold < apart.threshold
    with pytest.raises(ProxytasksError, match="linkage"):
        cluster_faces(x, groups, linkage="complete")
    with pytest.raises(ProxytasksError, match="vectors"):
        cluster_faces(None, knn=knn_graph(x, 5))
    with pytest.raises(ProxytasksError, match="max_violating_share"):
        cluster_faces(x, groups, pairs(0, 40), max_violating_share=1.5)


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


@pytest.mark.slow
def test_fifty_thousand_faces():
    """50k faces cluster right (their speed is measured against HDBSCAN in bench/cluster_peer.py,
    not asserted here: a timed unit test fails on a loaded machine)."""
    x, truth = blobs(n_clusters=500, per=100, dim=128, spread=0.8, seed=0)
    groups, cannot = tracks_and_frames(truth, seed=0)
    result = cluster_faces(x, groups, cannot, seed=0)
    assert bcubed_f1(result.labels, truth) >= 0.95
