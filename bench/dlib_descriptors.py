"""dlib's face descriptors: the torch port (proxytasks.dlib_resnet) against dlib's own C++.

Same aligned chips (bbt faces through dlib's 5-point predictor and get_face_chip), same
machine and threads. Prints chips/s of each (the peer: ``dlib.face_recognition_model_v1
.compute_face_descriptor`` on the batch) and the smallest cosine between their descriptors.

    python bench/dlib_descriptors.py [--chips 64] [--batch 32]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import SHARED_DATA, emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import tempfile
    from pathlib import Path

    import dlib
    import timm

    from data_tools.importers import import_folders
    from proxytasks.align import DlibAligner
    from proxytasks.dlib_resnet import dlib_model_path

    root = SHARED_DATA / "bbt" / "images"
    if not root.is_dir():
        raise SystemExit(f"needs {root} (see shared/data/README.md)")
    manifest = import_folders(root, Path(tempfile.mkdtemp(prefix="bench_dlib_")) / "bbt.jsonl")
    aligner = DlibAligner()
    chips = np.stack([np.asarray(aligner(manifest, manifest[i % len(manifest)])) for i in range(args.chips)])
    port = timm.create_model("dlib_resnet29", pretrained=True).eval()
    peer = dlib.face_recognition_model_v1(str(dlib_model_path()))
    port.describe(chips[:2]), peer.compute_face_descriptor(list(chips[:2]))  # warm-up

    def run(fn) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = np.concatenate([np.array([np.array(v) for v in fn(chips[s:s + args.batch])])
                              for s in range(0, len(chips), args.batch)])
        return out, len(chips) / (time.perf_counter() - t0)

    ours, ours_speed = run(port.describe)
    theirs, peer_speed = run(lambda batch: peer.compute_face_descriptor(list(batch)))
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    emit("dlib_descriptors", "chips_per_s", ours_speed, "chips/s", "dlib compute_face_descriptor, same chips",
         peer_speed, ours_speed / peer_speed, ">= 1x dlib's speed", ours_speed >= peer_speed)
    emit("dlib_descriptors", "min_cosine", float(cosine.min()), "cosine", "dlib's descriptors (1.0)", 1.0,
         float(cosine.min()), ">= 0.999", bool(cosine.min() >= 0.999))


if __name__ == "__main__":
    main()
