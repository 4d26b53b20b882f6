"""The three ways to train trunk + embedding -> naming: independent, sequential, global."""
import csv
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.embed import head_vectors, trunk_features
from proxytasks.embedder import create_embedder
from proxytasks.errors import ProxytasksError
from proxytasks.naming import name_faces
from proxytasks.finetune import (GlobalConfig, fine_tune_global, prefix_features, pretrained_vectors,
                                split_trunk, suffix_vectors)

SIZE = 64  # small inputs keep the file fast; the cut is the same at any size


def invoke(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def draw_named(manifest, per_identity: int, seed: int = 0) -> dict[int, str]:
    ident = np.array([f.identity for f in manifest.faces])
    rng = np.random.default_rng(seed)
    return {int(i): str(c) for c in np.unique(ident)
            for i in rng.choice(np.flatnonzero(ident == c), per_identity, replace=False)}


def params(module):
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("backbone,size", [("tf_efficientnet_lite0", 96), ("mobilenetv2_100", 96),
                                           ("dlib_resnet29", 150)])
def test_split_trunk_is_the_trunk(backbone, size):
    trunk = create_embedder(backbone, dim=16).trunk.eval()
    prefix, suffix = split_trunk(trunk)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), trunk(x), atol=1e-4, rtol=1e-4)
    assert params(prefix) | params(suffix) == params(trunk) and not params(prefix) & params(suffix)


def test_split_trunk_refuses_other_architectures():
    trunk = create_embedder("resnet18", weights="none", dim=16).trunk
    with pytest.raises(ProxytasksError, match=r"resnet18.*tf_efficientnet_lite0.*dlib_resnet29"):
        split_trunk(trunk)


@pytest.fixture(scope="module")
def system(small_episode):
    _, manifest, pairs = small_episode
    embedder = create_embedder("tf_efficientnet_lite0", dim=32, input_size=SIZE)
    prefix = prefix_features(embedder, manifest, progress=False)
    return embedder, prefix, manifest, pairs


def test_prefix_features_through_the_suffix_are_the_embedding(system):
    embedder, prefix, manifest, _ = system
    assert prefix.dtype == np.float16 and prefix.ndim == 5 and prefix.shape[:2] == (2, len(manifest))
    assert not np.array_equal(prefix[0], prefix[1])  # plain and mirrored
    feats = trunk_features(embedder, manifest, ("plain",), progress=False)[0]
    v = suffix_vectors(embedder, prefix[0])
    assert v.shape == (len(manifest), 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.abs(v - head_vectors(embedder, feats)).max() < 5e-3  # float16 activations
    p = pretrained_vectors(feats)
    assert np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)
    assert np.allclose(p * np.linalg.norm(feats, axis=1, keepdims=True), feats, atol=1e-4)


def test_fine_tune_global_trains_the_suffix_on_a_copy_and_names_well(system):
    embedder, prefix, manifest, pairs = system
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    flags = [p.requires_grad for p in embedder.parameters()]
    named = draw_named(manifest, 2)
    tuned, summary = fine_tune_global(embedder, prefix, pairs, named, GlobalConfig(steps=12), progress=False)
    assert summary["steps"] == 12 and summary["stopped"] == "steps" and summary["named"] == len(named)
    assert summary["names"] == 4 and summary["pair_loss"] == "track-supcon"
    assert summary["loss_after"] < summary["loss_before"] and np.isfinite(summary["loss"])
    # the caller's embedder is untouched; the copy's last stage moved, its earlier stages did not
    assert all(torch.equal(v, embedder.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in embedder.parameters()] == flags == [p.requires_grad for p in tuned.parameters()]
    (old_prefix, old_suffix), (new_prefix, new_suffix) = split_trunk(embedder.trunk), split_trunk(tuned.trunk)
    assert any(not torch.equal(a, b) for a, b in zip(new_suffix.parameters(), old_suffix.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(new_prefix.parameters(), old_prefix.parameters()))
    # the tuned trunk is a whole trunk: images -> embedding agree with the cached path
    feats = trunk_features(tuned, manifest, ("plain",), progress=False)[0]
    vectors = suffix_vectors(tuned, prefix[0])
    assert np.abs(vectors - head_vectors(tuned, feats)).max() < 5e-3
    result = name_faces(vectors, named)
    truth = [f.identity for f in manifest.faces]
    assert all(result.names[i] == n and result.source[i] == "given" for i, n in named.items())
    others = [i for i in range(len(manifest)) if i not in named]
    accuracy = np.mean([result.names[i] == truth[i] for i in others])
    assert accuracy > 2 / len(set(truth))  # twice chance, from two names per person and no tracks


def test_fine_tune_global_time_budget_and_refusals(system):
    embedder, prefix, manifest, pairs = system
    named = draw_named(manifest, 1)
    _, summary = fine_tune_global(embedder, prefix, pairs, named, GlobalConfig(steps=None, time_budget=4.0),
                                  progress=False)
    # the loop stops before a step would overrun (its own time plus a margin); a step slowed
    # by other jobs after that check may still pass the budget a little
    assert summary["stopped"] == "time budget" and summary["steps"] >= 1 and summary["seconds"] <= 4.5
    # without cannot-links (photos) the pair loss falls back to ntxent; without names it is the only loss
    _, summary = fine_tune_global(embedder, prefix, pairs.select("same-track"), {}, GlobalConfig(steps=3),
                                  progress=False)
    assert summary["pair_loss"] == "ntxent" and summary["steps"] == 3 and summary["names"] == 0
    with pytest.raises(ProxytasksError, match="steps or a time budget"):
        fine_tune_global(embedder, prefix, pairs, named, GlobalConfig(steps=None), progress=False)
    with pytest.raises(ProxytasksError, match="pairs index"):
        fine_tune_global(embedder, prefix[:, :10], pairs, {}, GlobalConfig(steps=1), progress=False)
    with pytest.raises(ProxytasksError, match="out of range"):
        fine_tune_global(embedder, prefix, pairs, {len(manifest): "x"}, GlobalConfig(steps=1), progress=False)


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def run_folder(small_episode, tmp_path_factory):
    folder, manifest, _ = small_episode
    out = tmp_path_factory.mktemp("finetune")
    tracked, pairs = folder / "tracked.jsonl", folder / "pairs.npz"
    res = invoke("train", tracked, pairs, "-o", out / "run", "--steps", 20, "--dim", 32, "--input-size", SIZE)
    assert res.exit_code == 0, res.output
    res = invoke("embed", out / "run", tracked, "-o", out / "emb.npz")
    assert res.exit_code == 0, res.output
    named = draw_named(manifest, 2)
    ids = [f.id for f in manifest.faces]
    (out / "labels.csv").write_text("id,name\n" + "".join(f"{ids[i]},{n}\n" for i, n in named.items()))
    return out, tracked, pairs, manifest, {ids[i]: n for i, n in named.items()}


def read_names(path):
    return {r["id"]: r for r in csv.DictReader(open(path))}


@pytest.mark.parametrize("strategy", ["sequential", "independent", "global"])
def test_name_with_each_strategy(run_folder, tmp_path, strategy):
    out, tracked, pairs, manifest, given = run_folder
    extra = ("--pairs", pairs, "--steps", 5) if strategy == "global" else ()
    res = invoke("name", out / "run", out / "emb.npz", out / "labels.csv", "-o", tmp_path / "names.csv",
                 "--manifest", tracked, "--strategy", strategy, *extra)
    assert res.exit_code == 0, res.output
    assert f"(strategy {strategy})" in res.output
    assert ("joint fine-tuning: 5 steps" in res.output) == (strategy == "global")
    names = read_names(tmp_path / "names.csv")
    truth = {f.id: f.identity for f in manifest.faces}
    assert all(names[i]["name"] == n and names[i]["source"] == "given" for i, n in given.items())
    assert np.mean([r["name"] == truth[i] for i, r in names.items()]) > 0.5
    if strategy == "sequential":  # the default, unchanged
        res = invoke("name", out / "run", out / "emb.npz", out / "labels.csv", "-o", tmp_path / "default.csv",
                     "--manifest", tracked)
        assert res.exit_code == 0 and read_names(tmp_path / "default.csv") == names


def test_independent_reads_the_feature_cache_or_needs_the_manifest(run_folder, tmp_path):
    out, tracked, _, _, _ = run_folder
    common = (out / "emb.npz", out / "labels.csv")
    res = invoke("name", out / "run", *common, "-o", tmp_path / "cached.csv", "--strategy", "independent")
    assert res.exit_code == 0, res.output
    bare = tmp_path / "bare_run"
    shutil.copytree(out / "run", bare, ignore=shutil.ignore_patterns("features.npz"))
    res = invoke("name", bare, *common, "-o", tmp_path / "x.csv", "--strategy", "independent")
    assert res.exit_code == 2 and "features.npz" in res.output and "--manifest" in res.output
    res = invoke("name", bare, *common, "-o", tmp_path / "computed.csv", "--strategy", "independent",
                 "--manifest", tracked)
    assert res.exit_code == 0, res.output
    computed = read_names(tmp_path / "computed.csv")
    with_tracks = invoke("name", out / "run", *common, "-o", tmp_path / "cached_tracks.csv", "--strategy",
                         "independent", "--manifest", tracked)
    assert with_tracks.exit_code == 0
    cached = read_names(tmp_path / "cached_tracks.csv")  # float16 cache vs float32 features: the same names
    assert np.mean([computed[i]["name"] == r["name"] for i, r in cached.items()]) > 0.95


def test_name_strategy_errors(run_folder, tmp_path):
    out, tracked, pairs, _, _ = run_folder
    common = (out / "run", out / "emb.npz", out / "labels.csv", "-o", tmp_path / "n.csv")
    res = invoke("name", *common, "--strategy", "global", "--manifest", tracked)
    assert res.exit_code == 2 and "--pairs" in res.output and "Traceback" not in res.output
    res = invoke("name", *common, "--strategy", "global", "--pairs", pairs)
    assert res.exit_code == 2 and "--manifest" in res.output and "--pairs" not in res.output
    res = invoke("name", *common, "--strategy", "nope")
    assert res.exit_code == 2 and "unknown strategy 'nope'" in res.output
    assert not (tmp_path / "n.csv").exists()
