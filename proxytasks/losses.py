"""Pair losses on rule-made pairs, and a one-step KISSME metric fit.

Every loss takes ``(embeddings, indices_tuple, weights=None)``:

- ``embeddings``: ``(B, D)`` rows, assumed L2-normalised, so the similarity of two rows
  is their dot product ``S_ij`` (the losses do not normalise);
- ``indices_tuple = (a1, p, a2, n)``: positive pairs ``(a1[k], p[k])`` and negative
  pairs ``(a2[k], n[k])`` indexing rows, as :meth:`proxytasks.pairs.PairSet.indices_tuple`
  gives them (tensors or numpy arrays);
- ``weights = (w_pos, w_neg)``: optional non-negative per-pair weights (rule weights),
  either entry may be None (all ones). In every loss a zero weight is the same as
  leaving the pair out;
- ``shard = (rank, world)``: optional; the loss of this rank's share of the terms
  (term ``k`` of each weighted mean if ``k % world == rank``), each mean still divided by
  the whole batch's weight, so that the shards' losses sum to the whole loss (and their
  gradients to its gradient): the split of distributed training
  (:mod:`proxytasks.distributed`).

An empty positive or negative set never gives NaN: its part of the loss is a zero that
keeps the autograd graph. Losses are registered in :data:`LOSSES`; build them with
:func:`make_loss`.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ProxytasksError
from .registry import Registry

logger = logging.getLogger(__name__)

LOSSES: Registry[type[nn.Module]] = Registry("loss")

IndicesTuple = Sequence[Tensor | np.ndarray]
Weights = tuple[Tensor | np.ndarray | None, Tensor | np.ndarray | None] | None


# ---------------------------------------------------------------------------- helpers
def _segment_logsumexp(x: Tensor, seg: Tensor, n: int, w: Tensor, add_one: bool = False) -> Tensor:
    """Per segment ``a < n``: ``log([1 +] sum_{k: seg_k = a} w_k exp(x_k))``.

    Entries with ``w_k = 0`` are ignored; a segment without any entry gives ``0`` with
    ``add_one`` and ``-inf`` without. Stable (max-shifted) and NaN-free in backward.
    """
    valid = w > 0
    floor = 0.0 if add_one else -math.inf
    m = torch.full((n,), floor, dtype=x.dtype, device=x.device)
    m = m.scatter_reduce(0, seg, torch.where(valid, x, -math.inf).detach(), "amax")
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(torch.where(valid, x - m[seg], -math.inf)) * w
    total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, seg, e)
    if add_one:
        return torch.log(total + torch.exp(-m)) + m
    has = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, seg, valid.to(x.dtype)) > 0
    out = torch.log(total.clamp_min(torch.finfo(x.dtype).tiny)) + m
    return torch.where(has, out, torch.full_like(out, -math.inf))


Means = list[tuple[Tensor, Tensor]]  # (values, weights) of each weighted mean a loss sums


def _sum_of_means(means: Means, embeddings: Tensor, shard: tuple[int, int] | None) -> Tensor:
    """``sum over means of sum(w * values) / sum(w)`` (terms of weight 0 ignored, an empty
    mean is 0, graph kept); with ``shard`` only that shard's terms in the numerators."""
    out = embeddings.sum() * 0
    for values, w in means:
        if values.numel() == 0:
            continue
        terms = torch.where(w > 0, values * w, torch.zeros_like(values))
        if shard is not None:
            rank, world = shard
            mine = torch.arange(len(terms), device=terms.device) % world == rank
            terms = torch.where(mine, terms, torch.zeros_like(terms))
        out = out + terms.sum() / w.sum().clamp_min(torch.finfo(values.dtype).tiny)
    return out


def _both_ways(a: Tensor, b: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
    """A symmetric pair list: (a, b) and (b, a), other per-pair tensors repeated."""
    return (torch.cat([a, b]), torch.cat([b, a])) + tuple(torch.cat([r, r]) for r in rest)


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ProxytasksError(f"loss parameter {name} must be > 0, got {v}")


class PairLoss(nn.Module):
    """Base class: checks and converts the inputs, then calls :meth:`compute`."""

    def forward(self, embeddings: Tensor, indices_tuple: IndicesTuple,
                weights: Weights = None, shard: tuple[int, int] | None = None) -> Tensor:
        """The scalar loss of ``embeddings`` (B, D) on the pairs of ``indices_tuple``
        (of the terms of ``shard``, see the module docstring)."""
        if embeddings.dim() != 2:
            raise ProxytasksError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
        if len(indices_tuple) != 4:
            raise ProxytasksError("indices_tuple must be (a1, p, a2, n)")
        dev = embeddings.device
        a1, p, a2, n = (torch.as_tensor(np.asarray(t) if not isinstance(t, Tensor) else t,
                                        device=dev).long().reshape(-1) for t in indices_tuple)
        if len(a1) != len(p) or len(a2) != len(n):
            raise ProxytasksError(f"indices_tuple: {len(a1)} anchors for {len(p)} positives, "
                                  f"{len(a2)} anchors for {len(n)} negatives; lengths must match")
        w_pos, w_neg = weights if weights is not None else (None, None)
        wp, wn = (torch.ones(len(idx), dtype=embeddings.dtype, device=dev) if w is None
                  else torch.as_tensor(w, dtype=embeddings.dtype, device=dev).reshape(-1)
                  for w, idx in ((w_pos, a1), (w_neg, a2)))
        if len(wp) != len(a1) or len(wn) != len(a2):
            raise ProxytasksError(f"weights: {len(wp)} and {len(wn)} given for {len(a1)} positive "
                                  f"and {len(a2)} negative pairs")
        if shard is not None and not (0 <= shard[0] < shard[1]):
            raise ProxytasksError(f"shard {shard}: expected (rank, world) with 0 <= rank < world")
        if len(a1) == 0 and len(a2) == 0:
            return embeddings.sum() * 0
        return _sum_of_means(self.compute(embeddings, a1, p, a2, n, wp, wn), embeddings, shard)

    def compute(self, emb: Tensor, a1: Tensor, p: Tensor, a2: Tensor, n: Tensor,
                wp: Tensor, wn: Tensor) -> Means:  # pragma: no cover - abstract
        """The weighted means whose sum is the loss, as (values, weights) pairs."""
        raise NotImplementedError


def _pair_sim(emb: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return (emb[a] * emb[b]).sum(-1)


# ---------------------------------------------------------------------------- losses
@LOSSES.register("contrastive")
class ContrastiveLoss(PairLoss):
    """Hinge contrastive loss on the cosine distance ``d = 1 - S`` (Hadsell et al. 2006).

    ``loss = wmean_pos relu(d - pos_margin) + wmean_neg relu(neg_margin - d)`` where
    ``wmean`` is the weighted plain mean ``sum(w * l) / sum(w)`` over all pairs of the
    set, satisfied ones included (not a mean over non-zero terms, which inflates as the
    pairs get solved). An empty set contributes zero.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5) -> None:
        super().__init__()
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)

    def extra_repr(self) -> str:
        return f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}"

    def compute(self, emb, a1, p, a2, n, wp, wn):
        d_pos = 1 - _pair_sim(emb, a1, p)
        d_neg = 1 - _pair_sim(emb, a2, n)
        return [(F.relu(d_pos - self.pos_margin), wp), (F.relu(self.neg_margin - d_neg), wn)]


@LOSSES.register("multi-similarity")
class MultiSimilarityLoss(PairLoss):
    """Multi-similarity loss (Wang et al. 2019), per anchor over the pairs given.

    For each row ``i`` that is in at least one pair of non-zero weight (pairs count for
    both their rows)::

        L_i = 1/alpha log(1 + sum_p w_ip exp(-alpha (S_ip - base)))
            + 1/beta  log(1 + sum_n w_in exp( beta (S_in - base)))

    and the loss is the mean of ``L_i`` over those rows. A weight acts as a multiplicity
    of the pair. No pair mining (the paper's hard-pair selection) is done: the rules
    already choose the pairs.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        _check_positive(alpha=alpha, beta=beta)
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}"

    def compute(self, emb, a1, p, a2, n, wp, wn):
        B = emb.shape[0]
        pa, _, ps, pw = _both_ways(a1, p, _pair_sim(emb, a1, p), wp)
        na, _, ns, nw = _both_ways(a2, n, _pair_sim(emb, a2, n), wn)
        pos = _segment_logsumexp(-self.alpha * (ps - self.base), pa, B, pw, add_one=True) / self.alpha
        neg = _segment_logsumexp(self.beta * (ns - self.base), na, B, nw, add_one=True) / self.beta
        used = torch.zeros(B, dtype=emb.dtype, device=emb.device)
        used = used.index_add(0, torch.cat([pa, na]), (torch.cat([pw, nw]) > 0).to(emb.dtype)) > 0
        return [(pos + neg, used.to(emb.dtype))]  # the mean over the rows in a pair


class _TemperatureLoss(PairLoss):
    """A pair loss with a softmax temperature."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        _check_positive(temperature=temperature)
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@LOSSES.register("track-supcon")
class TrackSupConLoss(_TemperatureLoss):
    """Supervised InfoNCE whose negatives are only the anchor's cannot-links.

    For each positive pair, both ways, anchor ``i`` and positive ``p``::

        l_ip = -log( exp(S_ip/T) / (exp(S_ip/T) + sum_{n in neg(i)} w_in exp(S_in/T)) )

    where ``neg(i)`` are the negative pairs given for ``i`` (both ways), never "every
    other row": on TV footage most other tracks show the same few people. The loss is
    the ``w_ip``-weighted mean of ``l_ip``. An anchor with positives but no negatives
    contributes ``-log(1) = 0`` terms (which still count in the mean).
    """

    def compute(self, emb, a1, p, a2, n, wp, wn):
        T = self.temperature
        pa, _, ps, pw = _both_ways(a1, p, _pair_sim(emb, a1, p), wp)
        na, _, ns, nw = _both_ways(a2, n, _pair_sim(emb, a2, n), wn)
        neg_lse = _segment_logsumexp(ns / T, na, emb.shape[0], nw)  # -inf without negatives
        return [(F.softplus(neg_lse[pa] - ps / T), pw)]


@LOSSES.register("ntxent")
class NTXentLoss(_TemperatureLoss):
    """NT-Xent (SimCLR): positives from the tuple, every other row of the batch a negative.

    The self-supervised fallback for photo collections without tracks, where a positive
    pair is two augmented views of one face. NOT for video: any two rows not given as a
    positive pair are pushed apart, which splits a person who has several tracks in the
    batch; use ``track-supcon`` there. For each positive pair, both ways::

        l_ip = -log( exp(S_ip/T) / (exp(S_ip/T) + sum_{k in neg(i)} exp(S_ik/T)) )

    with ``neg(i)`` every row except ``i`` and the rows given as positives of ``i``; the
    loss is the ``w_ip``-weighted mean. The negative pairs and weights of the tuple are
    ignored.
    """

    def compute(self, emb, a1, p, a2, n, wp, wn):
        B, T = emb.shape[0], self.temperature
        if len(a1) == 0:
            return []
        pa, pp, pw = _both_ways(a1, p, wp)
        flat = torch.zeros(B * B, dtype=emb.dtype, device=emb.device)
        is_pos = flat.index_add(0, pa * B + pp, (pw > 0).to(emb.dtype)).view(B, B) > 0
        is_neg = ~is_pos & ~torch.eye(B, dtype=torch.bool, device=emb.device)
        logits = emb @ emb.T / T
        m = logits.masked_fill(~is_neg, -math.inf).amax(1).detach()
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        total = torch.exp(torch.where(is_neg, logits - m[:, None], -math.inf)).sum(1)
        neg_lse = torch.log(total.clamp_min(torch.finfo(emb.dtype).tiny)) + m
        neg_lse = torch.where(is_neg.any(1), neg_lse, torch.full_like(neg_lse, -math.inf))
        return [(F.softplus(neg_lse[pa] - logits[pa, pp]), pw)]


def make_loss(name: str, **kwargs) -> nn.Module:
    """The loss registered as ``name``, built with ``kwargs`` (e.g. ``temperature=0.1``)."""
    cls = LOSSES.get(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        accepted = ", ".join(inspect.signature(cls).parameters)
        raise ProxytasksError(f"loss {name!r}: {e}; it accepts: {accepted or 'no parameters'}") from None
    return cls(**kwargs)


# ---------------------------------------------------------------------------- KISSME
def _pairs_array(pairs: tuple[np.ndarray, np.ndarray], n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    i, j = (np.asarray(x, dtype=np.int64).reshape(-1) for x in pairs)
    if len(i) != len(j):
        raise ProxytasksError(f"fit_kissme: {what} pairs have {len(i)} first and {len(j)} second indices")
    if len(i) == 0:
        raise ProxytasksError(f"fit_kissme: no {what} pairs; KISSME needs both same and different "
                              "pairs (check the rules that made them)")
    if i.min() < 0 or j.min() < 0 or max(i.max(), j.max()) >= n:
        raise ProxytasksError(f"fit_kissme: {what} pair indices out of range for {n} features")
    return i, j


def _gram(x: np.ndarray, rows: int = 16384) -> np.ndarray:
    """``x^T x`` in float64, a block of rows at a time."""
    out = np.zeros((x.shape[1], x.shape[1]))
    for s in range(0, len(x), rows):
        b = x[s:s + rows].astype(np.float64)
        out += b.T @ b
    return out


def _diff_cov(x: np.ndarray, i: np.ndarray, j: np.ndarray, reg: float, rows: int = 16384) -> np.ndarray:
    """Regularised mean of ``(x_i - x_j)(x_i - x_j)^T`` over the pairs."""
    d = x.shape[1]
    cov = np.zeros((d, d))
    for s in range(0, len(i), rows):
        z = x[i[s:s + rows]].astype(np.float64) - x[j[s:s + rows]]
        cov += z.T @ z
    cov /= len(i)
    return cov + reg * max(np.trace(cov), 1e-12) / d * np.eye(d)


def fit_kissme(features: np.ndarray, pos: tuple[np.ndarray, np.ndarray],
               neg: tuple[np.ndarray, np.ndarray], dim: int | None = None, reg: float = 1e-3,
               max_pairs: int = 200_000, seed: int = 0) -> np.ndarray:
    """Fit a KISSME metric (Koestinger et al. 2012) in one step; return it as a projection.

    ``M = inv(C_same) - inv(C_diff)``, ``C_*`` the mean of ``(x_i - x_j)(x_i - x_j)^T``
    over the (at most ``max_pairs``, seeded subsample) pairs, each regularised by
    ``reg * trace(C) / d * I``. When ``D`` is large for the number of pairs, the features
    are first projected onto their top ``pca_dim = max(1, min(D, 256, n_min // 4))``
    principal axes (``n_min`` the smaller pair count); no PCA when ``pca_dim == D``.
    Negative eigenvalues of ``M`` are clipped to 0 and the top ``dim`` kept, so
    ``||L (x - y)||^2`` is the positive part of the metric.

    Args:
        features: ``(N, D)`` float features.
        pos: ``(i, j)`` index arrays of same pairs.
        neg: ``(i, j)`` index arrays of different pairs.
        dim: rows of ``L`` (default ``min(D, 128)``, at most ``D``); rows beyond the
            PCA dimension are zero.
        reg: covariance regularisation, relative to the mean eigenvalue.
        max_pairs: pairs kept per label.
        seed: seed of the subsample.

    Returns:
        ``L``, float32 of shape ``(dim, D)``; embed with ``x @ L.T``.

    Raises:
        ProxytasksError: no same or no different pairs, bad indices or a bad ``dim``.
    """
    x = np.asarray(features)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ProxytasksError(f"fit_kissme: features must be an (N, D) float array, got "
                              f"{x.dtype} of shape {x.shape}")
    N, D = x.shape
    dim = min(D, 128) if dim is None else int(dim)
    if not 1 <= dim <= D:
        raise ProxytasksError(f"fit_kissme: dim must be in 1..{D}, got {dim}")
    rng = np.random.default_rng(seed)
    pairs = []
    for what, pr in (("same", pos), ("different", neg)):
        i, j = _pairs_array(pr, N, what)
        if len(i) > max_pairs:
            keep = np.sort(rng.choice(len(i), max_pairs, replace=False))
            i, j = i[keep], j[keep]
        pairs.append((i, j))
    n_min = min(len(pairs[0][0]), len(pairs[1][0]))
    pca_dim = max(1, min(D, 256, n_min // 4))
    if pca_dim < D:
        mean = x.mean(0, dtype=np.float64)
        cov = _gram(x) / N - np.outer(mean, mean)
        _, vecs = np.linalg.eigh(cov)
        proj = vecs[:, ::-1][:, :pca_dim].T  # (pca_dim, D), top axes first
        logger.info("KISSME: PCA %d -> %d before the metric (%d pairs of the rarer label)",
                    D, pca_dim, n_min)
        xp = np.concatenate([x[s:s + 16384].astype(np.float64) @ proj.T for s in range(0, N, 16384)])
    else:
        proj, xp = np.eye(D), x
    c_same = _diff_cov(xp, *pairs[0], reg)
    c_diff = _diff_cov(xp, *pairs[1], reg)
    m = np.linalg.inv(c_same) - np.linalg.inv(c_diff)
    lam, vecs = np.linalg.eigh((m + m.T) / 2)
    order = np.argsort(lam)[::-1][:dim]
    lam = np.clip(lam[order], 0, None)
    out = np.zeros((dim, D))
    out[:len(order)] = (np.sqrt(lam)[:, None] * vecs[:, order].T) @ proj
    logger.info("KISSME: %d same / %d different pairs, %d of %d eigenvalues positive, kept %d",
                len(pairs[0][0]), len(pairs[1][0]), int((lam > 0).sum()), len(order), dim)
    return out.astype(np.float32)
