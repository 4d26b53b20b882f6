"""Does fine-tuning the trunk's last stage on the rule pairs teach identity beyond the head?

On the folders that ``bench/dev_episodes.py --out DIR`` leaves, the benchmark's trained run
(its selected head, ``benchmark/run``) is fine-tuned further on the rule pairs alone with
``finetune.fine_tune_global`` (no names: the pair loss; the trunk's last stage, the pooling
and the projection head train, on activations cached at the cut for the plain, mirrored and
augmented views). The peer is the same call with the last stage's learning rate at 0 (the
head alone trains for the same steps), so the difference is the last stage's. Each result
is scored as ``benchmark`` scores its proxy method (``train_length.scores``).

    python bench/last_stage.py DIR [DIR...] [--steps 600] [--trunk-lr 1e-4] [--holdout]

``--holdout``: the fine-tuning sees only the rule pairs outside the time chunks that ``train``
holds out (its split, seed 0), and each result also gets the held-out rule-pair AUC that
``train`` selects with (``holdout_auc``), so one can see whether that score would keep the
last stage where it names better.

Prints one JSON line per episode, then per step count the means over episodes: last stage
against head alone.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from common import emit
from train_length import METRICS, scores


def train_pairs(pairs, manifest):
    """The rule pairs outside ``train``'s held-out chunks, and the held-out (must, cannot) pairs."""
    from proxytasks.train import holdout_mask, pairs_within

    val = holdout_mask(manifest, 0.2, 0)
    return pairs._subset(~val[pairs.i] & ~val[pairs.j]), pairs_within(pairs, val)


def episode(folder: Path, steps: list[int], trunk_lr: float, holdout: bool) -> dict:
    from proxytasks.cluster import constraint_arrays
    from proxytasks.embedder import Embedder
    from proxytasks.finetune import GlobalConfig, fine_tune_global, prefix_features, suffix_vectors
    from proxytasks.manifest import Manifest
    from proxytasks.pairs import PairSet
    from proxytasks.train import score_vectors

    manifest = Manifest.read(folder / "tracked.jsonl")
    pairs = PairSet.load(folder / "pairs.npz")
    groups, cannot = constraint_arrays(manifest, pairs)
    tuned_on, (vpos, vneg) = train_pairs(pairs, manifest) if holdout else (pairs, (None, None))

    def scored(x: np.ndarray, trained: bool) -> dict:
        held = {"holdout_auc": score_vectors(x, vpos, vneg)} if holdout else {}
        return {**held, **scores(x, manifest, groups, cannot, trained)}

    start = Embedder.load(folder / "run")
    prefix = prefix_features(start, manifest, ("plain", "flip", "augment"), progress=False)
    out = {"episode": folder.parent.name, "faces": len(manifest), "start": start.head_kind, "holdout": holdout,
           "start_scores": scored(suffix_vectors(start, prefix[0]), start.head_kind != "identity"), "steps": {}}
    for n in steps:
        row = {}
        for name, lr in (("last_stage", trunk_lr), ("head_only", 0.0)):
            model, summary = fine_tune_global(start, prefix, tuned_on, {}, GlobalConfig(steps=n, trunk_lr=lr),
                                              progress=False)
            row[name] = {"seconds": summary["seconds"], **scored(suffix_vectors(model, prefix[0]), True)}
        out["steps"][str(n)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="--out folders of bench/dev_episodes.py")
    ap.add_argument("--steps", default="600", help="comma-separated: more training steps to compare")
    ap.add_argument("--trunk-lr", type=float, default=1e-4)
    ap.add_argument("--holdout", action="store_true", help="fine-tune outside train's held-out chunks; report their AUC")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps = [int(s) for s in args.steps.split(",")]
    results = []
    for folder in sorted(f for d in args.dirs for f in d.glob("*/benchmark") if (f / "run").is_dir()):
        results.append(episode(folder, steps, args.trunk_lr, args.holdout))
        print(json.dumps(results[-1]), flush=True)
    for n in steps:
        for k in METRICS:
            value, base = (float(np.mean([r["steps"][str(n)][m][k] for r in results]))
                           for m in ("last_stage", "head_only"))
            better = base / value if k == "clusters_per_person" else value / base
            emit("last_stage", f"{k}_steps{n}", value, "mean over episodes", "head alone, same steps", base,
                 better, None, None, episodes=len(results), trunk_lr=args.trunk_lr,
                 holdout=args.holdout)


if __name__ == "__main__":
    main()
