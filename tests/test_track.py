from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from data_tools.importers import import_crops
from data_tools.synthetic import load_truth, make_episode
from proxytasks.cli import cli
from proxytasks.evaluate import audit_pairs, track_quality
from proxytasks.manifest import Face, Manifest
from proxytasks.rules import RuleSet
from proxytasks.track import TrackerConfig, detect_cuts, iou_matrix, link, track_manifest


def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[5, 0, 10, 10], [20, 20, 5, 5]], float)
    assert np.allclose(iou_matrix(a, b), [[50 / 150, 0], [50 / 150, 0]])


def test_link_crossing_keeps_identities_by_appearance():
    # two faces move towards each other and cross; boxes overlap heavily mid-way
    frames, boxes, feats = [], [], []
    for f in range(9):
        for person, (x0, dx) in enumerate([(0.0, 6.0), (48.0, -6.0)]):
            frames.append(f)
            boxes.append([x0 + dx * f, 0, 20, 20])
            feats.append([1.0, 0.0] if person == 0 else [0.0, 1.0])
    frame = np.array(frames)
    track, _ = link(frame, np.zeros_like(frame), np.array(boxes), np.array(feats), TrackerConfig())
    assert len(set(track[0::2])) == 1 and len(set(track[1::2])) == 1
    assert track[0] != track[1]


def test_link_bridges_gaps_up_to_max_gap_and_never_crosses_shots():
    frame = np.array([0, 1, 4, 5, 9, 10])
    shot = np.array([0, 0, 0, 0, 0, 1])
    boxes = np.tile([[10.0, 10, 20, 20]], (6, 1))
    track, _ = link(frame, shot, boxes, None, TrackerConfig(max_gap=2))
    assert track[0] == track[1] == track[2] == track[3]  # gap of 2 missed frames bridged
    assert track[4] != track[3]  # gap of 3 missed frames is too long
    assert track[5] != track[4]  # shot cut


def test_adaptive_cut_threshold():
    d = np.r_[np.full(30, 0.02), 0.7, np.full(30, 0.03), 0.35]
    assert np.flatnonzero(detect_cuts(d, TrackerConfig())).tolist() == [30, 61]


def _check_tracking(manifest: Manifest, truth: dict) -> dict:
    tracked = track_manifest(manifest, progress=False)
    by_frame_track = defaultdict(int)
    for f in tracked:
        by_frame_track[(f.frame, f.track)] += 1
    assert max(by_frame_track.values()) == 1, "a track holds two faces of one frame"
    # detected shots are exactly the true shots
    pairs = {(f.shot, truth[f.id]["shot"]) for f in tracked}
    assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(pairs)
    audit = audit_pairs(tracked, RuleSet("same-frame,same-track").apply(tracked))["rules"]
    quality = track_quality(tracked, [truth[f.id]["appearance"] for f in tracked])
    assert audit["same-frame"]["precision"] == 1.0
    assert audit["same-track"]["precision"] >= 0.99
    assert quality["fragmentation"] < 1.5
    return quality


def test_synthetic_episode_tracks(episode):
    q = _check_tracking(Manifest.read(episode / "manifest.jsonl"), load_truth(episode))
    assert q["purity"] >= 0.99


def test_synthetic_episode_with_real_faces_tracks(tmp_path, orl_identities):
    make_episode(tmp_path, orl_identities, seed=3, progress=False)
    _check_tracking(Manifest.read(tmp_path / "manifest.jsonl"), load_truth(tmp_path))


def test_tracking_without_boxes_on_frame_indexed_crops(tmp_path):
    make_episode(tmp_path / "ep", n_shots=3, fps=6, seed=1, progress=False)
    m = Manifest.read(tmp_path / "ep" / "manifest.jsonl")
    truth = load_truth(tmp_path / "ep")
    rng = np.random.default_rng(0)
    by_frame = defaultdict(list)
    for f in m:
        by_frame[f.frame].append(f)
    source = {}
    (tmp_path / "crops").mkdir()
    for frame, faces in by_frame.items():
        img = Image.open(m.resolve(faces[0].image))
        for k, f in zip(rng.permutation(len(faces)), faces):  # detection order is arbitrary
            x, y, w, h = f.bbox
            name = f"image_{frame}_{k}"
            img.crop((x, y, x + w, y + h)).save(tmp_path / "crops" / f"{name}.jpg")
            source[name] = f.id
    crops = import_crops(tmp_path / "crops", tmp_path / "crops.jsonl")
    assert all(f.bbox is None for f in crops)
    tracked = track_manifest(crops, progress=False)
    tracked = tracked.replace(identity=[truth[source[f.id]]["identity"] for f in tracked])
    audit = audit_pairs(tracked, RuleSet("same-track").apply(tracked))["rules"]["same-track"]
    assert audit["precision"] >= 0.99
    quality = track_quality(tracked, [truth[source[f.id]]["appearance"] for f in tracked])
    assert quality["mean_track_length"] > 5 and quality["fragmentation"] < 2.5


def test_photos_keep_no_track_and_given_shots_are_kept(tmp_path, frame_image):
    faces = [Face(id="p", media="photo", crop="frame.png"),
             Face(id="a", media="v", frame=0, image="frame.png", bbox=[1, 1, 20, 20], shot=0),
             Face(id="b", media="v", frame=1, image="frame.png", bbox=[1, 1, 20, 20], shot=7)]
    out = track_manifest(Manifest(faces, tmp_path), progress=False)
    assert out[0].track is None and out[0].shot is None
    assert [out[1].shot, out[2].shot] == [0, 7] and out[1].track != out[2].track


def test_track_cli_reports_fragmentation(episode, tmp_path):
    res = CliRunner().invoke(cli, ["-q", "track", str(episode / "manifest.jsonl"), "-o", str(tmp_path / "t.jsonl"),
                                   "--truth", str(episode / "truth.jsonl")])
    assert res.exit_code == 0, res.output
    assert "fragmentation" in res.output and "purity" in res.output
    assert Manifest.read(tmp_path / "t.jsonl").summary()["tracks"] > 10
    res = CliRunner().invoke(cli, ["track", str(episode / "manifest.jsonl"), "-o", str(tmp_path / "x.jsonl"),
                                   "--appearance", "fancy"])
    assert res.exit_code == 2


def test_adaptive_gate_groups_by_shot_and_frame_even_near_int64_max():
    from proxytasks.track import _adaptive_gate

    big = 2**63 - 1
    frame = np.array([big, big, big, 2**62, 2**62, 0], dtype=np.int64)
    shot = np.array([1, 1, 0, 0, 0, 1], dtype=np.int64)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cfg = TrackerConfig(min_similarity=-1.0, similarity_quantile=0.5)
    # faces of one frame of one shot: (0, 1) and (3, 4); face 2 shares face 0's frame number in another shot
    expected = np.quantile([feats[0] @ feats[1], feats[3] @ feats[4]], 0.5)
    assert _adaptive_gate(frame, shot, feats, cfg) == pytest.approx(float(expected), abs=1e-6)
