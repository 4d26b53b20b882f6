"""FaceIndex, choose_factory and knn_graph on random unit vectors; device selection."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from proxytasks import index as index_module
from proxytasks.errors import ProxytasksError
from proxytasks.index import (FaceIndex, choose_factory, estimate_memory, gpu_faiss_available,
                              graph_factory, knn_graph, normalize, resolve_device)


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


# --------------------------------------------------------------------------- the all-rows graph
def blobs(n: int, dim: int, seed: int = 0, per: int = 30, spread: float = 0.5) -> np.ndarray:
    """Clustered unit vectors: n // per random centres, Gaussian noise of norm ~spread."""
    rng = np.random.default_rng(seed)
    centres = unit(max(2, n // per), dim, seed + 1)
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return normalize(x)


def graph_recall(x: np.ndarray, idx: np.ndarray, k: int, rows: np.ndarray) -> float:
    """recall@k of the graph rows ``rows`` against exact search (self excluded)."""
    want = faiss.knn(x[rows], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)[1]  # brute force
    return float(np.mean([len(np.intersect1d(w[w != r][:k], idx[r])) / k for r, w in zip(rows, want)]))


def test_graph_factory_is_inverted_flat_within_the_budget():
    assert graph_factory(1_000_000, 128) == "IVF4096,Flat"  # not the HNSW choose_factory picks
    assert choose_factory(1_000_000, 128).startswith("HNSW")
    assert graph_factory(4_000_000, 128, memory_budget_gb=16) == "IVF8192,Flat"  # flat coarse even there
    assert graph_factory(1000, 16) == "IVF25,Flat"  # 39 points a list at least
    small = graph_factory(1_000_000, 128, memory_budget_gb=0.3)  # raw vectors do not fit: PQ codes
    assert small == choose_factory(1_000_000, 128, memory_budget_gb=0.3) and ",PQ" in small


def test_knn_graph_approximate_path_reaches_the_recall(monkeypatch, caplog):
    """Over the exact-work threshold the graph comes from IVF,Flat tuned on the rows."""
    x = blobs(30_000, 32, seed=0, spread=0.7)  # overlapping blobs: one probe is not enough
    monkeypatch.setattr(index_module, "EXACT_KNN_WORK", 1e10)  # 30k^2 * 32 = 2.9e10: approximate
    with caplog.at_level(logging.INFO, logger="proxytasks.index"):
        sims, idx = knn_graph(x, 10, seed=0)
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("knn_graph:")]
    assert len(built) == 1 and "IVF512,Flat" in built[0], built
    assert int(re.search(r"'nprobe': (\d+)", built[0]).group(1)) > 1, built  # tuned, not trivial
    assert sims.shape == idx.shape == (30_000, 10) and sims.dtype == np.float32 and idx.dtype == np.int64
    assert (idx >= 0).all() and not (idx == np.arange(30_000)[:, None]).any()
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first
    rows = np.random.default_rng(5).choice(30_000, 1000, replace=False)
    assert graph_recall(x, idx, 10, rows) >= 0.95
    np.testing.assert_allclose(sims[rows, 0], np.sum(x[rows] * x[idx[rows, 0]], axis=1), atol=1e-5)


def test_knn_graph_options_exact_and_target_recall(caplog):
    x = blobs(12_000, 16, seed=1, spread=0.7)
    rows = np.random.default_rng(6).choice(12_000, 500, replace=False)
    with caplog.at_level(logging.INFO, logger="proxytasks.index"):
        _, loose = knn_graph(x, 10, exact=False, target_recall=0.5)
        _, tight = knn_graph(x, 10, exact=False, target_recall=0.995)
    probes = [int(re.search(r"'nprobe': (\d+)", r.getMessage()).group(1))
              for r in caplog.records if r.getMessage().startswith("knn_graph:")]
    assert len(probes) == 2 and probes[0] < probes[1], probes
    assert graph_recall(x, tight, 10, rows) >= 0.98 > graph_recall(x, loose, 10, rows)
    _, forced = knn_graph(x[:2000], 5, exact=True)  # Flat: the exact graph
    np.testing.assert_array_equal(forced[rows[rows < 2000]], exact_graph(x[:2000], 5)[rows[rows < 2000]])
    with pytest.raises(ProxytasksError, match="target_recall"):
        knn_graph(x, 5, target_recall=0.0)


def exact_graph(x: np.ndarray, k: int) -> np.ndarray:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def test_knn_graph_small_n_stays_exact():
    x = blobs(2000, 16, seed=2)
    sims, idx = knn_graph(x, 8)  # 2000^2 * 16 = 6.4e7 <= 5e11: Flat
    want = exact_graph(x, 8)
    assert (idx == want).mean() > 0.999  # ties in float32 may swap a pair
    np.testing.assert_allclose(sims, np.take_along_axis(x @ x.T, want, axis=1), atol=1e-5)


# --------------------------------------------------------------------------- devices
class FakeGpuFaiss:
    """Stands in for GPU faiss on a CPU machine: the 'GPU copy' is a CPU clone, and every
    use is recorded (or refused with ``forbid``)."""

    def __init__(self, monkeypatch, gpus: int = 1, forbid: bool = False) -> None:
        self.copies: list[str] = []
        self.forbid = forbid
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: gpus, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", self.copy, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, index: self.copy(index), raising=False)
        monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace, raising=False)

    def copy(self, index):
        assert not self.forbid, "a GPU copy was made for a cpu/auto request without a GPU"
        self.copies.append(type(faiss.downcast_index(index)).__name__)
        return faiss.clone_index(index)


def test_resolve_device(monkeypatch, caplog):
    assert not gpu_faiss_available()  # faiss-cpu here
    with caplog.at_level(logging.WARNING, logger="proxytasks.index"):
        assert resolve_device("cpu") == resolve_device(None) == resolve_device("auto") == "cpu"
        assert not caplog.records  # silent
        assert resolve_device("cuda") == "cpu"
        assert len(caplog.records) == 1 and "no GPU support" in caplog.records[0].getMessage()
        assert resolve_device("CUDA:1") == "cpu" and resolve_device("mps") == "cpu"
    with pytest.raises(ProxytasksError, match="unknown device"):
        resolve_device("tpu")
    FakeGpuFaiss(monkeypatch, gpus=2)
    assert gpu_faiss_available()
    assert resolve_device("auto") == resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    with pytest.raises(ProxytasksError, match="2 GPU"):
        resolve_device("cuda:2")


def test_cpu_and_auto_never_try_the_gpu(monkeypatch):
    x = blobs(2000, 16, seed=3)
    FakeGpuFaiss(monkeypatch, gpus=0, forbid=True)  # GPU faiss installed, no GPU seen: auto is cpu
    for device in ("auto", "cpu"):
        index = FaceIndex.build(x, range(2000), factory="IVF32,Flat", device=device)
        assert index.device == "cpu" and index._gpu is None
        index.search(x[:5], 3)
        knn_graph(x, 5, device=device)
        knn_graph(x, 5, exact=False, device=device)
    FakeGpuFaiss(monkeypatch, gpus=1, forbid=True)  # a GPU, but cpu asked
    index = FaceIndex.build(x, range(2000), factory="IVF32,Flat", device="cpu")
    index.search(x[:5], 3)
    knn_graph(x, 5, index=index)
    knn_graph(x, 5, exact=False)  # default: cpu


def test_cuda_without_gpu_faiss_warns_once_and_runs_on_cpu(tmp_path: Path, caplog):
    x = blobs(3000, 16, seed=4)
    want_s, want_i = knn_graph(x, 6, exact=False, seed=1)
    with caplog.at_level(logging.WARNING, logger="proxytasks.index"):
        sims, idx = knn_graph(x, 6, exact=False, seed=1, device="cuda")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "cuda" in warned[0].getMessage() and "CPU" in warned[0].getMessage()
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="proxytasks.index"):
        index = FaceIndex.build(x, range(3000), factory="IVF32,Flat", seed=0, device="cuda")
        found = index.search(x[:20], 5)
        index.add(unit(2, 16, 9), ["a", "b"])
        index.search(x[:20], 5)
    assert index.device == "cpu" and len(caplog.records) == 1
    cpu = FaceIndex.build(x, range(3000), factory="IVF32,Flat", seed=0)
    for a, b in zip(found, cpu.search(x[:20], 5)):
        np.testing.assert_array_equal(a, b)
    folder = index.save(tmp_path / "idx")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="proxytasks.index"):
        loaded = FaceIndex.load(folder, device="cuda")
    assert len(caplog.records) == 1 and loaded.device == "cpu" and len(loaded) == 3002


def test_cuda_with_gpu_faiss_searches_a_gpu_copy_and_saves_the_cpu_index(monkeypatch, tmp_path: Path):
    """The GPU wiring, with a stand-in for GPU faiss: copies made, CPU index kept."""
    x = blobs(3000, 16, seed=5)
    want = knn_graph(x, 6, exact=False, seed=1)
    fake = FakeGpuFaiss(monkeypatch, gpus=1)
    got = knn_graph(x, 6, exact=False, seed=1, device="cuda")
    assert fake.copies == ["IndexIVFFlat"]
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    knn_graph(x[:500], 6, device="auto")  # the exact path: a Flat copy
    assert fake.copies[-1] == "IndexFlat"
    index = FaceIndex.build(x, range(3000), factory="IVF32,Flat", device="cuda:0")
    assert index.device == "cuda:0" and len(fake.copies) == 3
    assert type(faiss.downcast_index(index.index)).__name__ == "IndexIVFFlat"
    index.search(x[:3], 4)
    index.search(x[:3], 3000)  # k past GPU_MAX_K (2048): searched on the CPU index
    index.add(unit(1, 16, 11), ["new"])
    assert index.search(unit(1, 16, 11), 1)[1][0, 0] == 3000 and len(fake.copies) == 4  # copy remade
    folder = index.save(tmp_path / "idx")
    assert FaceIndex.load(folder).factory == "IVF32,Flat"
    hnsw = FaceIndex.build(x, range(3000), factory="HNSW32,Flat", device="cuda")
    hnsw.search(x[:3], 4)
    assert len(fake.copies) == 4 and hnsw._gpu is None  # GPU faiss has no HNSW: CPU
