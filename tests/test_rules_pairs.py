import json

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.errors import ProxytasksError
from proxytasks.evaluate import audit_pairs
from proxytasks.manifest import Face, Manifest
from proxytasks.pairs import PairSet
from proxytasks.rules import RuleSet, parse_rules


def hand_manifest(conflict: bool = False) -> Manifest:
    spec = [  # (media, frame, track, identity)
        ("v", 0, "A", "ann"), ("v", 0, "B", "bob"),
        ("v", 1, "A", "ann"), ("v", 1, "B", "bob"), ("v", 1, None, "cat"),
        ("v", 2, "A", "ann"),
        ("w", 0, "A", "ann"), ("w", 0, "C", "ann"),  # w's A is not v's A; C is a wrong track pair
        ("p.jpg", None, None, "ann"), ("p.jpg", None, None, "bob"), ("p.jpg", None, None, None),
        ("q.jpg", None, None, "bob"),
    ]
    if conflict:
        spec += [("v", 5, "D", "dan"), ("v", 5, "D", "eve")]
    return Manifest([Face(id=f"f{k}", media=m, frame=fr, track=t, identity=i, crop="x.png")
                     for k, (m, fr, t, i) in enumerate(spec)])


def rule_pairs(ps: PairSet, name: str) -> set:
    sub = ps.select(name)
    return set(zip(sub.i.tolist(), sub.j.tolist()))


def test_each_rule_gives_exactly_the_known_pairs():
    ps = RuleSet().apply(hand_manifest())
    assert rule_pairs(ps, "same-frame") == {(0, 1), (2, 3), (2, 4), (3, 4), (6, 7)}
    assert rule_pairs(ps, "same-track") == {(0, 2), (0, 5), (2, 5), (1, 3)}
    assert rule_pairs(ps, "track-cooccurrence") == {(0, 1), (0, 3), (1, 2), (2, 3), (1, 5), (3, 5), (6, 7)}
    assert rule_pairs(ps, "same-photo") == {(8, 9), (8, 10), (9, 10)}
    assert ps.conflicts == 0
    assert ps.counts() == {"same-frame": 5, "same-track": 4, "track-cooccurrence": 7, "same-photo": 3}
    labels = dict(zip([r.name for r in ps.rules], [r.label for r in ps.rules]))
    assert labels == {"same-frame": "different", "same-track": "same",
                      "track-cooccurrence": "different", "same-photo": "different"}
    assert (ps.i < ps.j).all()


def test_rules_never_read_identity():
    m = hand_manifest()
    shuffled = Manifest([Face(id=f.id, media=f.media, frame=f.frame, track=f.track, crop=f.crop,
                              identity="zed") for f in m])
    a, b = RuleSet().apply(m), RuleSet().apply(shuffled)
    assert np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j) and np.array_equal(a.rule, b.rule)


@pytest.mark.parametrize("policy, same_left, diff_left", [("different", False, True), ("drop", False, False)])
def test_conflict_policies(policy, same_left, diff_left):
    ps = RuleSet(policy=policy).apply(hand_manifest(conflict=True))
    assert ps.conflicts == 1
    assert ((12, 13) in rule_pairs(ps, "same-track")) is same_left
    assert ((12, 13) in rule_pairs(ps, "same-frame")) is diff_left
    i, j, label, _ = ps.unique()
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)  # one label per pair


def test_unique_indices_tuple_and_weights():
    ps = RuleSet("same-frame,same-track,track-cooccurrence,same-photo:0.25").apply(hand_manifest())
    i, j, label, weight = ps.unique()
    # same-frame and track-cooccurrence overlap on 3 pairs
    assert len(i) == 5 + 4 + 7 + 3 - 3
    a1, p, a2, n = ps.indices_tuple()
    assert set(zip(a1.tolist(), p.tolist())) == {(0, 2), (0, 5), (2, 5), (1, 3)}
    assert len(a2) == 5 + 7 + 3 - 3
    photo = {(8, 9), (8, 10), (9, 10)}
    got = {(a, b): w for a, b, w in zip(i.tolist(), j.tolist(), weight.tolist())}
    assert all(got[k] == 0.25 for k in photo) and got[(0, 1)] == 1.0


def test_balanced_batches_are_balanced_and_seeded():
    ps = RuleSet().apply(hand_manifest())
    batches = list(ps.sample_batches(8, n_batches=5, seed=3))
    assert all(len(b[0]) == 8 and b[2].sum() == 4 for b in batches)
    again = list(ps.sample_batches(8, n_batches=5, seed=3))
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(batches, again))
    # every "same" pair is drawn before any repeats
    first = set(zip(batches[0][0][batches[0][2] == 1].tolist(), batches[0][1][batches[0][2] == 1].tolist()))
    assert first == {(0, 2), (0, 5), (2, 5), (1, 3)}


def test_save_load_checks_manifest(tmp_path):
    m = hand_manifest()
    ps = RuleSet().apply(m)
    ps.save(tmp_path / "pairs.npz")
    back = PairSet.load(tmp_path / "pairs.npz", face_ids=[f.id for f in m])
    assert np.array_equal(back.i, ps.i) and back.rules == ps.rules and back.counts() == ps.counts()
    assert ps.nbytes / len(ps) <= 16
    with pytest.raises(ProxytasksError, match="another manifest"):
        PairSet.load(tmp_path / "pairs.npz", face_ids=[f.id for f in m][::-1])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ProxytasksError, match="not a proxytasks pairs file"):
        PairSet.load(tmp_path / "junk.npz")


def test_audit_precision_and_coverage():
    m = hand_manifest(conflict=True)
    audit = audit_pairs(m, RuleSet().apply(m))
    r = audit["rules"]
    assert set(audit) == {"rules", "conflicts"} and audit["conflicts"] == 1
    assert set(r["same-frame"]) == {"pairs", "label", "precision", "faces_covered", "identities_covered"}
    # same-frame: (0,1) (2,3) (2,4) (3,4) (6,7: ann/ann, wrong) (12,13) -> 5 of 6 right
    assert r["same-frame"]["pairs"] == 6 and r["same-frame"]["precision"] == pytest.approx(5 / 6)
    assert r["same-track"]["precision"] == 1.0 and r["same-track"]["pairs"] == 4
    # same-photo: (8,9) right, (8,10) and (9,10) unknown identity -> 1 of 1
    assert r["same-photo"]["precision"] == 1.0 and r["same-photo"]["faces_covered"] == 3
    assert r["same-frame"]["faces_covered"] == 9 and r["same-frame"]["identities_covered"] == 5


def test_audit_without_identities_gives_nulls():
    m = Manifest([Face(id=f.id, media=f.media, frame=f.frame, track=f.track, crop="x") for f in hand_manifest()])
    r = audit_pairs(m, RuleSet().apply(m))["rules"]["same-frame"]
    assert r["precision"] is None and r["identities_covered"] is None


def test_bad_rule_names_and_weights():
    with pytest.raises(ProxytasksError, match="Did you mean same-frame"):
        parse_rules("same-frames")
    with pytest.raises(ProxytasksError, match="not a number"):
        parse_rules("same-frame:heavy")
    with pytest.raises(ProxytasksError, match="policy"):
        RuleSet(policy="same")


def test_pairs_and_audit_cli(tmp_path, frame_image):
    m = hand_manifest(conflict=True)
    m = Manifest([Face(**{**f.to_dict(), "crop": "frame.png"}) for f in m], tmp_path)
    m.write(tmp_path / "m.jsonl")
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "pairs", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "p.npz")])
    assert res.exit_code == 0, res.output
    assert "1 conflicts" in res.output
    res = runner.invoke(cli, ["-q", "audit", str(tmp_path / "m.jsonl"), str(tmp_path / "p.npz"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["rules"]["same-track"] == {"pairs": 4, "label": "same", "precision": 1.0,
                                           "faces_covered": 5, "identities_covered": 2}
    res = runner.invoke(cli, ["audit", str(tmp_path / "m.jsonl"), str(tmp_path / "missing.npz")])
    assert res.exit_code == 2 and "pairs file not found" in res.output
