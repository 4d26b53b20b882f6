"""Siamese training on rule pairs, within a time budget, with model selection without labels.

The trunk is pretrained and, by default, frozen: its features are computed once for
a few views of every face (plain, mirrored, augmented) and cached in the run folder,
and a projection head is trained on them with a pair loss. On 2 CPU cores this turns
minutes of backbone passes per epoch into milliseconds per step.

Batches hold several faces of several must-link groups (tracks) plus faces of the
groups cannot-linked to them (co-occurring tracks); positives are faces of one group,
negatives only cannot-linked faces, never "every other track". Photo collections
without cannot-links fall back to a self-supervised positive (two views of one face)
with the other faces of the batch as negatives (NT-Xent).

Selection without labels: time chunks of each video (a random share of photos) are
held out; the embedding is scored by the ROC-AUC separating their must-link from their
cannot-link pairs. The frozen pretrained features, a KISSME linear metric fitted in one
step, and the trained head's checkpoints compete on that score; the best one is saved.

Under ``torchrun`` the processes share the work (:mod:`proxytasks.distributed`): the
trunk features by blocks of faces, each step's loss terms by pairs (DDP sums the
gradients), with the same result as one process; rank 0 writes every file. On CUDA the
loop runs on the GPU, the head in bf16 autocast where supported, batches copied from
pinned memory without blocking.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from . import distributed
from .embed import trunk_features
from .embedder import Embedder, create_embedder
from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest
from .pairs import PairSet, ids_digest

logger = logging.getLogger(__name__)

FEATURE_SHARE = 0.5  # at most this share of a time budget on caching views after the first two
LR_SCHEDULES = ("constant", "cosine")
CHECKPOINT_VERSION = 1  # of the "header" in checkpoint.pt


@dataclass
class TrainConfig:
    """Training options; field names equal the ``proxytasks train`` option names."""

    backbone: str = "tf_efficientnet_lite0"
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
    eval_every: int = 50
    holdout: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    batch_size: int = 64


# --------------------------------------------------------------------------- constraints
@dataclass
class Constraints:
    """Must-link groups (connected components of "same" pairs) and cannot-linked group pairs."""

    group: np.ndarray  # group id per face
    cannot: np.ndarray  # (M, 2) sorted group pairs, unique
    weight: np.ndarray  # (M,) largest rule weight of each cannot-linked group pair

    @classmethod
    def from_pairs(cls, pairs: PairSet, mask: np.ndarray | None = None) -> "Constraints":
        i, j, label, w = pairs.unique()
        if mask is not None:
            keep = mask[i] & mask[j]
            i, j, label, w = i[keep], j[keep], label[keep], w[keep]
        n = pairs.n_faces
        same = label == 1
        graph = coo_matrix((np.ones(same.sum()), (i[same], j[same])), shape=(n, n))
        _, group = connected_components(graph, directed=False)
        ga, gb = group[i[~same]], group[j[~same]]
        ok = ga != gb
        g = np.sort(np.stack([ga[ok], gb[ok]], 1), axis=1)
        key = g[:, 0].astype(np.int64) * n + g[:, 1]
        uniq, first = np.unique(key, return_index=True)
        wmax = np.zeros(len(uniq), np.float32)
        np.maximum.at(wmax, np.searchsorted(uniq, key), w[~same][ok])
        return cls(group.astype(np.int64), g[first], wmax)

    def cannot_keys(self) -> np.ndarray:
        n = len(self.group)
        return np.sort(self.cannot[:, 0] * n + self.cannot[:, 1])


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


# --------------------------------------------------------------------------- batches
class GroupBatcher:
    """Batches of faces of several groups plus faces of groups cannot-linked to them."""

    def __init__(self, cons: Constraints, train: np.ndarray, n_views: int, cfg: TrainConfig) -> None:
        self.cfg, self.n_views = cfg, n_views
        faces = np.flatnonzero(train)
        g = cons.group[faces]
        order = np.argsort(g, kind="stable")
        self.faces = faces[order]
        gs = g[order]
        self.starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
        self.sizes = np.diff(np.r_[self.starts, len(gs)])
        self.group_ids = gs[self.starts]
        pos = {gid: k for k, gid in enumerate(self.group_ids.tolist())}
        self.neighbours: list[list[int]] = [[] for _ in self.group_ids]
        for a, b in cons.cannot.tolist():
            if a in pos and b in pos:
                self.neighbours[pos[a]].append(pos[b])
                self.neighbours[pos[b]].append(pos[a])
        self.with_neg = np.array([k for k, nb in enumerate(self.neighbours) if nb])
        usable = (self.sizes >= 2) | (n_views >= 2)
        self.anchors = self.with_neg[usable[self.with_neg]] if len(self.with_neg) else np.flatnonzero(usable)
        if not len(self.anchors):
            raise ProxytasksError("no training pairs: no track has two faces and only one view is "
                                  "cached; add views or run `proxytasks track` first")
        self.keys = cons.cannot_keys()
        self.n = len(cons.group)
        self.group = cons.group

    def _faces(self, k: int, rng: np.random.Generator) -> np.ndarray:
        s, size = self.starts[k], self.sizes[k]
        return self.faces[s + rng.integers(0, size, self.cfg.faces_per_group)]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]:
        """(faces, views, indices tuple) of one batch; the same for the same step."""
        rng = np.random.default_rng([self.cfg.seed, step])
        chosen = rng.choice(self.anchors, min(self.cfg.groups_per_batch, len(self.anchors)), replace=False)
        groups = list(chosen)
        for k in chosen:
            nb = self.neighbours[k]
            if nb:
                groups.extend(rng.choice(nb, min(self.cfg.negative_groups, len(nb)), replace=False))
        faces = np.concatenate([self._faces(k, rng) for k in dict.fromkeys(groups)])
        views = rng.integers(0, self.n_views, len(faces))
        g = self.group[faces]
        a, b = np.triu_indices(len(faces), 1)
        same = (g[a] == g[b]) & ((faces[a] != faces[b]) | (views[a] != views[b]))
        lo, hi = np.minimum(g[a], g[b]), np.maximum(g[a], g[b])
        key = lo * self.n + hi
        pos = np.minimum(np.searchsorted(self.keys, key), max(len(self.keys) - 1, 0))
        diff = self.keys[pos] == key if len(self.keys) else np.zeros(len(key), dtype=bool)
        t = lambda x: torch.from_numpy(x.astype(np.int64))  # noqa: E731
        return faces, views, (t(a[same]), t(b[same]), t(a[diff]), t(b[diff]))


# --------------------------------------------------------------------------- training
def _cached_features(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == key:
                    logger.info("reusing cached trunk features from %s", path)
                    return z["features"]
        except (OSError, ValueError, KeyError):
            logger.warning("ignoring unreadable feature cache %s", path)
    return None


def _features(embedder: Embedder, manifest: Manifest, cfg: TrainConfig, run: Path, device: str,
              progress: bool, start: float, ctx: distributed.Context | None = None) -> np.ndarray:
    """Trunk features for every view, cached in the run folder (float16).

    Views after the first two (two views of one face are the positive pair of a photo
    collection) are left out when computing one more would take the run past
    :data:`FEATURE_SHARE` of its time budget (counted from ``start``), so that a short
    budget still leaves time to train; the array holds the views computed. Under
    ``torchrun`` each rank computes its block of faces; rank 0 reads and writes the cache
    and decides the views.
    """
    ctx = ctx or distributed.Context()
    key = {"backbone": cfg.backbone, "weights": cfg.weights, "input_size": cfg.input_size,
           "views": list(cfg.views), "seed": cfg.seed, "ids": ids_digest([f.id for f in manifest.faces])}
    path = run / "features.npz"
    cached = distributed.broadcast(_cached_features(path, key) if ctx.main else None, ctx)
    if cached is not None:
        return cached.astype(np.float32)
    mine = distributed.block(len(manifest), ctx)
    part = manifest if not ctx.active else Manifest([manifest.faces[i] for i in mine], manifest.root)
    done: list[np.ndarray] = []
    began = time.perf_counter()
    for view in cfg.views:
        per_view = (time.perf_counter() - began) / max(len(done), 1)
        if distributed.broadcast(len(done) >= 2 and cfg.time_budget is not None and
                                 time.perf_counter() - start + per_view > FEATURE_SHARE * cfg.time_budget, ctx):
            logger.warning("time budget: trunk features of %d of %d views cached (%s); more views need a "
                           "larger --time-budget", len(done), len(cfg.views), ", ".join(cfg.views[:len(done)]))
            break
        rows = trunk_features(embedder, part, (view,), cfg.batch_size, cfg.workers, cfg.seed, progress, device,
                              first=int(mine[0]) if len(mine) else 0)[0].astype(np.float16)
        done.append(distributed.gather_rows(rows, ctx))
    feats = np.stack(done)
    if ctx.main:
        with atomic_write(path, "wb", gz=False) as fh:
            np.savez(fh, features=feats, key=np.array(json.dumps(key)))
    return feats.astype(np.float32)  # as a resumed run reads them back


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


def train(manifest: Manifest, pairs: PairSet, run: str | os.PathLike, cfg: TrainConfig | None = None,
          resume: bool = False, progress: bool = True, features: np.ndarray | None = None) -> dict[str, Any]:
    """Train an embedder on rule pairs; writes the run folder and returns its summary.

    The time budget covers everything from the call on (feature caching included); the
    loop stops before a step would overrun it, then selects and saves the model.
    ``features``: the trunk features of ``cfg.views`` for the faces of ``manifest``
    (shape (views, faces, trunk width), computed by the caller, e.g. shared by the
    configurations of a budget sweep); they are neither computed nor cached here.
    Under ``torchrun`` every rank calls it with the same arguments (see the module
    docstring); only rank 0 writes the run folder.
    """
    from .losses import make_loss
    from .models import autocast, select_device, to_device

    cfg = cfg or TrainConfig()
    start = time.perf_counter()
    run = Path(run)
    if pairs.n_faces != len(manifest):
        raise ProxytasksError(f"the pairs index {pairs.n_faces} faces but the manifest holds {len(manifest)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ProxytasksError(f"unknown learning-rate schedule {cfg.lr_schedule!r}: choose one of "
                              f"{', '.join(LR_SCHEDULES)}")
    if cfg.lr_schedule == "cosine" and cfg.steps is None and cfg.epochs is None:
        raise ProxytasksError("the cosine learning-rate schedule needs --steps or --epochs (where it ends)")
    torch.manual_seed(cfg.seed)
    device = str(select_device(cfg.device))
    ctx = distributed.context(device)
    device = distributed.local_device(device, ctx)
    progress = progress and ctx.main
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
    embedder = create_embedder(cfg.backbone, cfg.weights, cfg.dim, cfg.head, cfg.input_size)
    if features is None:
        feats = _features(embedder, manifest, cfg, run, device, progress, start, ctx)
        spent = time.perf_counter() - start
        if cfg.time_budget is not None and spent + 1.0 > cfg.time_budget:
            logger.warning("time budget: caching the trunk features took %.0f s of the %.0f s budget, so no "
                           "training step fits; the model is the better of the pretrained features and the "
                           "KISSME start. Rerun into the same folder (the cache is reused) with --time-budget "
                           "above %.0f s", spent, cfg.time_budget, spent + 60)
    else:
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 3 or feats.shape[1:] != (len(manifest), embedder.in_dim) or not 1 <= len(feats) <= len(cfg.views):
            raise ProxytasksError(f"features of shape {feats.shape} given for {len(manifest)} faces of "
                                  f"{cfg.backbone} (trunk width {embedder.in_dim}, up to {len(cfg.views)} views)")
    embedder.to("cpu")
    val = holdout_mask(manifest, cfg.holdout, cfg.seed)
    cons = Constraints.from_pairs(pairs, ~val)
    vpos, vneg = pairs_within(pairs, val)
    tpos, tneg = pairs_within(pairs, ~val)
    batcher = GroupBatcher(cons, ~val, len(feats), cfg)
    loss_name = cfg.loss if cfg.loss != "auto" else ("track-supcon" if len(cons.cannot) else "ntxent")
    loss_fn = make_loss(loss_name)
    plain = feats[0]
    candidates: dict[str, dict[str, Any]] = {}
    pre = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    candidates["pretrained"] = {"score": score_vectors(pre, vpos, vneg)}
    L = _init_head(embedder, plain, (tpos, tneg), cfg) if cfg.init == "kissme" else None
    if L is not None and cfg.head == "linear":
        with torch.no_grad():
            embedder.head.weight.copy_(torch.from_numpy(L))
        candidates["kissme"] = {"score": _score(embedder, plain, vpos, vneg),
                                "state": copy.deepcopy(embedder.head.state_dict())}
    embedder.head.to(device)
    opt = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    step, log = 0, []
    best: dict[str, Any] = {"score": None, "state": None, "step": 0}
    ckpt = run / "checkpoint.pt"
    state = distributed.broadcast(_read_checkpoint(ckpt, embedder) if ctx.main and resume and ckpt.is_file()
                                  else None, ctx)
    if state is not None:
        try:
            embedder.head.load_state_dict(state["head"])
            opt.load_state_dict(state["optimizer"])
        except Exception as e:  # a head or optimizer that does not fit, despite the header
            raise ProxytasksError(f"{ckpt}: cannot resume from this checkpoint ({type(e).__name__}: "
                                  f"{str(e)[:200]}); delete it to start afresh") from None
        step = int(state["step"])
        log = json.loads(state["log"])
        if "best_head" in state:
            best = {"score": state["best_score"] if state["best_score"] >= 0 else None,
                    "state": state["best_head"], "step": int(state["best_step"])}
        logger.info("resumed from %s at step %d", ckpt, step)
    total = _total_steps(cfg, batcher)
    feats_t = torch.from_numpy(feats)
    head = embedder.head
    if ctx.active:  # gradients summed over the ranks (each scales its share of the loss by world)
        from torch.nn.parallel import DistributedDataParallel

        head = DistributedDataParallel(head, device_ids=[torch.device(device).index] if "cuda" in device else None)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress)
    step_time, seen_pairs, stopped, shown = 0.0, 0, "steps", None
    embedder.train()
    while total is None or step < total:
        elapsed = time.perf_counter() - start
        if distributed.any_rank(cfg.time_budget is not None and elapsed + 2 * step_time + 1.0 > cfg.time_budget,
                                ctx):
            stopped = "time budget"
            break
        t0 = time.perf_counter()
        if cfg.lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        faces, views, tup = batcher.batch(step)
        x = to_device(feats_t[torch.from_numpy(views), torch.from_numpy(faces)], device)
        with autocast(device):
            out = head(x)
        emb = torch.nn.functional.normalize(out.float(), dim=-1)  # as Embedder.embed_features
        loss = loss_fn(emb, tuple(to_device(t, device) for t in tup), shard=ctx.shard)
        opt.zero_grad(set_to_none=True)
        (loss * ctx.world).backward()
        opt.step()
        step += 1
        seen_pairs += len(tup[0]) + len(tup[2])
        step_time = 0.9 * step_time + 0.1 * (time.perf_counter() - t0) if step_time else time.perf_counter() - t0
        if step % cfg.eval_every == 0 or step == total or not ctx.active:
            shown = distributed.total(loss.item(), ctx)  # the whole batch's loss: the sum of the ranks' shares
        if step % cfg.eval_every == 0 or step == total:
            score = _score(embedder, plain, vpos, vneg)
            log.append({"step": step, "loss": shown, "val_auc": score,
                        "seconds": round(time.perf_counter() - start, 3)})
            best = _keep_best(best, score, embedder, step)
            if ctx.main:
                _checkpoint(ckpt, embedder, opt, step, log, best)
            embedder.train()
        bar.set_postfix(loss="-" if shown is None else f"{shown:.4f}",
                        pairs_s=f"{seen_pairs / max(time.perf_counter() - start, 1e-9):.0f}")
        bar.update(1)
    bar.close()
    if best["state"] is None or step % cfg.eval_every:
        best = _keep_best(best, _score(embedder, plain, vpos, vneg), embedder, step)
    embedder.to("cpu")
    best["state"] = {k: v.cpu() for k, v in best["state"].items()}
    candidates["trained"] = best
    selected = _select(candidates)
    if selected == "pretrained":
        final = Embedder(embedder.trunk, cfg.backbone, "identity", input_size=cfg.input_size,
                         weights_origin=embedder.weights_origin)
    else:
        embedder.head.load_state_dict(candidates[selected]["state"])
        final = embedder
    seconds = time.perf_counter() - start
    summary = {"selected": selected, "loss": loss_name, "steps": step, "stopped": stopped,
               "seconds": round(seconds, 3), "pairs": int(len(pairs)), "pairs_seen": seen_pairs,
               "scores": {k: v["score"] for k, v in candidates.items()}, "best_step": best["step"],
               "holdout_pairs": {"same": int(len(vpos)), "different": int(len(vneg))}}
    if ctx.active:
        summary["processes"] = ctx.world
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    if ctx.main:
        final.save(run, extra={"train": summary, "options": options})
        with atomic_write(run / "train_log.jsonl") as fh:
            for row in log:
                fh.write(json.dumps(row) + "\n")
    distributed.finish(ctx)
    logger.info("trained %d steps in %.1f s (%s); selected %s (validation AUC %s)", step, seconds,
                stopped, selected, summary["scores"])
    return summary


def _total_steps(cfg: TrainConfig, batcher: GroupBatcher) -> int | None:
    if cfg.steps is not None:
        return int(cfg.steps)
    if cfg.epochs is not None:
        per_batch = cfg.groups_per_batch * cfg.faces_per_group * (1 + cfg.negative_groups)
        return max(1, int(cfg.epochs * len(batcher.faces) / per_batch))
    return None if cfg.time_budget is not None else 1000


def _score(embedder: Embedder, plain: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float | None:
    from .embed import head_vectors

    return score_vectors(head_vectors(embedder, plain), pos, neg)


def _keep_best(best: dict[str, Any], score: float | None, embedder: Embedder, step: int) -> dict[str, Any]:
    """The better of ``best`` and the head as it is now."""
    if best["state"] is None or (score is not None and (best["score"] is None or score > best["score"])):
        return {"score": score, "state": copy.deepcopy(embedder.head.state_dict()), "step": step}
    return best


def _select(candidates: dict[str, dict[str, Any]]) -> str:
    """The best-scoring candidate; the trained head when nothing can be scored."""
    scored = {k: v["score"] for k, v in candidates.items() if v.get("score") is not None}
    if not scored:
        return "trained"
    return max(scored, key=lambda k: (scored[k], k == "trained"))


def _checkpoint(path: Path, embedder: Embedder, opt: torch.optim.Optimizer, step: int, log: list,
                best: dict[str, Any]) -> None:
    """Everything ``--resume`` needs, loadable with ``torch.load(weights_only=True)``, with a
    ``header``: the model it fits and the sha256 of the rest (see :func:`_read_checkpoint`)."""
    state = {"head": embedder.head.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "log": json.dumps(log), "best_head": best["state"],
             "best_score": -1.0 if best["score"] is None else best["score"], "best_step": best["step"]}
    state["header"] = {**_checkpoint_header(embedder), "sha256": _state_digest(state)}
    with atomic_write(path, "wb", gz=False) as fh:
        torch.save(state, fh)


def _checkpoint_header(embedder: Embedder) -> dict[str, Any]:
    """What a checkpoint's head and optimizer fit: the model being trained."""
    return {"format_version": CHECKPOINT_VERSION, "backbone": embedder.backbone, "head": embedder.head_kind,
            "in_dim": embedder.in_dim, "dim": embedder.dim}


def _state_digest(state: Any) -> str:
    """sha256 of a checkpoint's content: tensors by dtype, shape and bytes, containers in key order."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"tensor {t.dtype} {tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode() + b":")
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode() + b";")

    walk(state)
    return h.hexdigest()


def _read_checkpoint(path: Path, embedder: Embedder) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against its header, and the header against ``embedder``.

    Raises:
        ProxytasksError: naming the file, when it cannot be read (truncated, pickled code ...),
            has no header (an older proxytasks), fails its checksum, or fits another model.
    """
    afresh = "delete it to start afresh"
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated file, pickled code ...
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}); {afresh}") from None
    header = state.get("header") if isinstance(state, dict) else None
    if not isinstance(header, dict) or header.get("format_version") != CHECKPOINT_VERSION:
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint: it has no header of format "
                              f"{CHECKPOINT_VERSION} (written by an older proxytasks?); {afresh}")
    if _state_digest({k: v for k, v in state.items() if k != "header"}) != header.get("sha256"):
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint: its content does not match the "
                              f"sha256 in its header (corrupt or altered); {afresh}")
    want = _checkpoint_header(embedder)
    if any(header.get(k) != v for k, v in want.items()):
        def describe(h: dict[str, Any]) -> str:
            return f"{h.get('backbone')} with a {h.get('head')} head {h.get('in_dim')} -> {h.get('dim')}"

        raise ProxytasksError(f"{path}: cannot resume: the checkpoint is of {describe(header)}, this run trains "
                              f"{describe(want)}; resume with the options it was trained with, or {afresh}")
    return state
