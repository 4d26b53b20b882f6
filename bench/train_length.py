"""How long should the head train? Pretrained vs proxy over training lengths, on the development episodes.

On the folders that ``bench/dev_episodes.py --out DIR`` leaves (per episode: the tracked
manifest, the rule pairs and the cached trunk features), one run per episode trains the
head as ``train`` does (defaults, seed 0, no time budget) and is resumed to each longer
step count in turn (constant learning rate, batches drawn by step: the same steps as a
fresh run of that length; validations fall at other steps). At each length, the head that
``train`` selects is scored as ``benchmark`` scores its proxy method: the library's
clustering and naming, track-disjoint naming at 1 and 5 shots (3 draws), BCubed F1, the
number of clusters per true person and cross-track verification ROC-AUC. Lengths are given
in steps and also shown in epochs (a step sees 192 faces by default; an epoch is every
training face once), since the default stop (``train``'s epoch cap) is set in epochs.

    python bench/train_length.py DIR [DIR...] [--steps 600,1600,3200,6400,12800]

Prints one JSON line per episode, then per length the means over episodes, with the
pretrained features (length 0) as the peer.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import emit

METRICS = ("naming_1", "naming_5", "bcubed_f1", "clusters_per_person", "roc_auc")


def scores(x: np.ndarray, manifest, groups: np.ndarray, cannot: np.ndarray, trained: bool) -> dict:
    """``benchmark``'s scores of one method's vectors."""
    from proxytasks.benchmark import evaluate_method, toolkit_namer
    from proxytasks.cluster import cluster_faces

    clusters = cluster_faces(x, groups=groups, cannot_links=cannot, seed=0, trained_on_links=trained).labels
    m = evaluate_method(x, manifest, clusters, toolkit_namer(x, groups, clusters, cannot), (1, 5), 3, 0,
                        groups=groups)
    people = len({f.identity for f in manifest.faces})
    return {"naming_1": m["naming"]["1"], "naming_5": m["naming"]["5"], "bcubed_f1": m["clustering"]["bcubed_f1"],
            "clusters_per_person": m["clustering"]["clusters"] / people, "roc_auc": m["verification"]["roc_auc"]}


def episode(folder: Path, steps: list[int]) -> dict:
    from proxytasks.cluster import constraint_arrays
    from proxytasks.embedder import Embedder
    from proxytasks.features import head_vectors
    from proxytasks.manifest import Manifest
    from proxytasks.pairs import PairSet
    from proxytasks.train import TrainConfig, train
    from proxytasks.vectors import l2_normalize

    manifest = Manifest.read(folder / "tracked.jsonl")
    pairs = PairSet.load(folder / "pairs.npz")
    with np.load(folder / "run" / "features.npz") as z:
        feats = z["features"].astype(np.float32)
    groups, cannot = constraint_arrays(manifest, pairs)
    cfg = TrainConfig(time_budget=None, seed=0, views=("plain", "flip", "augment")[:len(feats)])
    run = folder / "train_length"
    (run / "checkpoint.pt").unlink(missing_ok=True)
    out = {"episode": folder.parent.name, "faces": len(manifest),
           "lengths": {"0": {"selected": "pretrained", **scores(l2_normalize(feats[0], axis=1), manifest, groups,
                                                                 cannot, False)}}}
    for i, n in enumerate(steps):
        summary = train(manifest, pairs, run, replace(cfg, steps=n), resume=i > 0, progress=False, features=feats)
        model = Embedder.load(run)
        trained = model.head_kind != "identity"
        out["lengths"][str(n)] = {"selected": summary["selected"], "best_step": summary["best_step"],
                                  "holdout_auc": summary["scores"].get(summary["selected"]),
                                  "epochs": summary["epochs"],
                                  **scores(head_vectors(model, feats[0]), manifest, groups, cannot, trained)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="--out folders of bench/dev_episodes.py")
    ap.add_argument("--steps", default="600,1600,3200,6400,12800")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps = sorted(int(s) for s in args.steps.split(","))
    results = []
    for folder in sorted(f for d in args.dirs for f in d.glob("*/benchmark")):
        if (folder / "run" / "features.npz").is_file():
            results.append(episode(folder, steps))
            print(json.dumps(results[-1]), flush=True)
    base = {k: float(np.mean([r["lengths"]["0"][k] for r in results])) for k in METRICS}
    for n in steps:
        for k in METRICS:
            value = float(np.mean([r["lengths"][str(n)][k] for r in results]))
            better = base[k] / value if k == "clusters_per_person" else value / base[k]  # fewer clusters: better
            emit("train_length", f"{k}_steps{n}", value, "mean over episodes", "pretrained features", base[k],
                 better, None, None, episodes=len(results))


if __name__ == "__main__":
    main()
