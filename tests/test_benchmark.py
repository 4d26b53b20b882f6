import json

import pytest
from click.testing import CliRunner

from data_tools.importers import import_folders, import_pattern
from proxytasks.cli import cli

from .conftest import needs_dlib, shared

METHOD_KEYS = {"naming", "naming_macro_f1", "clustering", "verification"}


def check_contract(m: dict, shots=("1", "5")) -> None:
    """Every key of Contract 2, with its type."""
    optional = {"peer_variants", "alignment"} & set(m)
    assert set(m) == {"dataset", "protocol", "rules", "methods", "train", "seconds"} | optional
    assert m["protocol"] == "track-disjoint"
    assert set(m["dataset"]) == {"faces", "identities", "media", "frames"}
    assert all(isinstance(v, int) for v in m["dataset"].values())
    for rule in m["rules"].values():
        assert set(rule) == {"pairs", "label", "precision", "faces_covered"} and rule["label"] in ("same", "different")
    assert set(m["methods"]) >= {"pretrained", "proxy"}
    assert set(m["methods"]) <= {"pretrained", "proxy", "pretrained_dlib", "proxy_dlib", "face_recognition"}
    assert ("pretrained_dlib" in m["methods"]) == ("proxy_dlib" in m["methods"])
    variants = [v for peer in m.get("peer_variants", {}).values() for v in peer.values()]
    for method in list(m["methods"].values()) + variants:
        assert set(method) == METHOD_KEYS
        assert set(method["naming"]) == set(shots) == set(method["naming_macro_f1"])
        assert all(v is None or 0 <= v <= 1 for v in method["naming"].values())
        assert set(method["clustering"]) == {"wcp", "nmi", "bcubed_f1", "clusters"}
        assert set(method["verification"]) == {"roc_auc", "tar_at_far_1e-3"}
    if "alignment" in m:
        a = m["alignment"]
        assert set(a) == {"faces", "found", "fallback"} and a["found"] + a["fallback"] == a["faces"]
    assert set(m["train"]) == {"seconds", "pairs", "steps"}
    assert isinstance(m["seconds"], float)


def bench(manifest, out, *extra, peers="none"):
    res = CliRunner().invoke(cli, ["-q", "benchmark", str(manifest), "--out", str(out), "--time-budget", "6",
                                   "--shots", "1,5", "--repeats", "2", "--peers", peers, *map(str, extra)])
    assert res.exit_code == 0, res.output
    assert "pretrained" in res.output and "proxy" in res.output
    return json.loads((out / "metrics.json").read_text())


def test_benchmark_on_synthetic_episode(small_episode, tmp_path, monkeypatch):
    import proxytasks.cluster
    from proxytasks.embedder import Embedder

    folder = small_episode[0]
    real, calls = proxytasks.cluster.cluster_faces, []

    def watched(*args, **kwargs):  # the real clustering, its options and result recorded
        result = real(*args, **kwargs)
        calls.append((kwargs.get("trained_on_links"), result.info))
        return result

    monkeypatch.setattr(proxytasks.cluster, "cluster_faces", watched)
    # untracked: the benchmark tracks it; 20 s: time to cache every face's features and train
    m = bench(folder / "ep" / "manifest.jsonl", tmp_path, "--time-budget", "20")
    check_contract(m)
    # the threshold rule follows the vectors: violations for the pretrained features, the
    # midpoint for the proxy head when the run trained one on the rule pairs (issue 16)
    trained = Embedder.load(tmp_path / "run").head_kind != "identity"
    (pre, pre_info), (proxy, proxy_info) = calls
    assert pre is False and pre_info["threshold_rule"] == "cannot-link-violations"
    assert proxy is trained and proxy_info["threshold_rule"] == ("must-cannot-midpoint" if trained
                                                                 else "cannot-link-violations")
    assert proxy_info["clusters"] == m["methods"]["proxy"]["clustering"]["clusters"]
    assert m["rules"]["same-frame"]["precision"] == 1.0 and m["rules"]["same-track"]["pairs"] > 0
    assert m["dataset"]["identities"] == 4 and m["train"]["pairs"] > 0
    pretrained, proxy = m["methods"]["pretrained"], m["methods"]["proxy"]
    # 4 drawn people a few shots apart: names carry along tracks and clusters; training on
    # the rule pairs separates them better than the bare backbone (AUC 0.97 vs 0.82, naming at
    # 1 shot 1.0 vs 0.75 when written)
    assert pretrained["naming"]["5"] >= 0.9 and proxy["naming"]["1"] >= 0.9
    assert proxy["verification"]["roc_auc"] > pretrained["verification"]["roc_auc"] + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["orl_faces", "yalefaces", "bbt/images"])
def test_benchmark_on_real_photo_sets(dataset, tmp_path):
    root = shared(*dataset.split("/"))
    manifest = tmp_path / "m.jsonl"
    if dataset == "yalefaces":
        import_pattern(root, r"(?P<identity>subject\d+)\.", manifest)
    else:
        import_folders(root, manifest)
    m = bench(manifest, tmp_path / "out")
    check_contract(m)
    assert m["dataset"]["identities"] == {"orl_faces": 38, "yalefaces": 15, "bbt/images": 8}[dataset]
    assert m["dataset"]["frames"] == 0
    # what ImageNet features know of these faces (when written: ORL 0.98 at 5 shots, Yale 0.92,
    # bbt 0.53 at 1 shot for 8 people, chance 0.125)
    pretrained = m["methods"]["pretrained"]
    naming, auc = {"orl_faces": ("5", 0.9, 0.9), "yalefaces": ("5", 0.85, 0.8),
                   "bbt/images": ("1", 0.375, 0.7)}[dataset], pretrained["verification"]["roc_auc"]
    assert pretrained["naming"][naming[0]] >= naming[1] and auc >= naming[2]


def test_benchmark_refuses_unlabelled(tmp_path, small_episode):
    folder, manifest, _ = small_episode
    manifest.replace(identity=[None] * len(manifest)).write(tmp_path / "m.jsonl")
    res = CliRunner().invoke(cli, ["benchmark", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "identity" in res.output
    res = CliRunner().invoke(cli, ["benchmark", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"),
                                   "--shots", "one"])
    assert res.exit_code == 2


@pytest.mark.slow
def test_dlib_backbone_with_both_peers_on_crops_with_margin(bbt_margin, tmp_path):
    """--backbone dlib_resnet29 with every peer, on the bbt faces given as crops with a 50% margin:
    the faces are found inside the crops, and dlib's pipeline knows these people."""
    needs_dlib()
    m = bench(bbt_margin[1].root / "manifest.jsonl", tmp_path / "out", "--backbone", "dlib_resnet29", peers="auto")
    check_contract(m)
    assert set(m["methods"]) == {"pretrained", "proxy", "pretrained_dlib", "proxy_dlib", "face_recognition"}
    assert m["methods"]["proxy_dlib"] == m["methods"]["proxy"]  # one run when the backbone is dlib's
    assert m["methods"]["pretrained_dlib"] == m["methods"]["pretrained"]
    assert m["alignment"] == {"faces": 67, "found": 67, "fallback": 0}
    variants = m["peer_variants"]["face_recognition"]
    assert set(variants) == {"whispers_0.5", "whispers_0.6", "knn"}
    fr = m["methods"]["face_recognition"]
    best = max(("whispers_0.5", "whispers_0.6"), key=lambda v: variants[v]["clustering"]["bcubed_f1"])
    assert fr == variants[best]  # the peer gets the better of its documented thresholds
    assert fr["verification"]["roc_auc"] >= 0.98 and fr["clustering"]["bcubed_f1"] > 0.8
    assert fr["naming"]["1"] > 0.8 and m["methods"]["pretrained"]["naming"]["1"] > 0.8
    assert not (tmp_path / "out" / "run_dlib").exists()


@pytest.mark.slow
def test_proxy_dlib_trains_its_own_run(small_episode, tmp_path):
    needs_dlib()
    folder = small_episode[0]
    m = bench(folder / "ep" / "manifest.jsonl", tmp_path, peers="proxy_dlib")
    check_contract(m)
    assert set(m["methods"]) == {"pretrained", "proxy", "pretrained_dlib", "proxy_dlib"}
    assert "alignment" in m and "peer_variants" not in m
    config = json.loads((tmp_path / "run_dlib" / "config.json").read_text())
    assert config["backbone"] == "dlib_resnet29" and config["alignment"] == "dlib"
    assert config["input_region"] == "aligned-face"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["input_region"] == "crop"


def test_naming_is_scored_track_disjoint():
    """A namer that knows only the named faces' tracks scores 0: every face sharing a track with a
    named face is left out. Without tracks the same namer scores what it copied."""
    import numpy as np

    from proxytasks.benchmark import naming_scores

    identity = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])

    def by_track(named, seed):
        names = {groups[i]: name for i, name in named.items()}
        return [names.get(g, "wrong") for g in groups]

    acc, f1 = naming_scores(identity, by_track, 1, repeats=3, seed=0, groups=groups)
    assert acc == 0.0 and f1 == 0.0
    acc, _ = naming_scores(identity, by_track, 1, repeats=3, seed=0)  # no tracks: each face its own
    assert acc == pytest.approx(1 / 3)  # the named face's track mate, 1 of the 3 others
    # faces without a track (-1) are each their own: nothing is left out for them
    acc, _ = naming_scores(identity, by_track, 1, repeats=3, seed=0, groups=np.full(8, -1))
    assert acc == pytest.approx(1 / 3)


def test_verification_scores_pairs_across_tracks_only():
    import numpy as np

    from proxytasks.metrics import verification_metrics

    # a0, a1 one track (identical), a2 another track of a, b0 someone else nearer to a0 than a2 is
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    identity = ["a", "a", "a", "b"]
    assert verification_metrics(x, identity)["roc_auc"] == pytest.approx(1 / 3)  # 3 positives x 3 negatives
    # across tracks: positives (a0,a2), (a1,a2) at 0; negatives 0.8, 0.8, 0.6: none ranks right
    assert verification_metrics(x, identity, groups=[0, 0, 1, 2])["roc_auc"] == 0.0


def test_benchmark_tracks_the_faces_itself(small_episode, tmp_path, caplog):
    """Tracks given in the manifest (here the episode's true ones) are dropped and the faces
    tracked again, unless --keep-tracks, which warns."""
    import logging

    from proxytasks.benchmark import tracked_pairs
    from proxytasks.manifest import Manifest

    truth = Manifest.read(small_episode[0] / "ep" / "manifest.jsonl")
    truth = truth.replace(track=[f"true-{f.identity}-{f.shot}" for f in truth.faces])
    with caplog.at_level(logging.WARNING, logger="proxytasks.benchmark"):
        kept, _ = tracked_pairs(truth, tmp_path / "kept", progress=False, keep_tracks=True)
    assert [f.track for f in kept] == [f.track for f in truth] and "ground truth" in caplog.text
    (tmp_path / "own").mkdir()
    own, _ = tracked_pairs(truth, tmp_path / "own", progress=False, keep_tracks=False)
    assert not any(f.track.startswith("true-") for f in own) and (tmp_path / "own" / "tracked.jsonl").is_file()


def test_unknown_or_missing_peer_is_refused(small_episode, tmp_path, monkeypatch):
    folder = small_episode[0]
    res = CliRunner().invoke(cli, ["benchmark", str(folder / "ep" / "manifest.jsonl"), "--out", str(tmp_path),
                                   "--peers", "deepface"])
    assert res.exit_code == 2 and "unknown peer(s) deepface" in res.output
    from proxytasks import peers

    monkeypatch.setattr(peers, "dlib_peer_available", lambda: (False, "pip install dlib-bin==20.0.1.post1"))
    res = CliRunner().invoke(cli, ["benchmark", str(folder / "ep" / "manifest.jsonl"), "--out", str(tmp_path),
                                   "--peers", "face_recognition"])
    assert res.exit_code == 2 and "peer face_recognition cannot run here" in res.output and "dlib-bin" in res.output
