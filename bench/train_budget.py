"""Is the training time budget honoured? `train --time-budget S` on a synthetic episode,
wall time measured around the call, for a few budgets.

Target (issue 3): wall time within 10% of the budget. The peer is the budget itself.

    python bench/train_budget.py [--budgets 20,60]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from common import emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="20,60")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from data_tools.synthetic import make_episode
    from proxytasks.manifest import Manifest
    from proxytasks.rules import RuleSet
    from proxytasks.track import track_manifest
    from proxytasks.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(prefix="bench_budget_"))
    manifest = track_manifest(Manifest.read(make_episode(out / "ep", progress=False)), progress=False)
    pairs = RuleSet().apply(manifest)
    for budget in (float(b) for b in args.budgets.split(",")):
        start = time.perf_counter()
        summary = train(manifest, pairs, out / f"run{budget:g}", TrainConfig(time_budget=budget, steps=None),
                        progress=False)
        wall = time.perf_counter() - start
        emit("train_budget", f"wall_seconds_at_budget_{budget:g}", round(wall, 2), "s", "budget", budget,
             round(budget / wall, 3), "within 10% of the budget", abs(wall - budget) <= 0.1 * budget)
        assert summary["stopped"] == "time budget"


if __name__ == "__main__":
    main()
