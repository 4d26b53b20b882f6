"""The face embedder: a pretrained timm trunk, a projection head, L2 normalisation.

Saved as a model folder (as sentence-transformers does): ``model.safetensors`` plus
``config.json`` holding the backbone, head, preprocessing, library versions and the
sha256 of the weights file, so ``Embedder.load(folder)`` rebuilds it without any other
input and without pickle, and refuses a truncated or altered weights file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from .defaults import DEFAULT_BACKBONE
from .errors import ProxytasksError
from .fileio import atomic_write
from .models import create_backbone, data_config

logger = logging.getLogger(__name__)

PROJECTION_HEADS = ("identity", "linear", "mlp")  # what follows the trunk (naming heads: naming.py)
DEFAULT_INPUT_SIZE = 128  # faces are small; 4x faster than 224 on CPU
# Backbones trained on aligned face chips: their faces are aligned the same way
# (proxytasks.align), and they keep their own input size.
ALIGNMENT = {"dlib_resnet29": "dlib"}
#: The part of a face each kind of backbone sees, recorded in every run's config. Face
#: networks see the aligned chip of the face (found inside a crop first:
#: proxytasks.locate). ImageNet backbones see the whole crop (or the box): on a sitcom clip
#: given as crops with a wide margin, tf_efficientnet_lite0 named better on the whole crop
#: than on its central 2/3 (naming@5 0.853 vs 0.809, cross-track ROC-AUC 0.854 vs 0.814):
#: hair, clothes and set carry identity there; bench/input_region.py measures it on the
#: crops of ../shared/data.
INPUT_REGIONS = {"dlib": "aligned-face", None: "crop"}
FORMAT_VERSION = 2  # 2: config.json holds model_sha256


def library_versions() -> dict[str, str]:
    """Versions recorded in every saved model's config."""
    import timm

    from . import __version__

    return {"proxytasks": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def make_head(kind: str, in_dim: int, dim: int) -> nn.Module:
    """A projection head: ``identity`` (no head), ``linear`` or ``mlp``."""
    if kind == "identity":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
    raise ProxytasksError(f"unknown head {kind!r}; use one of {', '.join(PROJECTION_HEADS)}")


class Embedder(nn.Module):
    """timm trunk (pooled features) + projection head + L2 normalisation.

    ``forward(images)`` embeds image tensors; ``embed_features(features)`` applies only
    the head to cached trunk features (the trunk's pooled output).
    """

    def __init__(self, trunk: nn.Module, backbone: str, head: str = "linear", dim: int = 128,
                 input_size: int | None = DEFAULT_INPUT_SIZE, weights_origin: str = "") -> None:
        super().__init__()
        self.trunk = trunk
        self.backbone = backbone
        self.head_kind = head
        self.in_dim = int(trunk.num_features)
        self.dim = self.in_dim if head == "identity" else int(dim)
        self.head = make_head(head, self.in_dim, self.dim)
        self.alignment = ALIGNMENT.get(backbone.split(".")[0])
        cfg = dict(data_config(trunk))
        fixed = bool(getattr(trunk, "pretrained_cfg", {}).get("fixed_input_size"))
        if input_size and fixed and (3, int(input_size), int(input_size)) != tuple(cfg["input_size"]):
            logger.info("%s takes %s input only: input size %s ignored", backbone, cfg["input_size"][1:], input_size)
        self.input_size = None if fixed else input_size
        self.weights_origin = weights_origin
        if self.input_size:
            cfg.update(input_size=(3, int(self.input_size), int(self.input_size)), crop_pct=1.0)
        self.preprocessing = cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.trunk(images))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Head + L2 normalisation on trunk features."""
        return F.normalize(self.head(features), dim=-1)

    def lock(self, unlocked_stages: int = 0) -> "Embedder":
        """Freeze the trunk except its last ``unlocked_stages`` stages (timm's coarse
        parameter groups); the head stays trainable."""
        from timm.models import group_parameters

        groups = list(group_parameters(self.trunk, self.trunk.group_matcher(coarse=True)).values())
        trainable = {n for g in groups[len(groups) - unlocked_stages:] for n in g} if unlocked_stages else set()
        for name, p in self.trunk.named_parameters():
            p.requires_grad = name in trainable
        return self

    def aligner(self):
        """What turns a face into this trunk's input image: a dlib chip aligner, or None
        (the face's crop or box as it is)."""
        if self.alignment == "dlib":
            from .align import DlibAligner

            return DlibAligner()
        return None

    def transform(self, is_training: bool = False):
        """timm's evaluation transform for this embedder's preprocessing."""
        import timm.data

        return timm.data.create_transform(**self.preprocessing, is_training=is_training)

    def config(self) -> dict[str, Any]:
        """What ``load`` needs to rebuild this embedder."""
        pre = self.preprocessing
        return {"format_version": FORMAT_VERSION, "backbone": self.backbone, "head": self.head_kind,
                "dim": self.dim, "in_dim": self.in_dim, "input_size": self.input_size, "alignment": self.alignment,
                "input_region": INPUT_REGIONS[self.alignment],
                "weights_origin": self.weights_origin,
                "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
                "versions": library_versions()}

    # ------------------------------------------------------------------ storage
    def _weights(self) -> bytes:
        """The ``model.safetensors`` bytes of the current weights (safetensors writes the same bytes for the
        same tensors, whatever their order)."""
        return save({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()})

    def fingerprint(self) -> str:
        """sha256 of the current weights as ``model.safetensors`` holds them: ``model_sha256`` in the saved
        ``config.json`` and in the header of the embeddings this embedder makes."""
        return hashlib.sha256(self._weights()).hexdigest()

    def save(self, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (with the weights' sha256) atomically into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = self._weights()
        with atomic_write(folder / "model.safetensors", "wb") as fh:
            fh.write(data)
        with atomic_write(folder / "config.json") as fh:
            json.dump({**self.config(), **(extra or {}), "model_sha256": hashlib.sha256(data).hexdigest()}, fh,
                      indent=2)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Embedder":
        """Rebuild an embedder from a model or run folder (safetensors only, no pickle)."""
        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, weights):
            if not p.is_file():
                raise ProxytasksError(f"{p}: not found; is {folder} a proxytasks run folder?")
        try:
            cfg = json.loads(cfg_path.read_text())
            if not isinstance(cfg, dict):
                raise ValueError(f"{cfg_path.name} is not a JSON object")
            data = weights.read_bytes()
        except (OSError, ValueError) as e:
            raise ProxytasksError(f"{folder}: cannot read the saved model: {e}") from None
        version = cfg.get("format_version")
        if version != FORMAT_VERSION:
            older = type(version) is int and 0 < version < FORMAT_VERSION
            raise ProxytasksError(f"{cfg_path}: model format {version!r}, this proxytasks reads {FORMAT_VERSION}"
                                  + ("; written by an older proxytasks: train it again" if older else ""))
        if hashlib.sha256(data).hexdigest() != cfg.get("model_sha256"):
            raise ProxytasksError(f"{weights}: cannot read the saved model: its sha256 does not match the one in "
                                  f"{cfg_path.name} (truncated, corrupt or replaced); train it again or restore it")
        try:
            state = load(data)
        except SafetensorError as e:
            raise ProxytasksError(f"{weights}: cannot read the saved model: {e}") from None
        del data
        trunk = create_backbone(cfg["backbone"], weights="none", pretrained=False)  # filled from the run below
        model = cls(trunk, cfg["backbone"], cfg["head"], cfg["dim"], cfg["input_size"],
                    cfg.get("weights_origin", ""))
        model.preprocessing = {k: tuple(v) if isinstance(v, list) else v
                               for k, v in cfg["preprocessing"].items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ProxytasksError(f"{weights}: does not fit {cfg['backbone']} with a {cfg['head']} "
                                  f"head of {cfg['dim']}: {str(e)[:300]}") from None
        logger.info("model %s with a %s head: weights from %s", cfg["backbone"], cfg["head"], weights)
        return model.eval()


def create_embedder(backbone: str = DEFAULT_BACKBONE, weights: str | None = None, dim: int = 128,
                    head: str = "linear", input_size: int | None = DEFAULT_INPUT_SIZE,
                    unlocked_stages: int = 0) -> Embedder:
    """A pretrained trunk (weights resolved offline) with a fresh head, locked but for
    the last ``unlocked_stages`` stages."""
    from .models import resolve_weights

    trunk = create_backbone(backbone, weights=weights, num_classes=0)
    origin = "random init" if weights == "none" else resolve_weights(backbone, weights).description
    return Embedder(trunk, backbone, head, dim, input_size, origin).lock(unlocked_stages)
