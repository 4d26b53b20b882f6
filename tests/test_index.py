"""FaceIndex, choose_factory and knn_graph on random unit vectors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from proxytasks.errors import ProxytasksError
from proxytasks.index import (FaceIndex, choose_factory, estimate_memory, knn_graph,
                              normalize)


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = normalize(queries) @ normalize(base).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def test_choose_factory_by_size_and_budget():
    assert choose_factory(500, 128) == "Flat"
    mid = choose_factory(200_000, 128, memory_budget_gb=4.0)
    assert mid.startswith(("HNSW", "IVF"))
    assert estimate_memory(mid, 200_000, 128) <= 4 * 1024 ** 3
    big = choose_factory(5_000_000, 512, memory_budget_gb=4.0)
    assert big.startswith("IVF") and ",PQ" in big
    assert estimate_memory(big, 5_000_000, 512) <= 4 * 1024 ** 3
    assert "HNSW" not in choose_factory(2_000_000, 128).split(",")[0]  # 2048..4096 lists: flat coarse
    with pytest.raises(ProxytasksError, match="budget"):
        choose_factory(100_000_000, 512, memory_budget_gb=0.5)


def test_flat_is_exact():
    x, q = unit(2000, 32, 0), unit(50, 32, 1)
    index = FaceIndex.build(x, [f"f{i}" for i in range(2000)])
    assert index.factory == "Flat"
    sims, idx = index.search(q, 10)
    want_s, want_i = exact(q, x, 10)
    assert sims.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    assert index.ids_of(idx[:1, :2]).tolist() == [[f"f{want_i[0, 0]}", f"f{want_i[0, 1]}"]]


@pytest.mark.parametrize("factory", ["HNSW32,Flat", "IVF128,Flat"])
def test_approximate_recall(factory):
    x, q = unit(20_000, 32, 0), unit(200, 32, 1)
    index = FaceIndex.build(x, range(20_000), factory=factory, seed=0)
    _, idx = index.search(q, 10)
    _, want = exact(q, x, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(idx, want)])
    assert recall >= 0.95, (factory, index.parameters, recall)


def test_add_then_search_and_padding():
    x = unit(300, 16, 0)
    index = FaceIndex.build(x, range(300))
    new = unit(5, 16, 7)
    index.add(new, ["new0", "new1", "new2", "new3", "new4"])
    assert len(index) == 305
    sims, idx = index.search(new, 1)
    assert index.ids_of(idx[:, 0]).tolist() == [f"new{i}" for i in range(5)]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    with pytest.raises(ProxytasksError, match="duplicate face id"):
        index.add(unit(1, 16, 8), ["new2"])
    with pytest.raises(ProxytasksError, match="duplicate face id"):
        FaceIndex.build(x[:2], ["a", "a"])
    small = FaceIndex.build(x[:3], ["a", "b", "c"])
    sims, idx = small.search(x[:1], 5)
    assert idx[0, 3:].tolist() == [-1, -1] and np.isneginf(sims[0, 3:]).all()
    assert small.ids_of(idx)[0, 4] is None


def test_bad_inputs_refused():
    x = unit(100, 8)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ProxytasksError, match="NaN or inf"):
        FaceIndex.build(bad, range(100))
    index = FaceIndex.build(x, range(100))
    with pytest.raises(ProxytasksError, match="NaN or inf"):
        index.search(np.full((1, 8), np.inf), 3)
    with pytest.raises(ProxytasksError, match="dimension"):
        index.search(unit(2, 9), 3)
    with pytest.raises(ProxytasksError, match="all zeros"):
        index.add(np.zeros((1, 8)), ["z"])
    with pytest.raises(ProxytasksError, match="ids"):
        FaceIndex.build(x, range(99))


def test_vectors_are_normalised_on_input():
    x = unit(200, 8)
    index = FaceIndex.build(x * 7.5, range(200))
    sims, idx = index.search(x[:3] * 0.01, 1)
    assert idx[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_save_load_round_trip(tmp_path: Path):
    x, q = unit(3000, 16, 0), unit(20, 16, 1)
    index = FaceIndex.build(x, [f"id{i}" for i in range(3000)], factory="IVF32,Flat", seed=3)
    folder = index.save(tmp_path / "idx")
    assert {p.name for p in folder.iterdir()} == {"index.faiss", "index_infos.json", "ids.json"}
    infos = json.loads((folder / "index_infos.json").read_text())
    assert infos["factory"] == "IVF32,Flat" and infos["n"] == 3000 and infos["dim"] == 16
    assert infos["metric"] == "inner_product" and "nprobe" in infos["parameters"]
    assert infos["estimated_memory_bytes"] > 0 and infos["build_seconds"] >= 0
    loaded = FaceIndex.load(folder)
    assert loaded.ids == index.ids and loaded.parameters == index.parameters
    for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def test_load_refuses_damage(tmp_path: Path):
    index = FaceIndex.build(unit(500, 8), range(500))
    folder = index.save(tmp_path / "idx")
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProxytasksError, match="index.faiss"):
        FaceIndex.load(folder)
    (folder / "index.faiss").write_bytes(data)
    FaceIndex.load(folder)
    infos = json.loads((folder / "index_infos.json").read_text())
    (folder / "index_infos.json").write_text(json.dumps({**infos, "n": 499}))
    with pytest.raises(ProxytasksError, match="index_infos.json"):
        FaceIndex.load(folder)
    (folder / "index_infos.json").write_text(json.dumps({**infos, "dim": 9}))
    with pytest.raises(ProxytasksError, match="index_infos.json"):
        FaceIndex.load(folder)
    (folder / "index_infos.json").write_text(json.dumps(infos))
    (folder / "ids.json").write_text(json.dumps(list(range(499))))
    with pytest.raises(ProxytasksError, match="ids.json"):
        FaceIndex.load(folder)
    (folder / "index_infos.json").unlink()
    with pytest.raises(ProxytasksError, match="index_infos.json"):
        FaceIndex.load(folder)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat"])
def test_knn_graph_excludes_self_even_with_duplicates(factory):
    x = unit(400, 16, 0)
    x[10:15] = x[10]  # five identical faces
    x[200:202] = x[200]
    index = FaceIndex.build(x, range(400), factory=factory)
    sims, idx = knn_graph(x, 6, index=index)
    assert sims.shape == (400, 6) and idx.shape == (400, 6)
    assert not (idx == np.arange(400)[:, None]).any()
    assert (idx >= 0).all()
    for i in range(10, 15):
        assert set(idx[i, :4]) == set(range(10, 15)) - {i}
        np.testing.assert_allclose(sims[i, :4], 1.0, atol=1e-5)
    assert idx[200, 0] == 201 and idx[201, 0] == 200
    sims_auto, idx_auto = knn_graph(x, 6)
    if factory == "Flat":
        np.testing.assert_array_equal(np.sort(idx_auto[:, :4], 1)[10:15], np.sort(idx[:, :4], 1)[10:15])


def test_knn_graph_small_input_padded():
    sims, idx = knn_graph(unit(3, 4), 5)
    assert idx.shape == (3, 5)
    assert (idx[:, :2] >= 0).all() and (idx[:, 2:] == -1).all()
    assert np.isneginf(sims[:, 2:]).all()
