"""Which label-free score ranks embeddings as the true naming accuracy does?

On the folders that ``bench/dev_episodes.py --out DIR`` leaves (per episode: the tracked
manifest, the rule pairs and the cached trunk features), heads are trained for several step
counts and learning rates (plus the pretrained features and the KISSME start), and each
candidate is scored by:
- ``holdout_auc``: what `train` selects with today: ROC-AUC of held-out must-links vs
  cannot-links (time chunks of the video held out);
- ``neighbour_agreement``: for each held-out track with a cannot-link, the share of its k
  nearest held-out tracks that are NOT cannot-linked with it (averaged; see below);
- ``neighbour_agreement_all``: the same over every track (training's cannot-links included);
- ``view_agreement``: adjusted Rand index between the constrained clusterings (the library's
  ``cluster_faces``) of the plain view's vectors and of the augmented view's;
- ``stability``: adjusted Rand index between the constrained clusterings of two random 60%
  subsets (by track) of the faces, on the tracks both hold (mean of 3 draws);
- ``silhouette``: the cosine silhouette of the track means under the constrained clustering;
- the truth: naming accuracy at 5 shots, track-disjoint (needs the identities).
Per episode it prints the Spearman rank correlation of each score with the truth, and their
mean over episodes.

    python bench/selection_signal.py DIR [DIR...] [--steps 0,50,200,800] [--lrs 1e-3,1e-2]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from common import emit


SIGNALS = ("holdout_auc", "neighbour_agreement", "neighbour_agreement_all", "view_agreement", "stability",
           "silhouette")


def neighbour_agreement(vectors: np.ndarray, group: np.ndarray, cannot: np.ndarray, faces: np.ndarray,
                        k: int = 5) -> float | None:
    """1 - the share of each track's k nearest tracks (cosine of mean vectors, among ``faces``)
    that are cannot-linked with it, over tracks with a cannot-link among ``faces``."""
    use = np.zeros(len(group), bool)
    use[faces] = True
    ids, inv = np.unique(group[faces], return_inverse=True)
    means = np.zeros((len(ids), vectors.shape[1]))
    np.add.at(means, inv, vectors[faces])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    code = np.full(int(group.max()) + 1, -1)
    code[ids] = np.arange(len(ids))
    c = cannot[use[cannot[:, 0]] & use[cannot[:, 1]]]
    a, b = code[group[c[:, 0]]], code[group[c[:, 1]]]
    a, b = a[a != b], b[a != b]
    if not len(a) or len(ids) < 3:
        return None
    g = len(ids)
    banned = np.unique(np.r_[a * g + b, b * g + a])
    rows = np.unique(np.r_[a, b])
    sims = means[rows] @ means.T
    sims[np.arange(len(rows)), rows] = -np.inf
    near = np.argsort(-sims, axis=1)[:, :min(k, g - 1)]
    return float(1 - np.isin(rows[:, None] * g + near, banned).mean())


def _clusters(x: np.ndarray, groups: np.ndarray, cannot: np.ndarray, trained: bool) -> np.ndarray:
    from proxytasks.cluster import cluster_faces

    return cluster_faces(x, groups=groups, cannot_links=cannot, seed=0, trained_on_links=trained).labels


def _track_labels(groups: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    return dict(zip(groups.tolist(), labels.tolist()))


def _ari(a: dict[int, int], b: dict[int, int]) -> float | None:
    from sklearn.metrics import adjusted_rand_score

    common = sorted(set(a) & set(b))
    return float(adjusted_rand_score([a[t] for t in common], [b[t] for t in common])) if len(common) > 2 else None


def view_agreement(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cannot: np.ndarray, trained: bool) -> float | None:
    """ARI between the track clusterings of two views' vectors of the same faces."""
    return _ari(_track_labels(groups, _clusters(x, groups, cannot, trained)),
                _track_labels(groups, _clusters(y, groups, cannot, trained)))


def stability(x: np.ndarray, groups: np.ndarray, cannot: np.ndarray, trained: bool, draws: int = 3) -> float | None:
    """Mean ARI, on shared tracks, between the clusterings of two random 60% subsets of tracks."""
    tracks = np.unique(groups)
    out = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        got = []
        for _ in range(2):
            keep = np.isin(groups, rng.choice(tracks, int(0.6 * len(tracks)), replace=False))
            code = np.full(len(groups), -1)
            code[keep] = np.arange(keep.sum())
            c = cannot[keep[cannot[:, 0]] & keep[cannot[:, 1]]]
            got.append(_track_labels(groups[keep], _clusters(x[keep], groups[keep], code[c], trained)))
        value = _ari(*got)
        if value is not None:
            out.append(value)
    return float(np.mean(out)) if out else None


def silhouette(x: np.ndarray, groups: np.ndarray, labels: np.ndarray) -> float | None:
    """Cosine silhouette of the track means, clusters from ``labels``."""
    from sklearn.metrics import silhouette_score

    ids, inv = np.unique(groups, return_inverse=True)
    means = np.zeros((len(ids), x.shape[1]))
    np.add.at(means, inv, x)
    lab = np.zeros(len(ids), int)
    lab[inv] = labels
    if not 1 < len(np.unique(lab)) < len(ids):
        return None
    return float(silhouette_score(means, lab, metric="cosine"))


def spearman(x: list, y: list) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    r = spearmanr(*zip(*pairs)).statistic
    return None if np.isnan(r) else float(r)


def episode(folder: Path, steps: list[int], lrs: list[float]) -> dict:
    from proxytasks.benchmark import evaluate_method, toolkit_namer
    from proxytasks.cluster import constraint_arrays
    from proxytasks.embed import head_vectors
    from proxytasks.embedder import Embedder
    from proxytasks.manifest import Manifest
    from proxytasks.pairs import PairSet
    from proxytasks.train import TrainConfig, holdout_mask, pairs_within, score_vectors, train

    manifest = Manifest.read(folder / "tracked.jsonl")
    pairs = PairSet.load(folder / "pairs.npz")
    with np.load(folder / "run" / "features.npz") as z:
        feats = z["features"].astype(np.float32)
    groups, cannot = constraint_arrays(manifest, pairs)
    alone = groups < 0
    groups = groups.copy()
    groups[alone] = groups.max() + 1 + np.arange(alone.sum())
    val = holdout_mask(manifest, 0.2, 0)
    vpos, vneg = pairs_within(pairs, val)
    held = np.flatnonzero(val)
    other = len(feats) - 1  # the augmented view (or flip)
    unit = feats / np.linalg.norm(feats, axis=2, keepdims=True)
    candidates = {"pretrained": (unit[0], unit[other] if other else None, False)}
    for lr in lrs:
        for n in steps:
            run = folder / "signal" / f"lr{lr:g}_steps{n}"
            cfg = TrainConfig(steps=n, lr=lr, time_budget=None, seed=0, views=("plain", "flip", "augment")[:len(feats)])
            summary = train(manifest, pairs, run, cfg, progress=False, features=feats)
            if summary["selected"] != "pretrained":
                emb = Embedder.load(run)
                candidates[f"lr{lr:g}_steps{n}_{summary['selected']}"] = (
                    head_vectors(emb, feats[0]), head_vectors(emb, feats[other]) if other else None, True)
    rows = {}
    for name, (x, y, trained) in candidates.items():
        clusters = _clusters(x, groups, cannot, trained)
        truth = evaluate_method(x, manifest, clusters, toolkit_namer(x, groups, clusters, cannot), (5,), 3, 0,
                                groups=groups)["naming"]["5"]
        rows[name] = {"naming_5": truth, "holdout_auc": score_vectors(x, vpos, vneg),
                      "neighbour_agreement": neighbour_agreement(x, groups, cannot, held),
                      "neighbour_agreement_all": neighbour_agreement(x, groups, cannot, np.arange(len(x))),
                      "view_agreement": None if y is None else view_agreement(x, y, groups, cannot, trained),
                      "stability": stability(x, groups, cannot, trained),
                      "silhouette": silhouette(x, groups, clusters)}
    truth = [r["naming_5"] for r in rows.values()]
    return {"episode": folder.parent.name, "candidates": rows,
            "spearman": {k: spearman([r[k] for r in rows.values()], truth)
                         for k in SIGNALS}}


def picked(result: dict, key: str) -> float:
    """The true naming@5 of the candidate ``key`` scores highest (mean over tied ones; the
    pretrained features when it scores nothing)."""
    rows = result["candidates"]
    scored = {n: r[key] for n, r in rows.items() if r[key] is not None}
    if not scored:
        return rows["pretrained"]["naming_5"]
    top = max(scored.values())
    return float(np.mean([rows[n]["naming_5"] for n, v in scored.items() if v >= top - 1e-9]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="--out folders of bench/dev_episodes.py")
    ap.add_argument("--steps", default="0,50,200,800")
    ap.add_argument("--lrs", default="1e-3,1e-2")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps = [int(s) for s in args.steps.split(",")]
    lrs = [float(s) for s in args.lrs.split(",")]
    results = []
    for folder in sorted(f for d in args.dirs for f in d.glob("*/benchmark")):
        if (folder / "run" / "features.npz").is_file():
            results.append(episode(folder, steps, lrs))
            print(json.dumps(results[-1]), flush=True)
    base = [r["spearman"]["holdout_auc"] for r in results if r["spearman"]["holdout_auc"] is not None]
    base_pick = float(np.mean([picked(r, "holdout_auc") for r in results]))
    for key in SIGNALS:
        values = [r["spearman"][key] for r in results if r["spearman"][key] is not None]
        value = float(np.mean(values)) if values else None
        emit("selection_signal", f"spearman_{key}", value, "rank correlation", "holdout_auc",
             float(np.mean(base)) if base else None, None, "higher than holdout_auc's",
             value is not None and bool(base) and value > np.mean(base), episodes=len(values))
        pick = float(np.mean([picked(r, key) for r in results]))
        emit("selection_signal", f"picked_naming_5_{key}", pick, "naming@5 of the best-scored candidate (mean over "
             "ties and episodes)", "holdout_auc", base_pick, pick / base_pick if base_pick else None,
             "at least holdout_auc's", pick >= base_pick, best=float(np.mean([max(c["naming_5"] for c in
                                                                               r["candidates"].values())
                                                                           for r in results])))

if __name__ == "__main__":
    main()
