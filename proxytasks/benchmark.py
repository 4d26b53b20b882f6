"""The naming benchmark (Contract 2): proxy training against the bare pretrained backbone.

On a manifest whose faces carry ``identity``: tracking (when no ``track`` is given),
the rules, proxy training within the time budget, then for each method, on the same
seeded draws: clustering (number of people unknown), few-shot naming at k shots,
and verification. Identities are read only for evaluation: training sees rule pairs.
Writes ``DIR/metrics.json`` atomically.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest

logger = logging.getLogger(__name__)

DEFAULT_RULES = "same-frame,same-track,track-cooccurrence,same-photo"


def evaluate_method(vectors: np.ndarray, manifest: Manifest, groups: np.ndarray, cannot: np.ndarray,
                    shots: Sequence[int], repeats: int, seed: int,
                    clusters: np.ndarray | None = None) -> dict[str, Any]:
    """Clustering, few-shot naming and verification of one embedding, with the contract's keys.

    Naming at k shots: k faces per identity (among identities with at least k+1 faces)
    are the only names given; accuracy and macro-F1 are over the other faces of those
    identities, averaged over ``repeats`` seeded draws shared by every method.
    """
    from .cluster import cluster_faces
    from .metrics import clustering_metrics, few_shot_draw, macro_f1, naming_accuracy, verification_metrics
    from .naming import name_faces

    identity = np.array([f.identity if f.identity is not None else "" for f in manifest.faces], dtype=object)
    known = identity != ""
    if clusters is None:
        clusters = cluster_faces(vectors, groups=groups, cannot_links=cannot, seed=seed).labels
    out: dict[str, Any] = {"naming": {}, "naming_macro_f1": {}}
    for k in shots:
        accs, f1s = [], []
        for r in range(repeats):
            rng = np.random.default_rng([seed, k, r])
            drawn = np.flatnonzero(known)[few_shot_draw(identity[known], k, rng)]
            if not len(drawn):
                break
            result = name_faces(vectors, {int(i): identity[i] for i in drawn}, tracks=groups,
                                clusters=clusters, seed=seed + r)
            evaluated = known & np.isin(identity, identity[drawn])
            evaluated[drawn] = False
            true = identity[evaluated]
            pred = [result.names[i] for i in np.flatnonzero(evaluated)]
            accs.append(naming_accuracy(true, pred))
            f1s.append(macro_f1(true, pred))
        out["naming"][str(k)] = float(np.mean(accs)) if accs else None
        out["naming_macro_f1"][str(k)] = float(np.mean(f1s)) if f1s else None
    cm = clustering_metrics(identity[known], clusters[known])
    out["clustering"] = {key: cm[key] for key in ("wcp", "nmi", "bcubed_f1", "clusters")}
    out["verification"] = verification_metrics(vectors[known], identity[known], seed=seed)
    return out


def run_benchmark(manifest_path: str | os.PathLike, out: str | os.PathLike, backbone: str = "tf_efficientnet_lite0",
                  weights: str | None = None, time_budget: float = 300.0, shots: Sequence[int] = (1, 5, 20),
                  repeats: int = 5, seed: int = 0, progress: bool = True,
                  train_steps: int | None = None, active: Sequence[str] = (), active_budget: int | None = None,
                  active_batch: int = 5) -> dict[str, Any]:
    """Run the benchmark and write ``out/metrics.json``; returns the metrics.

    ``train_steps`` fixes the number of optimisation steps (still within the budget),
    which makes a run reproducible on any machine. ``active`` names suggestion
    strategies: for each, naming accuracy against names typed by a simulated person
    (rounds of ``active_batch``, up to ``active_budget`` names, default four per
    identity) on the proxy embedding, under ``"active"``.
    """
    from .cluster import cluster_faces, constraint_arrays
    from .embed import head_vectors
    from .embedder import Embedder
    from .evaluate import audit_pairs
    from .rules import RuleSet
    from .track import track_manifest
    from .train import TrainConfig, train

    start = time.perf_counter()
    if active:
        from .active import check_strategies

        check_strategies(active)
    out = Path(out)
    manifest = Manifest.read(manifest_path)
    if not any(f.identity is not None for f in manifest.faces):
        raise ProxytasksError(f"{manifest_path}: no face carries 'identity'; the benchmark needs ground truth")
    summary = manifest.summary()
    if all(f.track is None for f in manifest.faces) and any(f.frame is not None for f in manifest.faces):
        manifest = track_manifest(manifest, progress=progress)
        manifest.write(out / "tracked.jsonl")
    pairs = RuleSet(DEFAULT_RULES).apply(manifest)
    pairs.save(out / "pairs.npz")
    audit = audit_pairs(manifest, pairs)
    rules = {name: {k: r[k] for k in ("pairs", "label", "precision", "faces_covered")}
             for name, r in audit["rules"].items()}
    cfg = TrainConfig(backbone=backbone, weights=weights, time_budget=time_budget, seed=seed, steps=train_steps)
    trained = train(manifest, pairs, out / "run", cfg, progress=progress)
    with np.load(out / "run" / "features.npz", allow_pickle=False) as z:
        plain = z["features"][0].astype(np.float32)
    pretrained = plain / np.maximum(np.linalg.norm(plain, axis=1, keepdims=True), 1e-12)
    proxy = head_vectors(Embedder.load(out / "run"), plain)
    groups, cannot = constraint_arrays(manifest, pairs)
    methods, clusters = {}, {}
    for name, vectors in (("pretrained", pretrained), ("proxy", proxy)):
        t0 = time.perf_counter()
        clusters[name] = cluster_faces(vectors, groups=groups, cannot_links=cannot, seed=seed).labels
        methods[name] = evaluate_method(vectors, manifest, groups, cannot, shots, repeats, seed, clusters[name])
        logger.info("evaluated %s in %.1f s", name, time.perf_counter() - t0)
    metrics = {
        "dataset": {k: summary[k] for k in ("faces", "identities", "media", "frames")},
        "rules": rules,
        "methods": methods,
        "train": {"seconds": trained["seconds"], "pairs": trained["pairs"], "steps": trained["steps"]},
    }
    if active:
        from .active import active_curve

        budget = active_budget or 4 * summary["identities"]
        identity = [f.identity for f in manifest.faces]
        metrics["active"] = {}
        for strategy in tqdm(active, desc="active", unit="strategy", disable=not progress):
            metrics["active"][strategy] = active_curve(proxy, identity, strategy, tracks=groups,
                                                       clusters=clusters["proxy"], budget=budget,
                                                       batch=active_batch, seed=seed)
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    with atomic_write(out / "metrics.json") as fh:
        json.dump(metrics, fh, indent=2)
    return metrics
