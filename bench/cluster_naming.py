"""Clustering and naming under constraints (issue 16) on synthetic episodes of real ORL faces.

For each episode (`bench.common.episode`: real ORL photos, one photo per appearance as
`data_tools.synthetic.make_episode` renders them now), the faces are tracked and the
default rules give the pairs (`proxytasks.benchmark.tracked_pairs`, tracks found by the
tracker, not taken from the truth); proxy training runs once (`--train-steps` fixed
steps within `--time-budget`), and both the pretrained and the proxy vectors are then
clustered and named two ways, on the same vectors and the same draws:

- before: `cluster_faces(..., linkage="single")` (the face-level single linkage over
  track means of issue 8) and `name_faces(..., unknown_threshold=None)` without
  cannot-links (every face gets the argmax name);
- after: `cluster_faces` with its defaults (average linkage over tracks; told, as the benchmark
  tells it, whether the vectors were trained on the links: the proxy head unless its run kept the
  identity head) and `name_faces(..., cannot_links=...)` with its default calibrated unknown
  threshold.

Reported per vector set and way: clusters against the true number of people, BCubed F1;
naming accuracy at 1 and 5 shots (track-disjoint, `proxytasks.benchmark.naming_scores`,
every identity named: a closed set, where "unknown" can only cost; the after row also
gives it with `unknown_threshold=None`, key `unknown_threshold_none`); cannot-linked face
pairs that share a name, one face at least named by the method (summed over the draws);
and an open set like the issue's sitcom
case: 5 faces named for each of the `--named-share` largest identities, the others never
named: the share of the never-named people's faces that get a name (forced), and the
share of given names that are right (over every face not named by hand).

Identity is read for scoring only. Vectors are cached in `--out` (default under the
system's temporary folder), so a rerun only repeats the clustering and naming.

    python bench/cluster_naming.py [--identities 10 --shots 20 --seed 1 --train-steps 300]
    python bench/cluster_naming.py --from-benchmark DIR/orl_faces_s0/benchmark ...
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, episode, log, wait_for_quiet


def from_benchmark(folder: Path) -> dict[str, np.ndarray]:
    """The vectors and constraints of a finished `proxytasks benchmark` output folder
    (its tracked manifest, pairs and trained run), computed as the benchmark does."""
    from proxytasks.benchmark import identities
    from proxytasks.cluster import constraint_arrays
    from proxytasks.embed import head_vectors
    from proxytasks.embedder import Embedder
    from proxytasks.manifest import Manifest
    from proxytasks.pairs import PairSet

    manifest = Manifest.read(folder / "tracked.jsonl", check_files=False)
    pairs = PairSet.load(folder / "pairs.npz", face_ids=[f.id for f in manifest.faces])
    with np.load(folder / "run" / "features.npz", allow_pickle=False) as z:
        plain = z["features"][0].astype(np.float32)
    pretrained = plain / np.maximum(np.linalg.norm(plain, axis=1, keepdims=True), 1e-12)
    groups, cannot = constraint_arrays(manifest, pairs)
    model = Embedder.load(folder / "run")
    return {"pretrained": pretrained, "proxy": head_vectors(model, plain), "groups": groups, "cannot": cannot,
            "identity": identities(manifest).astype(str), "proxy_trained": np.array(model.head_kind != "identity")}


def prepare(args) -> dict[str, np.ndarray]:
    """Episode, tracks, rule pairs, proxy training; the vectors and constraints (cached)."""
    out = args.out or Path(tempfile.gettempdir()) / "proxytasks_bench" / (
        f"cluster_naming_{args.identities}x{args.shots}_s{args.seed}_steps{args.train_steps}")
    cache = out / "vectors.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from proxytasks.benchmark import _proxy_run, identities, tracked_pairs
    from proxytasks.cluster import constraint_arrays
    from proxytasks.manifest import Manifest
    from proxytasks.train import TrainConfig

    path = episode(args.identities, args.shots, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest, pairs = tracked_pairs(Manifest.read(path), out, progress=False, keep_tracks=False)
    cfg = TrainConfig(backbone=args.backbone, time_budget=args.time_budget, seed=0, steps=args.train_steps)
    trained, pretrained, proxy = _proxy_run(manifest, pairs, out / "run", cfg, progress=False)
    groups, cannot = constraint_arrays(manifest, pairs)
    data = {"pretrained": pretrained, "proxy": proxy, "groups": groups, "cannot": cannot,
            "identity": identities(manifest).astype(str), "proxy_trained": np.array(trained["trained_on_links"])}
    np.savez(cache, **data)
    return data


def shared_names(names: list, pairs: np.ndarray, named: dict) -> int:
    """Cannot-linked face pairs whose two faces carry the same name, one of them at least
    named by the method (two faces a person named alike are the person's call)."""
    return int(sum(names[i] is not None and names[i] == names[j] and not (i in named and j in named)
                   for i, j in pairs.tolist()))


def evaluate(x: np.ndarray, data: dict, way: str, args, trained: bool = False) -> dict:
    from proxytasks.benchmark import naming_scores
    from proxytasks.cluster import cluster_faces
    from proxytasks.metrics import clustering_metrics
    from proxytasks.naming import name_faces

    identity = data["identity"].astype(object)
    groups, cannot = data["groups"], data["cannot"]
    before = way == "before"
    t0 = time.perf_counter()
    if before:
        clusters = cluster_faces(x, groups=groups, cannot_links=cannot, seed=0, linkage="single").labels
    else:
        clusters = cluster_faces(x, groups=groups, cannot_links=cannot, seed=0, trained_on_links=trained).labels
    cluster_s = time.perf_counter() - t0
    known = identity != ""
    cm = clustering_metrics(identity[known], clusters[known])
    options = {"unknown_threshold": None} if before else {"cannot_links": cannot}
    shared = [0]

    def namer(named, seed):
        names = name_faces(x, named, tracks=groups, clusters=clusters, seed=seed, **options).names
        shared[0] += shared_names(names, cannot, named)
        return names

    out = {"clusters": cm["clusters"], "identities": int(len(set(identity[known].tolist()))),
           "bcubed_f1": round(cm["bcubed_f1"], 4), "cluster_seconds": round(cluster_s, 2)}
    draws = 0
    for k in args.naming_shots:
        acc, _ = naming_scores(identity, namer, k, args.repeats, 0, groups)
        out[f"naming_{k}"] = None if acc is None else round(acc, 4)
        draws += args.repeats
        if not before:  # the same with unknown_threshold=None: what the constraints alone do
            keep = lambda named, seed: name_faces(x, named, tracks=groups, clusters=clusters, seed=seed,  # noqa: E731
                                                  cannot_links=cannot, unknown_threshold=None).names
            acc, _ = naming_scores(identity, keep, k, args.repeats, 0, groups)
            out[f"naming_{k}_no_reject"] = None if acc is None else round(acc, 4)
    out["cannot_pairs"] = len(cannot)
    out["cannot_pairs_sharing_a_name"] = shared[0]
    out["draws"] = draws
    out.update(open_set(x, identity, groups, clusters, cannot, options, args))
    return out


def open_set(x, identity, groups, clusters, cannot, options, args) -> dict:
    """5 faces named for each of the largest identities, the others never named."""
    from proxytasks.naming import name_faces

    people, counts = np.unique(identity[identity != ""], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    n_named = max(1, int(round(args.named_share * len(people))))
    main = set(people[order[:n_named]].tolist())
    forced, right, given, shared = [], [], [], 0
    for r in range(args.repeats):
        rng = np.random.default_rng([7, r])
        named = {}
        for p in sorted(main):
            faces = np.flatnonzero(identity == p)
            named.update({int(i): p for i in rng.choice(faces, min(5, len(faces)), replace=False)})
        names = name_faces(x, named, tracks=groups, clusters=clusters, seed=r, **options).names
        rest = np.array([i for i in range(len(x)) if i not in named and identity[i] != ""])
        pred = np.array([names[i] for i in rest], dtype=object)
        true = identity[rest]
        unnamed = ~np.isin(true, list(main))
        forced.append(float(np.mean([p is not None for p in pred[unnamed]])) if unnamed.any() else None)
        has = np.array([p is not None for p in pred])
        right.append(float(np.mean(pred[has] == true[has])) if has.any() else None)
        given.append(float(has[~unnamed].mean()))
        shared += shared_names(names, cannot, named)
    mean = lambda v: None if any(a is None for a in v) else round(float(np.mean(v)), 4)  # noqa: E731
    return {"open_named_people": n_named, "open_never_named_people": int(len(people) - n_named),
            "open_never_named_faces_named": mean(forced), "open_names_right": mean(right),
            "open_known_faces_named": mean(given), "open_cannot_pairs_sharing_a_name": shared}


def report(label: str, data: dict, args) -> None:
    """Evaluate both ways on both vector sets of one episode; JSON lines out, details on stderr."""
    log(f"{label}: {len(data['identity'])} faces, {len(set(data['identity'].tolist()) - {''})} identities, "
        f"{len(np.unique(data['groups'][data['groups'] >= 0]))} tracks, {len(data['cannot'])} cannot-links")
    for vectors in ("pretrained", "proxy"):
        trained = vectors == "proxy" and bool(data.get("proxy_trained", True))  # caches from before: trained
        res = {way: evaluate(data[vectors], data, way, args, trained) for way in ("before", "after")}
        log(f"{label} {vectors}: {json.dumps(res)}")
        b, a = res["before"], res["after"]
        peer = f"{vectors} vectors, single linkage and argmax naming (before), same run"
        true_n = a["identities"]
        row = lambda metric, *rest, **extra: emit("cluster_naming", f"{vectors}_{metric}", *rest,  # noqa: E731
                                                 episode=label, **extra)
        row("clusters_per_person", round(a["clusters"] / true_n, 3), "ratio", peer, round(b["clusters"] / true_n, 3),
            round(b["clusters"] / a["clusters"], 3), "<= 1.5", a["clusters"] <= 1.5 * true_n, clusters=a["clusters"],
            peer_clusters=b["clusters"], people=true_n)
        row("bcubed_f1", a["bcubed_f1"], "F1", peer, b["bcubed_f1"], round(a["bcubed_f1"] / b["bcubed_f1"], 3), "up",
            a["bcubed_f1"] > b["bcubed_f1"])
        for k in args.naming_shots:
            row(f"naming_{k}", a[f"naming_{k}"], "accuracy", peer, b[f"naming_{k}"],
                round(a[f"naming_{k}"] / b[f"naming_{k}"], 3) if b[f"naming_{k}"] else None,
                "report (closed set: unknown only costs)", True, unknown_threshold_none=a[f"naming_{k}_no_reject"])
        for key in ("cannot_pairs_sharing_a_name", "open_cannot_pairs_sharing_a_name"):
            row(key, a[key], "pairs", peer, b[key], None, "0", a[key] == 0, draws=a["draws"] if key[0] == "c" else
                args.repeats, cannot_pairs=a["cannot_pairs"])
        row("never_named_faces_named", a["open_never_named_faces_named"], "fraction", peer,
            b["open_never_named_faces_named"], None, "below before",
            (a["open_never_named_faces_named"] or 0) < (b["open_never_named_faces_named"] or 0))
        row("given_names_right", a["open_names_right"], "precision", peer, b["open_names_right"],
            round(a["open_names_right"] / b["open_names_right"], 3), "up", a["open_names_right"] > b["open_names_right"],
            known_faces_named=a["open_known_faces_named"], peer_known_faces_named=b["open_known_faces_named"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=10)
    ap.add_argument("--shots", type=int, default=20, help="shots of the episode (scenes)")
    ap.add_argument("--seed", type=int, default=1, help="the episode's seed")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--time-budget", type=float, default=1500, help="a limit the training steps should not meet")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--naming-shots", default="1,5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--named-share", type=float, default=0.6,
                    help="open set: share of the identities (the largest) given 5 names each")
    ap.add_argument("--out", type=Path, default=None, help="cache folder (vectors, episode run)")
    ap.add_argument("--from-benchmark", type=Path, nargs="*", default=None,
                    help="instead of an episode: finished `proxytasks benchmark` output folders (tracked.jsonl, "
                         "pairs.npz, run/), e.g. those of bench/dev_episodes.py")
    args = ap.parse_args()
    args.naming_shots = [int(s) for s in args.naming_shots.split(",")]
    logging.basicConfig(level=logging.WARNING)
    if args.from_benchmark:
        episodes = [(f"{p.parent.name}/{p.name}", from_benchmark(p)) for p in args.from_benchmark]
    else:
        episodes = [(f"orl_{args.identities}x{args.shots}_s{args.seed}", prepare(args))]
    wait_for_quiet()
    for label, data in episodes:
        report(label, data, args)


if __name__ == "__main__":
    main()
