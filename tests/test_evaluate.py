"""proxytasks.evaluate: the rule audit, tracking quality (purity, fragmentation against true
appearances) and the cluster report, each on hand-made manifests whose answers are worked out
by hand in the comments."""
from __future__ import annotations

import numpy as np
import pytest

from proxytasks.evaluate import audit_pairs, cluster_report, format_audit, track_quality, true_appearances
from proxytasks.manifest import Face, Manifest
from proxytasks.metrics import clustering_metrics
from proxytasks.pairs import PairSet, RuleInfo


def manifest(spec) -> Manifest:
    """Faces from (media, frame, track, identity[, shot]) tuples, ids f0, f1, ..."""
    faces = []
    for k, row in enumerate(spec):
        media, frame, track, identity, *shot = row
        faces.append(Face(id=f"f{k}", media=media, frame=frame, track=track, identity=identity,
                          shot=shot[0] if shot else None, crop="x.png"))
    return Manifest(faces)


TRACKED = [  # (media, frame, track, identity)
    ("v", 0, "A", "ann"), ("v", 1, "A", "ann"), ("v", 2, "A", "ann"),
    ("v", 6, "A", "ann"),  # 4 frames after the last ann: a new appearance for max_gap=2, the same track
    ("v", 0, "B", "bob"), ("v", 1, "B", "bob"),
    ("v", 2, "C", "bob"),  # bob's one appearance is cut into B, C ...
    ("v", 3, "A", "bob"),  # ... and A: the tracker jumped from ann to bob
    ("w", 0, "A", "ann"),  # w's track A is another track than v's
    ("v", 4, None, "cat"),  # untracked
    ("p.jpg", None, None, "ann"),  # a photo: no appearance
    ("v", 5, "D", None),  # tracked, no identity
]


def test_true_appearances_cut_at_gaps_shots_and_media():
    app = true_appearances(manifest(TRACKED))
    assert app[0] == app[1] == app[2] != app[3]  # frame 6 is 4 after frame 2: more than max_gap + 1
    assert app[4] == app[5] == app[6] == app[7]  # bob, frames 0-3, whatever the tracks say
    assert len({app[0], app[3], app[4], app[8], app[9]}) == 5
    assert app[10] is None and app[11] is None  # a photo; a face with no identity
    wider = true_appearances(manifest(TRACKED), max_gap=3)
    assert wider[0] == wider[3]  # a gap of 4 frames is allowed now
    shots = manifest([("v", 0, None, "ann", 0), ("v", 1, None, "ann", 1), ("v", 2, None, "ann", 1)])
    cut = true_appearances(shots)
    assert cut[0] != cut[1] == cut[2]  # a shot cut ends an appearance even without a gap


def test_track_quality_counts_purity_and_fragmentation():
    q = track_quality(manifest(TRACKED))
    # tracks v/A (0,1,2,3,7), v/B (4,5), v/C (6), w/A (8), v/D (11)
    assert q["tracks"] == 5 and q["tracked_faces"] == 10
    assert q["faces_in_multi_face_tracks"] == 7 and q["mean_track_length"] == pytest.approx(2.0)
    # majority identity per track: v/A 4 of 5, v/B 2/2, v/C 1/1, w/A 1/1 (v/D has none)
    assert q["purity"] == pytest.approx(8 / 9)
    # appearances: ann v 0-2 {A}, ann v 6 {A}, bob v 0-3 {B, C, A}, ann w {A}, cat {untracked}
    assert q["appearances"] == 5 and q["fragmentation"] == pytest.approx(7 / 5)
    assert track_quality(manifest(TRACKED), max_gap=3)["fragmentation"] == pytest.approx(6 / 4)


def test_track_quality_with_given_appearances_and_without_identity():
    m = manifest(TRACKED)
    per_track = [f"{f.media}/{f.track}" if f.track else None for f in m]  # one appearance per track
    given = track_quality(m, per_track)
    assert given["fragmentation"] == 1.0 and given["appearances"] == 5
    blind = manifest([row[:3] + (None,) for row in TRACKED])
    q = track_quality(blind)
    assert q["purity"] is None and q["fragmentation"] is None and "appearances" not in q
    assert q["tracks"] == 5  # the counts need no ground truth
    empty = track_quality(manifest([("p.jpg", None, None, "ann")]))
    assert empty["tracks"] == 0 and empty["mean_track_length"] == 0.0 and empty["purity"] is None


def test_audit_counts_only_pairs_with_both_identities_known():
    m = manifest([("v", 0, "A", "ann"), ("v", 0, "B", "bob"), ("v", 0, "C", None),
                  ("v", 1, "A", "ann"), ("v", 1, "B", "ann")])
    rules = [RuleInfo("same-frame", "different", 1.0), RuleInfo("same-track", "same", 1.0),
             RuleInfo("same-photo", "different", 0.5)]
    # same-frame: (0,1) right, (0,2) (1,2) unknown, (3,4) wrong; same-track: (0,3) right
    pairs = PairSet(np.array([0, 0, 1, 3, 0]), np.array([1, 2, 2, 4, 3]), np.array([0, 0, 0, 0, 1]), rules,
                    n_faces=5, conflicts=2)
    audit = audit_pairs(m, pairs)
    frame = audit["rules"]["same-frame"]
    assert frame == {"pairs": 4, "label": "different", "precision": 0.5, "faces_covered": 5,
                     "identities_covered": 2}
    assert audit["rules"]["same-track"]["precision"] == 1.0
    assert audit["rules"]["same-photo"] == {"pairs": 0, "label": "different", "precision": None,
                                            "faces_covered": 0, "identities_covered": 0}
    assert audit["conflicts"] == 2
    human = audit_pairs(m, pairs.with_human(same=np.array([[1, 4]]), different=np.array([[0, 4]])))
    assert human["rules"]["human-same"]["precision"] == 0.0  # bob and ann: the person was wrong
    assert human["rules"]["human-different"]["precision"] == 0.0  # ann and ann


def test_format_audit_shows_every_rule_and_unknowns_as_dashes():
    audit = {"rules": {"same-frame": {"pairs": 6, "label": "different", "precision": 5 / 6, "faces_covered": 9,
                                      "identities_covered": 5},
                       "same-photo": {"pairs": 0, "label": "different", "precision": None, "faces_covered": 0,
                                      "identities_covered": None}},
             "conflicts": 3}
    lines = format_audit(audit, n_faces=12).splitlines()
    assert lines[0].split() == ["rule", "label", "pairs", "precision", "faces", "identities"]
    assert lines[2].split() == ["same-frame", "different", "6", "0.8333", "9", "(75%)", "5"]
    assert lines[3].split() == ["same-photo", "different", "0", "-", "0", "(0%)", "-"]
    assert lines[-1] == "conflicts resolved: 3"
    assert "(0%)" in format_audit(audit, n_faces=0)  # no division by zero on an empty manifest


def test_cluster_report_sizes_and_metrics_over_faces_with_identity():
    m = manifest([("v", k, None, name) for k, name in enumerate(["a", "a", "b", "b", None, "c"])])
    labels = np.array([0, 0, 1, 2, 2, -1])  # -1: left out of every cluster
    report = cluster_report(m, labels)
    assert (report["clusters"], report["largest"], report["singletons"]) == (3, 2, 1)
    # scored faces 0, 1, 2, 3, 5: b is split in two, so BCubed recall (1 + 1 + .5 + .5 + 1) / 5
    assert report["bcubed_f1"] == pytest.approx(2 * 0.8 / 1.8) and report["wcp"] == 1.0
    expected = clustering_metrics(["a", "a", "b", "b", "c"], [0, 0, 1, 2, -1])
    assert report["nmi"] == pytest.approx(expected["nmi"])
    blind = cluster_report(manifest([("v", 0, None, None), ("v", 1, None, None)]), np.array([0, 0]))
    assert blind == {"clusters": 1, "largest": 2, "singletons": 0}
    nothing = cluster_report(manifest([("v", 0, None, "a")]), np.array([-1]))
    assert nothing["clusters"] == 0 and nothing["largest"] == 0
