"""Ingest + track on real footage with the default detector (issue 4's acceptance)."""
from collections import Counter, defaultdict

import pytest

from proxytasks.ingest import ingest_media
from proxytasks.manifest import Manifest
from proxytasks.rules import RuleSet
from proxytasks.track import track_manifest

from .conftest import shared


def tracked(video, tmp_path, **kw) -> Manifest:
    ingest_media([video], tmp_path / "m.jsonl", progress=False, **kw)
    m = Manifest.read(tmp_path / "m.jsonl")  # validates: boxes inside frames, files readable
    out = track_manifest(m, progress=False)
    out.write(tmp_path / "t.jsonl")
    return Manifest.read(tmp_path / "t.jsonl")


def check_tracks(m: Manifest) -> None:
    per_track = defaultdict(set)
    per_frame = Counter()
    for f in m:
        per_track[f.track].add(f.shot)
        per_frame[(f.track, f.frame)] += 1
    assert all(len(shots) == 1 for shots in per_track.values()), "a track crosses a shot cut"
    assert max(per_frame.values()) == 1, "a track holds two faces of one frame"


@pytest.fixture(scope="module")
def hamilton(tmp_path_factory):
    video = shared("face_recognition_examples", "examples", "short_hamilton_clip.mp4")
    return tracked(video, tmp_path_factory.mktemp("hamilton"))


def test_hamilton_shots_and_tracks(hamilton):
    check_tracks(hamilton)
    first_frame_of_shot = {}
    for f in hamilton:
        first_frame_of_shot.setdefault(f.shot, f.frame)
    # cuts seen by eye at frames 20, 82 and 211 (the audience shot ends at 19)
    assert sorted(first_frame_of_shot.values()) == [0, 20, 82, 211]


def test_hamilton_performer_is_one_track(hamilton):
    """Frames 82-210: one performer singing alone in a close shot (checked by eye on
    frames 82, 114, 146, 178 and 210): his face, the largest in every frame, is one track."""
    largest = {}
    for f in hamilton:
        if 82 <= f.frame <= 210:
            area = f.bbox[2] * f.bbox[3]
            if f.frame not in largest or area > largest[f.frame][0]:
                largest[f.frame] = (area, f.track)
    assert len(largest) >= 120  # found in nearly every frame
    assert len({track for _, track in largest.values()}) == 1


def test_crowd_video_frame_rules(tmp_path):
    video = shared("facenet_pytorch_samples", "examples", "video.mp4")
    m = tracked(video, tmp_path, stride=3)
    check_tracks(m)
    pairs = RuleSet("same-frame,same-track").apply(m)
    assert pairs.counts()["same-frame"] > 0 and pairs.counts()["same-track"] > 0
    assert max(Counter(f.frame for f in m).values()) >= 3  # several faces a frame
