"""The faiss mechanics behind :class:`proxytasks.index.FaceIndex` and
:func:`proxytasks.index.knn_graph`: unit rows (:func:`normalize`), where searches run
(:func:`resolve_device`, GPU copies of a CPU index), search-time parameters and their
tuning to a target recall (efSearch / nprobe ladders), and building a trained index
from a factory string.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any

import faiss
import numpy as np

from .errors import ProxytasksError

logger = logging.getLogger("proxytasks.index")  # one logger for the index, as before the split

HNSW_EF_CONSTRUCTION = 80
TARGET_RECALL = 0.96  # tuned on the data itself; 0.95 asked, a margin for unseen queries
GRAPH_TUNING_ROWS = 1000  # rows of the data the all-rows graph's nprobe is tuned on
GPU_MAX_K = 2048  # GPU faiss selects at most this many neighbours / probes


def normalize(vectors: Any, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """(n, d) float32 copy of ``vectors`` with unit rows.

    Raises:
        ProxytasksError: not 2-D, wrong dimension, NaN/inf, or an all-zero row.
    """
    x = np.array(vectors, dtype=np.float32, copy=True)
    if x.ndim != 2:
        raise ProxytasksError(f"{what}: expected a 2-D array (faces x dimensions), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ProxytasksError(f"{what}: dimension {x.shape[1]} does not match the index dimension {dim}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ProxytasksError(f"{what}: {int(bad.sum())} row(s) hold NaN or inf (first: row "
                              f"{int(np.argmax(bad))}); check the embedding step")
    for start in range(0, len(x), 65536):
        block = x[start:start + 65536].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        if (norms == 0).any():
            row = start + int(np.argmax(norms == 0))
            raise ProxytasksError(f"{what}: row {row} is all zeros and has no direction")
        x[start:start + 65536] = block / norms[:, None]
    return x


def _ivf(index: faiss.Index) -> Any:
    """The IVF part of ``index`` (downcast, so PQ fields are reachable), or None."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def _apply_parameters(index: faiss.Index, parameters: dict[str, Any], k: int = 1,
                      gpu: bool = False) -> None:
    """Set the search-time parameters (efSearch at least k, nprobe, quantizer_efSearch).

    A GPU index (``gpu``) takes nprobe alone, through faiss's GpuParameterSpace.
    """
    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for name in ("nprobe",) if gpu else ("nprobe", "quantizer_efSearch", "efSearch"):
        if name in parameters:
            value = int(parameters[name])
            if name == "efSearch":
                value = max(value, k)
            space.set_index_parameter(index, name, value)


def gpu_faiss_available() -> bool:
    """Whether the installed faiss has GPU support and sees at least one GPU."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str | None = "cpu") -> str:
    """Where faiss searches run: ``"cpu"``, ``"cuda"`` (every GPU) or ``"cuda:N"``.

    ``"cpu"`` (or None) never touches GPU faiss. ``"auto"`` is ``"cuda"`` when
    :func:`gpu_faiss_available`, else ``"cpu"``, silently. An explicit ``"cuda"`` /
    ``"cuda:N"`` without GPU faiss (faiss-cpu installed, or no GPU seen) logs one warning
    and gives ``"cpu"``; so does ``"mps"`` (faiss has no Metal support).

    Raises:
        ProxytasksError: an unknown device, or ``cuda:N`` past the GPUs faiss sees.
    """
    name = "cpu" if device is None else str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "cuda" if gpu_faiss_available() else "cpu"
    if name == "mps":
        logger.warning("device 'mps' requested for faiss, which has no MPS support: the index "
                       "runs on the CPU")
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise ProxytasksError(f"unknown device {device!r} for the index; use auto, cpu, cuda or cuda:N")
    if not gpu_faiss_available():
        why = ("the installed faiss has no GPU support (faiss-cpu)" if not hasattr(faiss, "StandardGpuResources")
               else "faiss sees no GPU")
        logger.warning("device %r requested for the index, but %s: the index runs on the CPU "
                       "(install faiss-gpu for GPU search)", device, why)
        return "cpu"
    if match.group(1) is not None and int(match.group(1)) >= faiss.get_num_gpus():
        raise ProxytasksError(f"device {device!r} requested but faiss sees {faiss.get_num_gpus()} GPU(s)")
    return name


def _gpu_copy(index: faiss.Index, device: str) -> faiss.Index | None:
    """A GPU copy of the CPU ``index`` to search on, or None: ``device`` is "cpu", or GPU
    faiss cannot hold this index type (HNSW graphs, for one), which then stays on the CPU."""
    if device == "cpu":
        return None
    kind = type(faiss.downcast_index(index)).__name__
    if "HNSW" in kind:
        logger.info("GPU faiss has no %s: searching it on the CPU", kind)
        return None
    try:
        if device == "cuda":
            return faiss.index_cpu_to_all_gpus(index)
        resources = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(resources, int(device.split(":")[1]), index)
        gpu.referenced_objects = [resources]  # keep the resources alive with the copy
        return gpu
    except (RuntimeError, AttributeError, TypeError) as exc:
        logger.warning("cannot move the %s index to %s (%s): searching it on the CPU", kind, device,
                       str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return None


def _search(cpu: faiss.Index, gpu: faiss.Index | None, parameters: dict[str, Any], q: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search unit queries ``q`` on the GPU copy when there is one and it can serve k and
    nprobe, else on the CPU index; -1 / -inf where fewer than k were found."""
    on_gpu = gpu is not None and k <= GPU_MAX_K and int(parameters.get("nprobe", 1)) <= GPU_MAX_K
    index = gpu if on_gpu else cpu
    _apply_parameters(index, parameters, k, gpu=on_gpu)
    sims, idx = index.search(q, k)
    idx = idx.astype(np.int64, copy=False)
    sims = np.where(idx >= 0, sims, -np.inf).astype(np.float32)
    return sims, idx


def _tuning_queries(x: np.ndarray, nq: int, seed: int) -> np.ndarray:
    """Unseen queries like new faces: sampled rows moved by about their nearest-neighbour distance.

    Rows already in an HNSW graph are found far too easily to tune it on; a row plus
    Gaussian noise whose norm is its distance to its nearest other row is not in the
    index yet lies where new faces of the same person would.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=nq, replace=False))
    sims = faiss.knn(x[rows], x, 2, metric=faiss.METRIC_INNER_PRODUCT)[0][:, 1]
    radius = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, 4.0))
    noise = rng.standard_normal((nq, x.shape[1])) / math.sqrt(x.shape[1])
    return normalize(x[rows] + radius[:, None] * noise)


def _ladder(index: faiss.Index) -> tuple[str, list[int]] | None:
    """The search parameter to tune and its values, smallest (fastest) first; None for Flat."""
    ivf = _ivf(index)
    if ivf is not None:
        ladder = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if p < ivf.nlist]
        return "nprobe", ladder + [ivf.nlist]
    if "HNSW" in type(index).__name__:
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    return None


def _climb(index: faiss.Index, gpu: faiss.Index | None, queries: np.ndarray, k: int,
           recall_of: Any, target: float) -> tuple[dict[str, Any], float]:
    """Walk the ladder of ``index`` until ``recall_of(found rows)`` reaches ``target``."""
    name, ladder = _ladder(index)
    ivf = _ivf(index)
    hnsw_coarse = ivf is not None and "HNSW" in type(faiss.downcast_index(ivf.quantizer)).__name__
    params: dict[str, Any] = {}
    recall = 0.0
    for value in ladder:
        params = {name: value}
        if hnsw_coarse:
            params["quantizer_efSearch"] = max(64, 2 * value)
        recall = float(recall_of(_search(index, gpu, params, queries, k)[1]))
        if recall >= target:
            break
    else:
        logger.warning("index reaches recall@%d %.3f at most (%s=%s); quantized codes limit it",
                       k, recall, name, ladder[-1])
    return params, recall


def _tune(index: faiss.Index, x: np.ndarray, seed: int, k: int = 10,
          gpu: faiss.Index | None = None) -> dict[str, Any]:
    """Smallest efSearch / nprobe reaching TARGET_RECALL@k on seeded unseen-like queries."""
    found = _ladder(index)
    if found is None:
        return {}
    n, d = x.shape
    k = min(k, n)
    if n < 2:
        return {found[0]: found[1][-1]}
    queries = _tuning_queries(x, int(min(500, n, max(50, 2e10 // (n * d)))), seed)
    exact = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]

    def recall_of(rows: np.ndarray) -> float:
        return float(np.mean([len(np.intersect1d(f, e)) for f, e in zip(rows, exact)])) / k

    params, recall = _climb(index, gpu, queries, k, recall_of, TARGET_RECALL)
    params[f"recall_at_{k}"] = round(recall, 4)
    return params


def _tune_graph(index: faiss.Index, x: np.ndarray, k: int, seed: int, target: float,
                gpu: faiss.Index | None = None) -> dict[str, Any]:
    """Smallest nprobe / efSearch whose all-rows graph (each row's k nearest other rows)
    reaches recall@k ``target`` on a seeded sample of the rows themselves.

    The graph's queries are the indexed rows, so the rows are the queries to tune on (no
    moved queries as in :func:`_tune`): up to GRAPH_TUNING_ROWS of them, fewer where
    their exact search against all rows would cost more than ~1.3e11 multiply-adds.
    """
    if _ladder(index) is None:
        return {}
    n, d = x.shape
    kk = min(k + 1, n)
    nq = int(min(n, GRAPH_TUNING_ROWS, max(200, 1.3e11 // (n * d))))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=nq, replace=False))
    exact = faiss.knn(x[rows], x, kk, metric=faiss.METRIC_INNER_PRODUCT)[1]
    truth = [e[e != r][: kk - 1] for r, e in zip(rows, exact)]

    def recall_of(found: np.ndarray) -> float:
        hits = [len(np.intersect1d(f[f != r][: kk - 1], t)) for r, f, t in zip(rows, found, truth)]
        return float(np.mean(hits)) / (kk - 1)

    params, recall = _climb(index, gpu, x[rows], kk, recall_of, target)
    params[f"recall_at_{kk - 1}"] = round(recall, 4)
    params["tuning_rows"] = nq
    return params


def _build_index(x: np.ndarray, factory: str, seed: int) -> tuple[faiss.Index, int]:
    """A CPU faiss inner-product index of ``factory`` over the unit rows ``x``, trained on a
    seeded sample (IVF: spherical k-means) and filled; returns it and the training size."""
    n, d = x.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ProxytasksError(f"faiss cannot build factory {factory!r}: {exc}") from None
    hnsw = faiss.downcast_index(index)
    if hasattr(hnsw, "hnsw"):
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    train_size = 0
    if not index.is_trained:
        ivf = _ivf(index)
        if ivf is not None:
            if n < ivf.nlist:
                raise ProxytasksError(f"{factory} needs at least {ivf.nlist} vectors to train, got "
                                      f"{n}: use a smaller IVF or let the factory be chosen")
            ivf.cp.seed = seed
            ivf.cp.spherical = True
            pq = getattr(ivf, "pq", None)
            if pq is not None:
                pq.cp.seed = seed
            train_size = min(n, max(64 * ivf.nlist, 20_000))
        else:
            train_size = min(n, 50_000)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
        index.train(x[rows])
    index.add(x)
    return index, train_size
