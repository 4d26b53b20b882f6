"""Self-training rounds: do confident cross-track links, fed back as must-links, teach identity?

On the folders that ``bench/dev_episodes.py --out DIR`` leaves (per episode: the tracked
manifest, the rule pairs and the cached trunk features), round 0 trains the head as the
development benchmark does (``--steps`` steps, defaults otherwise, no time budget). Each
later round clusters the faces with the previous round's vectors (the library's constrained
average linkage over tracks, its threshold rule, raised by ``--margin``), takes every pair of
tracks that share a cluster as a pseudo must-link (a cluster never holds a cannot-linked
pair, also not through transitivity: it is one group) and trains a fresh head on the rule
pairs plus those links. Per round: the pseudo links' precision and recall against the true
identities (track pairs), and the head scored as ``benchmark`` scores its proxy method (the
library's clustering and naming with the *rule* tracks as groups, track-disjoint naming at 1
and 5 shots over 3 draws, BCubed F1, clusters per person, cross-track ROC-AUC).

    python bench/self_training.py DIR [DIR...] [--rounds 2] [--steps 600] [--margin 0,0.1]
        [--start proxy|pretrained]

``--start pretrained`` takes round 1's links from the pretrained features (the violation
rule) instead of the round-0 head. Prints one JSON line per episode and margin, then the
means per round with the pretrained features as the peer.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from common import emit
from train_length import METRICS, scores


def track_links(clusters: np.ndarray, tracks: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, dict]:
    """Face pairs chaining the tracks of each cluster, and the links' precision and recall
    over track pairs by the true identities (each track's first face)."""
    valid = np.flatnonzero(tracks >= 0)
    codes, first = np.unique(tracks[valid], return_index=True)
    reps = valid[first]  # one face per track
    who, where = identity[reps], clusters[reps]
    chain, linked, correct = [], 0, 0
    for c in np.unique(where):
        members = reps[where == c]
        if len(members) > 1:
            chain += [(members[0], m) for m in members[1:]]
            ids = who[where == c]
            linked += len(ids) * (len(ids) - 1) // 2
            correct += sum(int(n) * (int(n) - 1) // 2 for n in np.unique(ids, return_counts=True)[1])
    same = sum(int(n) * (int(n) - 1) // 2 for n in np.unique(who, return_counts=True)[1])
    stats = {"tracks": len(reps), "linked_pairs": linked, "precision": correct / linked if linked else None,
             "recall": correct / same if same else None}
    return np.asarray(chain, dtype=np.int64).reshape(-1, 2), stats


def episode(folder: Path, rounds: int, steps: int, margin: float, start: str) -> dict:
    from proxytasks.cluster import cluster_faces, constraint_arrays
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
    _, identity = np.unique([f.identity for f in manifest.faces], return_inverse=True)
    cfg = TrainConfig(time_budget=None, seed=0, steps=steps, views=("plain", "flip", "augment")[:len(feats)])
    pre = l2_normalize(feats[0], axis=1)
    out = {"episode": folder.parent.name, "faces": len(manifest), "margin": margin, "start": start,
           "rounds": {"pretrained": scores(pre, manifest, groups, cannot, False)}}
    x, trained, links = None, False, None
    for k in range(rounds + 1):
        run = folder / f"self_training_{start}_{margin:g}_r{k}"
        (run / "checkpoint.pt").unlink(missing_ok=True)
        round_pairs = pairs if links is None else pairs.with_human(links, np.empty((0, 2), np.int64))
        summary = train(manifest, round_pairs, run, cfg, progress=False, features=feats)
        model = Embedder.load(run)
        trained = model.head_kind != "identity"
        row = {"selected": summary["selected"], "holdout_auc": summary["scores"].get(summary["selected"])}
        x = head_vectors(model, feats[0]) if trained else pre
        row.update(scores(x, manifest, groups, cannot, trained))
        if k < rounds:
            base, based = (pre, False) if (start == "pretrained" and k == 0) else (x, trained)
            found = cluster_faces(base, groups=groups, cannot_links=cannot, seed=0, trained_on_links=based)
            if margin:
                found = cluster_faces(base, groups=groups, cannot_links=cannot, seed=0,
                                      threshold=found.threshold + margin)
            links, row["links"] = track_links(found.labels, groups, identity)
            row["links"]["threshold"] = round(float(found.threshold), 4)
        out["rounds"][str(k)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="--out folders of bench/dev_episodes.py")
    ap.add_argument("--rounds", type=int, default=2, help="self-training rounds after round 0")
    ap.add_argument("--steps", type=int, default=600, help="training steps per round")
    ap.add_argument("--margin", default="0", help="comma-separated: added to the threshold that picks the links")
    ap.add_argument("--start", choices=("proxy", "pretrained"), default="proxy")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folders = sorted(f for d in args.dirs for f in d.glob("*/benchmark") if (f / "run" / "features.npz").is_file())
    for margin in (float(m) for m in args.margin.split(",")):
        results = []
        for f in folders:
            results.append(episode(f, args.rounds, args.steps, margin, args.start))
            print(json.dumps(results[-1]), flush=True)
        base = {k: float(np.mean([r["rounds"]["pretrained"][k] for r in results])) for k in METRICS}
        for n in range(args.rounds + 1):
            for k in METRICS:
                value = float(np.mean([r["rounds"][str(n)][k] for r in results]))
                better = base[k] / value if k == "clusters_per_person" else value / base[k]
                emit("self_training", f"{k}_round{n}_margin{margin:g}_{args.start}", value, "mean over episodes",
                     "pretrained features", base[k], better, None, None, episodes=len(results))


if __name__ == "__main__":
    main()
