import json
from itertools import combinations

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.errors import ProxytasksError
from proxytasks.evaluate import audit_pairs
from proxytasks.manifest import Face, Manifest
from proxytasks.pairs import PairSet
from proxytasks import pair_engine, rules as rules_module
from proxytasks.rules import (FaceColumns, PairRows, Rule, RuleSet, pairs_across_groups, pairs_within_groups,
                              parse_rules)


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


# --------------------------------------------------------------------------- against brute force
RULE_NAMES = ["same-frame", "same-track", "track-cooccurrence", "same-photo"]


def brute_rule_pairs(faces: list[Face], name: str) -> list[tuple[int, int]]:
    """A rule's pairs straight from its definition, by looking at every two faces."""
    n = len(faces)
    track = [None if f.track is None else (f.media, f.track) for f in faces]
    if name == "track-cooccurrence":
        together = {(track[a], track[b]) for a, b in combinations(range(n), 2)
                    if faces[a].frame is not None and (faces[a].media, faces[a].frame) == (faces[b].media, faces[b].frame)
                    and None is not track[a] != track[b] is not None}
        together |= {(y, x) for x, y in together}
        return [(a, b) for a, b in combinations(range(n), 2) if (track[a], track[b]) in together]
    test = {
        "same-frame": lambda a, b: a.frame is not None and (a.media, a.frame) == (b.media, b.frame),
        "same-track": lambda a, b: a.track is not None and (a.media, a.track) == (b.media, b.track),
        "same-photo": lambda a, b: a.frame is None and b.frame is None and a.media == b.media,
    }[name]
    return [(a, b) for a, b in combinations(range(n), 2) if test(faces[a], faces[b])]


def brute_apply(per_rule: dict[str, list], labels: dict[str, str], policy: str) -> tuple[dict, int]:
    """Rows kept per rule (sorted lists, duplicates kept) and the number of conflicting pairs."""
    same = set().union(*[set(p) for r, p in per_rule.items() if labels[r] == "same"])
    different = set().union(*[set(p) for r, p in per_rule.items() if labels[r] == "different"])
    conflicting = same & different
    kept = {r: sorted(p for p in pairs if p not in conflicting or (policy == "different" and labels[r] == "different"))
            for r, pairs in per_rule.items()}
    return kept, len(conflicting)


def random_faces(rng: np.random.Generator, n: int) -> list[Face]:
    """Faces in a few videos and photos; some tracks hold two faces of one frame
    (conflicts), track names repeat across videos, some faces are untracked."""
    faces = []
    big = rng.random() < 0.2
    for k in range(n):
        media = ["v", "w", "x", "p1.jpg", "p2.jpg"][int(rng.integers(0, 5))]
        frame = None if media.endswith(".jpg") else int(rng.integers(0, 6))
        if big and frame is not None:
            frame = [0, 1, 2**40, 2**62, 2**63 - 1][frame % 5]
        track = None if rng.random() < 0.25 else ["A", "B", "C", "D"][int(rng.integers(0, 4))]
        faces.append(Face(id=f"f{k}", media=media, frame=frame, track=track, crop="c.png"))
    return faces


def check_against_brute(faces: list[Face], names: list[str], policy: str) -> PairSet:
    ps = RuleSet(names, policy=policy).apply(Manifest(faces))
    labels = {r.name: r.label for r in ps.rules}
    expected, conflicts = brute_apply({r: brute_rule_pairs(faces, r) for r in names}, labels, policy)
    assert ps.i.dtype == np.int32 and ps.j.dtype == np.int32 and ps.rule.dtype == np.uint8
    assert (np.diff(ps.rule.astype(int)) >= 0).all(), "rows are not grouped by rule in rule order"
    assert ((ps.i < ps.j) & (ps.j < max(len(faces), 1))).all()
    got = {r: sorted(zip(ps.select(r).i.tolist(), ps.select(r).j.tolist())) for r in names}
    assert got == expected
    assert ps.conflicts == conflicts
    return ps


@pytest.mark.parametrize("block", [1 << 20, 5])  # 5: every blockwise loop runs over many blocks
def test_rules_match_brute_force_on_random_manifests(monkeypatch, block):
    monkeypatch.setattr(pair_engine, "BLOCK", block)
    rng = np.random.default_rng(8)
    seen_conflicts = 0
    for trial in range(300):
        faces = random_faces(rng, int(rng.integers(0, 30)))
        names = list(rng.permutation(RULE_NAMES)[:int(rng.integers(1, 5))])
        for policy in ("different", "drop"):
            seen_conflicts += check_against_brute(faces, names, policy).conflicts > 0
    assert seen_conflicts > 50  # the draws do exercise conflicts


def test_rules_match_brute_force_on_interleaved_tracks(monkeypatch):
    """Long tracks whose faces interleave by index (min/max per row) and tracks in index
    order (no min/max), many co-occurring pairs, through small blocks."""
    monkeypatch.setattr(pair_engine, "BLOCK", 64)
    rng = np.random.default_rng(3)
    for trial in range(6):
        n = 120
        frame = rng.integers(0, 25, n)
        track = rng.integers(0, 6, n) if trial % 2 else np.sort(rng.integers(0, 6, n))
        faces = [Face(id=f"f{k}", media="v", frame=int(f), track=f"t{t}", crop="c.png")
                 for k, (f, t) in enumerate(zip(frame, track))]
        for policy in ("different", "drop"):
            check_against_brute(faces, ["same-track", "same-frame", "track-cooccurrence"], policy)


def test_empty_and_tiny_inputs():
    for faces in ([], [Face(id="a", media="v", frame=0, track="A", crop="c")],
                  [Face(id="a", media="p.jpg", crop="c"), Face(id="b", media="q.jpg", crop="c")]):
        for policy in ("different", "drop"):
            ps = check_against_brute(faces, RULE_NAMES, policy)
            assert len(ps) == 0 and ps.nbytes == 0 and ps.counts() == dict.fromkeys(RULE_NAMES, 0)
    cols = FaceColumns(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(RuleSet().apply(cols)) == 0
    assert pairs_within_groups(np.zeros(0, np.int64)).shape == (0, 2)
    assert pairs_across_groups(np.zeros(0, np.int64), np.zeros((0, 2), np.int64)).shape == (0, 2)


def test_group_pairs_helpers_against_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(50):
        keys = rng.integers(-1, 6, int(rng.integers(0, 40)))
        got = pairs_within_groups(keys)
        assert got.dtype == np.int32 and (got[:, 0] < got[:, 1]).all()
        assert sorted(map(tuple, got.tolist())) == [(a, b) for a, b in combinations(range(len(keys)), 2)
                                                   if keys[a] >= 0 and keys[a] == keys[b]]
        groups = [g for g in range(6) if (keys == g).any()]
        gp = np.array([(a, b) for a, b in combinations(groups, 2) if rng.random() < 0.5], np.int64).reshape(-1, 2)
        got = pairs_across_groups(keys, gp)
        want = sorted((min(x, y), max(x, y)) for a, b in gp.tolist()
                      for x in np.flatnonzero(keys == a).tolist() for y in np.flatnonzero(keys == b).tolist())
        assert got.dtype == np.int32 and sorted(map(tuple, got.tolist())) == want


def test_columns_from_manifest_codes():
    faces = [Face(id=f"f{k}", media=m, frame=fr, track=t, crop="c") for k, (m, fr, t) in enumerate([
        ("v", 3, "B"), ("w", 0, "A"), ("v", 4, None), ("p.jpg", None, "B"), ("v", 5, "A"),
        ("w", 2**63 - 1, "A"), ("v", 0, "B"), ("p.jpg", None, None)])]
    cols = FaceColumns.from_manifest(Manifest(faces))
    assert cols.media.tolist() == [0, 1, 0, 2, 0, 1, 0, 2]
    assert cols.frame.tolist() == [3, 0, 4, -1, 5, 2**63 - 1, 0, -1]
    # tracks are (media, name), numbered by first appearance: v/B, w/A, p.jpg/B, v/A
    assert cols.track.tolist() == [0, 1, -1, 2, 3, 1, 0, -1]
    assert all(c.dtype == np.int64 for c in (cols.media, cols.frame, cols.track))
    faces = [Face(id=f"f{k}", media="v", frame=k, track=t, crop="c") for k, t in enumerate("xyxzy")]
    assert FaceColumns.from_manifest(Manifest(faces)).track.tolist() == [0, 1, 0, 2, 1]


class _Listed(Rule):
    """A rule that only gives ``pairs`` (no rows, no contains): the sorting fallback."""

    def __init__(self, name: str, label: str, pairs: list) -> None:
        super().__init__()
        self.name, self.label, self._pairs = name, label, np.array(pairs, np.int64).reshape(-1, 2)

    def pairs(self, cols):
        return self._pairs


@pytest.mark.parametrize("policy", ["different", "drop"])
def test_rules_without_contains_resolve_like_the_built_in_ones(policy):
    rng = np.random.default_rng(11)
    for _ in range(100):
        faces = random_faces(rng, int(rng.integers(2, 25)))
        n = len(faces)
        listed = [_Listed(f"listed-{k}", label, [tuple(sorted(rng.choice(n, 2, replace=False).tolist()))
                                                  for _ in range(int(rng.integers(0, 12)))])
                  for k, label in enumerate(rng.choice(["same", "different"], 2))]  # duplicates possible
        builtin = list(rng.permutation(RULE_NAMES)[:int(rng.integers(0, 5))])
        rules = [*rules_module.parse_rules(builtin), *listed] if builtin else listed
        rules = [rules[k] for k in rng.permutation(len(rules))]
        ps = RuleSet(rules, policy=policy).apply(Manifest(faces))
        per_rule = {r.name: [tuple(p) for p in r._pairs.tolist()] if isinstance(r, _Listed)
                    else brute_rule_pairs(faces, r.name) for r in rules}
        expected, conflicts = brute_apply(per_rule, {r.name: r.label for r in rules}, policy)
        got = {r.name: sorted(zip(ps.select(r.name).i.tolist(), ps.select(r.name).j.tolist())) for r in rules}
        assert got == expected and ps.conflicts == conflicts


def test_pair_rows_counts_before_writing():
    keys = np.array([0, 1, 0, -1, 1, 0])
    rows = rules_module.rows_within_groups(keys)
    assert rows.n == 4
    i, j = np.full(4, -1, np.int32), np.full(4, -1, np.int32)
    rows.fill(i, j)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (0, 5), (1, 4), (2, 5)]
    with pytest.raises(ValueError, match="4 rows"):
        rows.fill(np.empty(3, np.int32), np.empty(3, np.int32))
    assert PairRows.of(np.array([[1, 2]])).array().tolist() == [[1, 2]]


def test_pairs_within_groups_order_with_large_groups():
    """Groups by ascending size, then key; inside a group the np.triu_indices order; large
    groups (written row by row) the same."""
    rng = np.random.default_rng(2)
    keys = rng.permutation(np.r_[np.full(1100, 7), np.full(1030, 3), np.full(3, 5), np.full(3, 1), [9, -1, -1]])
    want = []
    for key in (1, 5, 3, 7):  # sizes 3, 3 (by key), 1030, 1100
        members = np.flatnonzero(keys == key)
        a, b = np.triu_indices(len(members), 1)
        want.append(np.stack([members[a], members[b]], 1))
    assert np.array_equal(pairs_within_groups(keys), np.concatenate(want))
