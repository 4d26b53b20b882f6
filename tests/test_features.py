"""Trunk features and their cache: key check, subsample of whole tracks within a deadline."""
import json
import logging
import time

import numpy as np
import pytest
import torch

from proxytasks.embedder import create_embedder
from proxytasks.features import (
    CACHE_NAME,
    FaceDataset,
    cache_features,
    cache_order,
    feature_key,
    plain_features,
    read_cache,
    run_cache,
    trunk_features,
    write_cache,
)
from proxytasks.train import Constraints, TrainConfig, train

TINY = dict(backbone="test_efficientnet", weights="none", input_size=32)  # timm's test model, random init


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_embedder(TINY["backbone"], weights="none", dim=8, input_size=32)


def key_of(manifest, views=("plain", "flip"), backbone="test_efficientnet"):
    return feature_key(backbone, "none", 32, views, 0, [f.id for f in manifest.faces])


def test_views_are_computed_together_as_one_by_one(tiny, small_episode):
    _, manifest, _ = small_episode
    both = trunk_features(tiny, manifest, ("plain", "flip", "augment"), batch_size=16, workers=0, progress=False)
    for v, view in enumerate(("plain", "flip", "augment")):
        alone = trunk_features(tiny, manifest, (view,), batch_size=16, workers=0, progress=False)[0]
        assert np.allclose(both[v], alone, atol=1e-5), view
    assert not np.allclose(both[0], both[1])
    # a subsample keeps each face's seeded augmentation when given its positions
    pick = np.array([3, 7, 11])
    sub = manifest.__class__([manifest.faces[i] for i in pick], manifest.root)
    data_sub = FaceDataset(sub, tiny.transform(), "augment", positions=pick)
    data_all = FaceDataset(manifest, tiny.transform(), "augment")
    assert torch.equal(data_sub[1], data_all[7])
    # stop() ends the pass early with the faces done
    part = trunk_features(tiny, manifest, ("plain",), batch_size=8, workers=0, progress=False, stop=lambda k: k >= 16)
    assert part.shape[1] == 16 and np.allclose(part[0], both[0, :16], atol=1e-5)


def test_a_stale_cache_is_refused_and_recomputed(tiny, small_episode, tmp_path, caplog):
    _, manifest, _ = small_episode
    path = tmp_path / CACHE_NAME
    key = key_of(manifest)
    cache, info = cache_features(tiny, manifest, ("plain", "flip"), path, key, workers=0, progress=False)
    assert cache.complete and info["computed"] == len(manifest) and read_cache(path, key) is not None
    # a cache written for other faces (or another model) under the same file name
    other = key_of(manifest, backbone="resnet18")
    write_cache(path, type(cache)(cache.features + 5.0, cache.faces, cache.n_faces), other)
    with caplog.at_level(logging.WARNING, logger="proxytasks.features"):
        assert read_cache(path, key) is None
    assert "another backbone" in caplog.text
    again, info = cache_features(tiny, manifest, ("plain", "flip"), path, key, workers=0, progress=False)
    assert info["computed"] == len(manifest)  # recomputed, not the +5 features
    assert np.allclose(again.features, cache.features, atol=1e-6)
    with np.load(path) as z:
        assert json.loads(str(z["key"])) == key
    # an unreadable file is ignored the same way
    path.write_bytes(b"not an npz")
    assert read_cache(path, key) is None


def test_order_keeps_whole_tracks_with_their_cooccurring_tracks():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 30, 300)
    group = np.unique(group, return_inverse=True)[1]
    n_groups = group.max() + 1
    cannot = np.unique(np.sort(rng.integers(0, n_groups, (40, 2)), axis=1), axis=0)
    cannot = cannot[cannot[:, 0] != cannot[:, 1]]
    order, ends, track_ends = cache_order(group, cannot, seed=1)
    assert np.array_equal(np.sort(order), np.arange(300)) and ends[-1] == 300
    assert set(ends.tolist()) <= set(track_ends.tolist()) and len(track_ends) == len(np.unique(group))
    for s, e in zip(np.r_[0, track_ends[:-1]], track_ends):  # each track in one piece
        assert len(set(group[order[s:e]].tolist())) == 1
    for end in ends:
        prefix = set(group[order[:end]].tolist())
        for g in prefix:  # every group of a prefix is whole
            assert (np.isin(np.flatnonzero(group == g), order[:end])).all()
    start = 0
    for end in ends:  # each unit: a seed group and its neighbours not taken before
        unit = group[order[start:end]]
        seed = unit[0]
        nb = set(cannot[cannot[:, 0] == seed, 1]) | set(cannot[cannot[:, 1] == seed, 0])
        before = set(group[order[:start]].tolist())
        assert nb - before <= set(unit.tolist())
        start = end


def test_a_deadline_caches_a_subsample_of_whole_units_then_extends_it(tiny, small_episode, tmp_path, caplog):
    _, manifest, pairs = small_episode
    cons = Constraints.from_pairs(pairs)
    order = cache_order(cons.group, cons.cannot, seed=0)
    path = tmp_path / CACHE_NAME
    key = key_of(manifest)
    with caplog.at_level(logging.WARNING, logger="proxytasks.features"):
        cache, info = cache_features(tiny, manifest, ("plain", "flip"), path, key, order, deadline=time.perf_counter(),
                                     batch_size=8, workers=0, progress=False)
    assert info["subsample"] and 0 < info["faces"] < len(manifest) and "subsample" in caplog.text
    assert info["faces"] in set(order[2].tolist())  # whole tracks (the first unit is larger than a batch)
    assert set(cache.faces.tolist()) == set(order[0][:info["faces"]].tolist())
    assert (np.isin(np.flatnonzero(np.isin(cons.group, cons.group[cache.faces])), cache.faces)).all()
    full, info2 = cache_features(tiny, manifest, ("plain", "flip"), path, key, order, workers=0, progress=False)
    assert full.complete and info2["computed"] == len(manifest) - info["faces"]
    fresh = trunk_features(tiny, manifest, ("plain", "flip"), workers=0, progress=False)
    assert np.abs(full.features - fresh).max() < 2e-2  # float16 in the cache


def test_train_on_a_short_budget_trains_a_subsample_and_readers_fill_it(small_episode, tmp_path):
    _, manifest, pairs = small_episode
    cfg = TrainConfig(**TINY, dim=8, time_budget=0.01, steps=None, batch_size=16)
    summary = train(manifest, pairs, tmp_path / "run", cfg, progress=False)
    assert summary["steps"] >= 10  # always some steps
    feats = summary["features"]
    assert feats["subsample"] and feats["faces"] < len(manifest)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["features"]
    assert saved == feats
    ids = [f.id for f in manifest.faces]
    assert not run_cache(tmp_path / "run", ids).complete
    plain = plain_features(tmp_path / "run", manifest, workers=0, progress=False)  # the rest computed
    assert plain.shape == (len(manifest), 256) and np.isfinite(plain).all()
    assert plain_features(tmp_path / "run", None, ids=ids) is None  # incomplete and nothing to compute with
