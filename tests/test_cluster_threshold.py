"""The clustering threshold rule follows the vectors (issue 16): the cannot-link violation sweep
for vectors never trained on the links, the must/cannot midpoint for a head trained on them."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.cluster import cluster_faces
from proxytasks.embed import Embeddings
from proxytasks.errors import ProxytasksError
from proxytasks.linkage import link_statistics
from proxytasks.manifest import Face, Manifest
from proxytasks.pipeline import rule_pairs

from .test_cluster import bcubed_f1

PEOPLE = 12


def episode(push: float = 0.8, light: float = 0.0, people: int = PEOPLE, shots: int = 24, per_shot: int = 2,
            track_len: int = 6, dim: int = 64, alike: float = 0.7, noise: float = 0.3, seed: int = 0):
    """Face vectors of an episode: ``shots`` shots of ``per_shot`` people each (so most pairs of
    people never meet), one track of ``track_len`` near-duplicate faces per person and shot
    (cosine about 0.92 inside a track), one person's tracks alike (about 0.4), two people
    unrelated (about 0). ``push``: the tracks of one shot pushed apart along a direction of
    their own, as a head trained on their cannot-links leaves them (about -0.35); ``light``:
    a shared shot offset instead, as untrained features see one scene's lighting (co-occurring
    people more alike than others).

    Returns (vectors, identity, track of each face, same-frame cannot-linked face pairs).
    """
    rng = np.random.default_rng(seed)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    centres = unit(rng.standard_normal((people, dim)))
    faces, identity, track, cannot = [], [], [], []
    for s in range(shots):
        who = rng.choice(people, per_shot, replace=False)
        away, lit = unit(rng.standard_normal(dim)), light * unit(rng.standard_normal(dim))
        start = len(faces)
        for k, p in enumerate(who):
            t = np.sqrt(alike) * centres[p] + np.sqrt(1 - alike) * unit(rng.standard_normal(dim))
            t = unit(t + push * (1 if k % 2 == 0 else -1) * away + lit)
            for _ in range(track_len):
                faces.append(unit(t + noise * unit(rng.standard_normal(dim))))
                identity.append(p)
                track.append(s * per_shot + k)
        cannot += [(start + k * track_len + f, start + m * track_len + f) for f in range(track_len)
                   for k in range(per_shot) for m in range(k + 1, per_shot)]
    return np.array(faces, np.float32), np.array(identity), np.array(track), np.array(cannot, np.int64)


def test_trained_head_midpoint_does_not_over_merge():
    """Watched cannot-links pushed far apart: the violation sweep meets none until the threshold
    is near 0 and merges people who never met; the midpoint rule finds the people."""
    x, identity, track, cannot = episode()
    old = cluster_faces(x, track, cannot, threshold_rule="violations")
    new = cluster_faces(x, track, cannot, trained_on_links=True)
    assert old.info["threshold_rule"] == "cannot-link-violations" and old.threshold < 0.1
    assert old.n_clusters <= 0.75 * PEOPLE and bcubed_f1(old.labels, identity) < 0.85
    assert new.info["threshold_rule"] == "must-cannot-midpoint" and new.info["trained_on_links"] is True
    m, c = new.info["must_link_cosine"], new.info["cannot_link_cosine"]
    assert m > 0.85 and c < -0.2 and new.threshold == pytest.approx((m + c) / 2, abs=1e-3)
    assert PEOPLE <= new.n_clusters <= 1.5 * PEOPLE and bcubed_f1(new.labels, identity) > 0.93
    for g in np.unique(track):  # tracks whole, cannot-linked faces apart
        assert len(set(new.labels[track == g].tolist())) == 1
    assert (new.labels[cannot[:, 0]] != new.labels[cannot[:, 1]]).all()
    # explicit rule, single linkage: the same threshold
    assert cluster_faces(x, track, cannot, threshold_rule="midpoint").threshold == pytest.approx(new.threshold)
    single = cluster_faces(x, track, cannot, threshold_rule="midpoint", linkage="single")
    assert single.info["threshold_rule"] == "must-cannot-midpoint" and single.threshold == pytest.approx(new.threshold)


def test_untrained_vectors_keep_the_violation_rule(caplog):
    """Untrained features (co-occurring people share a scene's lighting): auto is the violation
    sweep, which beats the midpoint there; nothing looks trained, so no warning."""
    x, identity, track, cannot = episode(push=0.0, light=0.5)
    with caplog.at_level(logging.WARNING, logger="proxytasks"):
        auto = cluster_faces(x, track, cannot, trained_on_links=False)
        unknown = cluster_faces(x, track, cannot)
    assert "look trained" not in caplog.text
    assert auto.info["threshold_rule"] == "cannot-link-violations" and not auto.info["looks_trained_on_links"]
    assert np.array_equal(auto.labels, unknown.labels) and unknown.info["trained_on_links"] is None
    midpoint = cluster_faces(x, track, cannot, threshold_rule="midpoint")
    assert bcubed_f1(auto.labels, identity) > bcubed_f1(midpoint.labels, identity) + 0.05
    assert bcubed_f1(auto.labels, identity) > 0.85


def test_not_told_counts_as_untrained_with_a_warning(caplog):
    x, _, track, cannot = episode()
    with caplog.at_level(logging.WARNING, logger="proxytasks"):
        unknown = cluster_faces(x, track, cannot)
    assert "look trained" in caplog.text and "trained_on_links=True" in caplog.text
    assert unknown.info["looks_trained_on_links"] and unknown.info["threshold_rule"] == "cannot-link-violations"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="proxytasks"):  # told: no warning
        cluster_faces(x, track, cannot, trained_on_links=False)
    assert "look trained" not in caplog.text


def test_link_statistics():
    """Must-linked pairs stay inside groups, random pairs cross them; medians of cosines."""
    x = np.array([[1, 0], [2, 0], [1, 0.0], [0, 1], [0, 3], [-1, 0]], np.float32)  # norms differ
    parent = np.array([0, 0, 0, 3, 3, 5])
    stats = link_statistics(x, parent, np.array([[0, 3], [1, 4], [2, 5]]))
    assert stats["must_link_cosine"] == pytest.approx(1.0)
    assert stats["cannot_link_cosine"] == pytest.approx(0.0)
    assert -1.0 <= stats["random_pair_cosine"] <= 0.0  # across groups: 0 or -1, never a same-group 1
    none = link_statistics(x, np.arange(6), np.zeros((0, 2), np.int64))
    assert none["must_link_cosine"] is None and none["cannot_link_cosine"] is None


def test_midpoint_needs_tracks_and_vectors(caplog):
    x, _, track, cannot = episode(shots=8)
    with caplog.at_level(logging.WARNING, logger="proxytasks"):
        alone = cluster_faces(x, None, cannot, trained_on_links=True)
    assert "no must-linked pair" in caplog.text and alone.info["threshold_rule"] == "cannot-link-violations"
    with pytest.raises(ProxytasksError, match="unknown threshold rule 'median'"):
        cluster_faces(x, track, cannot, threshold_rule="median")
    with pytest.raises(ProxytasksError, match="midpoint threshold rule needs the vectors"):
        cluster_faces(None, knn=(np.ones((2, 1)), np.array([[1], [0]])), threshold_rule="midpoint", linkage="single")
    given = cluster_faces(x, track, cannot, threshold=0.5, trained_on_links=True)
    assert given.threshold == 0.5 and given.info["threshold_rule"] == "given"


@pytest.mark.parametrize("head, rule, expected", [("linear", "auto", "must-cannot-midpoint"),
                                                  ("identity", "auto", "cannot-link-violations"),
                                                  ("linear", "violations", "cannot-link-violations")])
def test_cluster_command_reads_the_head_from_the_embeddings(tmp_path, head, rule, expected):
    """`proxytasks cluster`: the rule follows EMB's header (a trained head or the identity)."""
    x, identity, track, _ = episode()
    per_shot, track_len = 2, 6
    faces = [Face(id=f"f{i}", media="ep", frame=int(track[i] // per_shot * track_len + i % track_len),
                  crop=f"f{i}.png", track=f"t{track[i]}", identity=f"p{identity[i]}") for i in range(len(x))]
    Manifest(faces).write(tmp_path / "m.jsonl")
    rule_pairs(Manifest(faces)).save(tmp_path / "pairs.npz")
    Embeddings(x, [f.id for f in faces], {"head": head}).save(tmp_path / "emb.npz")
    res = CliRunner().invoke(cli, ["-q", "cluster", str(tmp_path / "emb.npz"), str(tmp_path / "m.jsonl"),
                                   str(tmp_path / "pairs.npz"), "-o", str(tmp_path / "c.csv"),
                                   "--threshold-rule", rule])
    assert res.exit_code == 0, res.output
    assert f"({expected})" in res.output
    clusters = int(res.output.split(" clusters at")[0].split()[-1])
    assert (PEOPLE <= clusters <= 1.5 * PEOPLE) == (expected == "must-cannot-midpoint")
