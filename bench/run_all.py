"""Run every benchmark script and pass their JSON lines through; a summary goes to stderr.

    python bench/run_all.py [--quick] [--only rules_pairs,tracker] [--skip memory]

stdout holds only the result lines (one JSON object per line, keys as bench/common.emit
writes them); each script's own log lines and the final count of met and unmet targets
go to stderr. `--quick` runs the hot-path scripts at small sizes (a smoke run of a few
minutes: the numbers are not the targets' sizes) and skips the slow episode benchmarks
(naming_orl_episode, face_peers, train_budget, ingest_speed, memory, cluster_peer).
A result line whose peer could not be measured (``peer_value`` null: the peer's package is
not installed) is counted and named in the summary; `make bench` installs the peers (the
``[bench]`` extra: pandas, scikit-learn). Exit status: 1 when a script failed (a missing data
set counts), else 0 even with unmet targets or missing peers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, arguments of a quick run or None to skip it in a quick run)
SCRIPTS = [
    ("rules_pairs", ["--faces", "50000", "--frames", "10000", "--tracks", "1000", "--media", "5", "--repeats", "1"]),
    ("tracker", ["--detections", "50000", "--frames", "10000", "--tracks", "1000", "--media", "5"]),
    ("embedding", ["--faces", "256", "--repeats", "1"]),
    ("training", ["--identities", "6", "--shots", "8", "--e2e-steps", "200", "--steps", "100", "--peer-steps", "2",
                  "--repeats", "1"]),
    ("index_knn", ["--vectors", "50000", "--exact-queries", "2000"]),
    ("cluster_scale", ["--faces", "100000"]),
    ("cluster_peer", None),
    ("memory", None),
    ("dlib_descriptors", ["--chips", "16", "--batch", "8"]),
    ("ingest_speed", None),
    ("train_budget", None),
    ("budget_sweep", None),
    ("naming_orl_episode", None),
    ("face_peers", None),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="hot paths at small sizes; skip the slow benchmarks")
    ap.add_argument("--only", default="", help="comma-separated script names")
    ap.add_argument("--skip", default="", help="comma-separated script names")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    met = unmet = 0
    failed: list[str] = []
    no_peer: list[str] = []
    for name, quick in SCRIPTS:
        if (only and name not in only) or name in skip or (args.quick and quick is None):
            continue
        argv = [sys.executable, str(HERE / f"{name}.py")] + (quick if args.quick else [])
        print(f"== {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        for line in proc.stdout:
            line = line.rstrip("\n")
            try:
                row = json.loads(line)
            except ValueError:
                print(line, file=sys.stderr, flush=True)  # not a result line
                continue
            print(json.dumps(row), flush=True)
            met += bool(row.get("met"))
            unmet += not row.get("met")
            if "peer_value" in row and row["peer_value"] is None and row.get("peer"):
                no_peer.append(f"{row.get('bench')}/{row.get('metric')}")
        proc.wait()
        print(f"== {name}: exit {proc.returncode} after {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
        if proc.returncode:
            failed.append(name)
    print(f"summary: {met + unmet} result lines, {met} met, {unmet} unmet"
          + (f"; failed scripts: {', '.join(failed)}" if failed else "")
          + (f"; {len(no_peer)} without their peer measured ({', '.join(no_peer)}): pip install -e '.[bench]'"
             if no_peer else ""), file=sys.stderr, flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
