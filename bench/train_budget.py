"""Is the training time budget honoured? `proxytasks train --time-budget B` as a person runs
it (a fresh process: imports, reading the manifest and pairs, caching the trunk features and
saving all count), wall time measured around the command, on real footage, for a few budgets,
with steps far beyond any of them (so that the budget, not the default epoch cap, ends it).

Target (issue 18): wall time within max(1.1 B, B + 5 s) of the budget, and some steps trained
at every budget (when every face cannot be cached in time, a subsample of whole tracks is).
The peer is the budget itself. Media: the Hamilton clip of ../shared/data (ingested, tracked
and paired once into --work, reused by later runs).

    python bench/train_budget.py [--budgets 20,60,180] [--media PATH] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED_DATA, emit, load, log

HAMILTON = SHARED_DATA / "face_recognition_examples" / "examples" / "short_hamilton_clip.mp4"


def proxytasks(*args: str) -> float:
    """Run one proxytasks command in a fresh process; returns its wall time (s)."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "proxytasks", "-q", *args], cwd=REPO, capture_output=True,
                         text=True, check=False)
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"proxytasks {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall


def prepare(media: Path, work: Path) -> tuple[Path, Path]:
    """Manifest (ingested and tracked) and rule pairs of ``media`` in ``work`` (made once)."""
    manifest, tracked, pairs = work / "manifest.jsonl", work / "tracked.jsonl", work / "pairs.npz"
    if not pairs.is_file():
        work.mkdir(parents=True, exist_ok=True)
        log(f"ingesting {media} into {work} (once)")
        proxytasks("ingest", str(media), "-o", str(manifest), "--overwrite")
        proxytasks("track", str(manifest), "-o", str(tracked), "--overwrite")
        proxytasks("pairs", str(tracked), "-o", str(pairs), "--overwrite")
    return tracked, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="20,60,180")
    ap.add_argument("--media", type=Path, default=HAMILTON)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_train_budget")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.media.is_file():
        raise SystemExit(f"needs {args.media} (see shared/data/README.md)")
    tracked, pairs = prepare(args.media, args.work)
    faces = sum(1 for line in tracked.read_text().splitlines() if line.strip())
    log(f"{faces} faces in {tracked}")
    for budget in (float(b) for b in args.budgets.split(",")):
        run = args.work / f"run{budget:g}"
        at_start = load()
        # steps far beyond the budget: the budget, not train's epoch cap, must end the run
        wall = proxytasks("train", str(tracked), str(pairs), "-o", str(run), "--time-budget", f"{budget:g}",
                          "--steps", "100000000", "--overwrite")
        summary = json.loads((run / "config.json").read_text())["train"]
        limit = max(1.1 * budget, budget + 5)
        cached = summary.get("features", {})
        emit("train_budget", f"wall_seconds_at_budget_{budget:g}", round(wall, 2), "s", "budget", budget,
             round(budget / wall, 3), "wall <= max(1.1 B, B + 5 s) and steps > 0",
             wall <= limit and summary["steps"] > 0, steps=summary["steps"], stopped=summary["stopped"],
             faces_cached=cached.get("faces"), faces=cached.get("of", faces), views_cached=cached.get("views"),
             subsample=cached.get("subsample"), caching_seconds=cached.get("seconds"),
             train_seconds_reported=summary["seconds"], load_at_start=at_start, load_at_end=load())


if __name__ == "__main__":
    main()
