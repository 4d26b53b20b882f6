"""proxytasks against face_recognition (dlib's own pipeline), on a synthetic episode of real faces.

Target (issue 6): proxy training started from dlib's face ResNet (`proxy_dlib`) names at
least as well as face_recognition at 5 shots. Runs `proxytasks benchmark --backbone
dlib_resnet29` (every peer) and prints one JSON line per metric for `pretrained` (frozen
dlib features through the toolkit's clustering and naming) and `proxy_dlib`, the peer
being face_recognition measured in the same run on the same draws.

    python bench/face_peers.py [--identities 10] [--shots 20] [--time-budget 120]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from common import SHARED_DATA, emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_peers_"))
    ids = import_folders(orl, out / "orl.jsonl")
    manifest = make_episode(out / "episode", ids, n_identities=args.identities, n_shots=args.shots,
                            seed=args.seed, progress=False)
    m = run_benchmark(manifest, out / "benchmark", backbone="dlib_resnet29", time_budget=args.time_budget,
                      shots=(1, 5), repeats=args.repeats, seed=0, progress=False,
                      peers=("face_recognition", "proxy_dlib"))
    peer = m["methods"]["face_recognition"]
    for name in ("pretrained", "proxy_dlib"):
        method = m["methods"][name]
        for metric, value, base in (("naming_1shot", method["naming"]["1"], peer["naming"]["1"]),
                                    ("naming_5shot", method["naming"]["5"], peer["naming"]["5"]),
                                    ("bcubed_f1", method["clustering"]["bcubed_f1"], peer["clustering"]["bcubed_f1"])):
            emit("face_peers", f"{name}_{metric}", value, "fraction", "face_recognition, same run", base,
                 value / base if base else None, ">= face_recognition", value >= base)


if __name__ == "__main__":
    main()
