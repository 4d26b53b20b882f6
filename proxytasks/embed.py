"""Embedding faces: load crops, run the trunk (cached features) and the head.

Faces come from ``crop`` or are cut on the fly from ``image`` + ``bbox``. Trunk
features can be computed for several *views* of each face (plain, mirrored, randomly
augmented), so that training a head on cached features still sees augmentations.
Embeddings are written as ``.npz`` (vectors, ids, and a JSON header with the model,
dimension and a digest of the ids).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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
from .pairs import ids_digest

logger = logging.getLogger(__name__)

VIEWS = ("plain", "flip", "augment")
FORMAT_VERSION = 1


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
    """Faces of a manifest under one view, transformed for the trunk."""

    def __init__(self, manifest: Manifest, transform: Any, view: str = "plain", seed: int = 0,
                 aligner: Any = None) -> None:
        if view not in VIEWS:
            raise ProxytasksError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
        self.manifest, self.transform, self.view, self.seed = manifest, transform, view, seed
        self.aligner = aligner
        self._augment = _augment() if view == "augment" else None

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = load_face(self.manifest, self.manifest[i], self.aligner)
        if self.view == "flip":
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        elif self._augment is not None:
            torch.manual_seed(self.seed * 1_000_003 + i)  # the same augmentation on every run
            img = self._augment(img)
        return self.transform(img)


def unwrap_worker_error(e: ProxytasksError) -> ProxytasksError:
    """A ProxytasksError raised in a DataLoader worker, without torch's traceback text."""
    if "Original Traceback" not in str(e):
        return e
    return ProxytasksError(str(e).rsplit("ProxytasksError: ", 1)[-1].strip())


def trunk_features(embedder: Embedder, manifest: Manifest, views: Sequence[str] = ("plain",),
                   batch_size: int = 64, workers: int = 1, seed: int = 0, progress: bool = True,
                   device: str = "cpu", module: torch.nn.Module | None = None, dtype: Any = np.float32,
                   desc: str = "features") -> np.ndarray:
    """Pooled trunk features, shape (len(views), faces, in_dim) (bf16 autocast on CUDA).

    ``module``: another network to run on the embedder's inputs instead of its trunk (a
    part of it, as :func:`proxytasks.systems.prefix_features` does); its outputs of any
    shape are stacked the same way, as ``dtype``.
    """
    out = None if len(manifest) else np.zeros((len(views), 0, embedder.in_dim), dtype=dtype)
    if out is not None and module is not None:
        raise ProxytasksError("the manifest holds no face: nothing to compute")
    home = next(embedder.parameters()).device
    embedder.to(device).eval()
    trunk = module if module is not None else embedder.trunk
    transform = embedder.transform()
    aligner = embedder.aligner()
    if aligner is not None:
        plan = aligner.plan(manifest)
        logger.info("faces for %s: %s", embedder.backbone, ", ".join(f"{n} {how}" for how, n in plan.most_common()))
        if plan.get("crop"):
            logger.warning("%d of %d faces are unaligned crops (no dlib 5-point predictor, no landmarks): "
                           "%s expects aligned chips", plan["crop"], len(manifest), embedder.backbone)
    bar = tqdm(total=len(views) * len(manifest), desc=desc, unit="face", disable=not progress)
    cuda = torch.device(device).type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    try:
        with torch.inference_mode(), amp:
            for v, view in enumerate(views):
                loader = DataLoader(FaceDataset(manifest, transform, view, seed, aligner), batch_size=batch_size,
                                    num_workers=workers, shuffle=False, pin_memory=cuda)
                pos = 0
                try:
                    for batch in loader:
                        feats = trunk(batch.to(device, non_blocking=True)).float().cpu().numpy()
                        if out is None:
                            out = np.zeros((len(views), len(manifest)) + feats.shape[1:], dtype=dtype)
                        out[v, pos:pos + len(feats)] = feats
                        pos += len(feats)
                        bar.update(len(feats))
                except ProxytasksError as e:  # from a worker, torch wraps the message in its traceback
                    raise unwrap_worker_error(e) from None
    finally:
        bar.close()
        embedder.to(home)
    if not np.isfinite(out).all():
        raise ProxytasksError(f"the {embedder.backbone} trunk produced NaN or infinite (or, as {np.dtype(dtype).name}, "
                              "overflowing) values; check the weights")
    return out


def head_vectors(embedder: Embedder, features: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Apply the head (and L2 normalisation) to cached trunk features."""
    embedder.eval()
    rows = []
    with torch.inference_mode():
        for s in range(0, len(features), batch_size):
            rows.append(embedder.embed_features(torch.from_numpy(features[s:s + batch_size])).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)


@dataclass
class Embeddings:
    """Unit vectors with the face ids they belong to, and where they came from."""

    vectors: np.ndarray
    ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` atomically."""
        path = Path(path)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "n": len(self.ids),
                "dim": int(self.vectors.shape[1]), "ids_digest": ids_digest(self.ids)}
        with atomic_write(path, "wb", gz=False) as fh:
            np.savez(fh, vectors=self.vectors.astype(np.float32), ids=np.array(self.ids, dtype=str),
                     meta=np.array(json.dumps(meta)))
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
        if meta.get("format_version") != FORMAT_VERSION or vectors.shape != (meta.get("n"), meta.get("dim")) \
                or ids_digest(ids) != meta.get("ids_digest"):
            raise ProxytasksError(f"{path}: header and content disagree; the file is damaged or foreign")
        if not np.isfinite(vectors).all():
            raise ProxytasksError(f"{path}: embeddings hold NaN or infinite values")
        return cls(vectors, ids, meta)


def embed_manifest(embedder: Embedder, manifest: Manifest, batch_size: int = 64, workers: int = 1,
                   progress: bool = True, device: str = "cpu") -> Embeddings:
    """Embed every face of ``manifest``."""
    feats = trunk_features(embedder, manifest, ("plain",), batch_size, workers, progress=progress,
                           device=device)[0]
    embedder.to("cpu")
    vectors = head_vectors(embedder, feats)
    return Embeddings(vectors, [f.id for f in manifest.faces],
                      {"backbone": embedder.backbone, "head": embedder.head_kind})
