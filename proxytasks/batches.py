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


CHUNK = 32  # steps whose batches are drawn together


class GroupBatcher:
    """Batches of faces of several groups plus faces of groups cannot-linked to them.

    The batches of :data:`CHUNK` successive steps are drawn together, vectorised over the
    chunk (a few numpy calls for all of them: a training step is a few milliseconds, so a
    per-step draw weighed), from a generator seeded by the seed and the chunk: a step's
    batch depends only on the seed and the step, so a resumed run sees the batches of an
    uninterrupted one.
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
        self._chunk: tuple[int, list] = (-1, [])

    def neighbours(self, k: int) -> np.ndarray:
        """The groups (positions) cannot-linked to group position ``k``."""
        return self.nb_idx[self.nb_ptr[k]:self.nb_ptr[k + 1]]

    def _negatives(self, chosen: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``negative_groups`` distinct neighbours of each chosen group, drawn at random,
        and the position in ``chosen`` of the group each was drawn for."""
        deg = self.nb_ptr[chosen + 1] - self.nb_ptr[chosen]
        total = int(deg.sum())
        owner = np.repeat(np.arange(len(chosen)), deg)
        first = np.repeat(np.cumsum(deg) - deg, deg)
        entry = np.repeat(self.nb_ptr[chosen], deg) + np.arange(total) - first
        order = np.lexsort((rng.random(total), owner))
        keep = (np.arange(total) - first) < self.cfg.negative_groups  # owner-sorted entries keep their block
        return self.nb_idx[entry[order][keep]], owner[keep]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]:
        """(faces, views, indices tuple) of one batch; the same for the same step."""
        chunk, at = divmod(step, CHUNK)
        if self._chunk[0] != chunk:
            self._chunk = (chunk, self._draw(chunk))
        return self._chunk[1][at]

    def _triangle(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self._triu:
            self._triu[n] = np.triu_indices(n, 1)
        return self._triu[n]

    def _draw(self, chunk: int) -> list[tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]]:
        """The batches of the steps of ``chunk``, each one block of ``faces_per_group`` faces per
        distinct group (chosen anchors first, then their negatives) and its index tuple
        ``(a1, p, a2, n)``: positives are two faces of one group (not the same face under the same
        view), negatives two faces of cannot-linked groups."""
        cfg, k = self.cfg, self.cfg.faces_per_group
        rng = np.random.default_rng([cfg.seed, chunk])
        per = min(cfg.groups_per_batch, len(self.anchors))
        chosen = np.concatenate([rng.choice(self.anchors, per, replace=False) for _ in range(CHUNK)])
        negatives, owner = self._negatives(chosen, rng)
        step = np.r_[np.arange(len(chosen)) // per, owner // per]
        cand = np.r_[chosen, negatives]
        order = np.argsort(step, kind="stable")  # a step's chosen groups, then its negatives
        step, cand = step[order], cand[order]
        _, first = np.unique(step * len(self.sizes) + cand, return_index=True)
        first.sort()
        step, groups = step[first], cand[first]  # distinct groups of each step, in drawing order
        group_at = np.searchsorted(step, np.arange(CHUNK + 1))  # a step's groups: group_at[s]:group_at[s + 1]
        pick = (rng.random((len(groups), k)) * self.sizes[groups][:, None]).astype(np.int64)
        faces = self.faces[(self.starts[groups][:, None] + pick).reshape(-1)]
        views = rng.integers(0, self.n_views, len(faces))
        ia, ib = self._triangle(k)
        base = np.arange(len(groups))[:, None] * k
        pa, pb = (base + ia).reshape(-1), (base + ib).reshape(-1)
        keep = (faces[pa] != faces[pb]) | (views[pa] != views[pb])
        pa, pb = pa[keep], pb[keep]
        ba, bb = (np.concatenate(x) for x in zip(*(self._triangle(int(group_at[s + 1] - group_at[s])) + group_at[s]
                                                   for s in range(CHUNK))))
        gid = self.group_ids[groups]
        key = np.minimum(gid[ba], gid[bb]) * self.n + np.maximum(gid[ba], gid[bb])
        hit = np.zeros(len(key), dtype=bool)
        if len(self.keys) and len(key):
            hit = self.keys[np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)] == key
        fa, fb = np.divmod(np.arange(k * k), k)
        na, nb = (ba[hit][:, None] * k + fa).reshape(-1), (bb[hit][:, None] * k + fb).reshape(-1)
        face_at = group_at * k  # a step's faces: face_at[s]:face_at[s + 1]
        cut_p, cut_n = np.searchsorted(pa // k, group_at), np.searchsorted(np.repeat(ba[hit], k * k), group_at)
        out = []
        for s in range(CHUNK):
            lo, hi = face_at[s], face_at[s + 1]
            p, n = slice(cut_p[s], cut_p[s + 1]), slice(cut_n[s], cut_n[s + 1])
            out.append((faces[lo:hi], views[lo:hi],
                        tuple(torch.from_numpy(x - lo) for x in (pa[p], pb[p], na[n], nb[n]))))
        return out
