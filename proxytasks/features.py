"""Trunk features of faces, and their cache in a run folder (``RUN/features.npz``).

Faces come from ``crop`` or are cut on the fly from ``image`` + ``bbox``
(:func:`load_face`). Trunk features can be computed for several *views* of each face
(plain, mirrored, randomly augmented; :class:`FaceDataset` decodes a face once for all
its views), so that training a head on cached features still sees augmentations.

This module is the one reader and writer of ``features.npz``: every read checks the
cache's key (backbone, weights, input size, views, seed and the digest of the face
ids) and refuses a cache of other faces or another model, so that a stale cache is
recomputed, never silently used. A cache may hold a subsample of the faces (a short
time budget, see :func:`cache_features`); it then says which (``faces``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .embedder import Embedder
from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Face, Manifest
from .media import read_image
from .models import autocast, to_device
from .pairs import ids_digest

logger = logging.getLogger(__name__)

VIEWS = ("plain", "flip", "augment")
CACHE_NAME = "features.npz"


# --------------------------------------------------------------------------- faces
def load_face(manifest: Manifest, face: Face, aligner: Any = None) -> Image.Image:
    """The face as an RGB image: its crop, or its box cut from its (upright) image; with
    an ``aligner`` (e.g. :class:`~proxytasks.align.DlibAligner`), what it makes of the face."""
    if aligner is not None:
        return aligner(manifest, face)
    try:
        img = read_image(manifest.resolve(face.crop if face.crop is not None else face.image))
    except ProxytasksError as e:
        raise ProxytasksError(f"face {face.id!r}: {e}") from None
    if face.crop is None:
        x, y, w, h = face.bbox
        img = img.crop((round(x), round(y), round(x + w), round(y + h)))
    return img


def _augment() -> Any:
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size=112, scale=(0.7, 1.0), ratio=(0.85, 1.15)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.3, 0.03)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
    ])


class FaceDataset(Dataset):
    """Faces of a manifest under one view (or several: each item stacks them), transformed
    for the trunk. ``first``: the position of the manifest's first face in the whole set
    (a shard's start); ``positions``: the position of each face in the whole set (a
    subsample); the seeded augmentation follows the face's position."""

    def __init__(self, manifest: Manifest, transform: Any, view: str | Sequence[str] = "plain", seed: int = 0,
                 aligner: Any = None, first: int = 0, positions: Sequence[int] | None = None) -> None:
        self.views = (view,) if isinstance(view, str) else tuple(view)
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views:
            raise ProxytasksError(f"unknown view {(bad or [''])[0]!r}; use one of {', '.join(VIEWS)}")
        self.stacked = not isinstance(view, str)
        self.manifest, self.transform, self.seed = manifest, transform, seed
        self.first, self.aligner = first, aligner
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self._augment = _augment() if "augment" in self.views else None

    @property
    def view(self) -> str:
        """The first (for a one-view dataset, the only) view."""
        return self.views[0]

    def __len__(self) -> int:
        return len(self.manifest)

    def _view(self, img: Image.Image, view: str, i: int) -> torch.Tensor:
        if view == "flip":
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        elif view == "augment":
            at = int(self.positions[i]) if self.positions is not None else self.first + i
            torch.manual_seed(self.seed * 1_000_003 + at)  # the same augmentation on every run
            img = self._augment(img)
        return self.transform(img)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = load_face(self.manifest, self.manifest[i], self.aligner)
        if not self.stacked:
            return self._view(img, self.views[0], i)
        return torch.stack([self._view(img, v, i) for v in self.views])


def unwrap_worker_error(e: ProxytasksError) -> ProxytasksError:
    """A ProxytasksError raised in a DataLoader worker, without torch's traceback text."""
    if "Original Traceback" not in str(e):
        return e
    return ProxytasksError(str(e).rsplit("ProxytasksError: ", 1)[-1].strip())


def trunk_features(embedder: Embedder, manifest: Manifest, views: Sequence[str] = ("plain",),
                   batch_size: int = 64, workers: int = 1, seed: int = 0, progress: bool = True,
                   device: str = "cpu", module: torch.nn.Module | None = None, dtype: Any = np.float32,
                   desc: str = "features", first: int = 0, positions: Sequence[int] | None = None,
                   stop: Callable[[int], bool] | None = None) -> np.ndarray:
    """Pooled trunk features, shape (len(views), faces, in_dim) (bf16 autocast on CUDA).

    Each face is read once for all its views (a batch of ``batch_size`` faces runs
    ``batch_size * len(views)`` images through the trunk). ``module``: another network to
    run on the embedder's inputs instead of its trunk (a part of it, as
    :func:`proxytasks.finetune.prefix_features` does); its outputs of any shape are stacked
    the same way, as ``dtype``. ``first`` / ``positions``: where the faces sit in the whole
    set when ``manifest`` is a block or a subsample of it (the seeded augmentations follow
    the face). ``stop(faces_done)``, called after each batch, ends the pass early when it
    returns True: the result then holds the faces done, in order.
    """
    if not len(manifest):
        if module is not None:
            raise ProxytasksError("the manifest holds no face: nothing to compute")
        return np.zeros((len(views), 0, embedder.in_dim), dtype=dtype)
    home = next(embedder.parameters()).device
    embedder.to(device).eval()
    trunk = module if module is not None else embedder.trunk
    aligner = embedder.aligner()
    if aligner is not None:
        aligner.prepare(manifest, progress=progress)
        plan = aligner.plan(manifest)
        logger.info("faces for %s: %s", embedder.backbone, ", ".join(f"{n} {how}" for how, n in plan.most_common()))
        if plan.get("crop"):
            logger.warning("%d of %d faces are unaligned crops (no dlib 5-point predictor, no landmarks): "
                           "%s expects aligned chips", plan["crop"], len(manifest), embedder.backbone)
    bar = tqdm(total=len(views) * len(manifest), desc=desc, unit="face", disable=not progress)
    cuda = torch.device(device).type == "cuda"
    out, pos = None, 0
    data = FaceDataset(manifest, embedder.transform(), tuple(views), seed, aligner, first, positions)
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False, pin_memory=cuda)
    try:
        with torch.inference_mode(), autocast(device):
            for batch in loader:  # (B, V, 3, H, W)
                b = len(batch)
                feats = trunk(to_device(batch.flatten(0, 1), device)).float().cpu().numpy()
                feats = feats.reshape((b, len(views)) + feats.shape[1:]).swapaxes(0, 1)
                if out is None:
                    out = np.zeros((len(views), len(manifest)) + feats.shape[2:], dtype=dtype)
                out[:, pos:pos + b] = feats
                pos += b
                bar.update(b * len(views))
                if stop is not None and pos < len(manifest) and stop(pos):
                    break
    except ProxytasksError as e:  # from a worker, torch wraps the message in its traceback
        raise unwrap_worker_error(e) from None
    finally:
        bar.close()
        embedder.to(home)
    out = out[:, :pos]
    if not np.isfinite(out).all():
        raise ProxytasksError(f"the {embedder.backbone} trunk produced NaN or infinite (or, as {np.dtype(dtype).name}, "
                              "overflowing) values; check the weights")
    return out


def head_vectors(embedder: Embedder, features: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Apply the head (and L2 normalisation) to cached trunk features."""
    embedder.eval()
    rows = []
    device = next(embedder.head.parameters(), torch.empty(0)).device
    with torch.inference_mode():
        for s in range(0, len(features), batch_size):
            x = to_device(torch.from_numpy(np.ascontiguousarray(features[s:s + batch_size], np.float32)), device)
            rows.append(embedder.embed_features(x).float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)


# --------------------------------------------------------------------------- the cache
@dataclass
class FeatureCache:
    """Trunk features of some (or all) faces: ``features[v, r]`` is view ``v`` of face
    ``faces[r]`` (``faces`` ascending face indices of the manifest)."""

    features: np.ndarray  # (views, len(faces), in_dim) float32
    faces: np.ndarray  # (k,) int64
    n_faces: int  # faces in the manifest

    @property
    def complete(self) -> bool:
        """Whether every face of the manifest is cached."""
        return len(self.faces) == self.n_faces

    @property
    def views(self) -> int:
        """Views cached per face."""
        return int(self.features.shape[0])


def feature_key(backbone: str, weights: str | None, input_size: int | None, views: Sequence[str], seed: int,
                ids: Sequence[str]) -> dict[str, Any]:
    """What cached trunk features depend on: the model, its input, the views asked for and
    their seed, and the face ids in order (the cache's key)."""
    return {"backbone": backbone, "weights": weights, "input_size": input_size, "views": list(views),
            "seed": seed, "ids": ids_digest(list(ids))}


def options_key(options: dict[str, Any], ids: Sequence[str]) -> dict[str, Any]:
    """:func:`feature_key` of a run's saved training options (``config.json``'s ``options``)."""
    from .defaults import DEFAULT_BACKBONE

    return feature_key(options.get("backbone", DEFAULT_BACKBONE), options.get("weights"),
                       options.get("input_size"), options.get("views", VIEWS), options.get("seed", 0), ids)


def read_cache(path: str | os.PathLike, key: dict[str, Any]) -> FeatureCache | None:
    """The cache at ``path`` when it was made under ``key``; None when it is absent, or
    unreadable, or made for other faces or another model (said in the log: it is then
    recomputed, never used)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["key"]))
            if stored != key:
                what = [k for k in key if not isinstance(stored, dict) or stored.get(k) != key[k]]
                logger.warning("feature cache %s was made for another %s: not used", path,
                               ", ".join(what) or "key")
                return None
            feats = z["features"]
            n = int(z["n_faces"]) if "n_faces" in z else feats.shape[1]
            faces = z["faces"].astype(np.int64) if "faces" in z else np.arange(feats.shape[1])
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        logger.warning("ignoring unreadable feature cache %s", path)
        return None
    if feats.ndim != 3 or feats.shape[1] != len(faces) or not len(feats) or \
            (len(faces) and (faces.min() < 0 or faces.max() >= n or (np.diff(faces) <= 0).any())):
        logger.warning("ignoring malformed feature cache %s", path)
        return None
    logger.info("reusing cached trunk features from %s (%d of %d faces, %d views)", path, len(faces), n, len(feats))
    return FeatureCache(feats.astype(np.float32), faces, n)


def write_cache(path: str | os.PathLike, cache: FeatureCache, key: dict[str, Any]) -> None:
    """Write ``cache`` (as float16) under ``key`` atomically."""
    with atomic_write(Path(path), "wb", gz=False) as fh:
        np.savez(fh, features=cache.features.astype(np.float16), faces=cache.faces.astype(np.int64),
                 n_faces=np.int64(cache.n_faces), key=np.array(json.dumps(key)))


def run_cache(run: str | os.PathLike, ids: Sequence[str]) -> FeatureCache | None:
    """The feature cache of a trained run for the faces ``ids``, checked against the key its
    ``config.json`` options give; None when there is none that fits."""
    run = Path(run)
    try:
        options = json.loads((run / "config.json").read_text()).get("options")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(options, dict):
        return None
    return read_cache(run / CACHE_NAME, options_key(options, ids))


def plain_features(run: str | os.PathLike, manifest: Manifest | None = None, ids: Sequence[str] | None = None,
                   embedder: Embedder | None = None, batch_size: int = 64, workers: int = 1,
                   progress: bool = True, device: str = "cpu") -> np.ndarray | None:
    """The plain-view trunk features (float32, one row per face) of the faces of
    ``manifest`` (or ``ids``) from the run's cache; faces the cache lacks (a subsample)
    are computed with the run's trunk when ``manifest`` is given. None when the cache does
    not fit and nothing can be computed (no manifest)."""
    ids = [f.id for f in manifest.faces] if manifest is not None else list(ids or [])
    cache = run_cache(run, ids)
    if cache is not None and cache.complete:
        return cache.features[0]
    if manifest is None:
        return None
    embedder = embedder or Embedder.load(run)
    have = cache.faces if cache is not None else np.zeros(0, np.int64)
    missing = np.setdiff1d(np.arange(len(ids)), have)
    out = np.zeros((len(ids), embedder.in_dim), np.float32)
    if cache is not None:
        out[cache.faces] = cache.features[0]
    sub = Manifest([manifest.faces[i] for i in missing], manifest.root)
    out[missing] = trunk_features(embedder, sub, ("plain",), batch_size, workers, progress=progress,
                                  device=device, positions=missing)[0]
    return out


def copy_cache(src_run: str | os.PathLike, dst_run: str | os.PathLike) -> bool:
    """Copy a run's feature cache into another run folder (its reader checks the key);
    False when there is none."""
    src = Path(src_run) / CACHE_NAME
    if not src.is_file():
        return False
    shutil.copy2(src, Path(dst_run) / CACHE_NAME)
    return True


# --------------------------------------------------------------------------- caching within a budget
def cache_order(group: np.ndarray, cannot: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces in the order a budget caches them, and the unit boundaries in that order.

    A unit is a must-link group (a track) drawn at random with every group cannot-linked
    to it (the tracks it shares frames with) not taken yet, so that any prefix cut at a
    unit boundary keeps whole tracks and their cannot-links. Groups with a cannot-link
    come first, then the others.
    """
    rng = np.random.default_rng([seed, 17])
    n_groups = int(group.max()) + 1 if len(group) else 0
    members = np.argsort(group, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(group, minlength=n_groups))]
    nb: list[list[int]] = [[] for _ in range(n_groups)]
    for a, b in np.asarray(cannot, dtype=np.int64).reshape(-1, 2).tolist():
        nb[a].append(b)
        nb[b].append(a)
    linked = np.array([bool(x) for x in nb], dtype=bool)
    seeds = rng.permutation(n_groups)
    seeds = np.r_[seeds[linked[seeds]], seeds[~linked[seeds]]]
    taken = np.zeros(n_groups, dtype=bool)
    order, ends, track_ends, at = [], [], [], 0
    for g in seeds.tolist():
        if taken[g]:
            continue
        unit = [g] + [h for h in nb[g] if not taken[h]]
        taken[unit] = True
        for h in dict.fromkeys(unit):
            order.append(members[bounds[h]:bounds[h + 1]])
            at += len(order[-1])
            track_ends.append(at)
        ends.append(at)
    return ((np.concatenate(order) if order else np.zeros(0, np.int64)), np.array(ends, dtype=np.int64),
            np.array(track_ends, dtype=np.int64))


def cache_features(embedder: Embedder, manifest: Manifest, views: Sequence[str], path: str | os.PathLike,
                   key: dict[str, Any], order: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   deadline: float | None = None, batch_size: int = 64, workers: int = 1, seed: int = 0,
                   progress: bool = True, device: str = "cpu", min_faces: int | None = None,
                   write: bool = True) -> tuple[FeatureCache, dict[str, Any]]:
    """Trunk features of ``views`` for the faces of ``manifest``, cached at ``path``.

    The cache is read first (:func:`read_cache`); faces it lacks are computed in
    ``order`` (see :func:`cache_order`; manifest order without it), the first two views
    (two views of one face are the positive pair of a photo collection) together, each
    face decoded once. ``deadline`` (a ``time.perf_counter()`` value): when the caching
    rate measured on the first batches says every face would not be cached by then,
    the pass stops before the deadline (after ``min_faces`` faces, a batch by default,
    and a whole track at least) and is cut back to the last unit boundary (to the last
    track boundary when no whole unit was done); the cache holds that subsample, as the
    warning says.
    Views after the first two are added when every face is cached and they fit before
    the deadline. Returns the cache and what was done (faces, views, subsample, seconds).
    """
    began = time.perf_counter()
    n = len(manifest)
    old = read_cache(path, key)
    done = old.faces if old is not None else np.zeros(0, np.int64)
    base = list(views[:old.views]) if old is not None else list(views[:2])
    order_faces, ends, track_ends = order if order is not None else (np.arange(n),) + (np.arange(1, n + 1),) * 2
    todo_mask = np.ones(n, dtype=bool)
    todo_mask[done] = False
    keep = todo_mask[order_faces]
    todo = order_faces[keep]
    within = np.cumsum(keep)
    unit_end = within[ends - 1] if len(ends) else np.zeros(0, np.int64)  # unit ends within todo
    track_end = within[track_ends - 1] if len(track_ends) else np.zeros(0, np.int64)
    min_faces = batch_size if min_faces is None else min_faces
    need = max(min_faces, int(track_end[track_end > 0].min()) if (track_end > 0).any() else 0)  # a whole track
    said: list[bool] = []

    def stop(k: int) -> bool:
        if deadline is None:
            return False
        now = time.perf_counter()
        rate = (now - began) / k
        if not said:
            said.append(True)
            if now + rate * (len(todo) - k) > deadline:
                logger.warning("time budget: caching the trunk features of all %d faces would take about %.0f s "
                               "more; caching a subsample of whole tracks with their co-occurring tracks instead "
                               "(about %d faces)", len(todo), rate * (len(todo) - k),
                               k + max(0, int((deadline - now) / max(rate, 1e-9))))
        return k >= need and now + rate * batch_size > deadline

    fresh = np.zeros((len(base), 0, embedder.in_dim), np.float32)
    if len(todo):
        sub = Manifest([manifest.faces[i] for i in todo], manifest.root)
        fresh = trunk_features(embedder, sub, base, batch_size, workers, seed, progress, device,
                               positions=todo, stop=stop).astype(np.float16).astype(np.float32)  # as read back
        k = fresh.shape[1]
        if k < len(todo):  # cut at the last whole unit (at least min_faces faces), else at the last whole track
            whole, tracks = unit_end[(unit_end <= k) & (unit_end > 0)], track_end[(track_end <= k) & (track_end > 0)]
            cut = int(whole.max()) if len(whole) and whole.max() >= min(min_faces, k) else \
                int(tracks.max()) if len(tracks) else k
            fresh, todo = fresh[:, :cut], todo[:cut]
    faces = np.concatenate([done, todo])
    rows = np.argsort(faces, kind="stable")
    feats = np.concatenate([old.features, fresh], axis=1) if old is not None else fresh
    cache = FeatureCache(feats[:, rows], faces[rows], n)
    extra = list(views[len(base):]) if old is None else []
    if extra and cache.complete:
        per_view = (time.perf_counter() - began) / max(len(base), 1)
        if deadline is not None and time.perf_counter() + per_view * len(extra) > deadline:
            logger.warning("time budget: trunk features of %d of %d views cached (%s); more views need a "
                           "larger --time-budget", len(base), len(views), ", ".join(base))
        else:
            more = trunk_features(embedder, manifest, extra, batch_size, workers, seed, progress,
                                  device).astype(np.float16).astype(np.float32)
            cache = FeatureCache(np.concatenate([cache.features, more]), cache.faces, n)
    if write and (len(todo) or cache.views > (old.views if old is not None else 0)):
        write_cache(path, cache, key)
    info = {"faces": int(len(cache.faces)), "of": n, "views": cache.views, "subsample": not cache.complete,
            "computed": int(len(todo)), "seconds": round(time.perf_counter() - began, 3)}
    if not cache.complete:
        logger.warning("time budget: training on a subsample of %d of %d faces (whole tracks and the tracks "
                       "sharing their frames); a larger --time-budget caches more", len(cache.faces), n)
    return cache, info


def cache_features_ranks(embedder: Embedder, manifest: Manifest, views: Sequence[str], path: str | os.PathLike,
                         key: dict[str, Any], ctx: Any, deadline: float | None = None, batch_size: int = 64,
                         workers: int = 1, seed: int = 0, progress: bool = True,
                         device: str = "cpu") -> tuple[FeatureCache, dict[str, Any]]:
    """:func:`cache_features` under ``torchrun`` (``ctx``, a :class:`proxytasks.distributed.Context`):
    each rank computes its block of every face, view by view; rank 0 reads and writes the
    cache and decides, from ``deadline``, whether views after the first two fit. Every
    face is cached (no subsample)."""
    from . import distributed

    began = time.perf_counter()
    cached = distributed.broadcast(read_cache(path, key) if ctx.main else None, ctx)
    if cached is not None and cached.complete:
        return cached, {"faces": len(cached.faces), "of": len(manifest), "views": cached.views,
                        "subsample": False, "computed": 0, "seconds": 0.0}
    mine = distributed.block(len(manifest), ctx)
    part = Manifest([manifest.faces[i] for i in mine], manifest.root)
    done: list[np.ndarray] = []
    for view in views:
        per_view = (time.perf_counter() - began) / max(len(done), 1)
        if distributed.broadcast(len(done) >= 2 and deadline is not None and
                                 time.perf_counter() + per_view > deadline, ctx):
            logger.warning("time budget: trunk features of %d of %d views cached (%s); more views need a "
                           "larger --time-budget", len(done), len(views), ", ".join(views[:len(done)]))
            break
        rows = trunk_features(embedder, part, (view,), batch_size, workers, seed, progress, device,
                              first=int(mine[0]) if len(mine) else 0)[0].astype(np.float16)
        done.append(distributed.gather_rows(rows, ctx))
    cache = FeatureCache(np.stack(done).astype(np.float32), np.arange(len(manifest)), len(manifest))
    if ctx.main:
        write_cache(path, cache, key)
    return cache, {"faces": len(manifest), "of": len(manifest), "views": cache.views, "subsample": False,
                   "computed": len(manifest), "seconds": round(time.perf_counter() - began, 3)}
