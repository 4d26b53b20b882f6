"""Clustering against scikit-learn's HDBSCAN at 50,000 faces: `proxytasks.cluster.cluster_faces`
(tracks as must-links, co-occurrence cannot-links, threshold from them) against
`sklearn.cluster.HDBSCAN` (its defaults, min_cluster_size=5, all cores) on the same vectors.

Vectors (bench.common.clustered_vectors, seeded): 50,000 unit vectors of 128-d, 500
identities, tracks of 5 faces on average, 4 people a shot. HDBSCAN takes vectors only
(it has no must- or cannot-links); its noise points count as singletons for BCubed F1
(proxytasks.metrics.clustering_metrics). `cluster_faces` without any link (the
nearest-neighbour threshold heuristic) is reported beside, on exactly HDBSCAN's input.
With `--peer-sizes 5,20,50`, HDBSCAN runs once per min_cluster_size and its best BCubed
F1 (chosen with the truth: an upper bound for the peer) is reported too.

Targets (issue 8): at least 10x faster than HDBSCAN, BCubed F1 no lower.

    python bench/cluster_peer.py [--faces 50000 --peer-sizes 5]
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
from common import clustered_vectors, emit, log, wait_for_quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--track-size", type=float, default=5.0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--peer-sizes", default="5", help="HDBSCAN min_cluster_size values (the first is the peer)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from sklearn.cluster import HDBSCAN

    from proxytasks.cluster import cluster_faces
    from proxytasks.metrics import clustering_metrics

    x, identity, track, cannot = clustered_vectors(args.faces, args.dim, track_size=args.track_size, seed=args.seed)
    log(f"{len(x)} faces, {int(track.max()) + 1} tracks, {len(cannot)} cannot-links, "
        f"{len(set(identity.tolist()))} identities")

    def f1(labels: np.ndarray) -> float:
        labels = np.where(labels < 0, labels.max(initial=0) + 1 + np.arange(len(labels)), labels)
        return clustering_metrics(identity, labels)["bcubed_f1"]

    wait_for_quiet()
    start = time.perf_counter()
    ours = cluster_faces(x, groups=track, cannot_links=cannot, k=args.k, seed=args.seed)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    bare = cluster_faces(x, k=args.k, seed=args.seed)
    bare_s = time.perf_counter() - start
    peers = {}
    for size in (int(s) for s in args.peer_sizes.split(",")):
        start = time.perf_counter()
        labels = HDBSCAN(min_cluster_size=size, n_jobs=-1, copy=True).fit_predict(x)
        peers[size] = (time.perf_counter() - start, f1(labels), int(labels.max()) + 1, int((labels < 0).sum()))
        log(f"HDBSCAN min_cluster_size={size}: {peers[size][0]:.1f} s, BCubed F1 {peers[size][1]:.4f}, "
            f"{peers[size][2]} clusters, {peers[size][3]} noise points")
    ours_f1, bare_f1 = f1(ours.labels), f1(bare.labels)
    log(f"cluster_faces with links: {ours_s:.1f} s, F1 {ours_f1:.4f}, {ours.n_clusters} clusters; without: "
        f"{bare_s:.1f} s, F1 {bare_f1:.4f}, {bare.n_clusters} clusters")
    first = next(iter(peers))
    peer_s, peer_f1 = peers[first][:2]
    name = f"sklearn HDBSCAN(min_cluster_size={first}), same vectors"
    emit("cluster_peer", "seconds", round(ours_s, 2), "s", name, round(peer_s, 2), round(peer_s / ours_s, 1),
         ">= 10x faster than HDBSCAN", peer_s / ours_s >= 10)
    emit("cluster_peer", "bcubed_f1", round(ours_f1, 4), "F1", name, round(peer_f1, 4), round(ours_f1 / peer_f1, 3),
         "no lower than HDBSCAN's", ours_f1 >= peer_f1)
    emit("cluster_peer", "bcubed_f1_without_links", round(bare_f1, 4), "F1", name + " (both without links)",
         round(peer_f1, 4), round(bare_f1 / peer_f1, 3), "no lower than HDBSCAN's", bare_f1 >= peer_f1)
    if len(peers) > 1:
        best = max(peers, key=lambda s: peers[s][1])
        emit("cluster_peer", "bcubed_f1_vs_best_hdbscan", round(ours_f1, 4), "F1",
             f"sklearn HDBSCAN, best min_cluster_size ({best}) of {args.peer_sizes} by the truth",
             round(peers[best][1], 4), round(ours_f1 / peers[best][1], 3), "no lower than HDBSCAN's",
             ours_f1 >= peers[best][1])


if __name__ == "__main__":
    main()
