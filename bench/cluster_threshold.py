"""How the clustering threshold is chosen, against the best threshold by the truth (issue 16).

Reads the benchmark folders that ``bench/dev_episodes.py --out DEV`` leaves
(``DEV/<set>_s<seed>/benchmark``: tracked manifest, rule pairs, the trained run and its
cached trunk features) and clusters each episode's pretrained and proxy vectors with:

- ``default``: the library's rule (average linkage over tracks; the threshold stops the sweep
  where recent merges start to bring cannot-linked tracks together), every cannot-link watched;
- ``heldout``: the same rule watching only the cannot-links inside the training run's held-out
  time chunks (pairs training never saw), every cannot-link still kept apart;
- ``midpoint``: halfway between the median cosine of must-linked and of cannot-linked face pairs;
- ``oracle``: the best of a threshold sweep by the true identities (an upper bound, not a rule).

``--synthetic N`` adds bench/common.py's ``clustered_vectors`` (N faces), where the faces of one
person across shots are far less alike than the faces of one track.

Prints one JSON line per episode and vectors, then the mean BCubed F1 and clusters per person
of each rule, proxy against pretrained.

    python bench/cluster_threshold.py DEV/orl_faces_s0/benchmark DEV/yalefaces_s0/benchmark ...
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from common import emit


def _score(identity: np.ndarray, labels: np.ndarray) -> dict:
    from proxytasks.metrics import clustering_metrics

    return {"bcubed_f1": round(float(clustering_metrics(identity, labels)["bcubed_f1"]), 4),
            "clusters": int(labels.max(initial=-1)) + 1}


def rules(x: np.ndarray, groups: np.ndarray, cannot: np.ndarray, identity: np.ndarray,
          must: np.ndarray, heldout: np.ndarray | None) -> dict:
    """Every threshold rule's clustering of ``x`` (BCubed F1, clusters, threshold)."""
    from proxytasks.cluster import cluster_faces

    def at(threshold: float | None, watched: np.ndarray = cannot) -> dict:
        r = cluster_faces(x, groups=groups, cannot_links=watched, threshold=threshold, seed=0)
        if watched is not cannot:  # watch some links for the threshold, keep every link apart
            r = cluster_faces(x, groups=groups, cannot_links=cannot, threshold=r.threshold, seed=0)
        return {**_score(identity, r.labels), "threshold": round(float(r.threshold), 4)}

    sim = lambda p: np.sum(x[p[:, 0]] * x[p[:, 1]], axis=1)
    out = {"default": at(None),
           "midpoint": at(float((np.median(sim(must)) + np.median(sim(cannot))) / 2))}
    if heldout is not None and len(heldout):
        out["heldout"] = at(None, heldout)
    sweep = [at(float(t)) for t in np.linspace(-0.2, 0.95, 24)]
    out["oracle"] = max(sweep, key=lambda r: r["bcubed_f1"])
    return out


def episode(folder: Path) -> dict:
    """The rules on one dev_episodes benchmark folder, pretrained and proxy vectors."""
    from proxytasks.benchmark import identities
    from proxytasks.cluster import constraint_arrays
    from proxytasks.embedder import Embedder
    from proxytasks.manifest import Manifest
    from proxytasks.pairs import PairSet
    from proxytasks.train import holdout_mask
    from proxytasks.vectors import l2_normalize
    try:
        from proxytasks.features import head_vectors
    except ImportError:
        from proxytasks.embed import head_vectors

    manifest = Manifest.read(folder / "tracked.jsonl")
    pairs = PairSet.load(folder / "pairs.npz")
    run = folder / "run"
    with np.load(run / "features.npz", allow_pickle=False) as z:
        plain = z["features"][0].astype(np.float32)
    options = json.loads((run / "config.json").read_text()).get("options", {})
    held = holdout_mask(manifest, options.get("holdout", 0.2), options.get("seed", 0))
    groups, cannot = constraint_arrays(manifest, pairs)
    i, j, label, _ = pairs.unique()
    must = np.stack([i[label == 1], j[label == 1]], 1)
    heldout = cannot[held[cannot[:, 0]] & held[cannot[:, 1]]]
    identity = identities(manifest)
    vectors = {"pretrained": l2_normalize(plain), "proxy": head_vectors(Embedder.load(run), plain)}
    return {"episode": str(folder), "faces": len(manifest), "people": len(set(identity.tolist())),
            "heldout_links": len(heldout),
            **{name: rules(x, groups, cannot, identity, must, heldout if name == "proxy" else None)
               for name, x in vectors.items()}}


def synthetic(n: int) -> dict:
    """The rules on ``clustered_vectors`` (no training: the held-out rule does not apply)."""
    from common import clustered_vectors

    x, identity, track, cannot = clustered_vectors(n, seed=1)
    same = np.flatnonzero(track[1:] == track[:-1])
    return {"episode": f"clustered_vectors({n})", "faces": n, "people": len(set(identity.tolist())),
            "pretrained": rules(x, track, cannot, identity, np.stack([same, same + 1], 1), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, help="dev_episodes.py benchmark folders")
    ap.add_argument("--synthetic", type=int, default=0, help="faces of a clustered_vectors case (0: none)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = [episode(f) for f in args.folders] + ([synthetic(args.synthetic)] if args.synthetic else [])
    for row in rows:
        print(json.dumps(row), flush=True)
    eps = [r for r in rows if "proxy" in r]
    for rule in ("default", "heldout", "midpoint", "oracle"):
        proxy = [r["proxy"][rule] for r in eps if rule in r["proxy"]]
        pre = [r["pretrained"].get(rule, r["pretrained"]["default"]) for r in eps]
        if not proxy:
            continue
        f1, f1_pre = (float(np.mean([r["bcubed_f1"] for r in v])) for v in (proxy, pre))
        cpp = float(np.mean([r["clusters"] / e["people"] for r, e in zip(proxy, eps)]))
        emit("cluster_threshold", f"bcubed_f1_{rule}", round(f1, 4), "mean over episodes",
             "pretrained vectors, same rule (default rule for 'heldout')", round(f1_pre, 4),
             round(f1 / f1_pre, 3) if f1_pre else None, "proxy - pretrained >= 0.05",
             f1 - f1_pre >= 0.05, clusters_per_person=round(cpp, 2), episodes=len(eps))


if __name__ == "__main__":
    main()
