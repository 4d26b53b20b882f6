"""FAISS index over face embeddings: type chosen from size and memory, saved with its infos.

Every vector is L2-normalised on input (build, add, search, :func:`knn_graph`) and the
metric is the inner product, so similarities are cosines in [-1, 1]. The index type is
picked by :func:`choose_factory` (the autofaiss idea: number of vectors and a memory
budget decide) and can be overridden with any faiss factory string. A saved index is a
folder holding ``index.faiss``, ``ids.json`` and ``index_infos.json`` (written last, so
a folder whose infos are present is complete); :meth:`FaceIndex.load` checks all three.
The infos also record the model the embeddings came from (``source``), so that
:meth:`FaceIndex.check_source` can refuse embeddings of another model or dimension.

Devices: :meth:`FaceIndex.build`, :meth:`FaceIndex.load` and :func:`knn_graph` take
``device`` ("cpu" by default, "auto", "cuda" or "cuda:N"; see :func:`resolve_device`).
Where the installed faiss has GPU support and sees a GPU, "cuda" (and "auto") run the
searches on a GPU copy of the index; training, adding and saving always use the CPU
index, which is the one stored. Index types GPU faiss lacks (HNSW) stay on the CPU.
Nothing requires a GPU: with faiss-cpu an explicit "cuda" logs one warning and runs on
the CPU.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from .errors import ProxytasksError
from .fileio import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the infos record the embeddings' model ("source")
SOURCE_KEYS = ("backbone", "head", "model_sha256")  # from the embeddings' header
INDEX_FILE = "index.faiss"
INFOS_FILE = "index_infos.json"
IDS_FILE = "ids.json"

FLAT_MAX = 10_000
HNSW_MAX = 1_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
PQ_CHOICES = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4)
EXACT_KNN_WORK = 5e11  # n * n * d below which an all-pairs kNN graph is computed exactly
TARGET_RECALL = 0.96  # tuned on the data itself; 0.95 asked, a margin for unseen queries
GRAPH_TUNING_ROWS = 1000  # rows of the data the all-rows graph's nprobe is tuned on
GPU_MAX_K = 2048  # GPU faiss selects at most this many neighbours / probes
_GiB = 1024 ** 3


def _nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest 4 * sqrt(n), 64..262144."""
    nlist = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 1.0)))
    return int(min(max(nlist, 64), 262_144))


def estimate_memory(factory: str, n: int, dim: int) -> int | None:
    """Approximate bytes an index of this factory takes for ``n`` vectors; None if unknown.

    Flat: 4d per vector. HNSW(M): 4d + 8M + 16 (links on level 0 and above, offsets).
    IVF: a code plus an 8-byte id per vector, plus the coarse centroids (and their HNSW
    graph); codes are 4d (Flat), d (SQ8) or m (PQm, 8 bits) bytes.
    """
    if factory == "Flat":
        return 4 * dim * n
    match = re.fullmatch(r"HNSW(\d+)(,Flat)?", factory)
    if match:
        return n * (4 * dim + 8 * int(match.group(1)) + 16)
    match = re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?,(Flat|SQ8|PQ(\d+)(?:x8)?)", factory)
    if not match:
        return None
    nlist = int(match.group(1))
    coarse = nlist * 4 * dim + (nlist * (8 * int(match.group(2)) + 16) if match.group(2) else 0)
    code = {"Flat": 4 * dim, "SQ8": dim}.get(match.group(3))
    extra = 0
    if code is None:
        code = int(match.group(4))
        extra = 256 * dim * 4  # PQ codebooks
    return n * (code + 8) + coarse + extra


def choose_factory(n: int, dim: int, memory_budget_gb: float = 4.0) -> str:
    """A faiss factory string for ``n`` unit vectors of ``dim`` (inner product) in a budget.

    ================  =================================  ==================================
    vectors           fits the budget                    factory
    ================  =================================  ==================================
    n < 10k           (always)                           ``Flat`` (exact, fast enough)
    10k .. 1M         HNSW graph + raw vectors           ``HNSW32,Flat``
    otherwise         raw vectors in inverted lists      ``IVF{nlist},Flat``
    otherwise         PQ codes, largest m that fits      ``IVF{nlist},PQ{m}``
    ================  =================================  ==================================

    ``nlist`` is the power of two nearest 4 * sqrt(n) (64 .. 262144); from 8192 lists up
    the coarse quantizer is itself an HNSW graph (``IVF{nlist}_HNSW32,...``). ``m``
    divides ``dim`` and is tried from 128 down to 4. Memory is estimated with
    :func:`estimate_memory`.

    Raises:
        ProxytasksError: bad sizes, or not even 4-byte PQ codes fit the budget.
    """
    if n < 0 or dim <= 0 or memory_budget_gb <= 0:
        raise ProxytasksError(f"choose_factory: need n >= 0, dim > 0 and a positive memory budget; "
                              f"got n={n}, dim={dim}, memory_budget_gb={memory_budget_gb}")
    budget = memory_budget_gb * _GiB
    if n < FLAT_MAX:
        return "Flat"
    hnsw = f"HNSW{HNSW_M},Flat"
    if n <= HNSW_MAX and estimate_memory(hnsw, n, dim) <= budget:
        return hnsw
    nlist = _nlist(n)
    coarse = f"IVF{nlist}" + (f"_HNSW{HNSW_M}" if nlist >= 8192 else "")
    candidates = [f"{coarse},Flat"] + [f"{coarse},PQ{m}" for m in PQ_CHOICES if m < dim and dim % m == 0]
    for factory in candidates:
        if estimate_memory(factory, n, dim) <= budget:
            return factory
    need = estimate_memory(candidates[-1], n, dim) / _GiB
    raise ProxytasksError(f"{n} vectors of dimension {dim} need about {need:.1f} GiB even as "
                          f"{candidates[-1]}, over the {memory_budget_gb} GiB budget: raise the "
                          f"memory budget or index fewer faces")


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


def _check_ids(ids: Sequence[Any], n: int, known: dict[str, int] | None = None) -> list[str]:
    """Ids as strings, one per vector, unique (also against ``known``)."""
    out = [str(i) for i in ids]
    if len(out) != n:
        raise ProxytasksError(f"got {n} vectors but {len(out)} ids")
    seen: set[str] = set()
    for face_id in out:
        if face_id in seen or (known is not None and face_id in known):
            raise ProxytasksError(f"duplicate face id {face_id!r}: every indexed face needs its own id")
        seen.add(face_id)
    return out


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode("utf-8")).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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


class FaceIndex:
    """A faiss inner-product index over unit vectors, with the face id of each row.

    Attributes:
        index: the faiss index, always on the CPU (the one saved; searches may run on a
            GPU copy, see ``device``).
        ids: face id (str) of each indexed row, in insertion order.
        factory: the faiss factory string.
        parameters: search-time parameters (efSearch or nprobe) and the recall they reach.
        infos: metadata written to ``index_infos.json``.
        device: where searches run, as :func:`resolve_device` resolved the request:
            "cpu", "cuda" or "cuda:N".
    """

    def __init__(self, index: faiss.Index, ids: list[str], factory: str,
                 parameters: dict[str, Any], infos: dict[str, Any] | None = None,
                 device: str = "cpu") -> None:
        self.index = index
        self.ids = list(ids)
        self.factory = factory
        self.parameters = dict(parameters)
        self.infos = dict(infos or {})
        self.device = resolve_device(device)
        self._gpu: faiss.Index | None = None
        self._gpu_failed = False
        self._pos = {face_id: i for i, face_id in enumerate(self.ids)}
        self._id_array: np.ndarray | None = None

    def _gpu_index(self) -> faiss.Index | None:
        """The GPU copy searches run on (made on first use), or None: on the CPU."""
        if self.device != "cpu" and self._gpu is None and not self._gpu_failed:
            self._gpu = _gpu_copy(self.index, self.device)
            self._gpu_failed = self._gpu is None
        return self._gpu

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @classmethod
    def build(cls, vectors: Any, ids: Sequence[Any], factory: str | None = None,
              memory_budget_gb: float = 4.0, seed: int = 0, source: dict[str, Any] | None = None,
              device: str = "cpu") -> "FaceIndex":
        """Index ``vectors`` (normalised here) under ``ids``.

        Args:
            vectors: (n, d) embeddings.
            ids: one unique id per row (kept as strings).
            factory: a faiss factory string; default :func:`choose_factory`.
            memory_budget_gb: budget for :func:`choose_factory`.
            seed: seeds the IVF training sample, k-means and the tuning queries.
            source: the header of the embeddings indexed (:class:`~proxytasks.embed.Embeddings`
                ``meta``); its :data:`SOURCE_KEYS` are recorded for :meth:`check_source`.
            device: "cpu" (default), "auto", "cuda" or "cuda:N" (:func:`resolve_device`):
                with GPU faiss, the tuning and later searches run on a GPU copy; training
                and adding run on the CPU index, which is the one kept and saved.

        IVF indexes are trained on a seeded sample; efSearch / nprobe are then set to the
        smallest value reaching recall@10 >= 0.96 on a seeded sample of the data itself.
        """
        start = time.perf_counter()
        x = normalize(vectors)
        n, d = x.shape
        if n == 0:
            raise ProxytasksError("no vectors to index")
        id_list = _check_ids(ids, n)
        factory = factory or choose_factory(n, d, memory_budget_gb)
        placed = resolve_device(device)
        index, train_size = _build_index(x, factory, seed)
        gpu = _gpu_copy(index, placed)
        parameters = _tune(index, x, seed, gpu=gpu)
        infos = {"train_size": train_size, "seed": seed,
                 "build_seconds": round(time.perf_counter() - start, 3)}
        if source is not None:
            infos["source"] = {k: source[k] for k in SOURCE_KEYS if k in source}
        logger.info("indexed %d vectors as %s in %.1f s (%s)%s", n, factory,
                    infos["build_seconds"], parameters, "" if gpu is None else f", searched on {placed}")
        built = cls(index, id_list, factory, parameters, infos, device=placed)
        built._gpu, built._gpu_failed = gpu, placed != "cpu" and gpu is None
        return built

    def add(self, vectors: Any, ids: Sequence[Any]) -> None:
        """Add new faces (normalised here) without rebuilding; known ids are refused."""
        x = normalize(vectors, self.dim)
        new_ids = _check_ids(ids, len(x), self._pos)
        if len(x) == 0:
            return
        self.index.add(x)
        self._gpu = None  # the GPU copy is remade from the CPU index on the next search
        for face_id in new_ids:
            self._pos[face_id] = len(self.ids)
            self.ids.append(face_id)
        self._id_array = None

    def check_source(self, meta: dict[str, Any], dim: int, emb: str | os.PathLike,
                     folder: str | os.PathLike) -> None:
        """Refuse embeddings that this index (saved in ``folder``) cannot answer or hold.

        Args:
            meta: the embeddings' header; each of :data:`SOURCE_KEYS` the index recorded
                at build time must be equal in it (missing counts as different).
            dim: the embeddings' dimension; it must be the index's.
            emb: the embeddings file, named in the message.

        Raises:
            ProxytasksError: naming both files, for another dimension or another model.
        """
        redo = "embed the faces with the model the index was built from, or rebuild the index"
        if dim != self.dim:
            raise ProxytasksError(f"{emb}: vectors of dimension {dim}, but the index {folder} holds dimension "
                                  f"{self.dim}: they come from different models; {redo}")
        recorded = self.infos.get("source", {})
        if any(meta.get(k) != v for k, v in recorded.items()):
            def describe(m: dict[str, Any]) -> str:
                return ", ".join(f"{k} {str(m.get(k))[:12] if k == 'model_sha256' else m.get(k)}" for k in recorded)

            raise ProxytasksError(f"{emb}: embedded by {describe(meta)}, but the index {folder} was built from "
                                  f"embeddings of {describe(recorded)}; {redo}")

    def position(self, face_id: str) -> int:
        """Row of ``face_id`` in the index."""
        try:
            return self._pos[str(face_id)]
        except KeyError:
            raise ProxytasksError(f"face id {face_id!r} is not in the index") from None

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar indexed rows of each query (normalised here), on the GPU copy
        where ``device`` placed one (k and nprobe up to 2048), else on the CPU.

        Returns:
            (sims, idx): (q, k) float32 cosine similarities, best first, and (q, k) int64
            rows; where fewer than k were found, idx is -1 and sims is -inf.
        """
        if k < 1:
            raise ProxytasksError(f"k must be at least 1, got {k}")
        q = normalize(queries, self.dim, what="queries")
        if len(q) == 0 or self.ntotal == 0:
            return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        return _search(self.index, self._gpu_index(), self.parameters, q, k)

    def ids_of(self, idx: Any) -> np.ndarray:
        """Face ids (object array, same shape) of row numbers; None where idx is -1."""
        if self._id_array is None:
            self._id_array = np.array(self.ids + [None], dtype=object)
        idx = np.asarray(idx, dtype=np.int64)
        return self._id_array[np.where(idx >= 0, idx, len(self.ids))]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.json`` and, last, ``index_infos.json`` atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_FILE}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, folder / INDEX_FILE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with atomic_write(folder / IDS_FILE) as f:
            json.dump(self.ids, f)
        infos = {
            **self.infos,
            "format_version": FORMAT_VERSION,
            "factory": self.factory,
            "metric": "inner_product",
            "normalized": True,
            "n": self.ntotal,
            "dim": self.dim,
            "parameters": self.parameters,
            "estimated_memory_bytes": estimate_memory(self.factory, self.ntotal, self.dim),
            "index_bytes": (folder / INDEX_FILE).stat().st_size,
            "index_sha256": _file_digest(folder / INDEX_FILE),
            "ids_sha256": _ids_digest(self.ids),
            "faiss_version": faiss.__version__,
        }
        with atomic_write(folder / INFOS_FILE) as f:
            json.dump(infos, f, indent=2)
        self.infos = infos
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str = "cpu") -> "FaceIndex":
        """Read a saved index, checking size, digests, dimension and count against the infos.

        ``device`` ("cpu", "auto", "cuda", "cuda:N"; :func:`resolve_device`) says where its
        searches run; the CPU index is read and kept either way.

        Raises:
            ProxytasksError: naming the missing, truncated or mismatching file.
        """
        folder = Path(folder)
        infos_path, index_path, ids_path = folder / INFOS_FILE, folder / INDEX_FILE, folder / IDS_FILE
        rebuild = "; rebuild the index"
        infos = _read_json(infos_path, dict)
        if infos.get("format_version") != FORMAT_VERSION:
            raise ProxytasksError(f"{infos_path}: format version {infos.get('format_version')!r}, "
                                  f"this proxytasks reads {FORMAT_VERSION}{rebuild}")
        if not isinstance(infos.get("source", {}), dict):
            raise ProxytasksError(f"{infos_path}: 'source' is not a JSON object{rebuild}")
        if not index_path.is_file():
            raise ProxytasksError(f"{index_path}: missing{rebuild}")
        size = index_path.stat().st_size
        if size != infos.get("index_bytes"):
            raise ProxytasksError(f"{index_path}: {size} bytes, {infos_path.name} says "
                                  f"{infos.get('index_bytes')} (truncated or replaced){rebuild}")
        if _file_digest(index_path) != infos.get("index_sha256"):
            raise ProxytasksError(f"{index_path}: content does not match the digest in "
                                  f"{infos_path.name} (corrupt or replaced){rebuild}")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise ProxytasksError(f"{index_path}: faiss cannot read it ({exc}){rebuild}") from None
        if index.d != infos.get("dim") or index.ntotal != infos.get("n"):
            raise ProxytasksError(f"{infos_path}: says {infos.get('n')} vectors of dimension "
                                  f"{infos.get('dim')} but {index_path.name} holds {index.ntotal} "
                                  f"of dimension {index.d}{rebuild}")
        ids = _read_json(ids_path, list)
        if len(ids) != index.ntotal or _ids_digest([str(i) for i in ids]) != infos.get("ids_sha256"):
            raise ProxytasksError(f"{ids_path}: {len(ids)} ids that do not match {infos_path.name} "
                                  f"({index.ntotal} vectors){rebuild}")
        return cls(index, [str(i) for i in ids], infos["factory"], infos.get("parameters", {}), infos,
                   device=device)


def _read_json(path: Path, kind: type) -> Any:
    if not path.is_file():
        raise ProxytasksError(f"{path}: missing; the index folder is incomplete, rebuild the index")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxytasksError(f"{path}: not valid JSON ({exc}); rebuild the index") from None
    if not isinstance(value, kind):
        raise ProxytasksError(f"{path}: expected a JSON {kind.__name__}; rebuild the index")
    return value


def graph_factory(n: int, dim: int, memory_budget_gb: float = 4.0) -> str:
    """The faiss factory :func:`knn_graph` builds for an approximate all-rows graph.

    ``IVF{nlist},Flat`` (``nlist`` as in :func:`choose_factory`, at most n / 39 so that
    k-means has 39 points a list) with a flat coarse quantizer, when it fits the budget;
    otherwise what :func:`choose_factory` says (PQ codes). Not HNSW, which
    :func:`choose_factory` picks for serving new queries up to 1M vectors: over all rows
    its build alone costs about as much as the exact graph, while the inverted lists'
    k-means and scans are a small fraction of it (bench/README.md, index_knn). The coarse
    quantizer stays flat even past 8192 lists: the graph's queries come as one batch, so
    their coarse assignment is a matrix product.
    """
    if n < 1 or dim <= 0 or memory_budget_gb <= 0:
        raise ProxytasksError(f"graph_factory: need n >= 1, dim > 0 and a positive memory budget; "
                              f"got n={n}, dim={dim}, memory_budget_gb={memory_budget_gb}")
    factory = f"IVF{max(1, min(_nlist(n), n // 39))},Flat"
    if estimate_memory(factory, n, dim) <= memory_budget_gb * _GiB:
        return factory
    return choose_factory(n, dim, memory_budget_gb)


def knn_graph(vectors: Any, k: int, index: FaceIndex | None = None, seed: int = 0, *,
              exact: bool | None = None, memory_budget_gb: float = 4.0,
              target_recall: float = TARGET_RECALL,
              device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each face's k nearest other faces (never itself, even among exact duplicates).

    Args:
        vectors: (N, d) embeddings, normalised here.
        k: neighbours per face.
        index: an index over exactly these vectors in this order, searched with its own
            parameters. When None one is built here: ``Flat`` (exact) while
            n * n * d <= 5e11 (about 15 s on 2 CPUs; brute force beats any index there),
            otherwise :func:`graph_factory` (``IVF{nlist},Flat``) with nprobe set to the
            smallest reaching recall@k ``target_recall`` on a seeded sample of up to 1000
            of the rows themselves (the graph's queries).
        seed: for the index built here (training sample, k-means, tuning rows).
        exact: for the index built here: True always ``Flat``, False always approximate,
            None (default) by the n * n * d rule above.
        memory_budget_gb: budget of the approximate index built here (:func:`graph_factory`).
        target_recall: recall@k the approximate index built here is tuned to (0.96: 0.95
            asked, a margin for the sample).
        device: where the searches run (:func:`resolve_device`: "cpu", "auto", "cuda",
            "cuda:N"); None (default): "cpu" for the index built here, the given index's
            own ``device`` otherwise. Building always runs on the CPU.

    Returns:
        (sims, idx): (N, k) float32 and int64 row numbers, best first; -1 / -inf pad rows
        with fewer than k neighbours found.
    """
    if k < 1:
        raise ProxytasksError(f"k must be at least 1, got {k}")
    if not 0.0 < target_recall <= 1.0:
        raise ProxytasksError(f"target_recall must be in (0, 1], got {target_recall}")
    start = time.perf_counter()
    x = normalize(vectors)
    n, d = x.shape
    kk = min(k + 1, n)
    if index is None:
        if n == 0:
            raise ProxytasksError("no vectors to index")
        placed = resolve_device("cpu" if device is None else device)
        if exact is None:
            exact = float(n) * n * d <= EXACT_KNN_WORK
        factory = "Flat" if exact or n < 2 else graph_factory(n, d, memory_budget_gb)
        cpu, _ = _build_index(x, factory, seed)
        gpu = _gpu_copy(cpu, placed)
        parameters = {} if kk < 2 else _tune_graph(cpu, x, kk - 1, seed, target_recall, gpu)
        logger.info("knn_graph: %d vectors as %s, built and tuned in %.1f s (%s)%s", n, factory,
                    time.perf_counter() - start, parameters, "" if gpu is None else f", searched on {placed}")
    elif index.ntotal != n or index.dim != d:
        raise ProxytasksError(f"knn_graph: the index holds {index.ntotal} vectors of dimension "
                              f"{index.dim}, the input {n} of dimension {d}")
    else:
        cpu, parameters = index.index, index.parameters
        gpu = index._gpu_index() if device is None else _gpu_copy(cpu, resolve_device(device))
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    if kk < 2:
        return sims, idx
    found_s, found_i = _search(cpu, gpu, parameters, x, kk)
    is_self = found_i == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kk - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop] = False
    sims[:, : kk - 1] = found_s[keep].reshape(n, kk - 1)
    idx[:, : kk - 1] = found_i[keep].reshape(n, kk - 1)
    return sims, idx
