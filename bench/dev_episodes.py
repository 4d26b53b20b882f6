"""The development benchmark: pretrained vs proxy on realistic episodes of three real photo sets.

Realistic episodes (data_tools.synthetic, one photo per appearance: the faces of one track
are near-duplicates, as in real video) made from the identity-labelled photos of
``orl_faces`` (crops), ``yalefaces`` and ``deepface_pairs`` (each photo's largest face,
found by MTCNN), several seeds each; on each, ``proxytasks benchmark`` (track-disjoint
naming, cross-track verification). Prints one JSON line per episode with both methods,
then per metric the mean over episodes, proxy against pretrained in the same run.

Targets (issue 16): proxy beats pretrained by >= 3 points of naming@5 and >= 0.05 BCubed
F1; clusters at most 1.5x the true number; no two cannot-linked faces share a name.

    python bench/dev_episodes.py [--seeds 0,1,2] [--sets orl_faces,yalefaces,deepface_pairs]
        [--steps 600] [--switch-rate 0] [--out DIR]

``--switch-rate 0.35`` renders the old, flattering episodes (the photo changes inside a
track) for comparison.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from common import SHARED_DATA, emit, log

SETS = ("orl_faces", "yalefaces", "deepface_pairs")


def largest_faces(images: list[tuple[Path, str]], out: Path):
    """A manifest of each photo's largest face (MTCNN), ``image`` + ``bbox`` + ``identity``."""
    from proxytasks.detect import create_detector
    from proxytasks.manifest import Face, Manifest
    from proxytasks.media import read_image

    detector = create_detector("mtcnn", min_face=30)
    faces = []
    for path, identity in images:
        found = detector.detect([read_image(path)])[0]
        if not len(found):
            continue
        x, y, w, h = (float(v) for v in found.boxes[int(np.argmax(found.boxes[:, 2] * found.boxes[:, 3]))])
        faces.append(Face(id=path.name, media=path.name, image=str(path), bbox=[x, y, w, h], identity=identity))
    Manifest(faces, out.parent).write(out)
    return Manifest.read(out)


def identity_set(name: str, out: Path):
    """The identity-labelled faces of one photo set of ../shared/data."""
    from data_tools.importers import import_folders

    root = SHARED_DATA / name
    if not root.is_dir():
        raise SystemExit(f"needs {root} (see shared/data/README.md)")
    path = out / f"{name}.jsonl"
    if name == "orl_faces":
        return import_folders(root, path)
    if name == "yalefaces":
        return largest_faces([(p, p.name.split(".")[0]) for p in sorted(root.glob("subject*"))], path)
    rows = [line.split("\t") for line in (root / "identity_clusters_from_pair_csvs.tsv").read_text().splitlines()[1:]]
    photos = root / "tests" / "unit" / "dataset"
    return largest_faces([(photos / f, cluster) for cluster, _, files in rows for f in files.strip().split(",")], path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--identities", type=int, default=10, help="people per episode (fewer when a set has fewer)")
    ap.add_argument("--shots", type=int, default=16, help="shots (scenes) per episode")
    ap.add_argument("--steps", type=int, default=600,
                    help="training steps (fixed, so the result does not depend on the machine's load); 0: as "
                         "a user gets them (until --time-budget or train's epoch cap)")
    ap.add_argument("--time-budget", type=float, default=1800.0, help="a limit that the steps should not meet")
    ap.add_argument("--switch-rate", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from data_tools.synthetic import make_episode
    from proxytasks.benchmark import run_benchmark

    out = args.out or Path(tempfile.mkdtemp(prefix="dev_episodes_"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sets.split(","):
        ids = identity_set(name, out)
        usable = len({f.identity for f in ids.faces})
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            folder = out / f"{name}_s{seed}"
            manifest = make_episode(folder / "episode", ids, n_identities=min(args.identities, usable),
                                    n_shots=args.shots, seed=seed, switch_rate=args.switch_rate, progress=False)
            m = run_benchmark(manifest, folder / "benchmark", time_budget=args.time_budget, shots=(1, 5),
                              repeats=3, seed=0, progress=False, peers=(), train_steps=args.steps or None)
            row = {"set": name, "seed": seed, "faces": m["dataset"]["faces"], "identities": m["dataset"]["identities"],
                   "train_steps": m["train"]["steps"], "seconds": round(time.perf_counter() - start, 1)}
            for method in ("pretrained", "proxy"):
                r = m["methods"][method]
                row[method] = {"naming_1": r["naming"]["1"], "naming_5": r["naming"]["5"],
                               "bcubed_f1": r["clustering"]["bcubed_f1"], "clusters": r["clustering"]["clusters"],
                               "roc_auc": r["verification"]["roc_auc"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    log(f"{len(rows)} episodes in {out}")
    for metric, target in (("naming_5", 0.03), ("naming_1", 0.0), ("bcubed_f1", 0.05), ("roc_auc", 0.0)):
        proxy = [r["proxy"][metric] for r in rows if r["proxy"][metric] is not None]
        pre = [r["pretrained"][metric] for r in rows if r["pretrained"][metric] is not None]
        value, peer = float(np.mean(proxy)), float(np.mean(pre))
        emit("dev_episodes", metric, value, "mean over episodes", "pretrained backbone, same episodes", peer,
             value / peer if peer else None, f"proxy - pretrained >= {target}", value - peer >= target,
             episodes=len(rows), switch_rate=args.switch_rate)
    ratio = float(np.mean([r["proxy"]["clusters"] / r["identities"] for r in rows]))
    emit("dev_episodes", "clusters_per_person", ratio, "clusters / true people", "pretrained",
         float(np.mean([r["pretrained"]["clusters"] / r["identities"] for r in rows])), None, "<= 1.5", ratio <= 1.5)


if __name__ == "__main__":
    main()
