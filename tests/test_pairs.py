"""proxytasks.pairs: PairSet views (unique, restrict, select, human answers), balanced batches
and the .npz file (round trip, damaged and foreign files refused). The rules that make pairs
are tested in test_rules.py and test_rules_pairs.py."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from proxytasks.errors import ProxytasksError
from proxytasks.pairs import HUMAN_WEIGHT, PairSet, RuleInfo, ids_digest

RULES = [RuleInfo("same-frame", "different", 1.0), RuleInfo("same-track", "same", 1.0),
         RuleInfo("same-photo", "different", 0.5)]
IDS = [f"f{k}" for k in range(6)]


def hand_pairs() -> PairSet:
    """Rows: (0,1) frame, (0,2) track, (1,2) frame, (3,4) photo, (0,1) photo again, (2,5) track."""
    return PairSet(np.array([0, 0, 1, 3, 0, 2]), np.array([1, 2, 2, 4, 1, 5]), np.array([0, 1, 0, 2, 2, 1]),
                   RULES, n_faces=6, face_ids=IDS)


def as_set(i, j) -> set:
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist()))


def test_rows_labels_weights_counts():
    p = hand_pairs()
    assert len(p) == 6 and p.nbytes == 6 * 9  # 9 bytes a row
    assert p.labels().tolist() == [0, 1, 0, 0, 0, 1]
    assert p.weights().tolist() == [1.0, 1.0, 1.0, 0.5, 0.5, 1.0]
    assert p.counts() == {"same-frame": 2, "same-track": 2, "same-photo": 2}
    assert as_set(p.select("same-photo").i, p.select("same-photo").j) == {(3, 4), (0, 1)}
    with pytest.raises(ProxytasksError, match="no rule 'same-tracks'.*same-frame, same-track, same-photo"):
        p.select("same-tracks")


def test_unique_keeps_one_row_per_pair_with_its_heaviest_rule():
    i, j, label, weight = hand_pairs().unique()
    got = {(a, b): w for a, b, w in zip(i.tolist(), j.tolist(), weight.tolist())}
    assert got == {(0, 1): 1.0, (0, 2): 1.0, (1, 2): 1.0, (3, 4): 0.5, (2, 5): 1.0}
    a1, pos, a2, neg = hand_pairs().indices_tuple()
    assert as_set(a1, pos) == {(0, 2), (2, 5)} and as_set(a2, neg) == {(0, 1), (1, 2), (3, 4)}
    assert a1.dtype == np.int64
    empty = PairSet(np.zeros(0), np.zeros(0), np.zeros(0), RULES, n_faces=3)
    assert all(len(x) == 0 for x in empty.unique())


def test_restrict_reindexes_to_the_kept_faces():
    p = hand_pairs()
    sub = p.restrict(np.array([0, 2, 5]), face_ids=["f0", "f2", "f5"])
    # kept: (0,2) -> positions (0,1), (2,5) -> (1,2); every pair touching 1, 3 or 4 is gone
    assert sub.n_faces == 3 and len(sub) == 2
    assert as_set(sub.i, sub.j) == {(0, 1), (1, 2)}
    assert [sub.rules[r].name for r in sub.rule] == ["same-track", "same-track"]
    assert sub.digest == ids_digest(["f0", "f2", "f5"]) != p.digest


def test_human_answers_win_and_replace_earlier_answers():
    p = hand_pairs()
    h = p.with_human(same=np.array([[1, 0], [4, 4]]), different=np.array([[5, 2], [5, 2]]))
    names = [r.name for r in h.rules]
    assert names[-2:] == ["human-same", "human-different"] and h.rules[-1].weight == HUMAN_WEIGHT
    assert h.counts()["human-same"] == 1  # (4, 4) is no pair
    assert h.counts()["human-different"] == 1  # the duplicate is stored once
    i, j, label, weight = h.unique()
    got = {(a, b): (lab, w) for a, b, lab, w in zip(i.tolist(), j.tolist(), label.tolist(), weight.tolist())}
    assert got[(0, 1)] == (1, HUMAN_WEIGHT)  # the person said same: wins over two "different" rules
    assert got[(2, 5)] == (0, HUMAN_WEIGHT)  # and different: wins over same-track
    again = h.with_human(same=np.zeros((0, 2)), different=np.array([[3, 4]]))
    assert again.counts()["human-same"] == 0 and again.counts()["human-different"] == 1
    assert sum(r.name.startswith("human") for r in again.rules) == 2  # replaced, not added
    assert len(again) == len(p) + 1
    with pytest.raises(ValueError, match="out of range"):
        p.with_human(same=np.array([[0, 6]]), different=np.zeros((0, 2)))


def test_batches_when_one_label_is_missing():
    only_same = PairSet(np.array([0, 1]), np.array([1, 2]), np.array([1, 1]), RULES, n_faces=3)
    batches = list(only_same.sample_batches(4, n_batches=3, seed=0))
    assert all(b[2].tolist() == [1, 1, 1, 1] for b in batches)  # the whole batch from the one label
    # each pair drawn once before any repeats, then reshuffled
    first = list(zip(batches[0][0].tolist(), batches[0][1].tolist()))
    assert set(first[:2]) == {(0, 1), (1, 2)} and set(first[2:]) == {(0, 1), (1, 2)}
    skewed = list(hand_pairs().sample_batches(6, n_batches=2, seed=1, same_fraction=1 / 3))
    assert all(b[2].sum() == 2 for b in skewed)
    empty = PairSet(np.zeros(0), np.zeros(0), np.zeros(0), RULES, n_faces=3)
    with pytest.raises(ProxytasksError, match="no rows of a needed label"):
        next(empty.sample_batches(4, n_batches=1))


def test_file_round_trip_keeps_everything(tmp_path):
    p = PairSet(hand_pairs().i, hand_pairs().j, hand_pairs().rule, RULES, 6, face_ids=IDS, conflicts=3,
                policy="drop")
    path = p.save(tmp_path / "pairs.npz")
    back = PairSet.load(path, face_ids=IDS)
    assert np.array_equal(back.i, p.i) and np.array_equal(back.j, p.j) and np.array_equal(back.rule, p.rule)
    assert back.i.dtype == np.int32 and back.rule.dtype == np.uint8
    assert (back.rules, back.conflicts, back.policy, back.digest) == (RULES, 3, "drop", ids_digest(IDS))
    assert [q.name for q in tmp_path.iterdir()] == ["pairs.npz"]  # written atomically, no leftovers
    with pytest.raises(ProxytasksError, match="another manifest"):
        PairSet.load(path, face_ids=IDS[:5] + ["g5"])  # same count, other ids
    with pytest.raises(ProxytasksError, match="another manifest"):
        PairSet.load(path, face_ids=IDS[:5])


def rewrite(path, **changes) -> None:
    """Rewrite a saved pairs file with some arrays or header fields changed."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta.update({k: v for k, v in changes.items() if k not in arrays})
    arrays.update({k: v for k, v in changes.items() if k in arrays})
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 0}, "pairs format 0 is not 1; rebuild them"),
    ({"j": np.array([1, 2, 2, 4, 1, 9], np.int32)}, "out of range; the file is damaged"),
    ({"rule": np.array([0, 1, 0, 2, 2, 7], np.uint8)}, "out of range; the file is damaged"),
])
def test_damaged_files_are_refused_with_their_path(tmp_path, changes, message):
    path = hand_pairs().save(tmp_path / "pairs.npz")
    rewrite(path, **changes)
    with pytest.raises(ProxytasksError, match=message) as err:
        PairSet.load(path)
    assert str(path) in str(err.value)


def test_files_that_are_not_pairs(tmp_path):
    with pytest.raises(ProxytasksError, match="pairs file not found"):
        PairSet.load(tmp_path / "absent.npz")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:  # a zip, but no pairs inside
        z.writestr("x.npy", b"")
    with pytest.raises(ProxytasksError, match="not a proxytasks pairs file"):
        PairSet.load(tmp_path / "other.npz")
    np.savez(tmp_path / "arrays.npz", i=np.zeros(2))
    with pytest.raises(ProxytasksError, match="not a proxytasks pairs file"):
        PairSet.load(tmp_path / "arrays.npz")


def test_ids_digest_depends_on_order_and_content():
    assert ids_digest(None) is None
    assert ids_digest(["a", "b"]) != ids_digest(["b", "a"])
    assert ids_digest(["ab", "c"]) != ids_digest(["a", "bc"])  # ids are separated
    assert ids_digest(["a", "b"]) == ids_digest(("a", "b")) and len(ids_digest(["a"])) == 16
