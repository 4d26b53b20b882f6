"""The naming benchmark (Contract 2): proxy training against the bare pretrained backbone.

On a manifest whose faces carry ``identity``: tracking (always: a ``track`` given in
the manifest may come from ground truth, and is kept only when asked), the rules, proxy
training within the time budget, then for each method, on the same seeded draws:
clustering (number of people unknown; the threshold from the rule pairs by the rule that
suits the vectors: cannot-link violations for the pretrained features, the must/cannot
midpoint for a head trained on the pairs, see :func:`proxytasks.cluster.cluster_faces`),
few-shot naming at k shots, and verification. Identities are read only for evaluation:
training sees rule pairs. Writes ``DIR/metrics.json`` atomically.

The protocol cannot flatter a method that carries names along tracks ("track-disjoint"):
naming is scored only on faces that share no track with a face whose name was given,
and verification only on pairs of faces from different tracks (same-track pairs are
near-duplicates, and were training positives).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from .defaults import DEFAULT_BACKBONE
from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest
from .pipeline import tracked_pairs
from .vectors import l2_normalize

logger = logging.getLogger(__name__)

DLIB_BACKBONE = "dlib_resnet29"
PEERS = ("face_recognition", "proxy_dlib")
PROTOCOL = "track-disjoint"


Namer = Callable[[dict[int, str], int], Sequence[str | None]]  # (named faces, seed) -> a name per face


def toolkit_namer(vectors: np.ndarray, groups: np.ndarray, clusters: np.ndarray,
                  cannot: np.ndarray | None = None) -> Namer:
    """The toolkit's own naming over ``vectors``: names carried along tracks and clusters, never
    one name for two cannot-linked faces. Closed set: every scored person has named faces, so
    no face is rejected as unknown."""
    from .naming import name_faces

    return lambda named, seed: name_faces(vectors, named, tracks=groups, clusters=clusters, seed=seed,
                                          cannot_links=cannot, unknown_threshold=None).names


def identities(manifest: Manifest) -> np.ndarray:
    """The ``identity`` of each face as an object array, "" where it is unknown."""
    return np.array([f.identity if f.identity is not None else "" for f in manifest.faces], dtype=object)


def track_groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    """One group per face: its track group, or a group of its own where it has none (-1)."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    g = np.asarray(groups, dtype=np.int64).copy()
    alone = g < 0
    g[alone] = g.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    return g


def naming_scores(identity: np.ndarray, namer: Namer, k: int, repeats: int, seed: int,
                  groups: np.ndarray | None = None) -> tuple[float | None, float | None]:
    """Mean naming accuracy and macro-F1 at ``k`` shots over ``repeats`` seeded draws.

    Each draw gives ``namer`` k faces per identity (among identities with at least k+1
    faces; "" is unknown); both scores are over the other faces of those identities that
    share no track (``groups``: a track group per face, -1 none) with a drawn face.
    None when no identity has k+1 faces, or no face is left to score.
    """
    from .metrics import few_shot_draw, macro_f1, naming_accuracy

    known = identity != ""
    group = track_groups(groups, len(identity))
    accs, f1s = [], []
    for r in range(repeats):
        rng = np.random.default_rng([seed, k, r])
        drawn = np.flatnonzero(known)[few_shot_draw(identity[known], k, rng)]
        if not len(drawn):
            break
        names = namer({int(i): identity[i] for i in drawn}, seed + r)
        evaluated = known & np.isin(identity, identity[drawn]) & ~np.isin(group, group[drawn])
        if not evaluated.any():
            continue
        true = identity[evaluated]
        pred = [names[i] for i in np.flatnonzero(evaluated)]
        accs.append(naming_accuracy(true, pred))
        f1s.append(macro_f1(true, pred))
    return (float(np.mean(accs)) if accs else None), (float(np.mean(f1s)) if f1s else None)


def evaluate_method(vectors: np.ndarray, manifest: Manifest, clusters: np.ndarray, namer: Namer,
                    shots: Sequence[int], repeats: int, seed: int, metric: str = "cosine",
                    groups: np.ndarray | None = None) -> dict[str, Any]:
    """Clustering, few-shot naming and verification of one method, with the contract's keys.

    Naming at k shots (track-disjoint): k faces per identity (among identities with at
    least k+1 faces) are the only names ``namer`` is given; accuracy and macro-F1 are
    over the other faces of those identities that share no track (``groups``) with them,
    averaged over ``repeats`` seeded draws shared by every method. Verification scores
    pairs of faces from different tracks by ``metric`` (cosine or euclidean) of ``vectors``.
    """
    from .metrics import clustering_metrics, verification_metrics

    identity = identities(manifest)
    known = identity != ""
    group = track_groups(groups, len(identity))
    out: dict[str, Any] = {"naming": {}, "naming_macro_f1": {}}
    for k in shots:
        out["naming"][str(k)], out["naming_macro_f1"][str(k)] = naming_scores(identity, namer, k, repeats, seed,
                                                                              group)
    cm = clustering_metrics(identity[known], clusters[known])
    out["clustering"] = {key: cm[key] for key in ("wcp", "nmi", "bcubed_f1", "clusters")}
    out["verification"] = verification_metrics(vectors[known], identity[known], seed=seed, metric=metric,
                                               groups=group[known])
    return out


def _proxy_run(manifest: Manifest, pairs: Any, run: Path, cfg: Any, progress: bool
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Train in ``run``; returns (training summary, pretrained vectors, proxy vectors). The
    summary's ``trained_on_links`` says whether the proxy vectors come from a head fit on the
    rule pairs (False when the run kept the pretrained features: the identity head)."""
    from .embedder import Embedder
    from .features import head_vectors, plain_features
    from .train import train

    trained = train(manifest, pairs, run, cfg, progress=progress)
    model = Embedder.load(run)
    plain = plain_features(run, manifest, embedder=model, progress=progress)  # the run's cache, key checked
    pretrained = l2_normalize(plain, axis=1)
    return {**trained, "trained_on_links": model.head_kind != "identity"}, pretrained, head_vectors(model, plain)


def peer_status(backbone: str) -> dict[str, str | None]:
    """Per peer method, None when this machine can run it, else why not
    (``face_recognition`` needs dlib, ``proxy_dlib`` dlib's face ResNet weights)."""
    from .models import WeightsNotFoundError, resolve_weights
    from .peers import dlib_peer_available

    ok, reason = dlib_peer_available()
    status: dict[str, str | None] = {"face_recognition": None if ok else reason, "proxy_dlib": None}
    try:
        resolve_weights(DLIB_BACKBONE)
    except WeightsNotFoundError as e:
        status["proxy_dlib"] = str(e)
    return status


def face_recognition_peer(manifest: Manifest, shots: Sequence[int], repeats: int, seed: int,
                          groups: np.ndarray, progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The face_recognition peer as its users run it (:mod:`proxytasks.peers`).

    Returns ``(method, variants)``: ``variants`` holds chinese whispers at each threshold of
    dlib's examples (``whispers_0.5``, ``whispers_0.6``), both with the nearest named face
    within 0.6 as the naming rule, and ``knn``: face_recognition_knn.py's rule with the
    clustering of the better whispers. ``method`` is the whispers variant with the better
    BCubed F1 (the peer gets the benefit of the doubt). The peer uses no track:
    ``groups`` only keeps the scoring track-disjoint, as for every method.
    """
    from .metrics import clustering_metrics
    from .peers import WHISPERS_THRESHOLDS, chinese_whispers, face_recognition_descriptors, knn_names, nearest_names

    desc = face_recognition_descriptors(manifest, progress=progress)
    identity = identities(manifest)
    known = identity != ""
    labels = {t: chinese_whispers(desc, t) for t in WHISPERS_THRESHOLDS}
    f1 = {t: clustering_metrics(identity[known], labels[t][known])["bcubed_f1"] for t in WHISPERS_THRESHOLDS}
    best = max(WHISPERS_THRESHOLDS, key=lambda t: (f1[t], t))

    def run(clusters: np.ndarray, namer: Namer) -> dict[str, Any]:
        return evaluate_method(desc, manifest, clusters, namer, shots, repeats, seed, metric="euclidean",
                               groups=groups)

    nearest: Namer = lambda named, _: nearest_names(desc, named)  # noqa: E731
    variants = {f"whispers_{t}": run(labels[t], nearest) for t in WHISPERS_THRESHOLDS}
    variants["knn"] = run(labels[best], lambda named, _: knn_names(desc, named))
    return variants[f"whispers_{best}"], variants


def run_benchmark(manifest_path: str | os.PathLike, out: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
                  weights: str | None = None, time_budget: float = 300.0, shots: Sequence[int] = (1, 5, 20),
                  repeats: int = 5, seed: int = 0, progress: bool = True,
                  train_steps: int | None = None, active: Sequence[str] = (), active_budget: int | None = None,
                  active_batch: int = 5, peers: Sequence[str] | None = None,
                  keep_tracks: bool = False) -> dict[str, Any]:
    """Run the benchmark and write ``out/metrics.json``; returns the metrics.

    ``train_steps`` fixes the number of optimisation steps (still within the budget),
    which makes a run reproducible on any machine. ``active`` names suggestion
    strategies: for each, naming accuracy against names typed by a simulated person
    (rounds of ``active_batch``, up to ``active_budget`` names, default four per
    identity) on the proxy embedding, under ``"active"``. ``peers`` (None: every one
    this machine can run, see :func:`peer_status`) adds methods: ``face_recognition``
    (dlib's pipeline as its users run it, see :func:`face_recognition_peer`) and
    ``proxy_dlib`` (proxy training from dlib's face ResNet, with its own ``time_budget``;
    the same run as ``proxy`` when ``backbone`` is already ``dlib_resnet29``), which
    comes with ``pretrained_dlib``: dlib's frozen descriptors through the toolkit's own
    tracks, clustering and naming. ``keep_tracks`` uses the manifest's own tracks instead
    of tracking the faces (they may come from ground truth: a warning says so).
    """
    from .cluster import cluster_faces, constraint_arrays
    from .evaluate import audit_pairs
    from .train import TrainConfig

    start = time.perf_counter()
    if active:
        from .active import check_strategies

        check_strategies(active)
    unknown = sorted(set(peers or ()) - set(PEERS))
    if unknown:
        raise ProxytasksError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    status = peer_status(backbone) if peers is None or peers else {}
    if peers is None:
        peers = [p for p in PEERS if status[p] is None]
        for p in PEERS:
            if status[p] is not None:
                logger.warning("benchmark without the %s peer: %s", p, status[p])
    for p in peers:
        if status[p] is not None:
            raise ProxytasksError(f"peer {p} cannot run here: {status[p]}")
    out = Path(out)
    manifest = Manifest.read(manifest_path)
    if not any(f.identity is not None for f in manifest.faces):
        raise ProxytasksError(f"{manifest_path}: no face carries 'identity'; the benchmark needs ground truth")
    summary = manifest.summary()
    manifest, pairs = tracked_pairs(manifest, out, progress, keep_tracks=keep_tracks)
    audit = audit_pairs(manifest, pairs)
    rules = {name: {k: r[k] for k in ("pairs", "label", "precision", "faces_covered")}
             for name, r in audit["rules"].items()}
    dlib_backbone = backbone.split(".")[0] == DLIB_BACKBONE
    alignment = None
    if dlib_backbone or peers:
        from .locate import FaceLocator, location_summary

        # found once here; every dlib method below reads them from the locator's cache
        alignment = location_summary(FaceLocator().locate_faces(manifest, progress=progress))
    cfg = TrainConfig(backbone=backbone, weights=weights, time_budget=time_budget, seed=seed, steps=train_steps)
    trained, pretrained, proxy = _proxy_run(manifest, pairs, out / "run", cfg, progress)
    groups, cannot = constraint_arrays(manifest, pairs)
    vectors = {"pretrained": pretrained, "proxy": proxy}
    # the threshold rule follows the vectors: a head fit on these links has pushed the cannot-linked
    # pairs apart, so their violations cannot calibrate it (the midpoint rule, see cluster_faces)
    on_links = {"pretrained": False, "proxy": trained["trained_on_links"]}
    if "proxy_dlib" in peers:
        if dlib_backbone:
            vectors["pretrained_dlib"], vectors["proxy_dlib"] = pretrained, proxy
            on_links.update(pretrained_dlib=False, proxy_dlib=on_links["proxy"])
        else:
            dlib_cfg = TrainConfig(backbone=DLIB_BACKBONE, time_budget=time_budget, seed=seed, steps=train_steps)
            dlib_trained, vectors["pretrained_dlib"], vectors["proxy_dlib"] = _proxy_run(
                manifest, pairs, out / "run_dlib", dlib_cfg, progress)
            on_links.update(pretrained_dlib=False, proxy_dlib=dlib_trained["trained_on_links"])
    methods, clusters = {}, {}
    for name, x in vectors.items():
        t0 = time.perf_counter()
        clusters[name] = cluster_faces(x, groups=groups, cannot_links=cannot, seed=seed,
                                       trained_on_links=on_links[name]).labels
        namer = toolkit_namer(x, groups, clusters[name], cannot)
        methods[name] = evaluate_method(x, manifest, clusters[name], namer, shots, repeats, seed, groups=groups)
        logger.info("evaluated %s in %.1f s", name, time.perf_counter() - t0)
    variants = {}
    if "face_recognition" in peers:
        t0 = time.perf_counter()
        methods["face_recognition"], variants["face_recognition"] = face_recognition_peer(
            manifest, shots, repeats, seed, groups, progress)
        logger.info("evaluated face_recognition in %.1f s", time.perf_counter() - t0)
    metrics: dict[str, Any] = {
        "dataset": {k: summary[k] for k in ("faces", "identities", "media", "frames")},
        "protocol": PROTOCOL,
        "rules": rules,
        "methods": methods,
    }
    if variants:
        metrics["peer_variants"] = variants
    if alignment is not None:
        metrics["alignment"] = alignment
        if alignment["fallback"]:
            logger.warning("faces in crops: %d of %d not found by a detector; their central region was used",
                           alignment["fallback"], alignment["faces"])
    metrics["train"] = {"seconds": trained["seconds"], "pairs": trained["pairs"], "steps": trained["steps"]}
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
