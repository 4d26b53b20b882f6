"""Shared output format of the benchmarks: one JSON object per line with fixed keys."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def emit(bench: str, metric: str, value: float | None, unit: str, peer: str, peer_value: float | None,
         ratio: float | None, target: str, met: bool) -> dict:
    """Print and return one result line (ratio: how many times better than the peer)."""
    row = {"bench": bench, "metric": metric, "value": value, "unit": unit, "peer": peer,
           "peer_value": peer_value, "ratio": ratio, "target": target, "met": bool(met)}
    print(json.dumps(row), flush=True)
    return row


def orl_episode_benchmark(doc: str, prefix: str, **options) -> dict:
    """Parse the episode options of a benchmark script (``doc``: its docstring), render a
    synthetic episode of real ORL faces and run ``proxytasks benchmark`` on it with
    ``options``; returns the metrics."""
    import argparse
    import logging
    import tempfile

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--identities", type=int, default=10)
    ap.add_argument("--shots", type=int, default=20, help="shots of the episode (scenes), not names")
    ap.add_argument("--time-budget", type=float, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from data_tools.importers import import_folders
    from data_tools.synthetic import make_episode
    from proxytasks.benchmark import run_benchmark

    orl = SHARED_DATA / "orl_faces"
    if not orl.is_dir():
        raise SystemExit(f"needs {orl} (see shared/data/README.md)")
    out = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    ids = import_folders(orl, out / "orl.jsonl")
    manifest = make_episode(out / "episode", ids, n_identities=args.identities, n_shots=args.shots,
                            seed=args.seed, progress=False)
    return run_benchmark(manifest, out / "benchmark", time_budget=args.time_budget, shots=(1, 5),
                         repeats=args.repeats, seed=0, progress=False, **options)
