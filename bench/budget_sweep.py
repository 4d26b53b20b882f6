"""`proxytasks budget` on a synthetic episode of real ORL faces: wall time against the sum
of the budgets (target: at most 20% over) and the worst predicted-vs-actual error of the
configurations run (target: within 25%)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="20,40,80")
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--shots", type=int, default=8, help="shots of the episode")
    args = ap.parse_args()
    from data_tools.importers import import_folders
    from data_tools.synthetic import make_episode
    from proxytasks.benchmark import tracked_pairs
    from proxytasks.budget import SweepSettings, budget_sweep
    from proxytasks.manifest import Manifest

    out = Path(tempfile.mkdtemp(prefix="budget_"))
    ids = import_folders(SHARED_DATA / "orl_faces", out / "orl.jsonl")
    make_episode(out / "ep", ids, n_identities=args.identities, n_shots=args.shots, seed=1, progress=False)
    manifest, pairs = tracked_pairs(Manifest.read(out / "ep" / "manifest.jsonl"), out, progress=False)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    t0 = time.perf_counter()
    result = budget_sweep(manifest, pairs, out / "budget", SweepSettings(budgets=budgets, max_configs=6),
                          progress=False)
    wall, total = time.perf_counter() - t0, sum(budgets)
    emit("budget_sweep", "wall time", round(wall, 1), "s", "sum of the budgets", total, round(total / wall, 3),
         "at most 1.2x the sum of the budgets", wall <= 1.2 * total)
    runs = [r for b in result["budgets"].values() for r in b["configs"] if r["status"] == "run"]
    worst = max(abs(r["predicted_s"] - r["actual_s"]) / r["actual_s"] for r in runs)
    emit("budget_sweep", "worst prediction error", round(worst, 4), "fraction of actual", "the target", 0.25,
         round(0.25 / max(worst, 1e-9), 3), "predicted within 25% of actual for every configuration run",
         worst <= 0.25)


if __name__ == "__main__":
    main()
