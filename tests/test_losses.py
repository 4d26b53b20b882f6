"""Pair losses checked against hand arithmetic on 2-D unit vectors, and the KISSME fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxytasks.errors import ProxytasksError
from proxytasks.losses import LOSSES, fit_kissme, make_loss

S3 = math.sqrt(3) / 2  # sin 60 degrees

# Rows e0 = [1, 0], e1 = [0, 1], e2 = [cos 60, sin 60], e3 = [-1, 0]. Similarities:
# S02 = 0.5, S12 = S3, S01 = 0, S03 = -1, S23 = -0.5, S13 = 0.
ROWS = [[1.0, 0.0], [0.0, 1.0], [0.5, S3], [-1.0, 0.0]]
# positives (0, 2), (1, 2); negatives (0, 1), (0, 3), (2, 3)
TUPLE = ([0, 1], [2, 2], [0, 0, 2], [1, 3, 3])


def emb(rows=ROWS, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def tup(t=TUPLE):
    return tuple(torch.tensor(x, dtype=torch.long) for x in t)


def nll(pos_logit: float, *neg_logits: float) -> float:
    """-log(e^pos / (e^pos + sum e^neg)), written out."""
    return -math.log(math.exp(pos_logit) / (math.exp(pos_logit) + sum(math.exp(v) for v in neg_logits)))


# ---------------------------------------------------------------------------- hand values
def test_contrastive_by_hand():
    loss = make_loss("contrastive")(emb(), tup())
    # d = 1 - S: positives 0.5 and 1 - S3; negatives 1, 2, 1.5 all beyond 0.5
    assert loss.item() == pytest.approx((0.5 + (1 - S3)) / 2 + 0.0)
    loss = make_loss("contrastive", pos_margin=0.2, neg_margin=1.6)(emb(), tup())
    pos = (max(0.5 - 0.2, 0) + max(1 - S3 - 0.2, 0)) / 2  # 0.3 and 0
    neg = (max(1.6 - 1, 0) + max(1.6 - 2, 0) + max(1.6 - 1.5, 0)) / 3  # 0.6, 0, 0.1
    assert loss.item() == pytest.approx(pos + neg)


def test_multi_similarity_by_hand():
    a, b, base = 2.0, 10.0, 0.5
    loss = make_loss("multi-similarity", alpha=a, beta=b, base=base)(emb(), tup())
    l0 = (math.log(1 + math.exp(-a * (0.5 - base))) / a
          + math.log(1 + math.exp(b * (0 - base)) + math.exp(b * (-1 - base))) / b)
    l1 = math.log(1 + math.exp(-a * (S3 - base))) / a + math.log(1 + math.exp(b * (0 - base))) / b
    l2 = (math.log(1 + math.exp(-a * (0.5 - base)) + math.exp(-a * (S3 - base))) / a
          + math.log(1 + math.exp(b * (-0.5 - base))) / b)
    l3 = math.log(1) / a + math.log(1 + math.exp(b * (-1 - base)) + math.exp(b * (-0.5 - base))) / b
    assert loss.item() == pytest.approx((l0 + l1 + l2 + l3) / 4)


def test_multi_similarity_defaults_by_hand():
    loss = make_loss("multi-similarity")(emb(), tup(([0], [2], [0], [1])))
    # rows 0 and 2 share the positive; row 0 and 1 share the negative; 3 anchors
    pos = math.log(1 + math.exp(-2 * (0.5 - 0.5))) / 2
    neg = math.log(1 + math.exp(50 * (0 - 0.5))) / 50
    assert loss.item() == pytest.approx((pos + neg + pos + neg) / 3)


def test_track_supcon_by_hand():
    T = 0.5
    loss = make_loss("track-supcon", temperature=T)(emb(), tup())
    terms = [nll(0.5 / T, 0 / T, -1 / T),  # anchor 0, positive 2; negatives 1, 3
             nll(0.5 / T, -0.5 / T),       # anchor 2, positive 0; negative 3
             nll(S3 / T, 0 / T),           # anchor 1, positive 2; negative 0
             nll(S3 / T, -0.5 / T)]        # anchor 2, positive 1; negative 3
    assert loss.item() == pytest.approx(sum(terms) / 4)


def test_track_supcon_anchor_without_negatives_by_hand():
    T = 0.5
    loss = make_loss("track-supcon", temperature=T)(emb(), tup(([0, 1], [2, 2], [0], [3])))
    terms = [nll(0.5 / T, -1 / T),  # anchor 0, positive 2; negative 3
             0.0, 0.0, 0.0]         # anchors 2 and 1 have no negatives: -log(1) each
    assert loss.item() == pytest.approx(sum(terms) / 4)


def test_ntxent_by_hand():
    T = 0.5
    loss = make_loss("ntxent", temperature=T)(emb(), tup())
    terms = [nll(0.5 / T, 0 / T, -1 / T),  # anchor 0, positive 2; others 1, 3
             nll(S3 / T, 0 / T, 0 / T),    # anchor 1, positive 2; others 0, 3
             nll(0.5 / T, -0.5 / T),       # anchor 2, positive 0; other 3 (1 is a positive)
             nll(S3 / T, -0.5 / T)]        # anchor 2, positive 1; other 3
    assert loss.item() == pytest.approx(sum(terms) / 4)


def test_track_supcon_ignores_rows_outside_the_anchors_negatives():
    near = [math.cos(math.radians(5)), math.sin(math.radians(5))]  # next to row 0
    supcon, ntxent = make_loss("track-supcon"), make_loss("ntxent")
    assert supcon(emb(ROWS + [near]), tup()).item() == supcon(emb(), tup()).item()
    assert ntxent(emb(ROWS + [near]), tup()).item() > ntxent(emb(), tup()).item() + 0.1


# ---------------------------------------------------------------------------- weights, edges
def random_case(seed: int = 0, b: int = 10):
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(b, 4, generator=g, dtype=torch.float64), dim=1)
    a1, p = torch.randint(0, b, (7,), generator=g), torch.randint(0, b, (7,), generator=g)
    a2, n = torch.randint(0, b, (9,), generator=g), torch.randint(0, b, (9,), generator=g)
    p = torch.where(p == a1, (p + 1) % b, p)
    n = torch.where(n == a2, (n + 1) % b, n)
    return e, (a1, p, a2, n)


def drop(t: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cat([t[:k], t[k + 1:]])


@pytest.mark.parametrize("name", LOSSES.names())
def test_zero_weight_removes_the_pair(name):
    e, (a1, p, a2, n) = random_case()
    loss = make_loss(name, **({"beta": 10.0} if name == "multi-similarity" else {}))
    wp, wn = torch.ones(len(a1), dtype=e.dtype), torch.ones(len(a2), dtype=e.dtype)
    wp[3] = 0
    assert loss(e, (a1, p, a2, n), (wp, None)).item() == pytest.approx(
        loss(e, (drop(a1, 3), drop(p, 3), a2, n)).item())
    wn[4] = 0
    assert loss(e, (a1, p, a2, n), (None, wn)).item() == pytest.approx(
        loss(e, (a1, p, drop(a2, 4), drop(n, 4))).item())


@pytest.mark.parametrize("name", LOSSES.names())
def test_weight_two_counts_the_pair_twice(name):
    e, (a1, p, a2, n) = random_case(1)
    loss = make_loss(name, **({"beta": 10.0} if name == "multi-similarity" else {}))
    wp, wn = torch.ones(len(a1), dtype=e.dtype), torch.ones(len(a2), dtype=e.dtype)
    wp[0], wn[0] = 2, 2
    twice = (torch.cat([a1, a1[:1]]), torch.cat([p, p[:1]]), torch.cat([a2, a2[:1]]), torch.cat([n, n[:1]]))
    assert loss(e, (a1, p, a2, n), (wp, wn)).item() == pytest.approx(loss(e, twice).item())


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradients_are_finite(name):
    e, t = random_case(2)
    e.requires_grad_(True)
    make_loss(name)(e, t).backward()
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("keep", ["pos", "neg", "none"])
def test_empty_pair_sets_give_no_nan(name, keep):
    empty = torch.zeros(0, dtype=torch.long)
    a1, p, a2, n = tup()
    t = (a1 if keep == "pos" else empty, p if keep == "pos" else empty,
         a2 if keep == "neg" else empty, n if keep == "neg" else empty)
    e = emb(grad=True)
    loss = make_loss(name)(e, t)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(e.grad).all()
    if keep == "none" or (keep == "neg" and name in ("track-supcon", "ntxent")):
        assert loss.item() == 0.0  # nothing to pull together
    if keep == "pos" and name == "track-supcon":
        assert loss.item() == 0.0  # positives without cannot-links: -log(1)


def test_all_zero_weights_give_zero():
    e = emb(grad=True)
    w = (torch.zeros(2), torch.zeros(3))
    for name in LOSSES.names():
        loss = make_loss(name)(e, tup(), w)
        assert torch.isfinite(loss) and loss.item() == 0.0


def test_contrastive_empty_part_is_zero():
    a1, p, a2, n = tup()
    both = make_loss("contrastive", neg_margin=1.6)(emb(), (a1, p, a2, n)).item()
    pos_only = make_loss("contrastive", neg_margin=1.6)(emb(), (a1, p, a2[:0], n[:0])).item()
    assert pos_only == pytest.approx((0.5 + 1 - S3) / 2)
    assert both == pytest.approx(pos_only + 0.7 / 3)


def test_numpy_indices_and_bad_inputs():
    t = tuple(np.asarray(x, dtype=np.int64) for x in TUPLE)
    assert make_loss("contrastive")(emb(), t).item() == make_loss("contrastive")(emb(), tup()).item()
    with pytest.raises(ProxytasksError, match="lengths must match"):
        make_loss("contrastive")(emb(), ([0, 1], [2], [0], [1]))
    with pytest.raises(ProxytasksError, match="weights"):
        make_loss("contrastive")(emb(), tup(), (torch.ones(5), None))
    with pytest.raises(ProxytasksError, match="unknown loss"):
        make_loss("contrastiv")
    with pytest.raises(ProxytasksError, match="accepts: temperature"):
        make_loss("track-supcon", margin=0.1)
    with pytest.raises(ProxytasksError, match="temperature must be > 0"):
        make_loss("ntxent", temperature=0)
    assert make_loss("track-supcon", temperature=0.2).temperature == 0.2


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", LOSSES.names())
def test_training_a_linear_head_widens_the_gap(name):
    g = torch.Generator().manual_seed(0)
    label = torch.arange(64) % 2
    x = torch.randn(64, 8, generator=g)
    x[:, 0] += 1.5 * (2 * label - 1)  # two clusters along one axis, noise in all eight
    i, j = torch.triu_indices(64, 64, 1)
    same = label[i] == label[j]
    pick = torch.randperm(int(same.sum()), generator=g)[:96]
    a1, p = i[same][pick], j[same][pick]
    pick = torch.randperm(int((~same).sum()), generator=g)[:96]
    a2, n = i[~same][pick], j[~same][pick]
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 4, bias=False)
    loss_fn = make_loss(name)

    def gap() -> float:
        with torch.no_grad():
            e = F.normalize(head(x), dim=1)
            return float((e[a1] * e[p]).sum(1).mean() - (e[a2] * e[n]).sum(1).mean())

    before = gap()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss_fn(F.normalize(head(x), dim=1), (a1, p, a2, n)).backward()
        opt.step()
    assert gap() > before + 0.5


# ---------------------------------------------------------------------------- KISSME
def kissme_data(seed: int = 0, ids: int = 30, per: int = 8, dim: int = 10):
    """Identity means differ in dims 2.., faces of one identity differ (a lot) in dims 0, 1;
    the whole space rotated at random (the same rotation for every seed)."""
    q, _ = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, dim)))
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(ids, dim))
    mu[:, :2] = 0
    label = np.repeat(np.arange(ids), per)
    x = mu[label] + 0.05 * rng.normal(size=(len(label), dim))
    x[:, :2] += 3.0 * rng.normal(size=(len(label), 2))
    i, j = np.triu_indices(len(label), 1)
    same = label[i] == label[j]
    return (x @ q).astype(np.float32), (i[same], j[same]), (i[~same], j[~same])


def auc(d_same: np.ndarray, d_diff: np.ndarray) -> float:
    """P(a same pair is closer than a different pair), ties half: ROC-AUC by rank comparison."""
    less = (d_same[:, None] < d_diff[None, :]).mean()
    ties = (d_same[:, None] == d_diff[None, :]).mean()
    return float(less + 0.5 * ties)


def pair_dist(x, pairs) -> np.ndarray:
    return ((x[pairs[0]] - x[pairs[1]]) ** 2).sum(1)


def test_kissme_beats_euclidean():
    x, pos, neg = kissme_data(0)
    L = fit_kissme(x, pos, neg, dim=4)
    assert L.shape == (4, 10) and L.dtype == np.float32
    xt, post, negt = kissme_data(1)  # fresh identities to evaluate on
    euclid = auc(pair_dist(xt, post), pair_dist(xt, negt))
    learned = auc(pair_dist(xt @ L.T, post), pair_dist(xt @ L.T, negt))
    assert learned > 0.98 and learned > euclid + 0.1


def test_kissme_with_pca_on_wide_features():
    x, pos, neg = kissme_data(0)
    rng = np.random.default_rng(5)
    lift, _ = np.linalg.qr(rng.normal(size=(300, 10)))  # 10-D data in a 300-D space
    wide = (x @ lift.T + 0.01 * rng.normal(size=(len(x), 300))).astype(np.float32)
    L = fit_kissme(wide, (pos[0][:200], pos[1][:200]), neg)  # pca_dim = 200 // 4 = 50
    assert L.shape == (128, 300)
    assert np.all(L[50:] == 0)  # rows beyond the PCA dimension
    xt, post, negt = kissme_data(1)
    wt = xt @ lift.T
    assert auc(pair_dist(wt @ L.T, post), pair_dist(wt @ L.T, negt)) > 0.95


def test_kissme_equals_clipped_metric_without_pca():
    x, pos, neg = kissme_data(2, ids=10, per=6, dim=5)
    reg = 1e-3
    L = fit_kissme(x, pos, neg, dim=5, reg=reg).astype(np.float64)

    def cov(pairs):
        d = x[pairs[0]].astype(np.float64) - x[pairs[1]]
        c = np.einsum("ki,kj->ij", d, d) / len(d)
        return c + reg * np.trace(c) / 5 * np.eye(5)

    lam, v = np.linalg.eigh(np.linalg.inv(cov(pos)) - np.linalg.inv(cov(neg)))
    m_plus = (v * np.clip(lam, 0, None)) @ v.T
    np.testing.assert_allclose(L.T @ L, m_plus, rtol=1e-4, atol=1e-4 * np.abs(m_plus).max())


def test_kissme_is_seeded_and_checks_its_input():
    x, pos, neg = kissme_data(0)
    a = fit_kissme(x, pos, neg, max_pairs=100, seed=3)
    b = fit_kissme(x, pos, neg, max_pairs=100, seed=3)
    c = fit_kissme(x, pos, neg, max_pairs=100, seed=4)
    assert a.shape == (10, 10)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(np.abs(a), np.abs(c))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    with pytest.raises(ProxytasksError, match="no different pairs"):
        fit_kissme(x, pos, empty)
    with pytest.raises(ProxytasksError, match="no same pairs"):
        fit_kissme(x, empty, neg)
    with pytest.raises(ProxytasksError, match="out of range"):
        fit_kissme(x, (np.array([0]), np.array([len(x)])), neg)
    with pytest.raises(ProxytasksError, match="dim must be"):
        fit_kissme(x, pos, neg, dim=11)
