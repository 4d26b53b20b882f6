"""Which label-free score ranks embeddings as the true naming accuracy does?

On the folders that ``bench/dev_episodes.py --out DIR`` leaves (per episode: the tracked
manifest, the rule pairs and the cached trunk features), heads are trained for several step
counts and learning rates (plus the pretrained features and the KISSME start), and each
candidate is scored by:
- ``holdout_auc``: what `train` selects with today: ROC-AUC of held-out must-links vs
  cannot-links (time chunks of the video held out);
- ``neighbour_agreement``: for each held-out track with a cannot-link, the share of its k
  nearest held-out tracks that are NOT cannot-linked with it (averaged; see below);
- the truth: naming accuracy at 5 shots, track-disjoint (needs the identities).
Per episode it prints the Spearman rank correlation of each score with the truth, and their
mean over episodes.

    python bench/selection_signal.py DIR [--steps 0,50,200,800] [--lrs 1e-3,1e-2]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from common import emit


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


def spearman(x: list, y: list) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    r = spearmanr(*zip(*pairs)).statistic
    return None if np.isnan(r) else float(r)


def episode(folder: Path, steps: list[int], lrs: list[float]) -> dict:
    from proxytasks.benchmark import evaluate_method, toolkit_namer
    from proxytasks.cluster import cluster_faces, constraint_arrays
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
    candidates = {"pretrained": feats[0] / np.linalg.norm(feats[0], axis=1, keepdims=True)}
    for lr in lrs:
        for n in steps:
            run = folder / "signal" / f"lr{lr:g}_steps{n}"
            cfg = TrainConfig(steps=n, lr=lr, time_budget=None, seed=0, views=("plain", "flip", "augment")[:len(feats)])
            summary = train(manifest, pairs, run, cfg, progress=False, features=feats)
            if summary["selected"] != "pretrained":
                candidates[f"lr{lr:g}_steps{n}_{summary['selected']}"] = head_vectors(Embedder.load(run), feats[0])
    rows = {}
    for name, x in candidates.items():
        clusters = cluster_faces(x, groups=groups, cannot_links=cannot, seed=0).labels
        truth = evaluate_method(x, manifest, clusters, toolkit_namer(x, groups, clusters, cannot), (5,), 3, 0,
                                groups=groups)["naming"]["5"]
        rows[name] = {"naming_5": truth, "holdout_auc": score_vectors(x, vpos, vneg),
                      "neighbour_agreement": neighbour_agreement(x, groups, cannot, held)}
    truth = [r["naming_5"] for r in rows.values()]
    return {"episode": folder.parent.name, "candidates": rows,
            "spearman": {k: spearman([r[k] for r in rows.values()], truth)
                         for k in ("holdout_auc", "neighbour_agreement")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="the --out folder of bench/dev_episodes.py")
    ap.add_argument("--steps", default="0,50,200,800")
    ap.add_argument("--lrs", default="1e-3,1e-2")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps = [int(s) for s in args.steps.split(",")]
    lrs = [float(s) for s in args.lrs.split(",")]
    results = []
    for folder in sorted(args.dir.glob("*/benchmark")):
        if (folder / "run" / "features.npz").is_file():
            results.append(episode(folder, steps, lrs))
            print(json.dumps(results[-1]), flush=True)
    for key in ("neighbour_agreement", "holdout_auc"):
        values = [r["spearman"][key] for r in results if r["spearman"][key] is not None]
        emit("selection_signal", f"spearman_{key}", float(np.mean(values)) if values else None, "rank correlation",
             "holdout_auc", float(np.mean([r["spearman"]["holdout_auc"] for r in results
                                           if r["spearman"]["holdout_auc"] is not None] or [np.nan])),
             None, "higher than holdout_auc's", True, episodes=len(values))


if __name__ == "__main__":
    main()
