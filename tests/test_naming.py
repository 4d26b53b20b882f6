"""Few-shot naming on Gaussian blobs: heads, propagation, unknowns and label files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from proxytasks.errors import ProxytasksError
from proxytasks.metrics import few_shot_draw, naming_accuracy
from proxytasks.naming import NamingResult, name_faces, read_labels, write_names

N_ID, PER, DIM = 10, 30, 32


def blobs(seed: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """10 identities x 30 faces, 32-d, unit norm: 1-shot prototypes get about 50%."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_ID, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ident = np.repeat(np.arange(N_ID), PER)
    x = centres[ident] + noise * rng.normal(size=(len(ident), DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.array([f"p{i}" for i in ident])


def run(seed: int, k: int, **kwargs) -> tuple[float, NamingResult, np.ndarray, np.ndarray]:
    """Accuracy over the faces not given, the result, the names and the drawn indices
    (every identity named: a closed set, so by default no face is rejected here)."""
    x, names = blobs(seed)
    drawn = few_shot_draw(names, k, np.random.default_rng(seed))
    kwargs.setdefault("unknown_threshold", None)
    result = name_faces(x, {int(i): str(names[i]) for i in drawn}, seed=seed, **kwargs)
    rest = np.setdiff1d(np.arange(len(x)), drawn)
    acc = naming_accuracy(names[rest], np.array(result.names, dtype=object)[rest])
    return acc, result, names, drawn


@pytest.mark.parametrize("head", ["prototype", "linear"])
def test_few_shot_accuracy_well_above_chance(head):
    one = np.mean([run(s, 1, head=head)[0] for s in range(3)])
    five = np.mean([run(s, 5, head=head)[0] for s in range(3)])
    chance = 1 / N_ID
    assert one > 3 * chance
    assert five > one + 0.1


def test_linear_head_no_worse_than_prototypes_with_one_shot():
    proto = np.mean([run(s, 1, head="prototype")[0] for s in range(3)])
    linear = np.mean([run(s, 1, head="linear")[0] for s in range(3)])
    assert linear >= proto - 0.02
    # zero fine-tuning steps is exactly the prototype classifier
    a, b = run(0, 1, head="linear", steps=0)[1], run(0, 1, head="prototype")[1]
    assert a.names == b.names and np.allclose(a.confidence, b.confidence)


def test_given_faces_keep_their_names():
    x, names = blobs(0)
    named = {0: "p5", 40: "p1", 100: "p3"}  # face 0 is really p0: the given name wins
    result = name_faces(x, named, head="prototype", unknown_threshold=0.999)
    for i, name in named.items():
        assert result.names[i] == name and result.source[i] == "given" and result.confidence[i] == 1
    assert set(result.names) <= {"p5", "p1", "p3", None}
    assert result.classes == ["p1", "p3", "p5"]


def test_tracks_carry_names():
    tracks = np.arange(N_ID * PER) // 5  # tracks of 5 faces of one identity
    base = np.mean([run(s, 1)[0] for s in range(3)])
    with_tracks = []
    for s in range(3):
        acc, result, names, drawn = run(s, 1, tracks=tracks)
        with_tracks.append(acc)
        for t in np.unique(tracks):
            members = [i for i in np.flatnonzero(tracks == t) if i not in set(drawn.tolist())]
            assert len({result.names[i] for i in members}) == 1
            assert len({float(result.confidence[i]) for i in members}) == 1
            assert {result.source[i] for i in members} == {"track"}
        for i in drawn:
            assert result.names[i] == names[i] and result.source[i] == "given"
    assert np.mean(with_tracks) > base + 0.15


def test_untracked_faces_use_the_classifier():
    x, names = blobs(0)
    tracks = np.full(len(x), -1)
    tracks[:5] = 7
    result = name_faces(x, {0: "p0", 30: "p1"}, tracks=tracks, head="prototype", unknown_threshold=None)
    assert result.source[:5] == ["given"] + ["track"] * 4
    assert set(result.source[5:]) - {"given"} == {"classifier"}
    assert result.names[1:5] == ["p0"] * 4


def test_pure_clusters_help():
    ident = np.repeat(np.arange(N_ID), PER)
    base = np.mean([run(s, 1)[0] for s in range(3)])
    clustered = np.mean([run(s, 1, clusters=ident)[0] for s in range(3)])
    assert clustered > base


def test_impure_cluster_with_two_given_names_stays_silent():
    # one cluster holds p0 and p1 in equal numbers, each with one given face: no name
    # holds half of the cluster's mass, so the cluster carries nothing.
    x, names = blobs(1)
    ident = np.repeat(np.arange(N_ID), PER)
    clusters = np.where(ident == 1, 0, ident)
    named = {int(i): str(names[i]) for i in range(0, len(x), PER)}
    plain = name_faces(x, named, head="prototype", unknown_threshold=None)
    mixed = name_faces(x, named, clusters=clusters, head="prototype", unknown_threshold=None)
    in_mixed = np.flatnonzero(clusters == 0)
    assert [mixed.names[i] for i in in_mixed] == [plain.names[i] for i in in_mixed]
    assert "cluster" not in {mixed.source[i] for i in in_mixed}


def test_cluster_majority_speaks_but_a_given_minority_name_stays():
    # cluster 0 = all 30 faces of p0 + 4 faces of p1; five p0 faces and one p1 face named
    x, names = blobs(2)
    ident = np.repeat(np.arange(N_ID), PER)
    clusters = ident.copy()
    minority = np.flatnonzero(ident == 1)[:4]
    clusters[minority] = 0
    named = {int(i): str(names[i]) for c in range(N_ID) for i in np.flatnonzero(ident == c)[:5]}
    named = {i: n for i, n in named.items() if i not in set(minority[1:].tolist())}
    assert named[int(minority[0])] == "p1"
    plain = name_faces(x, named, head="prototype", unknown_threshold=None)
    result = name_faces(x, named, clusters=clusters, head="prototype", unknown_threshold=None)
    assert result.names[minority[0]] == "p1" and result.source[minority[0]] == "given"
    p0 = np.flatnonzero(ident == 0)
    # the majority's name reaches more of p0's faces than the classifier alone (28 vs 23)
    assert sum(result.names[i] == "p0" for i in p0) >= sum(plain.names[i] == "p0" for i in p0) + 3
    assert "cluster" in {result.source[i] for i in p0}
    # a track holding the given p1 face protects its other faces from the majority
    tracks = np.full(len(x), -1)
    tracks[minority] = 0
    result = name_faces(x, named, tracks=tracks, clusters=clusters, head="prototype", unknown_threshold=None)
    assert [result.names[i] for i in minority] == ["p1"] * 4


def test_unknown_threshold():
    """A given threshold is a cosine similarity: units below it lean to "unknown"."""
    acc, result, names, drawn = run(0, 1, unknown_threshold=0.99)
    unknown = [i for i, n in enumerate(result.names) if n is None]
    assert len(unknown) == len(names) - len(drawn)  # nobody is that close to a named face
    assert all(result.source[i] == "unknown" for i in unknown)
    assert all(result.names[i] is not None for i in drawn)
    assert result.info["unknown_threshold"] == 0.99
    assert None not in run(0, 1)[1].names  # None: never unknown
    assert None not in run(0, 1, unknown_threshold=-1.0)[1].names
    for bad in ("often", 1.5, "2"):
        with pytest.raises(ProxytasksError, match="unknown threshold"):
            run(0, 1, unknown_threshold=bad)


def open_set(seed: int, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Blobs in tracks of 5 faces; p0-p5 named on one face in each of 3 tracks, p6-p9 never."""
    x, names = blobs(seed, noise=noise)
    tracks = np.arange(len(x)) // 5
    named = {int(i): str(names[i]) for p in range(6) for i in np.flatnonzero(names == f"p{p}")[[0, 10, 20]]}
    return x, names, tracks, named


def test_unknown_threshold_calibrated_by_leave_one_out():
    """By default a person never named is not forced onto a known name."""
    x, names, tracks, named = open_set(0)
    result = name_faces(x, named, tracks=tracks, head="prototype")
    info = result.info["calibration"]
    assert info["rule"] == "leave-one-out" and info["known_samples"] == 18 == info["never_named_samples"]
    assert -1 < result.info["unknown_threshold"] < 1
    pred = np.array(result.names, dtype=object)
    never = np.isin(names, [f"p{p}" for p in range(6, 10)])
    assert np.mean([p is None for p in pred[never]]) >= 0.9
    known = ~never & ~np.isin(np.arange(len(x)), list(named))
    assert np.mean(pred[known] == names[known]) >= 0.9
    forced = name_faces(x, named, tracks=tracks, head="prototype", unknown_threshold=None)
    assert None not in forced.names  # the old behaviour: every face gets a known name


def test_unknown_threshold_not_calibrated_from_one_track_a_name(caplog):
    x, names, tracks, _ = open_set(1)
    named = {int(np.flatnonzero(names == f"p{p}")[0]): f"p{p}" for p in range(6)}
    with caplog.at_level("WARNING", logger="proxytasks.assign"):
        result = name_faces(x, named, tracks=tracks, head="prototype")
    assert "cannot be calibrated" in caplog.text
    assert result.info["unknown_threshold"] is None and None not in result.names


def frame_case() -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """p0 and p1 named; faces 2 and 3 share a frame and both look most like p0 (face 2 more)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, DIM))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    x = np.stack([a, b, 0.9 * a + 0.1 * b, 0.6 * a + 0.4 * b])
    return x / np.linalg.norm(x, axis=1, keepdims=True), {0: "p0", 1: "p1"}, np.array([[2, 3]])


def test_cannot_linked_faces_never_share_a_name():
    x, named, cannot = frame_case()
    free = name_faces(x, named, head="prototype", unknown_threshold=None)
    assert free.names[2] == free.names[3] == "p0"  # the argmax names both p0
    result = name_faces(x, named, head="prototype", unknown_threshold=None, cannot_links=cannot)
    assert result.names[2:] == ["p0", "p1"]  # the joint best: the closer face keeps p0
    assert result.info["components_hungarian"] == 1 and result.info["units_moved"] == 1
    assert result.confidence[3] < free.confidence[3]
    # both order of the pair and tracks: units that meet in a frame are two people
    tracks = np.array([-1, -1, 0, 1])
    x2 = np.concatenate([x, x[2:]])
    tracks2 = np.r_[tracks, 0, 1]
    result = name_faces(x2, named, tracks=tracks2, head="prototype", unknown_threshold=None,
                        cannot_links=np.array([[3, 2]]))
    assert result.names[2] == result.names[4] == "p0" and result.names[3] == result.names[5] == "p1"


def test_cannot_link_to_a_named_face_bars_its_name():
    x, named, _ = frame_case()
    named = {0: "p0", 1: "p1", 3: "p0"}  # a person named face 3 p0: face 2 in its frame cannot be p0
    result = name_faces(x, named, head="prototype", unknown_threshold=None, cannot_links=np.array([[2, 3]]))
    assert result.names[3] == "p0" and result.source[3] == "given"
    assert result.names[2] == "p1"


def test_frame_larger_than_the_names_leaves_some_unknown():
    """Three faces of one frame, two names: one face has to stay unknown."""
    x, named, _ = frame_case()
    x = np.concatenate([x, x[2:3]])
    cannot = np.array([[2, 3], [2, 4], [3, 4]])
    result = name_faces(x, named, head="prototype", unknown_threshold=None, cannot_links=cannot)
    assert sorted(map(str, result.names[2:])) == ["None", "p0", "p1"]
    assert result.source[result.names.index(None)] == "unknown"


def test_chain_of_frames_solved_greedily():
    """Frames (2,3) and (3,4): not a clique, every pair still apart."""
    x, named, _ = frame_case()
    x = np.concatenate([x, x[2:3]])
    cannot = np.array([[2, 3], [3, 4]])
    result = name_faces(x, named, head="prototype", unknown_threshold=None, cannot_links=cannot)
    assert result.info["components_greedy"] == 1
    assert result.names[2] == result.names[4] == "p0" and result.names[3] == "p1"


def test_cannot_links_checked():
    x, named, _ = frame_case()
    for bad, what in (([[0, 9]], "not a pair"), ([[1, 1]], "not a pair"), ([[0.5, 1]], "integer")):
        with pytest.raises(ProxytasksError, match=what):
            name_faces(x, named, cannot_links=np.array(bad))


def test_deterministic_with_seed():
    a, b = run(3, 5, head="linear")[1], run(3, 5, head="linear")[1]
    assert a.names == b.names and np.array_equal(a.confidence, b.confidence)


def test_no_names_and_bad_head():
    x, _ = blobs(0)
    result = name_faces(x, {})
    assert result.names == [None] * len(x) and set(result.source) == {"unknown"}
    with pytest.raises(ProxytasksError, match="head"):
        name_faces(x, {0: "a"}, head="svm")
    with pytest.raises(ProxytasksError, match="head"):
        name_faces(x, {}, head="svm")
    with pytest.raises(ProxytasksError, match="out of range"):
        name_faces(x, {len(x): "a"})


# ---------------------------------------------------------------- label files

IDS = ["f0", "f1", "f2", "f3"]


def test_read_labels_csv_and_jsonl(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("id,name\nf1,Ann\n\nf3, Bob \nf1,Ann\n")
    assert read_labels(path, IDS) == {1: "Ann", 3: "Bob"}
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"id": "f0", "name": "Cy"}) + "\n\n" + json.dumps({"id": "f2", "name": "Di"}))
    assert read_labels(path, IDS) == {0: "Cy", 2: "Di"}


@pytest.mark.parametrize("text, message", [
    ("id,name\nf1,Ann\nzz,Bob\n", r"labels.csv:3: id 'zz' is not a face"),
    ("id,name\nf1,\n", r"labels.csv:2: id 'f1' has an empty name"),
    ("id,name\nf1,Ann\nf2,Bob\nf1,Cy\n", r"labels.csv:4: id 'f1' is named 'Cy' here but 'Ann' on line 2"),
    ("face,who\nf1,Ann\n", r"labels.csv:1: the header must name"),
])
def test_read_labels_errors(tmp_path: Path, text: str, message: str):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ProxytasksError, match=message):
        read_labels(path, IDS)


def test_read_labels_jsonl_errors(tmp_path: Path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "f1", "name": "Ann"}\n{"id": "nope", "name": "Bob"}\n')
    with pytest.raises(ProxytasksError, match=r"labels.jsonl:2: id 'nope'"):
        read_labels(path, IDS)
    path.write_text('{"id": "f1", "name": null}\n')
    with pytest.raises(ProxytasksError, match="empty name"):
        read_labels(path, IDS)
    path.write_text("{not json\n")
    with pytest.raises(ProxytasksError, match=r"labels.jsonl:1: not valid JSON"):
        read_labels(path, IDS)
    with pytest.raises(ProxytasksError, match="not found"):
        read_labels(tmp_path / "absent.csv", IDS)


def test_write_names_round_trip(tmp_path: Path):
    result = NamingResult(["Ann", None, "Bob, Jr.", "Ann"], np.array([1.0, 0.2, 0.87654, 0.5]),
                          ["given", "unknown", "track", "classifier"])
    path = tmp_path / "out" / "names.csv"
    write_names(path, IDS, result)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == IDS
    assert [r["name"] for r in rows] == ["Ann", "", "Bob, Jr.", "Ann"]
    assert [float(r["confidence"]) for r in rows] == [1.0, 0.2, 0.8765, 0.5]
    assert [r["source"] for r in rows] == result.source
    assert not [p for p in path.parent.iterdir() if p.name != "names.csv"]  # no temp file left
    # the written names read back as labels once the unknown is left out
    path.write_text("".join(line for line in path.read_text().splitlines(True) if ",," not in line))
    assert read_labels(path, IDS) == {0: "Ann", 2: "Bob, Jr.", 3: "Ann"}


def test_low_quality_faces_stay_unknown_unless_named():
    """A face marked low quality (the back of a head) gets no name along its track or cluster,
    but keeps a name a person gave it."""
    from proxytasks.naming import name_faces, unname_marked

    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.99, 0.1], [0.0, 1.0]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    named = {0: "ann", 3: "bob"}
    result = name_faces(x, named, tracks=np.array([0, 0, 0, 1]), unknown_threshold=None)
    assert result.names[1] == result.names[2] == "ann"
    marked = np.array([False, True, False, True])
    out = unname_marked(result, marked, named)
    assert out.names == ["ann", None, "ann", "bob"]
    assert out.source[1] == "unknown" and out.confidence[1] == 0.0
    assert unname_marked(out, None, named) is out
