"""Constraints and batches of proxy training: must-link groups, cannot-links, and batches
of several groups with the groups cannot-linked to them (:mod:`proxytasks.train` trains on them;
the joint fine-tuning of :mod:`proxytasks.finetune` too)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ProxytasksError
from .pairs import PairSet
from .vectors import components


@dataclass
class Constraints:
    """Must-link groups (connected components of "same" pairs) and cannot-linked group pairs."""

    group: np.ndarray  # group id per face
    cannot: np.ndarray  # (M, 2) sorted group pairs, unique
    weight: np.ndarray  # (M,) largest rule weight of each cannot-linked group pair

    @classmethod
    def from_pairs(cls, pairs: PairSet, mask: np.ndarray | None = None) -> "Constraints":
        """Groups and cannot-links of ``pairs`` (of the pairs within ``mask`` when given)."""
        i, j, label, w = pairs.unique()
        if mask is not None:
            keep = mask[i] & mask[j]
            i, j, label, w = i[keep], j[keep], label[keep], w[keep]
        n = pairs.n_faces
        same = label == 1
        group = components(n, i[same], j[same])
        ga, gb = group[i[~same]], group[j[~same]]
        ok = ga != gb
        g = np.sort(np.stack([ga[ok], gb[ok]], 1), axis=1)
        key = g[:, 0].astype(np.int64) * n + g[:, 1]
        uniq, first = np.unique(key, return_index=True)
        wmax = np.zeros(len(uniq), np.float32)
        np.maximum.at(wmax, np.searchsorted(uniq, key), w[~same][ok])
        return cls(group, g[first], wmax)

    def cannot_keys(self) -> np.ndarray:
        """Sorted ``a * n + b`` keys of the cannot-linked group pairs."""
        n = len(self.group)
        return np.sort(self.cannot[:, 0] * n + self.cannot[:, 1])


class GroupBatcher:
    """Batches of faces of several groups plus faces of groups cannot-linked to them.

    Sampling is vectorised (a handful of numpy calls a batch) and depends only on the
    seed and the step, so a resumed run sees the batches of an uninterrupted one.
    """

    def __init__(self, cons: Constraints, train: np.ndarray, n_views: int, cfg: Any) -> None:
        self.cfg, self.n_views = cfg, n_views
        faces = np.flatnonzero(train)
        g = cons.group[faces]
        order = np.argsort(g, kind="stable")
        self.faces = faces[order]
        gs = g[order]
        self.starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]]) if len(gs) else np.zeros(0, np.int64)
        self.sizes = np.diff(np.r_[self.starts, len(gs)])
        self.group_ids = gs[self.starts]
        pos = np.full(len(cons.group) + 1, -1, dtype=np.int64)
        pos[self.group_ids] = np.arange(len(self.group_ids))
        a, b = (pos[cons.cannot[:, 0]], pos[cons.cannot[:, 1]]) if len(cons.cannot) else (np.zeros(0, int),) * 2
        ok = (a >= 0) & (b >= 0)
        src, dst = np.r_[a[ok], b[ok]], np.r_[b[ok], a[ok]]
        by = np.argsort(src, kind="stable")
        self.nb_idx = dst[by]  # neighbours of group k: nb_idx[nb_ptr[k]:nb_ptr[k + 1]] (CSR)
        self.nb_ptr = np.r_[0, np.cumsum(np.bincount(src, minlength=len(self.group_ids)))].astype(np.int64)
        deg = np.diff(self.nb_ptr)
        self.with_neg = np.flatnonzero(deg > 0)
        usable = (self.sizes >= 2) | (n_views >= 2)
        self.anchors = self.with_neg[usable[self.with_neg]] if len(self.with_neg) else np.flatnonzero(usable)
        if not len(self.anchors):
            raise ProxytasksError("no training pairs: no track has two faces and only one view is "
                                  "cached; add views or run `proxytasks track` first")
        self.keys = cons.cannot_keys()
        self.n = len(cons.group)
        self.group = cons.group
        self._triu: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def neighbours(self, k: int) -> np.ndarray:
        """The groups (positions) cannot-linked to group position ``k``."""
        return self.nb_idx[self.nb_ptr[k]:self.nb_ptr[k + 1]]

    def _negatives(self, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Up to ``negative_groups`` distinct neighbours of each chosen group, drawn at random."""
        deg = self.nb_ptr[chosen + 1] - self.nb_ptr[chosen]
        total = int(deg.sum())
        if not total:
            return np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(chosen)), deg)
        first = np.repeat(np.cumsum(deg) - deg, deg)
        entry = np.repeat(self.nb_ptr[chosen], deg) + np.arange(total) - first
        order = np.lexsort((rng.random(total), owner))
        rank = np.arange(total) - first  # owner-sorted entries keep their owner's block
        return self.nb_idx[entry[order][rank < self.cfg.negative_groups]]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]:
        """(faces, views, indices tuple) of one batch; the same for the same step."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        chosen = rng.choice(self.anchors, min(cfg.groups_per_batch, len(self.anchors)), replace=False)
        groups = np.r_[chosen, self._negatives(chosen, rng)]
        _, first = np.unique(groups, return_index=True)
        groups = groups[np.sort(first)]
        pick = (rng.random((len(groups), cfg.faces_per_group)) * self.sizes[groups][:, None]).astype(np.int64)
        faces = self.faces[(self.starts[groups][:, None] + pick).reshape(-1)]
        views = rng.integers(0, self.n_views, len(faces))
        return faces, views, tuple(torch.from_numpy(x) for x in self._pairs(groups, faces, views))

    def _triangle(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self._triu:
            self._triu[n] = np.triu_indices(n, 1)
        return self._triu[n]

    def _pairs(self, groups: np.ndarray, faces: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, ...]:
        """Positive (same group, not the same face under the same view) and negative
        (cannot-linked groups) position pairs of a batch made of one block of
        ``faces_per_group`` faces per distinct group, worked out block by block: ``(a1, p, a2, n)``."""
        k = self.cfg.faces_per_group
        ia, ib = self._triangle(k)
        base = np.arange(len(groups))[:, None] * k
        pa, pb = (base + ia).reshape(-1), (base + ib).reshape(-1)
        keep = (faces[pa] != faces[pb]) | (views[pa] != views[pb])
        pa, pb = pa[keep], pb[keep]
        ba, bb = self._triangle(len(groups))
        gid = self.group_ids[groups]
        key = np.minimum(gid[ba], gid[bb]) * self.n + np.maximum(gid[ba], gid[bb])
        if len(self.keys) and len(key):
            at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
            hit = self.keys[at] == key
        else:
            hit = np.zeros(len(key), dtype=bool)
        fa, fb = np.divmod(np.arange(k * k), k)
        na = (ba[hit][:, None] * k + fa).reshape(-1)
        nb = (bb[hit][:, None] * k + fb).reshape(-1)
        return pa.astype(np.int64), pb.astype(np.int64), na.astype(np.int64), nb.astype(np.int64)


class Prefetcher:
    """The batches of the coming steps, sampled on a thread while the current step runs
    (numpy and torch release the GIL); the same batches as ``batcher.batch(step)``."""

    def __init__(self, batcher: GroupBatcher, total: int | None, depth: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.batcher, self.total, self.depth = batcher, total, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches")
        self.pending: dict[int, Any] = {}
        self.next = -1

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]:
        """The batch of ``step``; queues the next ones."""
        if self.next < step:
            self.pending.clear()
            self.next = step
        while self.next < step + self.depth and (self.total is None or self.next < self.total):
            self.pending[self.next] = self.pool.submit(self.batcher.batch, self.next)
            self.next += 1
        fut = self.pending.pop(step, None)
        return fut.result() if fut is not None else self.batcher.batch(step)

    def close(self) -> None:
        """Stop the thread (batches queued and not taken are dropped)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
