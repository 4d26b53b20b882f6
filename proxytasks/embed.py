"""Embedding faces: run the trunk and the head over a manifest, in resumable chunks.

The faces, their views and the trunk pass live in :mod:`proxytasks.features` (its
names are importable from here too). Embeddings are written as ``.npz`` (vectors, ids,
and a JSON header with the model, dimension and sha256 digests of the ids and of the
vectors).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .embedder import Embedder
from .errors import ProxytasksError
from .features import (  # noqa: F401  (re-exported: their home is proxytasks.features)
    VIEWS,
    FaceDataset,
    head_vectors,
    load_face,
    trunk_features,
    unwrap_worker_error,
)
from .fileio import atomic_write
from .manifest import Manifest
from .pairs import ids_digest

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the header holds vectors_sha256


@dataclass
class Embeddings:
    """Unit vectors with the face ids they belong to, and where they came from."""

    vectors: np.ndarray
    ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def digest(vectors: np.ndarray) -> str:
        """sha256 of the vectors as row-major little-endian float32 (the header's ``vectors_sha256``)."""
        return hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` atomically; the header holds the counts and digests of ids and vectors."""
        path = Path(path)
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "n": len(self.ids),
                "dim": int(vectors.shape[1]), "ids_digest": ids_digest(self.ids),
                "vectors_sha256": self.digest(vectors)}
        with atomic_write(path, "wb", gz=False) as fh:
            np.savez(fh, vectors=vectors, ids=np.array(self.ids, dtype=str), meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Embeddings":
        """Read and check an embeddings file."""
        path = Path(path)
        if not path.is_file():
            raise ProxytasksError(f"{path}: embeddings file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                vectors, ids, meta = z["vectors"], [str(s) for s in z["ids"]], json.loads(str(z["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("its header is not a JSON object")
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ProxytasksError(f"{path}: not a proxytasks embeddings file ({e})") from None
        version = meta.get("format_version")
        if type(version) is int and 0 < version < FORMAT_VERSION:
            raise ProxytasksError(f"{path}: embeddings format {version}, written by an older proxytasks (this one "
                                  f"reads {FORMAT_VERSION}); run `proxytasks embed` again")
        if version != FORMAT_VERSION or vectors.shape != (meta.get("n"), meta.get("dim")) \
                or vectors.dtype.kind != "f" or vectors.dtype.itemsize != 4 or ids_digest(ids) != meta.get("ids_digest"):
            raise ProxytasksError(f"{path}: header and content disagree; the file is damaged or foreign")
        if cls.digest(vectors) != meta.get("vectors_sha256"):
            raise ProxytasksError(f"{path}: the vectors do not match the sha256 in its header (corrupt or "
                                  "altered); run `proxytasks embed` again")
        if not np.isfinite(vectors).all():
            raise ProxytasksError(f"{path}: embeddings hold NaN or infinite values")
        return cls(vectors, ids, meta)


CHUNK_FACES = 4096  # faces per resumable chunk of `proxytasks embed` (then rounded up to whole batches)
PARTIAL_VERSION = 1  # of the chunk files in OUT.partial/


def partial_folder(out: str | os.PathLike) -> Path:
    """Where the finished chunks of the embeddings file ``out`` wait for it: ``OUT.partial/``."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def _chunk_key(embedder: Embedder, manifest: Manifest, device: str) -> dict[str, Any]:
    """What chunk features depend on: the model (its config and weights), the device kind
    (CUDA runs in bf16) and the face ids in order; not the batch size or workers."""
    import hashlib

    model = hashlib.sha256(json.dumps(embedder.config(), sort_keys=True).encode())
    model.update(embedder.fingerprint().encode())
    return {"version": PARTIAL_VERSION, "model": model.hexdigest(), "device": torch.device(device).type,
            "view": "plain", "ids": ids_digest([f.id for f in manifest.faces])}


def _chunk_path(folder: Path, start: int, end: int) -> Path:
    return folder / f"{start:012d}-{end:012d}.npz"


def _clear_partial(folder: Path, remove: bool = False) -> None:
    """Delete the chunk files (and temporary files of chunks) in ``folder``, nothing else;
    with ``remove``, the folder too when that leaves it empty."""
    import re

    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if re.fullmatch(r"\.?\d{12}-\d{12}\.npz(\..+\.tmp)?", p.name) and p.is_file():
            p.unlink(missing_ok=True)
    if remove:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _save_chunk(folder: Path, key: dict[str, Any], start: int, end: int, feats: np.ndarray) -> None:
    if not np.isfinite(feats).all():
        return  # never reused; trunk_features refuses the run at its end
    with atomic_write(_chunk_path(folder, start, end), "wb", gz=False) as fh:
        np.savez(fh, features=np.ascontiguousarray(feats, np.float32),
                 key=np.array(json.dumps({**key, "start": start, "end": end})))


def _load_chunk(folder: Path, key: dict[str, Any], start: int, end: int) -> np.ndarray | None:
    """The trunk features of faces ``start:end`` saved under ``key``, or None."""
    path = _chunk_path(folder, start, end)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != {**key, "start": start, "end": end}:
                return None
            feats = z["features"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        logger.warning("ignoring unreadable chunk %s", path)
        return None
    if feats.dtype != np.float32 or feats.ndim != 2 or len(feats) != end - start or not np.isfinite(feats).all():
        return None
    return feats


class _ChunkTap(torch.nn.Module):
    """The trunk, writing its outputs into ``folder`` chunk by chunk as the batches pass
    (in order, as :func:`trunk_features` feeds them): ``ranges`` are the face ranges of
    the chunks, in the order their faces come."""

    def __init__(self, trunk: torch.nn.Module, folder: Path, key: dict[str, Any],
                 ranges: list[tuple[int, int]]) -> None:
        super().__init__()
        self.trunk, self.folder, self.key, self.ranges = trunk, folder, key, list(ranges)
        self.rows: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.trunk(x)
        self.rows.append(y.float().cpu().numpy())  # as trunk_features keeps them
        held = sum(map(len, self.rows))
        while self.ranges and held >= self.ranges[0][1] - self.ranges[0][0]:
            start, end = self.ranges.pop(0)
            block = np.concatenate(self.rows)
            _save_chunk(self.folder, self.key, start, end, block[:end - start])
            self.rows = [block[end - start:]] if len(block) > end - start else []
            held = len(block) - (end - start)
        return y


def _chunked_features(embedder: Embedder, manifest: Manifest, folder: Path, resume: bool, chunk_size: int,
                      batch_size: int, workers: int, progress: bool, device: str) -> np.ndarray:
    """Plain trunk features of every face, saved chunk by chunk in ``folder`` (see
    :func:`embed_manifest`)."""
    if chunk_size < 1 or batch_size < 1:
        raise ProxytasksError(f"chunk size ({chunk_size}) and batch size ({batch_size}) must be at least 1")
    per = -(-chunk_size // batch_size) * batch_size  # whole batches: each batch is the one an unchunked run makes
    n = len(manifest)
    ranges = [(s, min(s + per, n)) for s in range(0, n, per)]
    key = _chunk_key(embedder, manifest, device)
    if not resume:
        _clear_partial(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[int, int], np.ndarray] = {}
    for r in ranges if resume else []:
        kept = _load_chunk(folder, key, *r)
        if kept is not None:
            done[r] = kept
    todo = [r for r in ranges if r not in done]
    if done:
        logger.info("resuming from %s: %d of %d faces embedded by an earlier run", folder,
                    sum(e - s for s, e in done), n)
    elif resume:
        logger.info("nothing to resume in %s: embedding all %d faces", folder, n)
    if todo:
        sub = Manifest([f for s, e in todo for f in manifest.faces[s:e]], manifest.root)
        new = trunk_features(embedder, sub, ("plain",), batch_size, workers, progress=progress, device=device,
                             module=_ChunkTap(embedder.trunk, folder, key, todo))[0]
        at = 0
        for s, e in todo:
            done[(s, e)] = new[at:at + e - s]
            at += e - s
    feats = np.empty((n, done[ranges[0]].shape[1]), np.float32)
    for s, e in ranges:
        feats[s:e] = done[(s, e)]
    return feats


def embed_manifest(embedder: Embedder, manifest: Manifest, batch_size: int = 64, workers: int = 1,
                   progress: bool = True, device: str = "cpu", partial: str | os.PathLike | None = None,
                   resume: bool = False, chunk_size: int = CHUNK_FACES) -> Embeddings:
    """Embed every face of ``manifest``.

    ``partial``: a folder that keeps the trunk features chunk by chunk, each chunk
    (``chunk_size`` faces, rounded up to whole batches so that every batch, hence every
    value, is the one an unchunked run gives) written atomically as soon as it is done.
    With ``resume``, the chunks found there that the same model made, on the same kind
    of device, for the same face ids, are reused and only the rest is computed; without,
    the folder is emptied first. The caller removes it once the embeddings are saved
    (:func:`embed_to_file` does both).
    """
    if partial is None or not len(manifest):
        feats = trunk_features(embedder, manifest, ("plain",), batch_size, workers, progress=progress,
                               device=device)[0]
    else:
        feats = _chunked_features(embedder, manifest, Path(partial), resume, chunk_size, batch_size, workers,
                                  progress, device)
    embedder.to("cpu")
    vectors = head_vectors(embedder, feats)
    return Embeddings(vectors, [f.id for f in manifest.faces],
                      {"backbone": embedder.backbone, "head": embedder.head_kind, "model_sha256": embedder.fingerprint()})


def embed_to_file(embedder: Embedder, manifest: Manifest, out: str | os.PathLike, batch_size: int = 64,
                  workers: int = 1, progress: bool = True, device: str = "cpu", resume: bool = False,
                  chunk_size: int = CHUNK_FACES, meta: dict[str, Any] | None = None) -> Embeddings:
    """Embed every face of ``manifest`` into the file ``out``, so that a killed run can resume.

    ``meta``: more entries for the file's header (a shard's place, see :func:`shard_manifest`).

    Finished chunks wait in :func:`partial_folder` (``OUT.partial/``, see
    :func:`embed_manifest`); ``out`` is written atomically, then the chunks (and the
    folder, when nothing else is in it) and any temporary file an earlier, killed write
    of ``out`` left are removed.
    """
    import glob

    out = Path(out)
    partial = partial_folder(out)
    emb = embed_manifest(embedder, manifest, batch_size, workers, progress, device, partial=partial,
                         resume=resume, chunk_size=chunk_size)
    emb.meta.update(meta or {})
    emb.save(out)
    _clear_partial(partial, remove=True)
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):  # fileio.atomic_write's temporary names
        tmp.unlink(missing_ok=True)
    return emb


# --------------------------------------------------------------------------- shards
MODEL_KEYS = ("backbone", "head", "model_sha256")  # what shards of one run share in their headers


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), the i-th of n shards counted from 0."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ProxytasksError(f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of 4 shards") from None
    if not (n >= 1 and 0 <= i < n):
        raise ProxytasksError(f"--shard {text!r}: I/N needs N >= 1 and 0 <= I < N (shards count from 0)")
    return i, n


def shard_manifest(manifest: Manifest, index: int, count: int) -> tuple[Manifest, dict[str, Any]]:
    """The faces of shard ``index`` of ``count`` (contiguous blocks in manifest order, as
    ``np.array_split`` cuts them) and the header entry that lets :func:`merge_shards`
    put the shards back together."""
    block = np.array_split(np.arange(len(manifest)), count)[index]
    start = int(block[0]) if len(block) else len(manifest)
    part = Manifest(manifest.faces[start:start + len(block)], manifest.root)
    return part, {"index": index, "count": count, "start": start, "faces": len(manifest),
                  "ids_digest": ids_digest([f.id for f in manifest.faces])}


def merge_shards(parts: Sequence[Embeddings], names: Sequence[str]) -> Embeddings:
    """The embeddings of the whole manifest from the files of its ``embed --shard i/n``
    runs (any order): every shard exactly once, all of one manifest and one model.

    Raises:
        ProxytasksError: naming the file, for a file that is not a shard, a shard of
            another manifest, split or model, a shard given twice, or missing shards.
    """
    if not parts:
        raise ProxytasksError("no embeddings file to merge")
    first = parts[0].meta.get("shard")
    for e, name in zip(parts, names):
        s = e.meta.get("shard")
        if not isinstance(s, dict):
            raise ProxytasksError(f"{name}: not a shard (no 'shard' in its header); give the files that "
                                  "`proxytasks embed --shard I/N` wrote")
        if (s.get("count"), s.get("faces"), s.get("ids_digest")) != (first.get("count"), first.get("faces"),
                                                                      first.get("ids_digest")):
            raise ProxytasksError(f"{name}: shard of another manifest or split ({s.get('faces')} faces in "
                                  f"{s.get('count')} shards, against {first.get('faces')} in {first.get('count')} "
                                  f"for {names[0]})")
        other = [k for k in MODEL_KEYS if e.meta.get(k) != parts[0].meta.get(k)]
        if other or e.vectors.shape[1] != parts[0].vectors.shape[1]:
            raise ProxytasksError(f"{name}: embedded by another model than {names[0]} "
                                  f"({', '.join(other) or 'dimension'} differ); embed every shard with one run")
    by_index: dict[int, tuple[Embeddings, str]] = {}
    for e, name in zip(parts, names):
        i = e.meta["shard"]["index"]
        if i in by_index:
            raise ProxytasksError(f"{name}: shard {i} is also {by_index[i][1]}")
        by_index[i] = (e, name)
    missing = sorted(set(range(first["count"])) - set(by_index))
    if missing:
        raise ProxytasksError(f"shards {', '.join(map(str, missing))} of {first['count']} are missing "
                              f"(run `proxytasks embed --shard I/{first['count']}` for them)")
    ordered = [by_index[i][0] for i in range(first["count"])]
    ids = [x for e in ordered for x in e.ids]
    if len(ids) != first["faces"] or ids_digest(ids) != first["ids_digest"]:
        raise ProxytasksError(f"the shards' faces ({len(ids)}) are not those of the manifest they were cut "
                              f"from ({first['faces']}); a shard file is damaged or renamed")
    meta = {k: v for k, v in parts[0].meta.items() if k not in ("shard", "format_version", "n", "dim",
                                                                 "ids_digest", "vectors_sha256")}
    return Embeddings(np.concatenate([e.vectors for e in ordered]), ids, meta)


def load_embeddings(paths: Sequence[str | os.PathLike]) -> Embeddings:
    """One embeddings file, or the shards of one run (see :func:`merge_shards`)."""
    parts = [Embeddings.load(p) for p in paths]
    if len(parts) == 1 and "shard" not in parts[0].meta:
        return parts[0]
    return merge_shards(parts, [str(p) for p in paths])
