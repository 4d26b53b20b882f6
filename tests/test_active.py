"""Active learning: strategies, naming rounds (corrections persist), human pairs, the
simulated person and the naming-vs-names-typed curve, on hand-made embeddings."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from proxytasks.active import (SUGGESTION_STRATEGIES, Pool, SimulatedAnnotator, active_curve, human_pairs, names_to_reach,
                               pair_questions, read_suggestions, suggest, write_suggestions)
from proxytasks.cluster import constraint_arrays
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.naming import Annotations, name_faces, read_annotations
from proxytasks.pairs import HUMAN_DIFFERENT, HUMAN_SAME, PairSet, RuleInfo


def blobs(sizes, dim=16, spread=0.15, seed=0):
    """Unit vectors around one random centre per person; identity per face."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    x = np.concatenate([c + spread * rng.normal(size=(s, dim)) * np.linalg.norm(c) / np.sqrt(dim)
                        for c, s in zip(centres, sizes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    identity = [f"p{k}" for k, s in enumerate(sizes) for _ in range(s)]
    return x.astype(np.float32), identity


# ---------------------------------------------------------------- annotations

IDS = [f"f{i}" for i in range(6)]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_rounds_later_wins_and_removals_stick(tmp_path):
    clusters = np.array([0, 0, 0, 1, 1, -1])
    r1 = write(tmp_path / "r1.csv", "id,name\nf0,Ann\nf3,Bob\n")
    r2 = write(tmp_path / "r2.csv", "cluster,name\n0,Ann\n")
    r3 = write(tmp_path / "r3.jsonl", '{"id": "f1", "not_name": "Ann"}\n{"id": "f4", "id2": "f5", "answer": "same"}\n'
                                       '{"id": "f0", "id2": "f3", "answer": "different"}\n')
    ann = read_annotations([r1, r2, r3], IDS, clusters)
    assert ann.named == {0: "Ann", 2: "Ann", 3: "Bob"}  # f1 lost Ann, f2 got it from its cluster
    assert ann.forbidden == {1: {"Ann"}} and ann.same == {(4, 5)} and ann.different == {(0, 3)}
    assert ann.typed == 3  # two faces and one cluster
    # naming the cluster again does not give the removed name back; naming the face by hand does
    r4 = write(tmp_path / "r4.csv", "cluster,name\n0,Ann\n")
    assert 1 not in read_annotations([r1, r2, r3, r4], IDS, clusters).named
    r5 = write(tmp_path / "r5.csv", "id,name\nf1,Ann\n")
    ann = read_annotations([r1, r2, r3, r5], IDS, clusters)
    assert ann.named[1] == "Ann" and not ann.forbidden[1]


@pytest.mark.parametrize("text, message", [
    ("cluster,name\n7,Ann\n", r"r.csv:2: cluster '7' is not a cluster"),
    ("id,id2,answer\nf0,f1,maybe\n", r"r.csv:2: answer 'maybe' must be 'same' or 'different'"),
    ("id,id2,answer\nf0,zz,same\n", r"r.csv:2: an answer needs two faces"),
    ("id,not_name\nzz,Ann\n", r"r.csv:2: id 'zz' is not a face"),
    ("who,what\nf0,Ann\n", r"r.csv:1: the header must name"),
])
def test_round_file_errors_name_the_line(tmp_path, text, message):
    with pytest.raises(ProxytasksError, match=message):
        read_annotations([write(tmp_path / "r.csv", text)], IDS, np.array([0, 0, 1, 1, 1, 1]))


def test_cluster_rows_need_clusters(tmp_path):
    with pytest.raises(ProxytasksError, match="needs the clusters file"):
        read_annotations([write(tmp_path / "r.csv", "cluster,name\n0,Ann\n")], IDS)


def test_a_removed_name_stays_removed_after_the_next_round(tmp_path):
    """The acceptance check: a person removes a name from a face; rounds later, with
    more names of that person given, the face still does not get it back."""
    x, identity = blobs([30, 30], seed=1)
    ids = [f"f{i}" for i in range(len(x))]
    tracks = np.full(len(x), -1)
    tracks[:10] = 0  # face 9 sits in Ann's track: propagation would carry "p0" to it
    r1 = write(tmp_path / "r1.csv", "id,name\nf0,p0\nf40,p1\n")
    first = name_faces(x, read_annotations([r1], ids).named, tracks=tracks, head="prototype")
    assert first.names[9] == "p0"
    r2 = write(tmp_path / "r2.csv", "id,not_name\nf9,p0\n")
    r3 = write(tmp_path / "r3.csv", "id,name\nf1,p0\nf2,p0\nf20,p0\nf50,p1\n")
    for rounds in ([r1, r2], [r1, r2, r3]):
        ann = read_annotations(rounds, ids)
        result = name_faces(x, ann.named, tracks=tracks, head="prototype", forbidden=ann.forbidden)
        assert result.names[9] == "p1" and result.source[9] != "given"
        assert result.names[8] == "p0"  # the rest of the track keeps its name
    # a removed name that was given to the face is taken away as well
    r4 = write(tmp_path / "r4.csv", "id,not_name\nf0,p0\n")
    ann = read_annotations([r1, r3, r4], ids)
    assert 0 not in ann.named
    assert name_faces(x, ann.named, head="prototype", forbidden=ann.forbidden).names[0] != "p0"


def test_same_answers_join_units_in_naming():
    x, _ = blobs([5, 5], seed=2)
    x[7] = x[0]  # face 7 looks like person 0 ...
    named = {0: "p0", 6: "p1"}
    assert name_faces(x, named, head="prototype").names[7] == "p0"
    # ... but a person said it is the same as face 6, so it takes 6's name
    assert name_faces(x, named, head="prototype", same=[(6, 7)]).names[7] == "p1"


# ---------------------------------------------------------------- strategies

@pytest.fixture
def fragmented():
    """Five people; person k split into two clusters (2k, 2k+1); tracks of five faces."""
    x, identity = blobs([40, 32, 24, 16, 12], seed=3)
    clusters = np.zeros(len(x), np.int64)
    start = 0
    for k, s in enumerate([40, 32, 24, 16, 12]):
        clusters[start:start + s // 2], clusters[start + s // 2:start + s] = 2 * k, 2 * k + 1
        start += s
    tracks = np.arange(len(x)) // 4
    return x, identity, clusters, tracks


def test_cluster_strategy_takes_central_faces_of_the_largest_unnamed_clusters(fragmented):
    x, identity, clusters, tracks = fragmented
    pool = Pool(x, tracks, clusters)
    out = SUGGESTION_STRATEGIES.get("clusters")().pick(pool, 3, np.random.default_rng(0), set())
    assert [clusters[s.face] for s in out] == [0, 1, 2]
    members = np.flatnonzero(clusters == 0)
    mean = x[members].mean(0)
    assert out[0].face == members[np.argmax(x[members] @ mean)]
    assert "unnamed cluster of 20 faces" in out[0].reason
    # once cluster 0 is named, it is skipped, and so is every face of a named track
    ann = Annotations()
    ann.name(int(members[0]), "p0")
    out = SUGGESTION_STRATEGIES.get("clusters")().pick(Pool(x, tracks, clusters, ann), 20, np.random.default_rng(0), set())
    assert 0 not in [clusters[s.face] for s in out] and len(out) == 9


def test_breadth_finds_every_person_before_asking_twice(fragmented):
    x, identity, clusters, tracks = fragmented
    ann = Annotations()
    out = suggest(Pool(x, tracks, clusters, ann), "breadth", 5)
    assert len({identity[s.face] for s in out}) == 5  # five people in five questions
    assert all(s.strategy == "breadth" for s in out)
    assert "far from every named cluster" in out[1].reason


def test_margin_asks_where_the_two_best_names_are_closest(fragmented):
    x, identity, clusters, tracks = fragmented
    ann = Annotations()
    ann.name(0, "p0")
    ann.name(40, "p1")
    result = name_faces(x, ann.named, tracks=tracks, clusters=clusters, head="prototype")
    out = SUGGESTION_STRATEGIES.get("margin")().pick(Pool(x, tracks, clusters, ann, result), 4, np.random.default_rng(0), set())
    assert len(out) == 4 and len({clusters[s.face] for s in out}) == 4  # one per cluster
    margins = [result.margin[s.face] for s in out]
    open_faces = [i for i in range(len(x)) if tracks[i] not in (tracks[0], tracks[40])]
    assert min(margins) == pytest.approx(result.margin[open_faces].min())
    assert "uncertain: " in out[0].reason and " or " in out[0].reason
    # without two names there is no margin: the fallback says so
    out = suggest(Pool(x, tracks, clusters), "margin", 3)
    assert len(out) == 3 and all("fallback" in s.reason for s in out)


def test_random_is_seeded_and_skips_named_units(fragmented):
    x, identity, clusters, tracks = fragmented
    ann = Annotations()
    ann.name(0, "p0")
    pool = Pool(x, tracks, clusters, ann)
    a, b = suggest(pool, "random", 10, seed=1), suggest(pool, "random", 10, seed=1)
    assert [s.face for s in a] == [s.face for s in b] != [s.face for s in suggest(pool, "random", 10, seed=2)]
    assert all(tracks[s.face] != tracks[0] for s in a)
    assert len({tracks[s.face] for s in a}) == 10


def test_pair_questions_merge_and_split(fragmented):
    x, identity, clusters, tracks = fragmented
    merged = clusters.copy()
    merged[merged == 9] = 7  # one cluster now holds two people: a split question
    out = pair_questions(Pool(x, tracks, merged), 4)
    assert [s.kind for s in out] == ["same"] * 4
    merges = [s for s in out if s.strategy == "merge"]
    splits = [s for s in out if s.strategy == "split"]
    assert merges and splits
    assert identity[merges[0].face] == identity[merges[0].other]  # the closest clusters: one person
    assert merged[splits[0].face] == merged[splits[0].other] == 7
    assert identity[splits[0].face] != identity[splits[0].other]
    ann = Annotations()
    ann.answer(merges[0].face, merges[0].other, True)
    again = pair_questions(Pool(x, tracks, merged, ann), 4)
    assert (merges[0].face, merges[0].other) not in [(s.face, s.other) for s in again]


def test_sheet_round_trip_and_simulated_answers(tmp_path, fragmented):
    x, identity, clusters, tracks = fragmented
    ids = [f"f{i}" for i in range(len(x))]
    todo = suggest(Pool(x, tracks, clusters), "clusters", 3, pairs=2)
    answers = {r: a for r, s in enumerate(todo, 1) if (a := SimulatedAnnotator(identity).answer(s))}
    write_suggestions(tmp_path / "sheet.csv", ids, todo, answers)
    back = read_suggestions(tmp_path / "sheet.csv", ids)
    assert [(s.kind, s.face, s.other, s.cluster) for s in back] == [(s.kind, s.face, s.other, s.cluster) for s in todo]
    rows = list(csv.DictReader(open(tmp_path / "sheet.csv")))
    assert [r["name"] for r in rows[:3]] == [identity[s.face] for s in todo[:3]]
    assert all(r["answer"] in ("same", "different") for r in rows[3:])
    ann = read_annotations([tmp_path / "sheet.csv"], ids)
    assert ann.typed == 3 and len(ann.same) + len(ann.different) == 2
    # an unanswered sheet is valid input: nothing said yet
    write_suggestions(tmp_path / "blank.csv", ids, todo)
    assert read_annotations([tmp_path / "blank.csv"], ids).typed == 0
    (tmp_path / "bad.csv").write_text("rank,kind\n1,name\n")
    with pytest.raises(ProxytasksError, match="bad.csv:1: not a suggestion sheet"):
        read_suggestions(tmp_path / "bad.csv", ids)


# ---------------------------------------------------------------- human pairs

def test_human_pairs_win_over_rules_and_join_clusters():
    ann = Annotations()
    for i, name in [(0, "a"), (1, "a"), (2, "a"), (3, "b")]:
        ann.name(i, name)
    ann.remove(4, "a")
    ann.answer(5, 6, True)
    same, diff = human_pairs(ann)
    assert {tuple(p) for p in same} == {(0, 1), (0, 2), (1, 2), (5, 6)}
    assert {tuple(sorted(p)) for p in diff} == {(0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4)}
    # a rule said 0 and 1 differ (same frame): the person's answer wins
    rules = PairSet(np.array([0, 7]), np.array([1, 8]), np.array([0, 0]), [RuleInfo("same-frame", "different", 1.0)],
                    n_faces=9)
    merged = rules.with_human(same, diff)
    assert merged.counts() == {"same-frame": 2, HUMAN_SAME: 4, HUMAN_DIFFERENT: 6}
    i, j, label, _ = merged.unique()
    assert dict(zip(zip(i.tolist(), j.tolist()), label.tolist()))[(0, 1)] == 1
    assert merged.with_human(same[:1], diff[:0]).counts()[HUMAN_SAME] == 1  # replaced, not stacked
    faces = [Face(id=f"f{k}", media="v", frame=k, image="x.png", bbox=[0, 0, 1, 1]) for k in range(9)]
    groups, cannot = constraint_arrays(Manifest(faces), merged)
    assert groups[0] == groups[1] == groups[2] >= 0 and groups[5] == groups[6] and groups[3] < 0
    assert [7, 8] in cannot.tolist() and [0, 1] not in cannot.tolist()


# ---------------------------------------------------------------- curve

def test_curve_counts_names_and_strategies_beat_random(fragmented):
    x, identity, clusters, tracks = fragmented
    curves = {s: active_curve(x, identity, s, tracks=tracks, clusters=clusters, budget=10, batch=1, seed=0,
                              head="prototype") for s in ("breadth", "clusters", "random")}
    for curve in curves.values():
        assert curve[0] == [0, 0.0]
        assert [n for n, _ in curve] == list(range(len(curve)))
        assert all(0.0 <= acc <= 1.0 for _, acc in curve)
    # breadth names one person per question: five names, every person known
    assert names_to_reach(curves["breadth"], 0.99) == 5
    assert names_to_reach(curves["breadth"]) < names_to_reach(curves["random"]) or names_to_reach(
        curves["random"]) is None
    assert names_to_reach([[0, 0.0], [5, 0.5]]) is None
