"""Rules -> pairs at scale: `RuleSet("same-frame,same-track,track-cooccurrence").apply(manifest)`
against a straightforward pandas groupby/merge implementation of the same three rules.

Input (bench.common.face_columns, seeded): 1,000,000 faces in 200,000 frames of 100 videos
and 20,000 tracks (TV-like shots of several people, each a track over most of the shot,
3% missed detections), as an in-memory `Manifest`. Each side runs in its own child process
(same input, built there), so that its peak RSS is its own. The peer factorizes the
columns to integer codes, self-merges on (media, frame) and on track, merges the
co-occurring track pairs with the faces of both tracks, and drops the "same" rows that a
"different" rule contradicts (the library's default conflict policy), video by video
(pairs never cross videos; one merge over all faces would need over 20 GB); both must
give the same number of rows per rule. Each child runs under a memory limit
(`--memory-gb`, default 12): a side that needs more fails and is reported as null.

Both sides make the same number of calls (`--repeats`, default 2) in their fresh child
process; the result line gives the best call of each (`value`, `peer_value`) and, next to
it, the first call of each (`first_seconds`, `peer_first_seconds`: a first call pays for
the process's first touch of its memory), every call (`all_seconds`, `peer_all_seconds`)
and `repeats`.

Targets (issue 8): all pairs in under 10 s, at least 20x faster than the pandas peer, at
most 16 bytes per stored pair.

    python bench/rules_pairs.py [--faces 1000000 --frames 200000 --tracks 20000 --media 100 --repeats 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from common import child_result, emit, log, peak_rss_mb, run_child, wait_for_quiet

RULES = "same-frame,same-track,track-cooccurrence"


def _input(args):
    from common import columns_manifest, face_columns

    media, frame, track = face_columns(args.faces, args.frames, args.tracks, args.media, seed=args.seed)
    return columns_manifest(media, frame, track)


def ours(args) -> dict:
    from proxytasks.rules import FaceColumns, RuleSet

    manifest = _input(args)
    times, cols_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        pairs = RuleSet(RULES).apply(manifest)
        times.append(time.perf_counter() - start)
        counts, nbytes, n = pairs.counts(), pairs.nbytes, len(pairs)
        del pairs
        start = time.perf_counter()
        FaceColumns.from_manifest(manifest)
        cols_times.append(time.perf_counter() - start)
    return {"seconds": min(times), "first_seconds": times[0], "all_seconds": times,
            "columns_seconds": min(cols_times), "rows": n, "counts": counts, "bytes_per_pair": nbytes / max(n, 1),
            "rss_mb": peak_rss_mb()}


def pandas_pairs(manifest) -> tuple[dict, int]:
    """The three rules by pandas self-merges, video by video (no pair crosses videos, and one
    merge over all 1M faces would need over 20 GB); returns (rows per rule, bytes of the
    stored pairs)."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"media": [f.media for f in manifest.faces], "frame": [f.frame for f in manifest.faces],
                       "track": [f.track for f in manifest.faces]})
    df["face"] = np.arange(len(df))
    df["media"] = pd.factorize(df["media"])[0]
    tracked = df["track"].notna()
    df["track"] = pd.factorize(df["media"].astype(str) + "/" + df["track"].astype(str))[0]  # tracks are per video
    df.loc[~tracked, "track"] = -1
    kept: dict[str, list] = {"same-frame": [], "same-track": [], "track-cooccurrence": []}
    for _, video in df[df["frame"].notna()].groupby("media", sort=False):
        # same-frame: every pair of faces sharing (media, frame)
        m = video.merge(video, on=["media", "frame"], suffixes=("_a", "_b"))
        m = m[m["face_a"] < m["face_b"]]
        same_frame = pd.DataFrame({"i": m["face_a"].to_numpy(), "j": m["face_b"].to_numpy()})
        # track co-occurrence: track pairs seen in one frame, then every face of one with every face of the other
        tp = m[(m["track_a"] >= 0) & (m["track_b"] >= 0) & (m["track_a"] != m["track_b"])]
        tp = pd.DataFrame({"ta": np.minimum(tp["track_a"], tp["track_b"]),
                           "tb": np.maximum(tp["track_a"], tp["track_b"])}).drop_duplicates()
        members = video.loc[video["track"] >= 0, ["track", "face"]]
        co = (tp.merge(members.rename(columns={"track": "ta", "face": "fa"}), on="ta")
                .merge(members.rename(columns={"track": "tb", "face": "fb"}), on="tb"))
        cooc = pd.DataFrame({"i": np.minimum(co["fa"], co["fb"]), "j": np.maximum(co["fa"], co["fb"])})
        # same-track: every pair of faces of one track
        st = members.merge(members, on="track")
        st = st[st["face_x"] < st["face_y"]]
        same_track = pd.DataFrame({"i": st["face_x"].to_numpy(), "j": st["face_y"].to_numpy()})
        # conflicts: a "same" pair that a "different" rule also gives is dropped
        different = pd.concat([same_frame, cooc]).drop_duplicates()
        same_track = same_track.merge(different, on=["i", "j"], how="left", indicator=True)
        same_track = same_track.loc[same_track["_merge"] == "left_only", ["i", "j"]]
        for name, table in (("same-frame", same_frame), ("same-track", same_track), ("track-cooccurrence", cooc)):
            kept[name].append(table)
    counts = {name: sum(map(len, tables)) for name, tables in kept.items()}
    nbytes = sum(int(t.memory_usage(index=False).sum()) for tables in kept.values() for t in tables)
    return counts, nbytes


def peer(args) -> dict:
    manifest = _input(args)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        counts, nbytes = pandas_pairs(manifest)
        times.append(time.perf_counter() - start)
    n = sum(counts.values())
    return {"seconds": min(times), "first_seconds": times[0], "all_seconds": times, "rows": n, "counts": counts,
            "bytes_per_pair": nbytes / max(n, 1), "rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--tracks", type=int, default=20_000)
    ap.add_argument("--media", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2,
                    help="calls of each side, the library and the pandas peer alike (best and first reported)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds each side may take (then reported as null)")
    ap.add_argument("--memory-gb", type=float, default=12, help="address space each side may take (else null)")
    ap.add_argument("--role", choices=("ours", "peer"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.role:
        print(json.dumps((ours if args.role == "ours" else peer)(args)), flush=True)
        return
    wait_for_quiet()
    argv = [sys.executable, __file__] + [a for a in sys.argv[1:]]
    results = {}
    for role in ("ours", "peer"):
        rc, wall, rss, out = run_child(argv + ["--role", role], timeout=args.timeout, memory_gb=args.memory_gb)
        if rc:
            why = f"still running after {args.timeout:g} s" if rc == -9 else \
                f"failed (exit {rc}; MemoryError above means over --memory-gb {args.memory_gb:g})"
            log(f"{role}: {why} at {wall:.0f} s, peak RSS {rss:.0f} MiB: reported as null")
            results[role] = {"seconds": None, "first_seconds": None, "all_seconds": None, "rows": None,
                             "counts": None, "bytes_per_pair": None}
            continue
        results[role] = child_result(out)
        log(f"{role}: {json.dumps(results[role])} (child peak RSS {rss:.0f} MiB, {wall:.0f} s wall)")
    a, b = results["ours"], results["peer"]
    r = lambda x, nd=3: None if x is None else round(x, nd)
    ratio = b["seconds"] / a["seconds"] if a["seconds"] and b["seconds"] else None
    emit("rules_pairs", "seconds_all_pairs", r(a["seconds"]), "s", "pandas groupby/merge, same rules",
         r(b["seconds"]), r(ratio, 2), "under 10 s and >= 20x faster than pandas",
         a["seconds"] is not None and a["seconds"] < 10 and ratio is not None and ratio >= 20,
         first_seconds=r(a["first_seconds"]), peer_first_seconds=r(b["first_seconds"]),
         first_ratio=r(b["first_seconds"] / a["first_seconds"], 2) if a["first_seconds"] and b["first_seconds"]
         else None, all_seconds=a["all_seconds"] and [r(t) for t in a["all_seconds"]],
         peer_all_seconds=b["all_seconds"] and [r(t) for t in b["all_seconds"]], repeats=args.repeats)
    bp = b["bytes_per_pair"] / a["bytes_per_pair"] if a["bytes_per_pair"] and b["bytes_per_pair"] else None
    emit("rules_pairs", "bytes_per_pair", r(a["bytes_per_pair"], 2), "bytes", "pandas frames of the pairs",
         r(b["bytes_per_pair"], 2), r(bp, 2), "<= 16 bytes",
         a["bytes_per_pair"] is not None and a["bytes_per_pair"] <= 16)
    emit("rules_pairs", "pair_rows", a["rows"], "rows", "pandas, same rules", b["rows"],
         r(a["rows"] / b["rows"], 6) if a["rows"] and b["rows"] else None, "the same rows per rule as the peer",
         a["counts"] is not None and a["counts"] == b["counts"])


if __name__ == "__main__":
    main()
