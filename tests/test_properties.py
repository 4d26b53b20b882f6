"""Property tests (hypothesis): the manifest parser, the rules, the tracker, clustering.

Each property is a guarantee listed in docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from proxytasks.cluster import cluster_faces
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.pairs import PairSet
from proxytasks.rules import RuleSet
from proxytasks.track import TrackerConfig, link, track_manifest

FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- manifest parser
WEIRD_TEXT = st.text(alphabet=st.sampled_from(["a", "Z", " ", "/", ".", "\\", "\x00", "\n", "\r", "\t",
                                               "é", "\u0301", "\u2028", "\x85", "😀", "\ud800", "\ufeff",
                                               '"', "{", "}", ","]), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0]),
    st.text(max_size=8), WEIRD_TEXT,
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=8)
NUM = st.one_of(st.integers(-5, 500), st.floats(-5, 500), st.sampled_from([0, -0.0, 1e308, 10**400]))
FIELD_VALUES = {
    "id": st.one_of(st.text(max_size=6), WEIRD_TEXT, VALUES),
    "media": st.one_of(st.sampled_from(["v.mp4", "w.mp4", "p.jpg"]), WEIRD_TEXT, VALUES),
    "frame": st.one_of(st.integers(-3, 50), st.sampled_from([2**63 - 1, 2**63, 10**30]), VALUES),
    "bbox": st.one_of(st.lists(NUM, min_size=0, max_size=5), VALUES),
    "crop": st.one_of(st.sampled_from(["c.png", "./c.png", "a/../c.png", "/abs/c.png", "."]), WEIRD_TEXT, VALUES),
    "image": st.one_of(st.sampled_from(["f.png", "sub/f.png"]), VALUES),
    "time": st.one_of(NUM, VALUES),
    "score": st.one_of(NUM, VALUES),
    "track": st.one_of(st.sampled_from(["A", "B"]), VALUES),
    "shot": st.one_of(st.integers(-1, 5), VALUES),
    "landmarks": st.one_of(st.lists(st.lists(NUM, max_size=3), max_size=3), VALUES),
    "identity": st.one_of(st.text(max_size=5), VALUES),
}


@st.composite
def records(draw) -> dict:
    """A dict with a random subset of manifest fields of random types, plus extras."""
    names = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), unique=True))
    obj = {name: draw(FIELD_VALUES[name]) for name in names}
    obj.update(draw(st.dictionaries(st.text(max_size=5), VALUES, max_size=2)))
    return obj


def dump(obj, ascii_only: bool) -> str:
    """JSON text as a careless writer might make it (NaN allowed)."""
    return json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)


LINE = st.one_of(
    st.builds(dump, records(), st.booleans()),
    st.builds(dump, VALUES, st.booleans()),  # not an object
    st.sampled_from(["", "   ", "{", "}", "[1, 2]", "NaN", "{'id': 'a'}", '{"id": "a", "id": "b"}',
                     '{"id": "a", "media": "m", "crop": "c", "x": 1e999}', '{"id": 1e400}',
                     '{"id": "a", "media": "m", "crop": "c", "frame": ' + "9" * 5000 + "}"]),
    WEIRD_TEXT,
)


def _resolved_face(m: Manifest, f: Face) -> Face:
    """The face with its paths made absolute and normalised: what a path points to."""
    def norm(p):
        return None if p is None else os.path.normpath(os.path.abspath(m.resolve(p)))
    return Face(**{**{k: getattr(f, k) for k in Face.__slots__ if k not in ("image", "crop")},
                   "image": norm(f.image), "crop": norm(f.crop)})


@settings(FAST, max_examples=250)
@given(lines=st.lists(LINE, min_size=1, max_size=6), gz=st.booleans())
def test_manifest_read_refuses_with_file_and_line_or_round_trips(lines, gz):
    """Any text: a manifest, or a ProxytasksError naming the file and a line; never
    another exception. What is read writes and reads back to equal faces."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("m.jsonl.gz" if gz else "m.jsonl")
        text = "\n".join(lines) + "\n"
        if gz:
            import gzip
            with gzip.open(path, "wt", encoding="utf-8", errors="surrogatepass") as fh:
                fh.write(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            m = Manifest.read(path, check_files=False)
        except ProxytasksError as e:
            message = str(e)
            if not text.strip():
                assert f"{path}: the manifest holds no faces" in message
            else:
                assert re.search(re.escape(str(path)) + r":\d+: ", message), message
            return
        out = Path(tmp) / "sub" / "copy.jsonl"
        m.write(out)
        back = Manifest.read(out, check_files=False)
        assert [_resolved_face(back, f) for f in back] == [_resolved_face(m, f) for f in m]
        # what was accepted is usable downstream: rules, pairs file, digest of the ids
        ps = RuleSet().apply(m)
        ps.save(Path(tmp) / "p.npz")
        assert len(PairSet.load(Path(tmp) / "p.npz", face_ids=[f.id for f in back])) == len(ps)


# --------------------------------------------------------------------------- rules
@st.composite
def rule_manifests(draw) -> list[Face]:
    """Faces in a few videos (frames, tracks) and photos; crops only."""
    n = draw(st.integers(1, 40))
    big = draw(st.booleans())
    frames = st.integers(0, 6) if not big else st.sampled_from([0, 1, 2**40, 2**62, 2**63 - 1])
    faces = []
    for k in range(n):
        media = draw(st.sampled_from(["v", "w", "x", "p1.jpg", "p2.jpg"]))
        photo = media.endswith(".jpg")
        faces.append(Face(id=f"f{k}", media=media, frame=None if photo else draw(frames),
                          track=draw(st.one_of(st.none(), st.sampled_from(["A", "B", "C"]))),
                          crop="crop.png"))
    return faces


@settings(FAST, max_examples=150)
@given(faces=rule_manifests(), policy=st.sampled_from(["different", "drop"]))
def test_rule_pairs_are_sound(faces, policy):
    """Every rule: i < j, no duplicate pair, pairs share what the rule says; with
    policy "different" no pair is both same and different; save/load is exact."""
    with tempfile.TemporaryDirectory() as tmp:
        Manifest(faces, tmp).write(Path(tmp) / "m.jsonl")
        m = Manifest.read(Path(tmp) / "m.jsonl", check_files=False)
        ps = RuleSet(policy=policy).apply(m)
        labels = {r.name: r.label for r in ps.rules}
        assert labels["same-frame"] == labels["track-cooccurrence"] == labels["same-photo"] == "different"
        assert labels["same-track"] == "same"
        assert ((0 <= ps.i) & (ps.i < ps.j) & (ps.j < len(m))).all()
        by_rule = {}
        for name in labels:
            sub = ps.select(name)
            pairs = list(zip(sub.i.tolist(), sub.j.tolist()))
            assert len(set(pairs)) == len(pairs), f"{name}: duplicate pair"
            by_rule[name] = set(pairs)
        for i, j in by_rule["same-frame"]:
            a, b = m[i], m[j]
            assert a.media == b.media and a.frame == b.frame is not None
        for i, j in by_rule["same-photo"]:
            assert m[i].media == m[j].media and m[i].frame is None and m[j].frame is None
        for i, j in by_rule["same-track"]:
            assert m[i].media == m[j].media and m[i].track == m[j].track is not None
        for i, j in by_rule["track-cooccurrence"]:
            assert m[i].media == m[j].media and None is not m[i].track != m[j].track is not None
        # completeness of same-frame: every two faces of one frame are paired (unless dropped)
        expected = {(i, j) for i in range(len(m)) for j in range(i + 1, len(m))
                    if m[i].frame is not None and (m[i].media, m[i].frame) == (m[j].media, m[j].frame)}
        if policy == "different":
            assert by_rule["same-frame"] == expected
            different = by_rule["same-frame"] | by_rule["track-cooccurrence"] | by_rule["same-photo"]
            assert not by_rule["same-track"] & different
        else:
            assert by_rule["same-frame"] <= expected
        ps.save(Path(tmp) / "p.npz")
        back = PairSet.load(Path(tmp) / "p.npz", face_ids=[f.id for f in m])
        assert np.array_equal(back.i, ps.i) and np.array_equal(back.j, ps.j)
        assert np.array_equal(back.rule, ps.rule) and back.rules == ps.rules
        assert (back.n_faces, back.digest, back.conflicts, back.policy) == \
            (ps.n_faces, ps.digest, ps.conflicts, ps.policy)


# --------------------------------------------------------------------------- tracker
@st.composite
def detections(draw, max_n: int = 60, frames: int = 25, side: int = 60):
    """Random boxes (and maybe features) over random frames, with shot labels; boxes on an
    integer grid of ``side`` (a small side makes many exact ties of IoU)."""
    n = draw(st.integers(1, max_n))
    frame = np.array(draw(st.lists(st.integers(0, frames), min_size=n, max_size=n)), dtype=np.int64)
    if draw(st.booleans()):  # shots as cuts in time
        cuts = np.array(sorted(draw(st.lists(st.integers(1, frames), max_size=4))), dtype=np.int64)
        shot = np.searchsorted(cuts, frame, side="right").astype(np.int64)
    else:  # any shot per detection, even inconsistent within a frame
        shot = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    xy = draw(st.lists(st.tuples(st.integers(0, side), st.integers(0, side), st.integers(1, 2 * side // 3),
                                 st.integers(1, 2 * side // 3)), min_size=n, max_size=n))
    boxes = np.array(xy, dtype=np.float64) if draw(st.booleans()) else None
    features = None
    if boxes is None or draw(st.booleans()):
        raw = np.array(draw(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=n, max_size=n)),
                       dtype=np.float64) + 0.5
        features = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    gap = draw(st.integers(0, 4))
    return frame, shot, boxes, features, gap


@settings(FAST, max_examples=200)
@given(dets=detections())
def test_tracks_hold_one_face_a_frame_and_stay_in_one_shot(dets):
    """No track holds two faces of one frame; no track crosses a shot boundary."""
    frame, shot, boxes, features, gap = dets
    track, linked = link(frame, shot, boxes, features, TrackerConfig(max_gap=gap, min_similarity=-1.0))
    assert (track >= 0).all() and len(track) == len(frame)
    members = defaultdict(list)
    for d, t in enumerate(track.tolist()):
        members[t].append(d)
    for t, ds in members.items():
        assert len(set(frame[ds].tolist())) == len(ds), f"track {t} holds two faces of one frame"
        assert len(set(shot[ds].tolist())) == 1, f"track {t} crosses a shot boundary"
    # a detection continued a track exactly when an earlier detection is in its track
    first = {t: min(ds, key=lambda d: (shot[d], frame[d])) for t, ds in members.items()}
    assert all(linked[d] == (first[track[d]] != d) for d in range(len(track)))


@settings(FAST, max_examples=40)
@given(data=st.data())
def test_track_manifest_keeps_given_shots_and_one_face_a_frame(data):
    """track_manifest over two videos and a photo: given shots are kept, no track holds
    two faces of one frame or crosses a shot, photos get no track."""
    faces = []
    for media in ("v", "w"):
        cuts = sorted(data.draw(st.lists(st.integers(1, 12), max_size=3), label=f"cuts {media}"))
        for k in range(data.draw(st.integers(1, 25), label=f"faces {media}")):
            frame = data.draw(st.integers(0, 12))
            box = data.draw(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(4, 24), st.integers(4, 24)))
            faces.append(Face(id=f"{media}{k}", media=media, frame=frame, image="frame.png", bbox=list(box),
                              shot=int(np.searchsorted(cuts, frame, side="right"))))
    faces.append(Face(id="p", media="photo.jpg", crop="frame.png"))
    with tempfile.TemporaryDirectory() as tmp:
        Image.new("RGB", (64, 64), (90, 60, 30)).save(Path(tmp) / "frame.png")
        given_shots = [f.shot for f in faces]
        out = track_manifest(Manifest(faces, tmp), TrackerConfig(appearance="none"), progress=False)
    assert [f.shot for f in out] == given_shots
    assert out[-1].track is None
    members = defaultdict(list)
    for f in out[:-1]:
        assert f.track is not None and f.track.startswith(f"{f.media}#")
        members[(f.media, f.track)].append(f)
    for key, fs in members.items():
        assert len({f.frame for f in fs}) == len(fs), f"{key} holds two faces of one frame"
        assert len({f.shot for f in fs}) == 1, f"{key} crosses a shot boundary"


# --------------------------------------------------------------------------- clustering
@st.composite
def constrained_faces(draw):
    """Vectors, must-link groups and cannot-links that never join one group."""
    n = draw(st.integers(2, 40))
    dim = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    if draw(st.booleans()):  # tight blobs: many merges wanted
        vectors = rng.normal(size=(3, dim))[rng.integers(0, 3, n)] + 0.05 * vectors
    groups = np.array(draw(st.lists(st.integers(-1, 6), min_size=n, max_size=n)), dtype=np.int64)
    candidates = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30))
    cannot = [(a, b) for a, b in candidates if a != b and (groups[a] < 0 or groups[a] != groups[b])]
    cannot = np.array(cannot, dtype=np.int64).reshape(-1, 2)
    threshold = draw(st.sampled_from([None, None, -1.0, 0.0, 0.5]))
    return vectors, groups, cannot, threshold, draw(st.integers(1, 8))


@settings(FAST, max_examples=150)
@given(case=constrained_faces())
def test_clusters_honour_must_and_cannot_links(case):
    """A must-link group always shares a cluster; two cannot-linked faces never do."""
    vectors, groups, cannot, threshold, k = case
    result = cluster_faces(vectors, groups=groups, cannot_links=cannot, k=k, threshold=threshold)
    labels = result.labels
    assert labels.shape == (len(vectors),)
    for g in np.unique(groups[groups >= 0]):
        assert len(np.unique(labels[groups == g])) == 1, f"group {g} split"
    for a, b in cannot.tolist():
        assert labels[a] != labels[b], f"cannot-linked faces {a}, {b} share cluster {labels[a]}"
    assert result.info["clusters"] == len(np.unique(labels))
