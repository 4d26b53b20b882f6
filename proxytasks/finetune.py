"""Fine-tuning strategies: three ways to train the two-module system trunk + embedding -> naming head.

The naming head is :func:`proxytasks.naming.name_faces` (a cosine classifier fitted on
the faces a person named, then propagation along tracks and clusters). What differs is
the embedding it works on, and how that embedding was trained:

- **independent**: each module on its own; the naming head is fitted on the *frozen
  pretrained* trunk features (pooled, L2-normalised), and the proxy-trained projection
  head is ignored. The proxy task plays no part.
- **sequential**: the proxy embedding first (the run's head trained on the rule pairs),
  then the naming head on it. This is what ``proxytasks name`` does with an embeddings
  file.
- **global**: the modules trained *jointly*: the trunk's last stage, the projection head
  and a cosine naming classifier are fine-tuned together on the pair loss (rule pairs,
  batched as in :mod:`proxytasks.train`) plus the cross-entropy of the named faces
  (:func:`fine_tune_global`); the naming head is then fitted on the jointly trained
  embedding.

Fine-tuning the last stage on CPU stays cheap the same way proxy training does: the
trunk is cut in two (:func:`split_trunk`); the activations at the cut are computed once
per view (:func:`prefix_features`), and only the suffix (last stage, pooling) and the
head run in the loop. Batch-norm statistics stay frozen (inference mode) during
fine-tuning; their affine parameters train with the rest of the suffix.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embedder import Embedder
from .errors import ProxytasksError
from .loop import StepLoop
from .naming import SCALE
from .vectors import l2_normalize

if TYPE_CHECKING:
    from .embed import Embeddings
    from .manifest import Manifest
    from .naming import Annotations, NamingResult
    from .pairs import PairSet

logger = logging.getLogger(__name__)

FINETUNE_STRATEGIES = ("independent", "sequential", "global")  # how trunk, embedding and naming are trained
SUPPORTED = "timm EfficientNet-family models (tf_efficientnet_lite0, mobilenetv2_100, efficientnet_b0, ...) " \
            "and dlib_resnet29"
WEIGHT_DECAY = 1e-4  # on the suffix and the projection head (not on the cosine classifier)
LOSS_WINDOW = 10  # the summary's "loss" is the mean over the last this many steps


# --------------------------------------------------------------------------- the cut
def split_trunk(trunk: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Cut a trunk before its last stage: ``(prefix, suffix)`` with
    ``suffix(prefix(x)) == trunk(x)`` (the pooled features, in inference mode).

    The two modules share the trunk's parameters: training the suffix trains the trunk.
    Timm EfficientNet-family models (tf_efficientnet_lite0, mobilenetv2_100, ...): the
    suffix is ``blocks[-1]``, ``conv_head``, ``bn2``, ``global_pool`` (and the classifier,
    an identity for a feature trunk). dlib_resnet29: its last stage, average pooling and
    its descriptor layer.

    Raises:
        ProxytasksError: another architecture (the message names the supported ones).
    """
    from timm.models.efficientnet import EfficientNet

    from .dlib_resnet import DlibResNet

    if isinstance(trunk, EfficientNet) and len(trunk.blocks) >= 2:
        prefix = nn.Sequential(trunk.conv_stem, trunk.bn1, *trunk.blocks[:-1])
        suffix = nn.Sequential(trunk.blocks[-1], trunk.conv_head, trunk.bn2, trunk.global_pool, trunk.classifier)
        return prefix, suffix
    if isinstance(trunk, DlibResNet):
        prefix = nn.Sequential(trunk.stem, *trunk.stages[:-1])
        suffix = nn.Sequential(trunk.stages[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(1), trunk.embed, trunk.head)
        return prefix, suffix
    name = getattr(trunk, "pretrained_cfg", {}).get("architecture") or type(trunk).__name__
    raise ProxytasksError(f"backbone {name!r} cannot be cut before its last stage for joint (global) "
                          f"fine-tuning; supported: {SUPPORTED}")


def prefix_features(embedder: Embedder, manifest: "Manifest", views: Sequence[str] = ("plain", "flip"),
                    batch_size: int = 64, workers: int = 1, seed: int = 0, progress: bool = True,
                    device: str = "cpu") -> np.ndarray:
    """Activations at the cut of :func:`split_trunk` for every face and view.

    Returns:
        Shape ``(len(views), N, C, H, W)``, float16 (computed in inference mode).
    """
    from .features import trunk_features

    prefix, _ = split_trunk(embedder.trunk)
    return trunk_features(embedder, manifest, views, batch_size, workers, seed, progress, device, module=prefix,
                          dtype=np.float16, desc="prefix features")


def suffix_vectors(embedder: Embedder, prefix_plain: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings ``(N, dim)`` of prefix activations through the suffix and the head."""
    _, suffix = split_trunk(embedder.trunk)
    device = next(embedder.parameters()).device
    embedder.eval()
    rows = []
    with torch.inference_mode():
        for s in range(0, len(prefix_plain), batch_size):
            x = torch.from_numpy(np.asarray(prefix_plain[s:s + batch_size], dtype=np.float32)).to(device)
            rows.append(embedder.embed_features(suffix(x)).float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)


def pretrained_vectors(features_plain: np.ndarray) -> np.ndarray:
    """L2-normalised pooled trunk features (float32): the independent strategy's embedding."""
    return l2_normalize(np.asarray(features_plain, dtype=np.float32))


# --------------------------------------------------------------------------- joint training
@dataclass
class GlobalConfig:
    """Options of :func:`fine_tune_global`."""

    steps: int | None = 200  # optimisation steps (None: until the time budget)
    time_budget: float | None = None  # seconds for fine_tune_global, counted from its call
    lr: float = 1e-3  # head and naming classifier
    trunk_lr: float = 1e-4  # the unlocked last stage
    naming_weight: float = 1.0
    named_per_batch: int = 64
    seed: int = 0
    device: str = "auto"


class _NamedBatcher:
    """Class-balanced batches of named faces (a name drawn uniformly, then one of its faces)."""

    def __init__(self, named: dict[int, str], n_views: int, size: int, seed: int) -> None:
        self.classes = sorted(set(named.values()))
        code = {c: k for k, c in enumerate(self.classes)}
        self.faces = np.array(sorted(named), dtype=np.int64)
        self.labels = np.array([code[named[int(i)]] for i in self.faces], dtype=np.int64)
        self.members = [self.faces[self.labels == k] for k in range(len(self.classes))]
        self.n_views, self.size, self.seed = n_views, size, seed

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(faces, views, labels); the same for the same step."""
        if not len(self.faces) or self.size <= 0:
            return (np.zeros(0, np.int64),) * 3
        rng = np.random.default_rng([self.seed, step, 1])
        labels = rng.integers(0, len(self.classes), self.size)
        faces = np.array([self.members[k][rng.integers(len(self.members[k]))] for k in labels.tolist()])
        return faces, rng.integers(0, self.n_views, self.size), labels


def _check_inputs(prefix: np.ndarray, pairs: "PairSet", named: dict[int, str], cfg: GlobalConfig) -> None:
    if prefix.ndim != 5:
        raise ProxytasksError(f"prefix activations must be (views, faces, C, H, W) as prefix_features gives "
                              f"them, got shape {prefix.shape}")
    if pairs.n_faces != prefix.shape[1]:
        raise ProxytasksError(f"the pairs index {pairs.n_faces} faces but the prefix activations hold "
                              f"{prefix.shape[1]}; compute both from the same manifest")
    bad = [i for i in named if not 0 <= int(i) < prefix.shape[1]]
    if bad:
        raise ProxytasksError(f"named face index {bad[0]} is out of range 0..{prefix.shape[1] - 1}")
    if cfg.steps is None and cfg.time_budget is None:
        raise ProxytasksError("global fine-tuning needs a number of steps or a time budget")
    if cfg.steps is not None and cfg.steps < 0:
        raise ProxytasksError(f"steps must be >= 0, got {cfg.steps}")


def fine_tune_global(embedder: Embedder, prefix: np.ndarray, pairs: "PairSet", named: dict[int, str],
                     cfg: GlobalConfig | None = None, progress: bool = True) -> tuple[Embedder, dict[str, Any]]:
    """Jointly fine-tune the trunk's last stage, the projection head and a naming classifier.

    A deep copy of ``embedder`` is trained (the caller's is not modified) on the pair
    loss of :class:`~proxytasks.train.GroupBatcher` batches of the rule pairs (must-link
    groups, cannot-linked groups as negatives; ``track-supcon``, or ``ntxent`` without
    cannot-links) plus ``naming_weight`` times the cross-entropy of a class-balanced
    batch of named faces under a cosine classifier (``SCALE * cos``, weights started at
    the class prototypes). Each face of a batch is seen under a random cached view.

    Args:
        embedder: the run's embedder (trunk + head).
        prefix: :func:`prefix_features` of the faces the pairs index.
        pairs: rule pairs (``pairs.n_faces == prefix.shape[1]``).
        named: face index -> the name a person gave.
        cfg: options; stops at ``cfg.steps`` or before a step would overrun the time
            budget (the stop rule of :class:`proxytasks.loop.StepLoop`).
        progress: show a progress bar.

    Returns:
        The fine-tuned embedder (on the CPU, in inference mode) and a summary: steps,
        seconds, stopped ("steps" or "time budget"), loss (mean combined loss of the last
        steps), named (faces), names, pair_loss (its name), loss_before / loss_after (the
        combined loss on the first step's batch before and after training).
    """
    from .losses import make_loss
    from .models import autocast, select_device, to_device
    from .batches import Constraints, GroupBatcher
    from .train import TrainConfig

    cfg = cfg or GlobalConfig()
    start = time.perf_counter()
    prefix = np.asarray(prefix)
    _check_inputs(prefix, pairs, named, cfg)
    n_views, n = prefix.shape[:2]
    torch.manual_seed(cfg.seed)
    device = select_device(cfg.device)
    model = copy.deepcopy(embedder).cpu()
    flags = [p.requires_grad for p in model.parameters()]
    _, suffix = split_trunk(model.trunk)
    for p in model.parameters():
        p.requires_grad_(False)
    tuned = list(suffix.parameters())
    head = list(model.head.parameters())
    for p in tuned + head:
        p.requires_grad_(True)
    model.to(device).eval()  # batch-norm statistics frozen; no dropout

    cons = Constraints.from_pairs(pairs)
    batcher = GroupBatcher(cons, np.ones(n, dtype=bool), n_views, TrainConfig(seed=cfg.seed))
    loss_name = "track-supcon" if len(cons.cannot) else "ntxent"
    pair_loss = make_loss(loss_name)
    names = _NamedBatcher(named, n_views, cfg.named_per_batch, cfg.seed)
    if not named:
        logger.warning("no face is named: global fine-tuning uses the pair loss only")
    protos = np.zeros((len(names.classes), model.dim), np.float32)
    if named:
        np.add.at(protos, names.labels, suffix_vectors(model, prefix[0, names.faces]))
    classifier = nn.Parameter(F.normalize(torch.from_numpy(protos), dim=1).to(device))
    groups = [{"params": tuned, "lr": cfg.trunk_lr, "weight_decay": WEIGHT_DECAY},
              {"params": head, "lr": cfg.lr, "weight_decay": WEIGHT_DECAY},
              {"params": [classifier], "lr": cfg.lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]])

    def combined(step: int) -> torch.Tensor:
        faces, views, tup = batcher.batch(step)
        nf, nv, ny = names.batch(step)
        x = to_device(torch.from_numpy(prefix[np.r_[views, nv], np.r_[faces, nf]].astype(np.float32)), device)
        with autocast(device):  # bf16 on GPUs that support it
            emb = model.embed_features(suffix(x)).float()
        loss = pair_loss(emb[:len(faces)], tuple(t.to(device) for t in tup))
        if len(nf) and cfg.naming_weight:
            logits = SCALE * emb[len(faces):] @ F.normalize(classifier, dim=1).T
            loss = loss + cfg.naming_weight * F.cross_entropy(logits, torch.from_numpy(ny).to(device))
        return loss

    with torch.no_grad():
        before = float(combined(0))
    losses: list[float] = []
    loop = StepLoop(cfg.steps, None if cfg.time_budget is None else start + cfg.time_budget, desc="global",
                    progress=progress)
    for step in loop:
        loss = combined(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        loop.note(loss=f"{losses[-1]:.4f}")
    step, stopped = loop.step, loop.stopped
    with torch.no_grad():
        after = float(combined(0))
    model.cpu().eval()
    for p, flag in zip(model.parameters(), flags):
        p.requires_grad_(flag)
    seconds = time.perf_counter() - start
    summary = {"steps": step, "seconds": round(seconds, 3), "stopped": stopped,
               "loss": float(np.mean(losses[-LOSS_WINDOW:])) if losses else None,
               "named": len(named), "names": len(names.classes), "pair_loss": loss_name,
               "loss_before": before, "loss_after": after}
    logger.info("global fine-tuning: %d steps in %.1f s (%s), loss on the first batch %.4f -> %.4f",
                step, seconds, stopped, before, after)
    return model, summary


# --------------------------------------------------------------------------- naming
def _check_manifest(manifest: "Manifest", ids: Sequence[str]) -> None:
    if [f.id for f in manifest.faces] != list(ids):
        raise ProxytasksError("the manifest does not hold the faces of the embeddings in order; give the "
                              "manifest that was embedded")


def strategy_vectors(strategy: str, run: str | Path, embeddings: "Embeddings", manifest: "Manifest | None" = None,
                     pairs: "PairSet | None" = None, named: dict[int, str] | None = None,
                     cfg: GlobalConfig | None = None, progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """The embedding a strategy names on, for the faces of ``embeddings`` (in its order).

    independent: the run's pretrained pooled trunk features, from ``RUN/features.npz``
    when it holds these faces, else computed from ``manifest``; sequential:
    ``embeddings.vectors``; global: :func:`fine_tune_global` on ``pairs`` and ``named``,
    then :func:`suffix_vectors`. Returns the vectors and what was done.
    """
    from .models import select_device

    if strategy not in FINETUNE_STRATEGIES:
        raise ProxytasksError(f"unknown strategy {strategy!r}; use one of {', '.join(FINETUNE_STRATEGIES)}")
    run, ids, cfg = Path(run), embeddings.ids, cfg or GlobalConfig()
    if strategy == "global":
        missing = [what for what, v in (("the rule pairs (--pairs)", pairs), ("the manifest (--manifest)", manifest))
                   if v is None]
        if missing:
            raise ProxytasksError(f"strategy 'global' fine-tunes the trunk on the images and the rule pairs: "
                                  f"give {' and '.join(missing)}")
    if manifest is not None:
        _check_manifest(manifest, ids)
    if strategy == "sequential":
        return embeddings.vectors, {"strategy": strategy, "vectors": "embeddings"}
    if strategy == "independent":
        from .features import CACHE_NAME, plain_features, run_cache

        cache = run_cache(run, ids)
        if cache is not None and cache.complete:
            return pretrained_vectors(cache.features[0]), {"strategy": strategy, "vectors": str(run / CACHE_NAME)}
        if manifest is None:
            raise ProxytasksError(f"strategy 'independent': {run / CACHE_NAME} is missing, does not hold every "
                                  "face of the embeddings or was made by another model; give the manifest "
                                  "(--manifest) to compute the pretrained features")
        feats = plain_features(run, manifest, progress=progress, device=str(select_device(cfg.device)))
        return pretrained_vectors(feats), {"strategy": strategy, "vectors": "trunk"}
    if pairs.n_faces != len(ids):
        raise ProxytasksError(f"the pairs index {pairs.n_faces} faces but the embeddings hold {len(ids)}")
    embedder = Embedder.load(run)
    prefix = prefix_features(embedder, manifest, seed=cfg.seed, progress=progress,
                             device=str(select_device(cfg.device)))
    tuned, summary = fine_tune_global(embedder, prefix, pairs, named or {}, cfg, progress)
    return suffix_vectors(tuned, prefix[0]), {"strategy": strategy, "vectors": "global", "fine_tune": summary}


def name_with_strategy(strategy: str, run: str | Path, embeddings: "Embeddings", ann: "Annotations",
                       manifest: "Manifest | None" = None, pairs: "PairSet | None" = None,
                       cfg: GlobalConfig | None = None, progress: bool = True,
                       **naming: Any) -> tuple["NamingResult", dict[str, Any]]:
    """Name the faces of ``embeddings`` from a person's annotations with one strategy.

    The vectors come from :func:`strategy_vectors` (global fine-tuning uses the named
    faces of ``ann``); naming is :func:`~proxytasks.naming.name_from_annotations` with
    ``naming`` (tracks, clusters, unknown_threshold, head, seed), so removed names and
    "same person" answers are kept.
    """
    from .naming import name_from_annotations

    vectors, info = strategy_vectors(strategy, run, embeddings, manifest, pairs, ann.named, cfg, progress)
    return name_from_annotations(vectors, ann, **naming), info
