"""Clustering at scale: `proxytasks.cluster.cluster_faces` on 1,000,000 faces with their
tracks (must-links) and co-occurrence cannot-links, number of people unknown, threshold
from the cannot-links.

Vectors (bench.common.clustered_vectors, seeded): 1,000,000 unit vectors of 128-d,
10,000 identities (skewed sizes), tracks of 5 faces on average (about 200,000), 4 people
a shot sharing its lighting, one cannot-link per pair of tracks sharing a shot. The run
is a child process: its wall time for `cluster_faces` and its own peak RSS (input
included) are measured; BCubed F1 against the known identities is logged beside.
The peer is the target itself (no other clusterer is run at this size; see
cluster_peer.py for scikit-learn's HDBSCAN at 50,000 faces).

Target (issue 8): 1,000,000 faces in under 10 minutes and 8 GiB.

    python bench/cluster_scale.py [--faces 1000000 --track-size 5 --k 10]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from common import (
    child_result,
    clustered_vectors,
    emit,
    log,
    peak_rss_mb,
    run_child,
    wait_for_quiet,
)


def child(args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    from proxytasks.cluster import cluster_faces
    from proxytasks.metrics import clustering_metrics

    start = time.perf_counter()
    x, identity, track, cannot = clustered_vectors(args.faces, args.dim, track_size=args.track_size, seed=args.seed)
    made = time.perf_counter() - start
    log(f"{len(x)} faces, {int(track.max()) + 1} tracks, {len(cannot)} cannot-links, "
        f"{len(set(identity.tolist()))} identities, made in {made:.1f} s")
    start = time.perf_counter()
    result = cluster_faces(x, groups=track, cannot_links=cannot, k=args.k, seed=args.seed)
    seconds = time.perf_counter() - start
    m = clustering_metrics(identity, result.labels)
    return {"seconds": seconds, "bcubed_f1": m["bcubed_f1"], "clusters": m["clusters"], "info": result.info,
            "rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--track-size", type=float, default=5.0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args), default=str), flush=True)
        return
    wait_for_quiet()
    rc, wall, rss, out = run_child([sys.executable, __file__, *sys.argv[1:], "--child"])
    if rc:
        raise SystemExit(f"the clustering child failed (exit {rc})")
    r = child_result(out)
    log(f"cluster_faces: {json.dumps(r)}; child wall {wall:.0f} s, peak RSS {rss:.0f} MiB; BCubed F1 "
        f"{r['bcubed_f1']:.4f} against the known identities, {r['clusters']} clusters")
    gib = rss / 1024
    emit("cluster_scale", "seconds", round(r["seconds"], 1), "s", "the target (600 s)", 600.0,
         round(600.0 / r["seconds"], 2), f"{args.faces} faces in under 10 minutes", r["seconds"] < 600)
    emit("cluster_scale", "peak_rss_gib", round(gib, 2), "GiB", "the target (8 GiB)", 8.0, round(8.0 / gib, 2),
         f"{args.faces} faces in under 8 GiB", gib < 8)


if __name__ == "__main__":
    main()
