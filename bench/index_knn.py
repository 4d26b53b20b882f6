"""kNN graph over all vectors: `proxytasks.index.knn_graph` (the index it builds itself:
`graph_factory`, IVF4096,Flat at 1M, nprobe tuned to recall 0.96 on 1,000 of the rows;
`--factory F` builds `FaceIndex.build(factory=F)` instead and searches through it) against
exact search with faiss `IndexFlatIP`.

Vectors (bench.common.clustered_vectors, seeded): 1,000,000 unit vectors of 128-d shaped
like face embeddings: 10,000 identities around 32 looks, tracks of a few faces, shot
lighting shared by the people of a shot. The library builds its index and the graph
(k=10, each face's 10 nearest other faces); the exact peer searches a seeded sample of
`--exact-queries` rows against all vectors with IndexFlatIP (same threads), and its time
for every row is extrapolated linearly (flat search costs the same per query); recall@10
is measured on that sample.

Targets (issue 8): recall@10 at least 0.95 against exact search, at least 10x faster
than exact IndexFlatIP.

    python bench/index_knn.py [--vectors 1000000 --dim 128 --k 10 --exact-queries 10000 --factory F]
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from common import clustered_vectors, emit, log, peak_rss_mb, wait_for_quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--exact-queries", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factory", default=None, help="a faiss factory for FaceIndex.build instead of its own choice "
                    "(e.g. IVF4096,Flat), the graph then searched through it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("proxytasks").setLevel(logging.INFO)
    import faiss

    from proxytasks.index import FaceIndex, knn_graph

    x = clustered_vectors(args.vectors, args.dim, seed=args.seed)[0]
    log(f"{len(x)} vectors of {x.shape[1]}-d, faiss threads {faiss.omp_get_max_threads()}")
    wait_for_quiet()
    start = time.perf_counter()
    index = None if args.factory is None else FaceIndex.build(x, [str(i) for i in range(len(x))],
                                                              factory=args.factory, seed=args.seed)
    _, idx = knn_graph(x, args.k, index=index, seed=args.seed)
    ours = time.perf_counter() - start
    log(f"knn_graph: {ours:.1f} s, peak RSS {peak_rss_mb():.0f} MiB")

    rows = np.sort(np.random.default_rng(args.seed).choice(len(x), min(args.exact_queries, len(x)), replace=False))
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    added = time.perf_counter() - start
    start = time.perf_counter()
    _, exact = flat.search(x[rows], args.k + 1)
    searched = time.perf_counter() - start
    peer = added + searched * len(x) / len(rows)
    log(f"IndexFlatIP: add {added:.2f} s, {len(rows)} queries in {searched:.1f} s -> {peer:.0f} s for all "
        f"{len(x)} (extrapolated)")
    recalls = []
    for r, found in zip(rows, exact):
        truth = found[found != r][:args.k]
        recalls.append(len(np.intersect1d(truth, idx[r])) / args.k)
    recall = float(np.mean(recalls))
    what = "" if args.factory is None else f"_{args.factory}"
    emit("index_knn", f"knn_graph_seconds{what}", round(ours, 2), "s", f"exact IndexFlatIP (extrapolated from "
         f"{len(rows)} queries)", round(peer, 2), round(peer / ours, 2), ">= 10x faster than exact IndexFlatIP",
         peer / ours >= 10)
    emit("index_knn", f"recall_at_{args.k}{what}", round(recall, 4), "recall", "exact IndexFlatIP", 1.0,
         round(recall, 4), ">= 0.95", recall >= 0.95)


if __name__ == "__main__":
    main()
