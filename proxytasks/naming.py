"""Few-shot naming: from a few names a person gave to a name for every face.

Method, in three steps (:func:`name_faces`):

1. **Classifier.** A cosine classifier over the L2-normalised embeddings, fitted on
   the named faces: ``p(c | x) = softmax_c(s * cos(x, w_c))`` with a fixed scale
   ``s = SCALE``. Head ``"prototype"``: ``w_c`` is the normalised mean of the faces
   named ``c``. Head ``"linear"``: ``w_c`` starts at the prototypes and is fine-tuned
   for ``steps`` full-batch (or seeded mini-batch) Adam steps on class-balanced
   cross-entropy, with weight decay *towards the prototypes* (L2-SP).
   Cosine logits with a fixed scale cannot grow without bound and the decay keeps
   ``w_c`` near the prototype, so with one shot per name the head stays close to the
   prototype classifier instead of overfitting. ``steps=0`` is exactly the prototypes.
2. **Propagation.** Faces are grouped into *units*: a track (``tracks >= 0``) or a
   single untracked face. A unit votes: a named face with weight 1 for its given name,
   every other face with its class probabilities; the unit's distribution is the vote
   divided by its number of faces, and all its faces share the unit's top name (a
   track carries one name). Clusters (``clusters >= 0``) then vote the same way over
   their units, with smaller weight: a cluster only speaks when its top name holds at
   least ``cluster_min_share`` of its mass (clusters may be impure: two people of
   about equal weight in one cluster carry nothing), and then a unit's distribution
   becomes ``(1 - cluster_weight) * unit + cluster_weight * cluster``. A unit takes
   the cluster in which most of its faces lie.
3. **Unknown.** A predicted face whose confidence (its distribution's top value) is
   below ``unknown_threshold`` gets no name (None).

A face a person named always keeps its name, with confidence 1 and source "given".
``source`` of the other faces: "cluster" when the cluster vote changed the unit's
name, else "track" when the face's track has two faces or more or a named face, else
"classifier"; "unknown" when rejected.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp

from .errors import ProxytasksError
from .fileio import atomic_write

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SCALE = 16.0  # cosine-softmax scale: cos margin 0.3 between two names -> ~99% confidence
HEADS = ("prototype", "linear")
_CHUNK = 65536


@dataclass
class NamingResult:
    """Per face: ``names`` (None = unknown), ``confidence`` in [0, 1], ``source``."""

    names: list[str | None]
    confidence: np.ndarray
    source: list[str]
    classes: list[str] = field(default_factory=list)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _fit_linear(x: np.ndarray, y: np.ndarray, protos: np.ndarray, steps: int, seed: int,
                lr: float = 0.01, decay: float = 0.2, smoothing: float = 0.0,
                batch: int = 1024) -> np.ndarray:
    """Fine-tune cosine-classifier weights from the prototypes (see module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ys = torch.from_numpy(y.astype(np.int64))
    w0 = torch.from_numpy(protos.astype(np.float32))
    w = w0.clone().requires_grad_(True)
    counts = np.bincount(y, minlength=len(protos)).astype(np.float32)
    cw = torch.from_numpy(1.0 / np.maximum(counts, 1.0))  # class-balanced
    opt = torch.optim.Adam([w], lr=lr)
    # Tiny problems run far faster on one thread (and do not fight other processes);
    # the process-wide thread count is restored afterwards.
    threads = torch.get_num_threads()
    small = min(len(xs), batch) * w.numel() < 50_000_000
    if small:
        torch.set_num_threads(1)
    try:
        _train(xs, ys, w, w0, cw, opt, steps, gen, decay, smoothing, batch)
    finally:
        torch.set_num_threads(threads)
    return _normalise(w.detach().numpy().astype(np.float32))


def _train(xs: "torch.Tensor", ys: "torch.Tensor", w: "torch.Tensor", w0: "torch.Tensor",
           cw: "torch.Tensor", opt: "torch.optim.Optimizer", steps: int, gen: "torch.Generator",
           decay: float, smoothing: float, batch: int) -> None:
    """Adam steps on class-balanced cross-entropy plus ``decay * |w - w0|^2``."""
    import torch
    import torch.nn.functional as F

    for _ in range(steps):
        if len(xs) > batch:
            idx = torch.randint(len(xs), (batch,), generator=gen)
            xb, yb = xs[idx], ys[idx]
        else:
            xb, yb = xs, ys
        logits = SCALE * F.normalize(xb, dim=1) @ F.normalize(w, dim=1).T
        loss = F.cross_entropy(logits, yb, weight=cw, label_smoothing=smoothing)
        loss = loss + decay * ((w - w0) ** 2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def classify(vectors: np.ndarray, idx: np.ndarray, labels: np.ndarray, n_classes: int,
             head: str = "linear", steps: int = 200, seed: int = 0) -> np.ndarray:
    """Class probabilities (N, n_classes) of a cosine classifier fitted on ``vectors[idx]``."""
    if head not in HEADS:
        raise ProxytasksError(f"unknown naming head {head!r}: choose one of {', '.join(HEADS)}")
    x = _normalise(np.asarray(vectors, dtype=np.float32))
    protos = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    np.add.at(protos, labels, x[idx])
    protos = _normalise(protos)
    weights = protos if head == "prototype" or steps <= 0 else _fit_linear(
        x[idx], labels, protos, steps, seed)
    probs = np.empty((len(x), n_classes), dtype=np.float32)
    for s in range(0, len(x), _CHUNK):
        logits = SCALE * (x[s:s + _CHUNK] @ weights.T)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs[s:s + _CHUNK] = e / e.sum(axis=1, keepdims=True)
    return probs


def _group(codes: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Dense group ids 0..G-1 for ``codes >= 0``; -1 stays -1."""
    out = np.full(n, -1, dtype=np.int64)
    valid = codes >= 0
    if valid.any():
        _, inv = np.unique(codes[valid], return_inverse=True)
        out[valid] = inv.reshape(-1)
        return out, int(inv.max()) + 1
    return out, 0


def _sum_by(groups: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """Row sums of ``values`` per group (rows with group -1 are skipped)."""
    valid = groups >= 0
    m = sp.csr_matrix((np.ones(int(valid.sum()), dtype=values.dtype),
                       (groups[valid], np.flatnonzero(valid))), shape=(n_groups, len(values)))
    return np.asarray(m @ values)


def name_faces(vectors: np.ndarray, named: dict[int, str], tracks: np.ndarray | None = None,
               clusters: np.ndarray | None = None, unknown_threshold: float | None = None,
               head: str = "linear", steps: int = 200, seed: int = 0,
               cluster_weight: float = 0.5, cluster_min_share: float = 0.5) -> NamingResult:
    """Name every face from a few named ones (method in the module docstring).

    Args:
        vectors: (N, D) L2-normalised embeddings.
        named: face index -> the name a person gave.
        tracks: a track code per face, -1 for none.
        clusters: a cluster id per face, -1 for none.
        unknown_threshold: predicted faces with confidence below it get None.
        head: "linear" or "prototype".
        steps: fine-tuning steps of the linear head.
        seed: seeds the linear head's mini-batches.
        cluster_weight: weight of a cluster's vote against the unit's own.
        cluster_min_share: the share of its mass a cluster's top name needs to vote.
    """
    if head not in HEADS:
        raise ProxytasksError(f"unknown naming head {head!r}: choose one of {', '.join(HEADS)}")
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {x.shape}")
    n = len(x)
    given_idx = np.array(sorted(named), dtype=np.int64)
    if len(given_idx) and (given_idx[0] < 0 or given_idx[-1] >= n):
        raise ValueError(f"named face index out of range 0..{n - 1}")
    if len(given_idx) == 0:
        logger.warning("no face is named: every face stays unknown")
        return NamingResult([None] * n, np.zeros(n, np.float32), ["unknown"] * n, [])
    classes = sorted(set(named.values()))
    code = {c: i for i, c in enumerate(classes)}
    given_lab = np.array([code[named[int(i)]] for i in given_idx], dtype=np.int64)
    evidence = classify(x, given_idx, given_lab, len(classes), head=head, steps=steps, seed=seed)
    evidence[given_idx] = 0.0
    evidence[given_idx, given_lab] = 1.0

    # Units: one per track, one per untracked face.
    if tracks is not None:
        tracks = np.asarray(tracks).reshape(-1)
        if len(tracks) != n:
            raise ValueError(f"tracks has {len(tracks)} entries for {n} faces")
        unit, n_tracks = _group(tracks.astype(np.int64), n)
    else:
        unit, n_tracks = np.full(n, -1, dtype=np.int64), 0
    loose = unit < 0
    unit[loose] = n_tracks + np.arange(int(loose.sum()))
    n_units = n_tracks + int(loose.sum())
    mass = np.bincount(unit, minlength=n_units).astype(np.float32)
    votes = _sum_by(unit, n_units, evidence)
    unit_dist = votes / mass[:, None]
    final = unit_dist

    if clusters is not None:
        clusters = np.asarray(clusters).reshape(-1)
        if len(clusters) != n:
            raise ValueError(f"clusters has {len(clusters)} entries for {n} faces")
        cl, n_cl = _group(clusters.astype(np.int64), n)
        if n_cl:
            ok = cl >= 0
            table = sp.csr_matrix((np.ones(int(ok.sum())), (unit[ok], cl[ok])), shape=(n_units, n_cl))
            unit_cl = np.asarray(table.argmax(axis=1)).reshape(-1)
            unit_cl[np.diff(table.indptr) == 0] = -1
            c_votes = _sum_by(unit_cl, n_cl, votes)
            c_mass = np.bincount(unit_cl[unit_cl >= 0], weights=mass[unit_cl >= 0], minlength=n_cl)
            c_dist = c_votes / np.maximum(c_mass, 1e-12)[:, None]
            speaks = c_dist.max(axis=1) >= cluster_min_share
            use = (unit_cl >= 0) & speaks[np.maximum(unit_cl, 0)]
            final = unit_dist.copy()
            final[use] = (1 - cluster_weight) * unit_dist[use] + cluster_weight * c_dist[unit_cl[use]]
            logger.debug("%d of %d clusters carry a name", int(speaks.sum()), n_cl)

    top = final.argmax(axis=1)
    conf_u = final[np.arange(n_units), top]
    given_per_unit = np.bincount(unit[given_idx], minlength=n_units)
    is_track = (np.arange(n_units) < n_tracks) & ((mass >= 2) | (given_per_unit > 0))
    src_u = np.where(top != unit_dist.argmax(axis=1), "cluster",
                     np.where(is_track, "track", "classifier"))

    conf = conf_u[unit].astype(np.float32)
    names: list[str | None] = [classes[t] for t in top[unit].tolist()]
    source: list[str] = src_u[unit].tolist()
    if unknown_threshold is not None:
        for i in np.flatnonzero(conf < unknown_threshold).tolist():
            names[i], source[i] = None, "unknown"
    for i, lab in zip(given_idx.tolist(), given_lab.tolist()):
        names[i], source[i] = classes[lab], "given"
    conf[given_idx] = 1.0
    return NamingResult(names, conf, source, classes)


# ---------------------------------------------------------------- label files

def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _rows(path: Path) -> list[tuple[int, object, object]]:
    """(line, id, name) of every record in a CSV or JSONL label file."""
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    with _open_text(path) as f:
        text = f.read()
    if stem.endswith((".jsonl", ".json")) or (not stem.endswith(".csv") and text.lstrip().startswith("{")):
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ProxytasksError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "id" not in rec or "name" not in rec:
                raise ProxytasksError(f"{path}:{line_no}: each line must be an object with 'id' and 'name'")
            rows.append((line_no, rec["id"], rec["name"]))
        return rows
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    cols = [h.strip().lower() for h in header] if header else []
    if "id" not in cols or "name" not in cols:
        raise ProxytasksError(f"{path}:1: the header must name the columns 'id' and 'name' "
                              f"(got {header!r})")
    i_id, i_name = cols.index("id"), cols.index("name")
    rows = []
    for rec in reader:
        if not rec or not any(cell.strip() for cell in rec):
            continue
        line_no = reader.line_num
        rows.append((line_no, rec[i_id] if i_id < len(rec) else "",
                     rec[i_name] if i_name < len(rec) else ""))
    return rows


def read_labels(path: str | os.PathLike, ids: Sequence[str]) -> dict[int, str]:
    """Names a person gave: CSV ``id,name`` (header required) or JSONL ``{"id", "name"}``.

    Returns face index (position in ``ids``) -> name. Every defect (an id not in
    ``ids``, an empty name, one id given two different names) is reported with the
    file and line in one :class:`ProxytasksError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ProxytasksError(f"{path}: label file not found")
    index = {str(face_id): i for i, face_id in enumerate(ids)}
    out: dict[int, str] = {}
    seen: dict[int, int] = {}
    problems: list[str] = []
    for line_no, face_id, name in _rows(path):
        face_id = "" if face_id is None else str(face_id).strip()
        name = "" if name is None else str(name).strip()
        where = f"{path}:{line_no}"
        if face_id not in index:
            problems.append(f"{where}: id {face_id!r} is not a face of the manifest")
            continue
        if not name:
            problems.append(f"{where}: id {face_id!r} has an empty name")
            continue
        i = index[face_id]
        if i in out and out[i] != name:
            problems.append(f"{where}: id {face_id!r} is named {name!r} here but "
                            f"{out[i]!r} on line {seen[i]}")
            continue
        out.setdefault(i, name)
        seen.setdefault(i, line_no)
    if problems:
        more = f"\n... and {len(problems) - 20} more problem(s)" if len(problems) > 20 else ""
        raise ProxytasksError("\n".join(problems[:20]) + more)
    logger.info("%s: %d named faces, %d names", path, len(out), len(set(out.values())))
    return out


def write_names(path: str | os.PathLike, ids: Sequence[str], result: NamingResult) -> None:
    """Write ``id,name,confidence,source`` as CSV, atomically; an unknown name is empty."""
    if len(ids) != len(result.names):
        raise ValueError(f"{len(ids)} ids for {len(result.names)} names")
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "name", "confidence", "source"])
        for face_id, name, c, s in zip(ids, result.names, result.confidence.tolist(), result.source):
            w.writerow([face_id, "" if name is None else name, f"{c:.4f}", s])
