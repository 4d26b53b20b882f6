import json
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from proxytasks.embedder import Embedder
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.pairs import PairSet, RuleInfo
from proxytasks.rules import RuleSet
from proxytasks.train import Constraints, GroupBatcher, TrainConfig, holdout_mask, score_vectors, train

FAST = dict(steps=30, eval_every=10, dim=32)


def run(tmp_path, name, manifest, pairs, features=None, **kw):
    folder = tmp_path / name
    return folder, train(manifest, pairs, folder, TrainConfig(**{**FAST, **kw}), progress=False, features=features)


def _best_scored(scores: dict) -> str:
    """The candidate the selection must pick: the highest validation AUC, the trained head on ties,
    the pretrained features when nothing is scored."""
    scored = {k: v for k, v in scores.items() if v is not None}
    return max(scored, key=lambda k: (scored[k], k == "trained")) if scored else "pretrained"


def _scene(n_ids=6, shots=20, frames=10, per_frame=3, seed=0):
    """One video of ``shots`` shots; each shot shows ``per_frame`` of ``n_ids`` people in every
    frame. Rule pairs: consecutive faces of a person in a shot are the same (a track), faces of
    one frame are different. Returns (manifest, pairs, identity per face)."""
    rng = np.random.default_rng(seed)
    faces, ident, i, j, rule = [], [], [], [], []
    for s in range(shots):
        people = rng.choice(n_ids, per_frame, replace=False)
        for f in range(frames):
            frame = s * frames + f
            row = list(range(len(faces), len(faces) + per_frame))
            faces += [Face(id=f"{frame}-{k}", media="v", frame=frame, crop="x") for k in range(per_frame)]
            ident += people.tolist()
            for a in range(per_frame):
                pairs = [(row[a], row[b], 1) for b in range(a + 1, per_frame)]  # same frame: different
                pairs += [(row[a] - per_frame, row[a], 0)] if f else []  # the previous frame's face: same
                for x, y, r in pairs:
                    i.append(x), j.append(y), rule.append(r)
    rules = [RuleInfo("same-track", "same", 1.0), RuleInfo("same-frame", "different", 1.0)]
    return Manifest(faces), PairSet(np.array(i), np.array(j), np.array(rule), rules, len(faces)), np.array(ident)


def _features(ident, nuisance=0.0, width=1280, seed=0):
    """Trunk features (1 view): a unit vector per person, a whisper of noise, and optionally a
    per-face nuisance of norm about 4 * ``nuisance`` in 16 fixed directions that swamps the
    cosine of the raw features but that a linear head can learn to ignore."""
    rng = np.random.default_rng(seed)
    person = rng.standard_normal((ident.max() + 1, width))
    x = person[ident] / np.linalg.norm(person[ident], axis=1, keepdims=True)
    x = x + 0.02 * rng.standard_normal(x.shape) / np.sqrt(width)
    if nuisance:
        basis = np.linalg.qr(rng.standard_normal((width, 16)))[0].T
        x = x + nuisance * rng.standard_normal((len(ident), 16)) @ basis
    return x[None].astype(np.float32)


def test_selection_keeps_the_trained_head_when_the_raw_features_are_swamped(tmp_path):
    manifest, pairs, ident = _scene()
    folder = tmp_path / "swamped"
    summary = train(manifest, pairs, folder, TrainConfig(**{**FAST, "init": "random", "views": ("plain",)}),
                    progress=False, features=_features(ident, nuisance=1.0))
    scores = summary["scores"]
    assert set(scores) == {"pretrained", "trained"}  # init="random": no KISSME candidate
    assert scores["pretrained"] < 0.7 and scores["trained"] > 0.95
    assert summary["selected"] == "trained"
    model = Embedder.load(folder)
    assert model.head_kind == "linear" and model.dim == 32


def test_selection_keeps_the_pretrained_features_when_no_head_can_match_them(tmp_path):
    # The raw features separate the people perfectly (held-out AUC 1). A head of width 1 maps
    # every face to +1 or -1, so of the three different people in a held-out frame two share a
    # sign: their cannot-link ties the must-links and neither KISSME nor the trained head reach 1.
    manifest, pairs, ident = _scene()
    folder = tmp_path / "narrow"
    summary = train(manifest, pairs, folder, TrainConfig(**{**FAST, "dim": 1, "views": ("plain",)}),
                    progress=False, features=_features(ident))
    scores = summary["scores"]
    assert scores["pretrained"] == 1.0 and scores["kissme"] < 1.0 and scores["trained"] < 1.0
    assert summary["selected"] == "pretrained"
    model = Embedder.load(folder)
    assert model.head_kind == "identity" and model.dim == 1280


def test_a_saturated_held_out_score_keeps_the_latest_head(tmp_path):
    # Separable people: every validation scores 1.0, and a tie says nothing about identity;
    # the selection keeps the last head validated, not the first (issue 16).
    manifest, pairs, ident = _scene()
    folder, summary = run(tmp_path, "saturated", manifest, pairs, _features(ident), init="random", views=("plain",))
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [row["val_auc"] for row in log] == [1.0] * 3 and [row["step"] for row in log] == [10, 20, 30]
    assert summary["selected"] == "trained" and summary["best_step"] == 30


def test_run_folder_holds_model_config_log_and_safe_checkpoint(tmp_path, small_episode, small_episode_features):
    _, manifest, pairs = small_episode
    folder, summary = run(tmp_path, "run", manifest, pairs, small_episode_features)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["backbone"] == "tf_efficientnet_lite0" and cfg["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert {"torch", "timm", "proxytasks"} <= set(cfg["versions"])
    assert cfg["options"]["steps"] == 30 and cfg["train"]["steps"] == 30
    assert summary["loss"] == "track-supcon" and set(summary["scores"]) == {"pretrained", "kissme", "trained"}
    assert summary["selected"] == _best_scored(summary["scores"])
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [10, 20, 30]
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["step"] == 30
    model = Embedder.load(folder)
    assert model.dim == (1280 if summary["selected"] == "pretrained" else 32)  # the selected model is saved
    x = torch.randn(2, 3, 128, 128)
    out = model(x)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_identity_is_never_read(tmp_path, small_episode, small_episode_features):
    _, manifest, pairs = small_episode
    names = [f.identity for f in manifest]
    shuffled = manifest.replace(identity=list(np.random.default_rng(0).permutation(names)))
    a, _ = run(tmp_path, "a", manifest, pairs, small_episode_features, init="random")
    b, _ = run(tmp_path, "b", shuffled, RuleSet("same-frame,same-track,track-cooccurrence").apply(shuffled),
               small_episode_features, init="random")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = torch.load(a / "checkpoint.pt", weights_only=True)["head"]
    cb = torch.load(b / "checkpoint.pt", weights_only=True)["head"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, small_episode):
    _, manifest, pairs = small_episode
    full, _ = run(tmp_path, "full", manifest, pairs, steps=40)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "features.npz", part / "features.npz")  # the cached trunk features
    train(manifest, pairs, part, TrainConfig(**{**FAST, "steps": 20}), progress=False)
    summary = train(manifest, pairs, part, TrainConfig(**{**FAST, "steps": 40}), resume=True, progress=False)
    assert summary["steps"] == 40
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert all(torch.allclose(a["head"][k], b["head"][k], atol=1e-6) for k in a["head"])
    assert json.loads(a["log"]) [-1]["loss"] == pytest.approx(json.loads(b["log"])[-1]["loss"], rel=1e-5)


def test_time_budget_stops_cleanly_and_saves(tmp_path, small_episode):
    _, manifest, pairs = small_episode
    folder = tmp_path / "budget"
    folder.mkdir()
    shutil.copy(small_episode[0] / "tracked.jsonl", folder / "unused.jsonl")
    start = time.perf_counter()
    summary = train(manifest, pairs, folder, TrainConfig(dim=32, time_budget=3.0, steps=10 ** 9), progress=False)
    assert time.perf_counter() - start <= 3.0 + 30  # held (B + 5 s on a quiet machine: bench/train_budget.py)
    assert summary["stopped"] == "time budget" and summary["steps"] >= 10
    assert summary["selected"] == _best_scored(summary["scores"])
    # the saved model is the selected one: the trunk's own features (width 1280) or the 32-wide head
    model = Embedder.load(folder)
    if summary["selected"] == "pretrained":
        assert model.head_kind == "identity" and model.dim == 1280
    else:
        assert model.head_kind == "linear" and model.dim == 32
    # caching the third view would take the budget: the first two only are cached (of the faces cached)
    cached = summary["features"]
    with np.load(folder / "features.npz", allow_pickle=False) as z:
        assert z["features"].shape[:2] == (2, cached["faces"]) and cached["views"] == 2
        assert len(z["faces"]) == cached["faces"] and int(z["n_faces"]) == len(manifest)


def test_steps_cut_short_by_the_budget_are_still_validated(tmp_path, small_episode, small_episode_features):
    _, manifest, pairs = small_episode
    folder = tmp_path / "cut"
    summary = train(manifest, pairs, folder, TrainConfig(dim=32, time_budget=4.0, steps=10 ** 7), progress=False,
                    features=small_episode_features)
    assert summary["stopped"] == "time budget"
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert len(log) >= 3 and log[-1]["step"] == summary["steps"]  # validated by seconds, not only at the end


def test_a_budget_without_steps_stops_at_max_epochs(tmp_path, small_episode, small_episode_features, monkeypatch):
    import proxytasks.train as train_module

    _, manifest, pairs = small_episode
    monkeypatch.setattr(train_module, "MAX_EPOCHS", 3)
    summary = train(manifest, pairs, tmp_path / "capped", TrainConfig(dim=32, time_budget=600.0), progress=False,
                    features=small_episode_features)
    steps, epochs = summary["steps"], summary["epochs"]
    assert summary["stopped"] == "steps" and steps >= 2 and epochs <= 3 < epochs * (steps + 1) / steps
    given = train(manifest, pairs, tmp_path / "given", TrainConfig(dim=32, time_budget=600.0, epochs=5),
                  progress=False, features=small_episode_features)
    assert given["epochs"] <= 5 < given["epochs"] * (given["steps"] + 1) / given["steps"]  # asked for: wins


def test_a_budget_too_short_for_the_cache_trains_a_subsample(tmp_path, small_episode, caplog):
    _, manifest, pairs = small_episode
    with caplog.at_level("WARNING"):
        summary = train(manifest, pairs, tmp_path / "tiny", TrainConfig(dim=32, time_budget=0.5, steps=None,
                                                                        batch_size=16), progress=False)
    assert summary["steps"] >= 10 and summary["stopped"] == "time budget"  # always some steps
    cached = summary["features"]
    assert cached["subsample"] and 0 < cached["faces"] < len(manifest)  # whole tracks
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert "subsample" in caplog.text and "--time-budget" in caplog.text


def test_photos_without_pairs_train_self_supervised(tmp_path, small_episode):
    _, manifest, _ = small_episode
    photos = Manifest([Face(id=f.id, media=f"photo{k}", image=f.image, bbox=f.bbox) for k, f in
                       enumerate(manifest.faces[:40])], manifest.root)
    pairs = RuleSet("same-photo").apply(photos)
    assert len(pairs) == 0
    folder, summary = run(tmp_path, "photos", photos, pairs, steps=10, views=("plain", "flip"))
    assert summary["loss"] == "ntxent" and summary["steps"] == 10
    # nothing scores the trained head: the pretrained features are kept, the head stays in the checkpoint
    assert summary["selected"] == "pretrained" and set(summary["scores"].values()) == {None}
    assert Embedder.load(folder).head_kind == "identity" and (folder / "checkpoint.pt").is_file()


def test_batches_take_negatives_only_from_cannot_links():
    # groups: track A = faces 0-3, track B = 4-7, track C = 8-11; A and B share frames
    n = 12
    i = [0, 0, 4, 8]
    j = [4, 5, 6, 9]
    ps = PairSet(np.array([0, 1, 2, 4, 5, 6, 8, 9, 10] + i[:2]), np.array([1, 2, 3, 5, 6, 7, 9, 10, 11] + j[:2]),
                 np.array([0] * 9 + [1] * 2), [RuleInfo("same-track", "same", 1), RuleInfo("same-frame", "different", 1)],
                 n_faces=n)
    cons = Constraints.from_pairs(ps)
    assert len(np.unique(cons.group)) == 3 and cons.cannot.shape == (1, 2)
    batcher = GroupBatcher(cons, np.ones(n, bool), 1, TrainConfig(groups_per_batch=3, faces_per_group=3))
    for step in range(5):
        faces, views, (a1, p, a2, neg) = batcher.batch(step)
        g = cons.group[faces]
        assert (g[a1.numpy()] == g[p.numpy()]).all()
        pairs = {tuple(sorted(x)) for x in zip(g[a2.numpy()].tolist(), g[neg.numpy()].tolist())}
        assert pairs == {tuple(sorted((cons.group[0], cons.group[4])))}
        assert cons.group[8] not in g  # C has no cannot-link: never an anchor while others have
    with pytest.raises(ProxytasksError, match="no training pairs"):
        GroupBatcher(Constraints(np.arange(3), np.zeros((0, 2), np.int64), np.zeros(0)), np.ones(3, bool), 1,
                     TrainConfig())


def test_batches_drawn_by_chunk_are_whole_and_the_same_drawn_alone():
    # 12 tracks of 5 faces, cannot-links between track k and k + 1 .. k + 3
    n, size = 60, 5
    same = [(t * size + f, t * size + f + 1) for t in range(12) for f in range(size - 1)]
    cannot = [(t * size, u * size) for t in range(12) for u in range(t + 1, min(t + 4, 12))]
    i, j = (np.array(x) for x in zip(*(same + cannot)))
    ps = PairSet(i, j, np.array([1] * len(same) + [0] * len(cannot)),
                 [RuleInfo("same-track", "same", 1), RuleInfo("same-frame", "different", 1)], n_faces=n)
    cons = Constraints.from_pairs(ps)
    linked = {tuple(x) for x in cons.cannot.tolist()}
    cfg = TrainConfig(groups_per_batch=3, faces_per_group=3, negative_groups=1)
    batcher = GroupBatcher(cons, np.ones(n, bool), 2, cfg)
    steps = [batcher.batch(s) for s in range(70)]  # three chunks, the last one begun
    for s in (0, 31, 32, 45, 69):  # a fresh batcher (a resumed run) draws the same batch
        faces, views, tup = GroupBatcher(cons, np.ones(n, bool), 2, cfg).batch(s)
        assert np.array_equal(faces, steps[s][0]) and np.array_equal(views, steps[s][1])
        assert all(torch.equal(a, b) for a, b in zip(tup, steps[s][2]))
    assert not np.array_equal(steps[0][0], steps[32][0])
    for faces, views, (a1, p, a2, neg) in steps:
        g = cons.group[faces].reshape(-1, cfg.faces_per_group)
        assert (g == g[:, :1]).all() and len(set(g[:, 0])) == len(g)  # one block per distinct group
        assert 3 <= len(g) <= 6  # the chosen groups and at most one neighbour of each
        g = g.reshape(-1)
        a1, p, a2, neg = (x.numpy() for x in (a1, p, a2, neg))
        assert (g[a1] == g[p]).all() and ((faces[a1] != faces[p]) | (views[a1] != views[p])).all()
        want_pos = sum(faces[x] != faces[y] or views[x] != views[y]
                       for x in range(len(g)) for y in range(x + 1, len(g)) if g[x] == g[y])
        assert len(a1) == want_pos  # every positive pair of the batch
        got = {tuple(sorted(x)) for x in zip(g[a2].tolist(), g[neg].tolist())}
        blocks = sorted(set(g.tolist()))
        want = {(a, b) for a in blocks for b in blocks if (a, b) in linked}
        assert got == want and len(a2) == len(want) * cfg.faces_per_group ** 2


def test_holdout_chunks_and_auc():
    faces = [Face(id=str(k), media="v", frame=k, crop="x") for k in range(100)]
    val = holdout_mask(Manifest(faces), 0.2, seed=0)
    assert val.sum() == 20 and np.array_equal(val, holdout_mask(Manifest(faces), 0.2, seed=0))
    runs = np.flatnonzero(np.diff(val.astype(int)))  # two contiguous chunks at most 4 edges
    assert len(runs) <= 4
    v = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    # positives (0,1): 0.8, (2,3): 0.8; negatives (0,2): 0.0, (1,3): 0.96 -> AUC 0.5
    assert score_vectors(v, np.array([[0, 1], [2, 3]]), np.array([[0, 2], [1, 3]])) == 0.5
    assert score_vectors(v, np.zeros((0, 2), int), np.array([[0, 2]])) is None


def test_given_features_train_as_the_cached_ones(tmp_path, small_episode):
    _, manifest, pairs = small_episode
    folder, cached = run(tmp_path, "a", manifest, pairs, views=("plain", "flip"))
    with np.load(folder / "features.npz") as z:
        feats = z["features"].astype(np.float32)
    given = train(manifest, pairs, tmp_path / "b", TrainConfig(**FAST, views=("plain", "flip")), progress=False,
                  features=feats)
    assert not (tmp_path / "b" / "features.npz").exists()  # neither computed nor cached
    assert given["scores"] == cached["scores"] and given["best_step"] == cached["best_step"]
    a, b = load_file(folder / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ProxytasksError, match="features of shape"):
        train(manifest, pairs, tmp_path / "c", TrainConfig(**FAST), progress=False, features=feats[:, :5])


def test_cosine_schedule_decays_to_zero_and_needs_an_end(tmp_path, small_episode, small_episode_features):
    _, manifest, pairs = small_episode
    lrs = {}
    for schedule in ("constant", "cosine"):
        folder, _ = run(tmp_path, schedule, manifest, pairs, small_episode_features, lr_schedule=schedule)
        lrs[schedule] = torch.load(folder / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    assert lrs["constant"] == pytest.approx(1e-3)
    assert lrs["cosine"] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 29 / 30)))  # the last step's
    with pytest.raises(ProxytasksError, match="needs --steps or --epochs"):
        train(manifest, pairs, tmp_path / "d", TrainConfig(lr_schedule="cosine", time_budget=5), progress=False)
    with pytest.raises(ProxytasksError, match="unknown learning-rate schedule"):
        train(manifest, pairs, tmp_path / "e", TrainConfig(**{**FAST, "lr_schedule": "step"}), progress=False)
