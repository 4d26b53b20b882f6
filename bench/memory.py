"""Peak memory of `proxytasks benchmark` on a 3,000-face episode.

Runs `python -m proxytasks -q benchmark MANIFEST --out DIR --time-budget T` (every other
option at its default: shots 1,5,20, 5 repeats, `--peers auto`, i.e. face_recognition
and proxy_dlib too where this machine can run them) as a child process on a synthetic
episode (data_tools.synthetic.make_episode) of real ORL faces, or of drawn faces without
../shared/data/orl_faces. Measured: the child's own peak RSS (`wait4`, the figure the
target is about) and, polled every 0.2 s from /proc, the peak summed PSS of the child
and all its descendants (DataLoader workers included, shared pages counted once).

Target (issue 8): peak RSS of `benchmark` on 3,000 faces under 4 GiB. The peer is the
target itself.

    python bench/memory.py [--identities 20 --shots 43 --time-budget 120 --peers auto]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import emit, episode, log, run_child, tree_memory_mb, wait_for_quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=20)
    ap.add_argument("--shots", type=int, default=43, help="43 shots of 20 ORL people: about 3,000 faces")
    ap.add_argument("--time-budget", type=float, default=120)
    ap.add_argument("--peers", default="auto")
    args = ap.parse_args()
    from proxytasks.manifest import Manifest

    manifest = episode(args.identities, args.shots)
    n = len(Manifest.read(manifest, check_files=False))
    out = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    argv = [sys.executable, "-m", "proxytasks", "-q", "benchmark", str(manifest), "--out", str(out),
            "--time-budget", str(args.time_budget), "--peers", args.peers]
    peak = {"rss": 0.0, "pss": 0.0}

    def sample(pid: int) -> None:
        rss, pss = tree_memory_mb(pid)
        peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)

    wait_for_quiet()
    log(f"{n} faces: {' '.join(argv[1:])}")
    rc, wall, rss, _ = run_child(argv, sample=sample)
    if rc:
        raise SystemExit(f"benchmark failed (exit {rc})")
    metrics = json.loads((out / "metrics.json").read_text())
    log(f"benchmark: {wall:.0f} s wall, methods {sorted(metrics['methods'])}; own peak RSS {rss:.0f} MiB, "
        f"tree peak summed RSS {peak['rss']:.0f} MiB, PSS {peak['pss']:.0f} MiB")
    gib = rss / 1024
    emit("memory", "benchmark_peak_rss_gib", round(gib, 3), "GiB", "the target (4 GiB)", 4.0, round(4.0 / gib, 2),
         f"peak RSS of benchmark on {n} faces under 4 GiB", gib < 4)
    tree = peak["pss"] / 1024
    emit("memory", "benchmark_tree_peak_pss_gib", round(tree, 3), "GiB", "the target (4 GiB)", 4.0,
         round(4.0 / tree, 2), f"with its worker processes, on {n} faces, under 4 GiB", tree < 4)


if __name__ == "__main__":
    main()
