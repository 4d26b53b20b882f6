from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.optimize import linear_sum_assignment

from data_tools.importers import import_crops
from data_tools.synthetic import load_truth, make_episode
from proxytasks.cli import cli
from proxytasks.evaluate import audit_pairs, track_quality
from proxytasks.manifest import Face, Manifest
from proxytasks.rules import RuleSet
from proxytasks.errors import ProxytasksError
from proxytasks.track import TrackerConfig, detect_cuts, frame_step, iou_matrix, link, track_manifest
from tests.test_properties import detections


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


# --------------------------------------------------------------------------- link against frame by frame
def _reference_link(frame, shot, boxes=None, features=None, cfg=None, min_similarity=None):
    """The frame-by-frame tracker that ``link`` replaced, kept verbatim as the reference:
    one frame of one shot at a time, the alive tracks' state in Python lists, the Hungarian
    assignment on every frame."""
    cfg = cfg or TrackerConfig()
    if boxes is None and features is None:
        raise ProxytasksError("tracking needs boxes or appearance features")
    gate = cfg.min_similarity if min_similarity is None else min_similarity
    reach = (cfg.max_gap + 1) * frame_step(frame)
    n = len(frame)
    track = np.full(n, -1, dtype=np.int64)
    linked = np.zeros(n, dtype=bool)
    order = np.lexsort((frame, shot))
    bounds = np.flatnonzero(np.r_[True, (np.diff(frame[order]) != 0) | (np.diff(shot[order]) != 0), True])
    t_frame, t_shot, t_box, t_vel, t_feat = [], [], [], [], []
    alive = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        dets = order[s:e]
        f, sh = int(frame[dets[0]]), int(shot[dets[0]])
        alive = [t for t in alive if t_shot[t] == sh and f - t_frame[t] <= reach]
        pairs = []
        if alive:
            valid = np.ones((len(alive), len(dets)), dtype=bool)
            score = np.zeros((len(alive), len(dets)))
            if boxes is not None:
                dt = np.array([f - t_frame[t] for t in alive], dtype=float)[:, None]
                last = np.stack([t_box[t] for t in alive])
                pred = last + np.stack([t_vel[t] for t in alive]) * dt
                iou = np.maximum(iou_matrix(pred, boxes[dets]), iou_matrix(last, boxes[dets]))
                valid &= iou >= cfg.min_iou
                score += iou
            if features is not None:
                sim = np.stack([t_feat[t] for t in alive]) @ features[dets].T
                valid &= sim >= gate
                score += sim
            rows, cols = linear_sum_assignment(np.where(valid, -score, 1e6))
            pairs = [(alive[r], dets[c]) for r, c in zip(rows, cols) if valid[r, c]]
        matched = set()
        for t, d in pairs:
            if boxes is not None:
                t_vel[t] = (boxes[d] - t_box[t]) / max(f - t_frame[t], 1)
                t_box[t] = boxes[d]
            if features is not None:
                v = cfg.appearance_momentum * t_feat[t] + (1 - cfg.appearance_momentum) * features[d]
                t_feat[t] = v / max(np.linalg.norm(v), 1e-12)
            t_frame[t] = f
            track[d] = t
            linked[d] = True
            matched.add(d)
        for d in dets:
            if d in matched:
                continue
            track[d] = len(t_frame)
            alive.append(track[d])
            t_frame.append(f)
            t_shot.append(sh)
            t_box.append(boxes[d] if boxes is not None else np.zeros(4))
            t_vel.append(np.zeros(4))
            t_feat.append(features[d] if features is not None else np.zeros(0))
    return track, linked


def _random_scene(seed, mode):
    """Shots of people moving with their own velocity (crowded or sparse, some boxes on a
    coarse grid so that IoUs tie), noisy appearance vectors, missed detections, sampled
    frames, shots of any length; sometimes shot labels that ignore time, shuffled ids."""
    rng = np.random.default_rng(seed)
    step = int(rng.choice([1, 1, 2, 5]))
    dim = int(rng.choice([2, 8, 32]))
    frames, shots, boxes, feats = [], [], [], []
    start = 0
    for s in range(int(rng.integers(1, 8))):
        length, people = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        size = rng.uniform(10, 60, people)
        x0 = rng.uniform(0, float(rng.choice([80, 200, 600])), (people, 2))
        v = rng.normal(0, rng.choice([0.5, 3.0, 8.0]), (people, 2))
        ident = rng.standard_normal((people, dim))
        for p in range(people):
            b0 = int(rng.integers(0, length))
            for k in range(b0, int(rng.integers(b0, length)) + 1):
                if rng.random() < 0.15:
                    continue
                xy = x0[p] + v[p] * k + rng.normal(0, 1.5, 2)
                frames.append(start + k * step)
                shots.append(s)
                boxes.append([xy[0], xy[1], size[p], 1.2 * size[p]])
                feats.append(ident[p] + rng.normal(0, 0.8, dim))
        start += (length + int(rng.integers(0, 4))) * step
    n = len(frames)
    frame, shot = np.array(frames, dtype=np.int64), np.array(shots, dtype=np.int64)
    box = np.array(boxes, dtype=np.float64).reshape(n, 4)
    if rng.random() < 0.3:
        box = np.round(box / 4) * 4
        box[:, 2:] = np.maximum(box[:, 2:], 4)
    feat = np.array(feats, dtype=rng.choice([np.float32, np.float64])).reshape(n, dim)
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    if rng.random() < 0.3:  # any shot per detection, even inconsistent within a frame
        shot = rng.integers(0, 3, n).astype(np.int64)
    if rng.random() < 0.2:  # shot ids neither dense nor in time order
        shot = shot * 7919 % 13 - 5
    cfg = TrackerConfig(max_gap=int(rng.integers(0, 4)), min_iou=float(rng.choice([0.0, 0.1, 0.2, 0.5])),
                        min_similarity=float(rng.choice([-1.0, 0.0, 0.3, 0.6])),
                        appearance_momentum=float(rng.choice([0.0, 0.7, 0.95])))
    perm = rng.permutation(n)
    return (frame[perm], shot[perm], box[perm] if mode != "features" else None,
            feat[perm] if mode != "boxes" else None, cfg)


def _assert_same_as_reference(frame, shot, boxes, features, cfg, min_similarity=None):
    track, linked = link(frame, shot, boxes, features, cfg, min_similarity)
    ref_track, ref_linked = _reference_link(frame, shot, boxes, features, cfg, min_similarity)
    assert track.tolist() == ref_track.tolist()
    assert linked.tolist() == ref_linked.tolist()


@pytest.mark.parametrize("mode", ["boxes", "features", "both"])
@pytest.mark.parametrize("seed", range(40))
def test_link_equals_frame_by_frame_reference(seed, mode):
    _assert_same_as_reference(*_random_scene(seed, mode))


def test_link_equals_reference_on_many_crowded_shots(monkeypatch):
    """Many shots in lockstep, crowded enough that both ways of matching run: pairs
    accepted directly, and shots whose contested pairs go to the Hungarian assignment."""
    import proxytasks.track as track_module

    calls = []

    def counting(cost):
        calls.append(cost.shape)
        return linear_sum_assignment(cost)

    monkeypatch.setattr(track_module, "linear_sum_assignment", counting)
    parts = [_random_scene(seed, "both") for seed in range(100, 140)]
    offset = np.cumsum([0] + [int(p[1].max()) - int(p[1].min()) + 1 for p in parts])
    frame = np.concatenate([p[0] for p in parts])
    shot = np.concatenate([p[1] - p[1].min() + o for p, o in zip(parts, offset)])
    boxes = np.concatenate([p[2] for p in parts])
    features = np.concatenate([p[3][:, :2].astype(np.float64) for p in parts])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    cfg = TrackerConfig(max_gap=2, min_iou=0.1)
    for feats in (None, features):
        calls.clear()
        _assert_same_as_reference(frame, shot, boxes, feats, cfg)
        _, linked = link(frame, shot, boxes, feats, cfg)
        assert 0 < len(calls) < len(np.unique(np.c_[shot, frame], axis=0)) and linked.sum() > len(calls)


@st.composite
def _grid_detections(draw):
    """Detections on a coarse grid, many exact ties of IoU and similarity, and a tracker config."""
    frame, shot, boxes, features, gap = draw(detections(max_n=50, frames=20, side=40))
    cfg = TrackerConfig(max_gap=min(gap, 3), min_iou=draw(st.sampled_from([0.0, 0.2])),
                        min_similarity=draw(st.sampled_from([-1.0, 0.3])))
    return frame, shot, boxes, features, cfg


@settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(dets=_grid_detections())
def test_link_equals_reference_with_ties(dets):
    _assert_same_as_reference(*dets)


def test_link_equals_reference_with_ties_seeded():
    """As above, seeded: grid boxes and 2-d grid features tie often, so even the rounding
    of the similarity products must be the reference's for the same assignments."""
    for seed in range(400):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 61))
        frame = rng.integers(0, 26, n)
        if rng.random() < 0.5:
            shot = np.searchsorted(np.sort(rng.integers(1, 26, rng.integers(0, 5))), frame, side="right")
        else:
            shot = rng.integers(0, 4, n)
        boxes = None
        if rng.random() < 0.5:
            boxes = np.c_[rng.integers(0, 61, (n, 2)), rng.integers(1, 41, (n, 2))].astype(np.float64)
        features = None
        if boxes is None or rng.random() < 0.5:
            raw = rng.integers(-3, 4, (n, 2)) + 0.5
            features = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        _assert_same_as_reference(frame, shot, boxes, features,
                                  TrackerConfig(max_gap=int(rng.integers(0, 5)), min_similarity=-1.0))


def test_link_with_a_given_gate_and_sampled_frames_equals_reference():
    frame, shot, boxes, features, cfg = _random_scene(7, "both")
    _assert_same_as_reference(frame * 5 + 100, shot, boxes, features, cfg, min_similarity=0.45)
    frame, shot, boxes, features, cfg = _random_scene(8, "features")
    _assert_same_as_reference(frame, shot, boxes, features.astype(np.float32), cfg, min_similarity=0.2)


def test_link_without_detections_and_without_inputs():
    track, linked = link(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 4)))
    assert track.shape == linked.shape == (0,)
    with pytest.raises(ProxytasksError):
        link(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64))


def test_frame_step_is_the_median_gap_of_distinct_frames():
    assert frame_step(np.array([0, 5, 5, 10, 20, 15, 15])) == 5
    assert frame_step(np.array([3, 3])) == 1
    assert frame_step(np.array([0, 2, 3, 10])) == 2
