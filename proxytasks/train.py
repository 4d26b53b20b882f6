"""Siamese training on rule pairs, within a time budget, with model selection without labels.

The trunk is pretrained and, by default, frozen: its features are computed once for
a few views of every face (plain, mirrored, augmented) and cached in the run folder
(:mod:`proxytasks.features`), and a projection head is trained on them with a pair
loss. On 2 CPU cores this turns minutes of backbone passes per epoch into milliseconds
per step. When a time budget cannot cache every face, a subsample of whole tracks (with
the tracks that share their frames) is cached and trained on, and the run says so.

Batches hold several faces of several must-link groups (tracks) plus faces of the
groups cannot-linked to them (co-occurring tracks); positives are faces of one group,
negatives only cannot-linked faces, never "every other track". Photo collections
without cannot-links fall back to a self-supervised positive (two views of one face)
with the other faces of the batch as negatives (NT-Xent).

Selection without labels: time chunks of each video (a random share of photos) are
held out; the embedding is scored by the ROC-AUC separating their must-link from their
cannot-link pairs. The frozen pretrained features, a KISSME linear metric fitted in one
step, and the trained head's checkpoints compete on that score; the best one is saved.

:func:`train` runs in phases: prepare (checks, device, model, resumed state), features
(cached within the budget), constraints and batches, candidates (pretrained, KISSME),
fit (the budgeted step loop of :mod:`proxytasks.loop`; validation a few times per run,
checkpoints of :mod:`proxytasks.checkpoint` every :data:`CHECKPOINT_SECONDS`), select
and save. The time budget counts from ``started`` (the command's start) and a resumed
run continues the budget of the run it resumes.

How long: ``steps``, else ``epochs`` (passes over the training faces), else, under a time
budget, until the budget runs out or after :data:`MAX_EPOCHS` epochs, whichever comes
first (longer training pushes apart only the people who share frames and merges the
others), else 1000 steps.

Under ``torchrun`` the processes share the work (:mod:`proxytasks.distributed`): the
trunk features by blocks of faces, each step's loss terms by pairs (DDP sums the
gradients), with the same result as one process; rank 0 writes every file. On CUDA the
loop runs on the GPU, the head in bf16 autocast where supported.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .batches import Constraints, GroupBatcher  # noqa: F401  (re-exported)
from .checkpoint import read_checkpoint, restore, save_checkpoint
from .defaults import DEFAULT_BACKBONE, MAX_EPOCHS
from .embedder import Embedder, create_embedder
from .errors import ProxytasksError
from .features import CACHE_NAME, FeatureCache, cache_features, cache_features_ranks, cache_order, feature_key
from .fileio import atomic_write
from .loop import Budget, Every, StepLoop
from .manifest import Manifest
from .pairs import PairSet
from .vectors import l2_normalize

logger = logging.getLogger(__name__)

FEATURE_SHARE = 0.5  # at most this share of a time budget on caching trunk features
LR_SCHEDULES = ("constant", "cosine")
EVALS = 8  # validations per run when eval_every is not given
CHECKPOINT_SECONDS = 30.0  # at most this long between checkpoints (and one at the end)
MIN_STEPS = 10  # a budgeted run trains at least this many steps, however short its budget
RESERVE = 1.0  # seconds a budgeted loop keeps for selecting and saving, beyond a validation


@dataclass
class TrainConfig:
    """Training options; field names equal the ``proxytasks train`` option names."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    head: str = "linear"
    dim: int = 128
    input_size: int = 128
    loss: str = "auto"  # track-supcon with cannot-links, ntxent without
    init: str = "kissme"  # head start: kissme | random
    views: tuple[str, ...] = ("plain", "flip", "augment")  # "plain" first: the one every run needs
    groups_per_batch: int = 16
    faces_per_group: int = 4
    negative_groups: int = 2
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (to zero at the last step; needs steps or epochs)
    weight_decay: float = 1e-4
    steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None
    eval_every: int | None = None  # steps between validations; None: EVALS per run (by time under a budget)
    holdout: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    batch_size: int = 64


# --------------------------------------------------------------------------- selection
def holdout_mask(manifest: Manifest, fraction: float, seed: int, chunks: int = 10) -> np.ndarray:
    """True for held-out faces: ``fraction`` of the time chunks of each video, and of photos."""
    rng = np.random.default_rng(seed)
    media, _ = manifest.codes("media")
    frame = manifest.frames()
    val = np.zeros(len(manifest), dtype=bool)
    for m in np.unique(media):
        idx = np.flatnonzero(media == m)
        fr = frame[idx]
        if (fr >= 0).any():
            lo, hi = fr[fr >= 0].min(), fr[fr >= 0].max()
            chunk = np.minimum((fr - lo) * chunks // max(hi - lo + 1, 1), chunks - 1)
            n_val = max(1, int(round(fraction * chunks)))
            val[idx] = np.isin(chunk, rng.choice(chunks, n_val, replace=False)) & (fr >= 0)
    photos = frame < 0
    val[photos] = rng.random(photos.sum()) < fraction
    return val


def pairs_within(pairs: PairSet, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Must-link and cannot-link pairs (each (n, 2)) whose two faces are both in ``mask``."""
    i, j, label, _ = pairs.unique()
    keep = mask[i] & mask[j]
    p = np.stack([i, j], 1)[keep]
    return p[label[keep] == 1], p[label[keep] == 0]


def score_vectors(vectors: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Validation score of an embedding: AUC of held-out must- vs cannot-link similarities."""
    from .metrics import roc_auc

    sims = np.einsum("ij,ij->i", vectors[np.r_[pos[:, 0], neg[:, 0]]], vectors[np.r_[pos[:, 1], neg[:, 1]]])
    return roc_auc(sims, np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])


# --------------------------------------------------------------------------- phases
@dataclass
class _Run:
    """What the phases of one :func:`train` call share."""

    cfg: TrainConfig
    folder: Path
    manifest: Manifest
    pairs: PairSet
    ctx: distributed.Context
    device: str
    embedder: Embedder
    budget: Budget
    progress: bool
    resumed: dict[str, Any] | None = None
    cache: FeatureCache | None = None
    cache_info: dict[str, Any] = field(default_factory=dict)


def _prepare(manifest: Manifest, pairs: PairSet, run: Path, cfg: TrainConfig, resume: bool, progress: bool,
             started: float | None) -> _Run:
    """Check the options, pick the device, build the model, read the checkpoint to resume."""
    from .models import select_device

    start = time.perf_counter() if started is None else started
    if pairs.n_faces != len(manifest):
        raise ProxytasksError(f"the pairs index {pairs.n_faces} faces but the manifest holds {len(manifest)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ProxytasksError(f"unknown learning-rate schedule {cfg.lr_schedule!r}: choose one of "
                              f"{', '.join(LR_SCHEDULES)}")
    if cfg.lr_schedule == "cosine" and cfg.steps is None and cfg.epochs is None:
        raise ProxytasksError("the cosine learning-rate schedule needs --steps or --epochs (where it ends)")
    if cfg.eval_every is not None and cfg.eval_every < 1:
        raise ProxytasksError(f"eval_every must be at least 1, got {cfg.eval_every}")
    torch.manual_seed(cfg.seed)
    device = str(select_device(cfg.device))
    ctx = distributed.context(device)
    device = distributed.local_device(device, ctx)
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
    embedder = create_embedder(cfg.backbone, cfg.weights, cfg.dim, cfg.head, cfg.input_size)
    ckpt = run / "checkpoint.pt"
    state = distributed.broadcast(read_checkpoint(ckpt, embedder) if ctx.main and resume and ckpt.is_file()
                                  else None, ctx)
    spent = float(state.get("spent", 0.0)) if state is not None else 0.0
    budget = Budget(cfg.time_budget, start, spent)
    if state is not None and cfg.time_budget is not None:
        left = cfg.time_budget - spent
        logger.info("resuming: %.0f s of the %.0f s budget were spent, %.0f s are left", spent, cfg.time_budget,
                    max(left, 0))
        if left <= 0:
            logger.warning("time budget: the run being resumed already spent its %.0f s budget; no step is added. "
                           "Give a larger --time-budget (the whole run's) to train more", cfg.time_budget)
    return _Run(cfg, run, manifest, pairs, ctx, device, embedder, budget, progress and ctx.main, state)


def _features(r: _Run, features: np.ndarray | None) -> None:
    """The trunk features of the views, cached within :data:`FEATURE_SHARE` of the budget
    (a subsample of whole tracks when every face does not fit), or the given ones."""
    cfg, manifest = r.cfg, r.manifest
    if features is not None:
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 3 or feats.shape[1:] != (len(manifest), r.embedder.in_dim) or \
                not 1 <= len(feats) <= len(cfg.views):
            raise ProxytasksError(f"features of shape {feats.shape} given for {len(manifest)} faces of "
                                  f"{cfg.backbone} (trunk width {r.embedder.in_dim}, up to {len(cfg.views)} views)")
        r.cache = FeatureCache(feats, np.arange(len(manifest)), len(manifest))
        r.cache_info = {"faces": len(manifest), "of": len(manifest), "views": len(feats), "subsample": False,
                        "computed": 0, "seconds": 0.0}
        return
    key = feature_key(cfg.backbone, cfg.weights, cfg.input_size, cfg.views, cfg.seed, [f.id for f in manifest.faces])
    deadline = r.budget.point(FEATURE_SHARE)
    common = dict(deadline=deadline, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                  progress=r.progress, device=r.device)
    if r.ctx.active:
        r.cache, r.cache_info = cache_features_ranks(r.embedder, manifest, cfg.views, r.folder / CACHE_NAME, key,
                                                     r.ctx, **common)
    else:
        cons = Constraints.from_pairs(r.pairs)
        r.cache, r.cache_info = cache_features(r.embedder, manifest, cfg.views, r.folder / CACHE_NAME, key,
                                               cache_order(cons.group, cons.cannot, cfg.seed), **common)
    r.embedder.to("cpu")


@dataclass
class _Data:
    """The faces trained on (the cached ones), their splits, pairs and batches."""

    feats: np.ndarray  # (views, faces, in_dim)
    vpos: np.ndarray
    vneg: np.ndarray
    tpos: np.ndarray
    tneg: np.ndarray
    batcher: GroupBatcher
    loss_name: str
    n_pairs: int


def _constraints(r: _Run) -> _Data:
    """Held-out split, must-link groups and cannot-links, the batcher and the loss."""
    manifest, pairs = r.manifest, r.pairs
    if not r.cache.complete:
        faces = r.cache.faces
        manifest = Manifest([manifest.faces[i] for i in faces], manifest.root)
        pairs = pairs.restrict(faces, [f.id for f in manifest.faces])
    val = holdout_mask(manifest, r.cfg.holdout, r.cfg.seed)
    cons = Constraints.from_pairs(pairs, ~val)
    vpos, vneg = pairs_within(pairs, val)
    tpos, tneg = pairs_within(pairs, ~val)
    batcher = GroupBatcher(cons, ~val, r.cache.views, r.cfg)
    loss_name = r.cfg.loss if r.cfg.loss != "auto" else ("track-supcon" if len(cons.cannot) else "ntxent")
    return _Data(r.cache.features, vpos, vneg, tpos, tneg, batcher, loss_name, len(pairs))


class _Validator:
    """Scores heads on the held-out pairs, embedding only the faces those pairs hold."""

    def __init__(self, plain: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        faces, inv = np.unique(np.r_[pos.reshape(-1), neg.reshape(-1)], return_inverse=True)
        self.plain = np.ascontiguousarray(plain[faces])
        self.pos, self.neg = inv[:pos.size].reshape(-1, 2), inv[pos.size:].reshape(-1, 2)

    def vectors(self, vectors: np.ndarray) -> float | None:
        """The score of ready vectors of these faces."""
        return score_vectors(vectors, self.pos, self.neg)

    def __call__(self, embedder: Embedder) -> float | None:
        from .features import head_vectors

        return score_vectors(head_vectors(embedder, self.plain), self.pos, self.neg)


def _candidates(r: _Run, d: _Data, score: _Validator) -> dict[str, dict[str, Any]]:
    """The pretrained features and, with ``init="kissme"``, the KISSME start (then the head's)."""
    plain = d.feats[0]
    candidates: dict[str, dict[str, Any]] = {"pretrained": {"score": score.vectors(l2_normalize(score.plain))}}
    L = _init_head(r.embedder, plain, (d.tpos, d.tneg), r.cfg) if r.cfg.init == "kissme" else None
    if L is not None and r.cfg.head == "linear":
        with torch.no_grad():
            r.embedder.head.weight.copy_(torch.from_numpy(L))
        candidates["kissme"] = {"score": score(r.embedder), "state": copy.deepcopy(r.embedder.head.state_dict())}
    return candidates


def _init_head(embedder: Embedder, feats: np.ndarray, cons_pairs: tuple, cfg: TrainConfig) -> np.ndarray | None:
    """KISSME projection (dim, in_dim) fitted on training pairs, or None when not possible."""
    from .losses import fit_kissme

    pos, neg = cons_pairs
    if not len(pos) or not len(neg) or embedder.head_kind == "identity":
        return None
    L = fit_kissme(feats, (pos[:, 0], pos[:, 1]), (neg[:, 0], neg[:, 1]), dim=embedder.dim, seed=cfg.seed)
    if L.shape[0] < embedder.dim:
        L = np.vstack([L, np.zeros((embedder.dim - L.shape[0], L.shape[1]), L.dtype)])
    return L.astype(np.float32)


def _schedule(cfg: TrainConfig, total: int, budget: Budget) -> Every:
    """When to validate: every ``eval_every`` steps; else :data:`EVALS` times per run, by
    steps and, under a budget, by seconds, whichever comes first (steps that the budget
    cuts short still get their validations)."""
    if cfg.eval_every is not None:
        return Every(steps=cfg.eval_every)
    left = budget.left()
    return Every(steps=max(1, -(-total // EVALS)), seconds=None if left is None else max(left / EVALS, 0.5))


def _fit(r: _Run, d: _Data, score: _Validator) -> dict[str, Any]:
    """The budgeted step loop; returns the best head, the log and what the loop did."""
    from .losses import make_loss
    from .models import autocast, to_device

    cfg, ctx, embedder, device = r.cfg, r.ctx, r.embedder, r.device
    embedder.head.to(device)
    opt = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    step, log = 0, []
    best: dict[str, Any] = {"score": None, "state": None, "step": 0}
    ckpt = r.folder / "checkpoint.pt"
    if r.resumed is not None:
        place = restore(r.resumed, embedder, opt, ckpt)
        step, log, best = place["step"], place["log"], place["best"]
        logger.info("resumed from %s at step %d", ckpt, step)
    total = _total_steps(cfg, d.batcher)
    loss_fn = make_loss(d.loss_name)
    rows = torch.from_numpy(d.feats).reshape(-1, d.feats.shape[-1])  # (views x faces, in_dim)
    n_faces = d.feats.shape[1]
    head = embedder.head
    if ctx.active:  # gradients summed over the ranks (each scales its share of the loss by world)
        from torch.nn.parallel import DistributedDataParallel

        head = DistributedDataParallel(head, device_ids=[torch.device(device).index] if "cuda" in device else None)
    validate, saved, saved_step = _schedule(cfg, total, r.budget), -math.inf, -1  # first at the first validation
    agree = (lambda flag: distributed.any_rank(flag, ctx)) if ctx.active else None
    loop = StepLoop(total, r.budget.deadline, step, MIN_STEPS if cfg.time_budget is not None else 0,
                    RESERVE, "train", r.progress, agree, by_time=cfg.steps is None and cfg.epochs is None)
    seen_pairs, shown, last, began = 0, None, None, time.perf_counter()
    embedder.train()
    for step in loop:
        if cfg.lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        faces, views, tup = d.batcher.batch(step)
        x = to_device(rows.index_select(0, torch.from_numpy(views * n_faces + faces)), device)
        with autocast(device):
            out = head(x)
        emb = torch.nn.functional.normalize(out.float(), dim=-1)  # as Embedder.embed_features
        last = loss_fn(emb, tuple(to_device(t, device) for t in tup), shard=ctx.shard)
        opt.zero_grad(set_to_none=True)
        (last * ctx.world if ctx.active else last).backward()
        opt.step()
        seen_pairs += len(tup[0]) + len(tup[2])
        done = step + 1
        due = validate.due(done)
        if done == total or (agree(due) if agree else due):
            t0 = time.perf_counter()
            shown = distributed.total(last.item(), ctx)  # the whole batch's loss: the sum of the ranks' shares
            value = score(embedder)
            log.append({"step": done, "loss": shown, "val_auc": value, "seconds": round(r.budget.spent(), 3)})
            best = _keep_best(best, value, embedder, done)
            if ctx.main and (done == total or time.perf_counter() - saved >= CHECKPOINT_SECONDS):
                save_checkpoint(ckpt, embedder, opt, done, log, best, r.budget.spent())
                saved, saved_step = time.perf_counter(), done
            embedder.train()
            loop.reserve = RESERVE + (time.perf_counter() - t0)
            loop.note(loss=f"{shown:.4f}", auc="-" if value is None else f"{value:.4f}",
                      pairs_s=f"{seen_pairs / max(time.perf_counter() - began, 1e-9):.0f}")
    step = loop.step
    if not log or log[-1]["step"] != step:
        value = score(embedder)
        if last is not None:
            shown = distributed.total(last.item(), ctx)
            log.append({"step": step, "loss": shown, "val_auc": value, "seconds": round(r.budget.spent(), 3)})
        best = _keep_best(best, value, embedder, step)
    elif best["state"] is None:
        best = _keep_best(best, score(embedder), embedder, step)
    spent = r.budget.spent()
    if loop.stopped == "time budget":  # stopped by its budget: the run has spent it (a resume gets no remainder)
        spent = max(spent, cfg.time_budget)
    if ctx.main and step and (saved_step != step or loop.stopped == "time budget"):
        save_checkpoint(ckpt, embedder, opt, step, log, best, spent)
    embedder.to("cpu")
    best["state"] = {k: v.cpu() for k, v in best["state"].items()}
    return {"best": best, "log": log, "steps": step, "stopped": loop.stopped, "pairs_seen": seen_pairs}


def _select_and_save(r: _Run, d: _Data, candidates: dict[str, dict[str, Any]], fit: dict[str, Any]
                     ) -> dict[str, Any]:
    """Pick the best candidate, save it with the run's summary and log; returns the summary."""
    cfg, embedder = r.cfg, r.embedder
    candidates["trained"] = fit["best"]
    selected = _select(candidates)
    if all(c.get("score") is None for c in candidates.values()):
        logger.warning("nothing to score the trained head on (held-out pairs: %d must-linked, %d cannot-linked; "
                       "photos without tracks have none): the pretrained features are kept, as an unscored head "
                       "named worse than them on every photo set measured; the trained head stays in %s",
                       len(d.vpos), len(d.vneg), r.folder / "checkpoint.pt")
    if selected == "pretrained":
        final = Embedder(embedder.trunk, cfg.backbone, "identity", input_size=cfg.input_size,
                         weights_origin=embedder.weights_origin)
    else:
        embedder.head.load_state_dict(candidates[selected]["state"])
        final = embedder
    summary = {"selected": selected, "loss": d.loss_name, "steps": fit["steps"], "stopped": fit["stopped"],
               "seconds": round(time.perf_counter() - r.budget.start, 3), "pairs": int(len(r.pairs)),
               "epochs": round(fit["steps"] * _faces_per_step(cfg) / max(len(d.batcher.faces), 1), 1),
               "pairs_seen": fit["pairs_seen"], "scores": {k: v["score"] for k, v in candidates.items()},
               "best_step": fit["best"]["step"],
               "holdout_pairs": {"same": int(len(d.vpos)), "different": int(len(d.vneg))},
               "features": r.cache_info}
    if r.budget.seconds is not None:
        summary["budget"] = {"seconds": r.budget.seconds, "spent_before": round(r.budget.spent_before, 3),
                             "spent": round(r.budget.spent(), 3)}
    if r.cache_info.get("subsample"):
        summary["pairs_trained"] = d.n_pairs
    if r.ctx.active:
        summary["processes"] = r.ctx.world
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    if r.ctx.main:
        final.save(r.folder, extra={"train": summary, "options": options})
        with atomic_write(r.folder / "train_log.jsonl") as fh:
            for row in fit["log"]:
                fh.write(json.dumps(row) + "\n")
    return summary


def train(manifest: Manifest, pairs: PairSet, run: str | os.PathLike, cfg: TrainConfig | None = None,
          resume: bool = False, progress: bool = True, features: np.ndarray | None = None,
          started: float | None = None) -> dict[str, Any]:
    """Train an embedder on rule pairs; writes the run folder and returns its summary.

    The time budget covers everything from ``started`` (a ``time.perf_counter()`` value,
    e.g. :func:`proxytasks.loop.process_start` for a command; default: the call) on,
    feature caching included; a resumed run gets what the run it resumes left of it. The
    loop stops before a step would overrun it (after at least :data:`MIN_STEPS` steps), or
    at its steps (see the module docstring: at most :data:`MAX_EPOCHS` epochs by default),
    then selects and saves the model. When caching every face would not fit in
    :data:`FEATURE_SHARE` of the budget, a subsample of whole tracks (with the tracks
    that share their frames) is cached and trained on; the summary's ``features`` says
    how many faces. ``features``: the trunk features of ``cfg.views`` for the faces of
    ``manifest`` (shape (views, faces, trunk width), computed by the caller, e.g. shared
    by the configurations of a budget sweep); they are neither computed nor cached here.
    Under ``torchrun`` every rank calls it with the same arguments (see the module
    docstring); only rank 0 writes the run folder.
    """
    cfg = cfg or TrainConfig()
    r = _prepare(manifest, pairs, Path(run), cfg, resume, progress, started)
    _features(r, features)
    d = _constraints(r)
    score = _Validator(d.feats[0], d.vpos, d.vneg)
    candidates = _candidates(r, d, score)
    fit = _fit(r, d, score)
    summary = _select_and_save(r, d, candidates, fit)
    distributed.finish(r.ctx)
    logger.info("trained %d steps (%g epochs) in %.1f s (%s) on %d of %d faces; selected %s (validation AUC %s)",
                fit["steps"], summary["epochs"], summary["seconds"], fit["stopped"], r.cache_info["faces"],
                len(manifest), summary["selected"], summary["scores"])
    return summary


def _faces_per_step(cfg: TrainConfig) -> int:
    return cfg.groups_per_batch * cfg.faces_per_group * (1 + cfg.negative_groups)


def _total_steps(cfg: TrainConfig, batcher: GroupBatcher) -> int:
    """The steps to run (a time budget may stop the loop before): ``steps``, else those of
    ``epochs``, else those of :data:`MAX_EPOCHS` under a time budget, else 1000."""
    if cfg.steps is not None:
        return int(cfg.steps)
    if cfg.epochs is None and cfg.time_budget is None:
        return 1000
    epochs = MAX_EPOCHS if cfg.epochs is None else cfg.epochs
    return max(1, int(epochs * len(batcher.faces) / _faces_per_step(cfg)))


def _keep_best(best: dict[str, Any], score: float | None, embedder: Embedder, step: int) -> dict[str, Any]:
    """The better of ``best`` and the head as it is now; at an equal score, the later head.

    The held-out rule pairs often saturate (AUC 1.0 from the first validation on: one
    track's faces are near-duplicates), and a tie says nothing about identity; on the
    development episodes the later head names better (bench/README.md, "Ties in the
    held-out score")."""
    if best["state"] is None or (score is not None and (best["score"] is None or score >= best["score"])):
        return {"score": score, "state": copy.deepcopy(embedder.head.state_dict()), "step": step}
    return best


def _select(candidates: dict[str, dict[str, Any]]) -> str:
    """The best-scoring candidate; the pretrained features when nothing can be scored (no
    held-out pair: a photo collection without tracks). A head no pair can check is not
    kept: on every real photo set measured the self-supervised head (two views of one face)
    named worse than the features it was trained on (bench/README.md, "Photos without tracks")."""
    scored = {k: v["score"] for k, v in candidates.items() if v.get("score") is not None}
    if not scored:
        return "pretrained"
    return max(scored, key=lambda k: (scored[k], k == "trained"))
