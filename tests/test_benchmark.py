import json

import pytest
from click.testing import CliRunner

from data_tools.importers import import_folders, import_pattern
from proxytasks.cli import cli

from .conftest import shared

METHOD_KEYS = {"naming", "naming_macro_f1", "clustering", "verification"}


def check_contract(m: dict, shots=("1", "5")) -> None:
    """Every key of Contract 2, with its type."""
    assert set(m) == {"dataset", "rules", "methods", "train", "seconds"}
    assert set(m["dataset"]) == {"faces", "identities", "media", "frames"}
    assert all(isinstance(v, int) for v in m["dataset"].values())
    for rule in m["rules"].values():
        assert set(rule) == {"pairs", "label", "precision", "faces_covered"} and rule["label"] in ("same", "different")
    assert set(m["methods"]) >= {"pretrained", "proxy"}
    for method in m["methods"].values():
        assert set(method) == METHOD_KEYS
        assert set(method["naming"]) == set(shots) == set(method["naming_macro_f1"])
        assert all(v is None or 0 <= v <= 1 for v in method["naming"].values())
        assert set(method["clustering"]) == {"wcp", "nmi", "bcubed_f1", "clusters"}
        assert set(method["verification"]) == {"roc_auc", "tar_at_far_1e-3"}
    assert set(m["train"]) == {"seconds", "pairs", "steps"}
    assert isinstance(m["seconds"], float)


def bench(manifest, out, *extra, peers="none"):
    res = CliRunner().invoke(cli, ["-q", "benchmark", str(manifest), "--out", str(out), "--time-budget", "6",
                                   "--shots", "1,5", "--repeats", "2", "--peers", peers, *map(str, extra)])
    assert res.exit_code == 0, res.output
    assert "pretrained" in res.output and "proxy" in res.output
    return json.loads((out / "metrics.json").read_text())


def test_benchmark_on_synthetic_episode(small_episode, tmp_path):
    folder = small_episode[0]
    m = bench(folder / "ep" / "manifest.jsonl", tmp_path)  # untracked: the benchmark tracks it
    check_contract(m)
    assert m["rules"]["same-frame"]["precision"] == 1.0 and m["rules"]["same-track"]["pairs"] > 0
    assert m["dataset"]["identities"] == 4 and m["train"]["pairs"] > 0


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


def test_benchmark_refuses_unlabelled(tmp_path, small_episode):
    folder, manifest, _ = small_episode
    manifest.replace(identity=[None] * len(manifest)).write(tmp_path / "m.jsonl")
    res = CliRunner().invoke(cli, ["benchmark", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "identity" in res.output
    res = CliRunner().invoke(cli, ["benchmark", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"),
                                   "--shots", "one"])
    assert res.exit_code == 2


def test_dlib_backbone_with_both_peers_on_bbt(tmp_path):
    """--backbone dlib_resnet29 with the peers this machine has: all four methods, same keys."""
    pytest.importorskip("dlib", reason="dlib is absent: pip install dlib-bin==20.0.1.post1")
    manifest = tmp_path / "m.jsonl"
    import_folders(shared("bbt", "images"), manifest)
    m = bench(manifest, tmp_path / "out", "--backbone", "dlib_resnet29", peers="auto")
    check_contract(m)
    assert set(m["methods"]) == {"pretrained", "proxy", "face_recognition", "proxy_dlib"}
    assert m["methods"]["proxy_dlib"] == m["methods"]["proxy"]  # one run when the backbone is dlib's
    fr = m["methods"]["face_recognition"]
    assert fr["clustering"]["bcubed_f1"] > 0.8 and fr["naming"]["1"] > 0.8  # dlib knows these faces
    assert m["methods"]["pretrained"]["naming"]["1"] > 0.8
    assert not (tmp_path / "out" / "run_dlib").exists()


def test_proxy_dlib_trains_its_own_run(small_episode, tmp_path):
    pytest.importorskip("dlib", reason="dlib is absent: pip install dlib-bin==20.0.1.post1")
    folder = small_episode[0]
    m = bench(folder / "ep" / "manifest.jsonl", tmp_path, peers="proxy_dlib")
    check_contract(m)
    assert set(m["methods"]) == {"pretrained", "proxy", "proxy_dlib"}
    config = json.loads((tmp_path / "run_dlib" / "config.json").read_text())
    assert config["backbone"] == "dlib_resnet29" and config["alignment"] == "dlib"


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
