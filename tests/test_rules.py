"""proxytasks.rules: parsing rule lists, what each built-in rule calls a pair, and what a RuleSet
refuses. The rules against brute force on random manifests, conflicts and the pair engine are in
test_rules_pairs.py; marked faces giving no pairs in test_quality.py."""
from __future__ import annotations

import numpy as np
import pytest

from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.pairs import ids_digest
from proxytasks.rules import RULES, FaceColumns, Rule, RuleSet, parse_rules


def faces(spec) -> Manifest:
    """(media, frame, track) tuples, ids f0, f1, ..."""
    return Manifest([Face(id=f"f{k}", media=m, frame=fr, track=t, crop="x.png") for k, (m, fr, t) in enumerate(spec)])


def pairs_of(ps, rule: str) -> set:
    sub = ps.select(rule)
    return set(zip(sub.i.tolist(), sub.j.tolist()))


def test_parse_rules_names_weights_and_lists():
    rules = parse_rules(" same-frame , same-photo:0.25,,same-track:2")
    assert [(r.name, r.label, r.weight) for r in rules] == [
        ("same-frame", "different", 1.0), ("same-photo", "different", 0.25), ("same-track", "same", 2.0)]
    assert [r.name for r in parse_rules(["track-cooccurrence", "same-photo"])] == ["track-cooccurrence",
                                                                                    "same-photo"]
    assert parse_rules("same-photo")[0].weight == 0.5  # its default: mirrors and screens break it
    with pytest.raises(ProxytasksError, match="no rules given; known rules: .*same-frame"):
        parse_rules(" , ")
    with pytest.raises(ProxytasksError, match="'same-track:x'.*not a number"):
        parse_rules("same-frame,same-track:x")
    assert set(RULES.names()) >= {"same-frame", "same-track", "track-cooccurrence", "same-photo"}


def test_a_ruleset_refuses_a_rule_twice_and_mixes_objects_and_names():
    with pytest.raises(ProxytasksError, match="listed twice"):
        RuleSet("same-frame,same-frame:0.5")
    with pytest.raises(ProxytasksError, match="listed twice"):
        RuleSet([parse_rules("same-track")[0], "same-track"])
    mixed = RuleSet([parse_rules("same-photo:0.1")[0], "same-frame,same-track"])
    assert [(r.name, r.weight) for r in mixed.rules] == [("same-photo", 0.1), ("same-frame", 1.0),
                                                          ("same-track", 1.0)]
    assert [r.name for r in RuleSet().rules] == ["same-frame", "same-track", "track-cooccurrence", "same-photo"]


def test_each_rule_on_photos_and_frames():
    m = faces([
        ("v", 0, "A"), ("v", 0, "B"),  # 0, 1: one frame, two tracks
        ("v", 1, "A"), ("v", 1, None),  # 2, 3: A again, and an untracked face beside it
        ("v", 9, "C"),  # 4: C never shares a frame with A or B
        ("w", 0, "A"),  # 5: another video; its track A is not v's A
        ("p.jpg", None, None), ("p.jpg", None, None), ("q.jpg", None, None),  # 6, 7: one photo; 8 alone
    ])
    ps = RuleSet().apply(m)
    assert pairs_of(ps, "same-frame") == {(0, 1), (2, 3)}
    assert pairs_of(ps, "same-track") == {(0, 2)}  # not (0, 5) nor (2, 5): another video
    # every face of A with every face of B (they share frame 0); the untracked face 3 is in no track
    assert pairs_of(ps, "track-cooccurrence") == {(0, 1), (1, 2)}
    assert pairs_of(ps, "same-photo") == {(6, 7)}
    assert ps.rules[3].weight == 0.5 and ps.digest == ids_digest([f.id for f in m])


def test_track_codes_beyond_int32_give_the_same_pairs():
    rng = np.random.default_rng(0)
    n = 60
    media = np.zeros(n, np.int64)
    frame = rng.integers(0, 12, n)
    track = rng.integers(-1, 8, n)
    small = FaceColumns(media, frame, track)
    huge = FaceColumns(media, frame, np.where(track >= 0, track * 2**40 + 2**33, -1))  # same order
    a = RuleSet("same-frame,same-track,track-cooccurrence").apply(small)
    b = RuleSet("same-frame,same-track,track-cooccurrence").apply(huge)
    assert len(a.select("track-cooccurrence")) > 0
    for name in ("same-frame", "same-track", "track-cooccurrence"):
        assert pairs_of(a, name) == pairs_of(b, name)
    assert a.digest is None and RuleSet("same-frame").apply(small, face_ids=list("x" * n)).digest is not None


def test_a_rule_without_pairs_or_rows_says_so():
    class Nothing(Rule):
        name, label = "nothing", "same"

    with pytest.raises(NotImplementedError):
        Nothing().pairs(FaceColumns(np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64)))
    assert not Nothing.has_contains() and RULES.get("same-frame").has_contains()
