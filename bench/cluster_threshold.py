"""How the clustering threshold is chosen, against the best threshold by the truth (issue 16).

Reads the benchmark folders that ``bench/dev_episodes.py --out DEV`` leaves
(``DEV/<set>_s<seed>/benchmark``: tracked manifest, rule pairs, the trained run and its
cached trunk features) and clusters each episode's pretrained and proxy vectors with:

- ``violations``: the library's rule before issue 16's threshold work, for every vectors
  (average linkage over tracks; the threshold stops the sweep where recent merges start to
  bring cannot-linked tracks together), every cannot-link watched;
- ``default``: the library's rule now (``threshold_rule="auto"``), told what the benchmark knows:
  the pretrained vectors were not trained on the links (violations), the proxy head was unless
  its run selected the identity head (midpoint of must- and cannot-linked face cosines);
- ``heldout``: the violation rule watching only the cannot-links inside the training run's held-out
  time chunks (pairs training never saw), every cannot-link still kept apart;
- ``heldout_midpoint`` (measured, not shipped, issue 16): halfway between the median cosine of the
  must-linked face pairs and of those held-out cannot-links;
- ``midpoint``: halfway between the median cosine of the rule pairs' must-linked and cannot-linked
  face pairs (the library's midpoint samples must-linked pairs inside tracks instead);
- ``cap`` (trained heads only; measured, not shipped, issue 16): the ``default`` midpoint capped at
  the 90th percentile of the cosines of random face pairs from different tracks (seeded sample of
  100,000 pairs), i.e. merging goes on while clusters are more alike than 90% of random pairs;
- ``oracle``: the best of a threshold sweep by the true identities (an upper bound, not a rule);
- ``oracle_cap``: the same, among the thresholds that leave at most 1.5 clusters per person.

``--naming`` adds, for the ``violations``, ``default`` and ``cap`` rules, what ``proxytasks benchmark``
reports with those clusters: naming@1 and @5 (track-disjoint, 5 repeats, seed 0, the toolkit's
naming carried along tracks and clusters) and ROC-AUC, i.e. its metrics.json before and after.

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
          must: np.ndarray, heldout: np.ndarray | None, trained: bool = False, naming=None) -> dict:
    """Every threshold rule's clustering of ``x`` (BCubed F1, clusters, threshold); ``naming``:
    a function of the clusters whose result joins the ``violations`` and ``default`` rows."""
    from proxytasks.cluster import cluster_faces

    def at(threshold: float | None, watched: np.ndarray = cannot, name: bool = False, **options) -> dict:
        options.setdefault("threshold_rule", "violations")
        r = cluster_faces(x, groups=groups, cannot_links=watched, threshold=threshold, seed=0, **options)
        if watched is not cannot:  # watch some links for the threshold, keep every link apart
            r = cluster_faces(x, groups=groups, cannot_links=cannot, threshold=r.threshold, seed=0)
        extra = naming(x, r.labels) if name and naming is not None else {}
        return {**_score(identity, r.labels), "threshold": round(float(r.threshold), 4), **extra}

    sim = lambda p: np.sum(x[p[:, 0]] * x[p[:, 1]], axis=1)
    out = {"violations": at(None, name=True),
           "default": at(None, name=True, threshold_rule="auto", trained_on_links=trained),
           "midpoint": at(float((np.median(sim(must)) + np.median(sim(cannot))) / 2))}
    if trained:
        out["cap"] = at(min(out["default"]["threshold"], random_pair_quantile(x, groups, 0.9)), name=True)
    if heldout is not None and len(heldout):
        out["heldout"] = at(None, heldout)
        out["heldout_midpoint"] = at(float((np.median(sim(must)) + np.median(sim(heldout))) / 2))
    sweep = [at(float(t)) for t in np.linspace(-0.2, 0.95, 24)]
    out["oracle"] = max(sweep, key=lambda r: r["bcubed_f1"])
    people = len(np.unique(identity))
    out["oracle_cap"] = max((r for r in sweep if r["clusters"] <= 1.5 * people), key=lambda r: r["bcubed_f1"],
                            default=out["oracle"])
    return out


def random_pair_quantile(x: np.ndarray, groups: np.ndarray, q: float, sample: int = 100_000, seed: int = 0) -> float:
    """The ``q`` quantile of the cosines of random face pairs from different tracks (``x`` unit rows;
    a face of group -1 is a track of its own)."""
    rng = np.random.default_rng(seed)
    track = np.where(groups >= 0, groups, -1 - np.arange(len(groups)))
    a, b = rng.integers(0, len(x), sample), rng.integers(0, len(x), sample)
    apart = track[a] != track[b]
    return float(np.quantile(np.sum(x[a[apart]] * x[b[apart]], axis=1), q))


def episode(folder: Path, with_naming: bool = False) -> dict:
    """The rules on one dev_episodes benchmark folder, pretrained and proxy vectors."""
    from proxytasks.benchmark import evaluate_method, identities, toolkit_namer
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
    model = Embedder.load(run)
    vectors = {"pretrained": l2_normalize(plain), "proxy": head_vectors(model, plain)}
    trained = {"pretrained": False, "proxy": model.head_kind != "identity"}

    def naming(x: np.ndarray, labels: np.ndarray) -> dict:  # as run_benchmark evaluates a method
        m = evaluate_method(x, manifest, labels, toolkit_namer(x, groups, labels, cannot), (1, 5), 5, 0,
                            groups=groups)
        return {"naming_1": round(m["naming"]["1"], 4), "naming_5": round(m["naming"]["5"], 4),
                "roc_auc": round(m["verification"]["roc_auc"], 4)}

    return {"episode": str(folder), "faces": len(manifest), "people": len(set(identity.tolist())),
            "heldout_links": len(heldout),
            **{name: rules(x, groups, cannot, identity, must, heldout if name == "proxy" else None, trained[name],
                           naming if with_naming else None)
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
    ap.add_argument("--naming", action="store_true", help="the benchmark's naming with the violations and "
                    "default clusters")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = [episode(f, args.naming) for f in args.folders] + ([synthetic(args.synthetic)] if args.synthetic else [])
    for row in rows:
        print(json.dumps(row), flush=True)
    eps = [r for r in rows if "proxy" in r]
    for row in rows:
        if "proxy" not in row:  # untrained vectors only: the library default against the truth
            pre = row["pretrained"]
            emit("cluster_threshold", f"bcubed_f1_default_{row['episode']}", pre["default"]["bcubed_f1"], "BCubed F1",
                 "best threshold by the truth", pre["oracle"]["bcubed_f1"],
                 round(pre["default"]["bcubed_f1"] / pre["oracle"]["bcubed_f1"], 3), "clusters <= 1.5x people",
                 pre["default"]["clusters"] <= 1.5 * row["people"], clusters_per_person=round(
                     pre["default"]["clusters"] / row["people"], 2))
    for rule in ("violations", "default", "cap", "heldout", "heldout_midpoint", "midpoint", "oracle", "oracle_cap"):
        proxy = [r["proxy"][rule] for r in eps if rule in r["proxy"]]
        pre = [r["pretrained"].get(rule, r["pretrained"]["violations"]) for r in eps]
        if not proxy:
            continue
        f1, f1_pre = (float(np.mean([r["bcubed_f1"] for r in v])) for v in (proxy, pre))
        cpp = float(np.mean([r["clusters"] / e["people"] for r, e in zip(proxy, eps)]))
        emit("cluster_threshold", f"bcubed_f1_{rule}", round(f1, 4), "mean over episodes",
             "pretrained vectors, same rule (violations for 'heldout' and 'cap')", round(f1_pre, 4),
             round(f1 / f1_pre, 3) if f1_pre else None, "proxy - pretrained >= 0.05, clusters <= 1.5x people",
             f1 - f1_pre >= 0.05 and cpp <= 1.5, clusters_per_person=round(cpp, 2),
             pretrained_clusters_per_person=round(float(np.mean([r["clusters"] / e["people"]
                                                                 for r, e in zip(pre, eps)])), 2),
             episodes=len(eps), **({f"{key}_proxy_pretrained": [
                 round(float(np.mean([r[key] for r in v])), 4) for v in (proxy, pre)]
                 for key in ("naming_1", "naming_5") if all(key in r for r in proxy + pre)}))


if __name__ == "__main__":
    main()
