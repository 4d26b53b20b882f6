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
from .index_faiss import (TARGET_RECALL, _build_index, _gpu_copy, _search, _tune, _tune_graph,  # noqa: F401
                          gpu_faiss_available, normalize, resolve_device)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the infos record the embeddings' model ("source")
SOURCE_KEYS = ("backbone", "head", "model_sha256")  # from the embeddings' header
INDEX_FILE = "index.faiss"
INFOS_FILE = "index_infos.json"
IDS_FILE = "ids.json"

FLAT_MAX = 10_000
HNSW_MAX = 1_000_000
HNSW_M = 32
PQ_CHOICES = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4)
EXACT_KNN_WORK = 5e11  # n * n * d below which an all-pairs kNN graph is computed exactly
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

    def add_new(self, vectors: Any, ids: Sequence[Any]) -> int:
        """Add the faces of ``ids`` the index does not hold yet (``index --add``), skipping
        the known ones; returns how many were added."""
        new = [k for k, face_id in enumerate(map(str, ids)) if face_id not in self._pos]
        self.add(np.asarray(vectors)[new], [ids[k] for k in new])
        return len(new)

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
