"""dlib's face descriptors: the torch port (proxytasks.dlib_resnet) against dlib's own C++.

Same aligned chips (bbt faces through dlib's 5-point predictor and get_face_chip), same
machine and the same thread count on both sides: ``--threads`` (default: the cores this
process may use) goes to ``torch.set_num_threads`` for the port and, before numpy, torch
and dlib are loaded, to ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``
and ``DLIB_NUM_THREADS`` (dlib's default thread pool) for both, and to threadpoolctl's
limit when it is installed. Being told a thread count does not make a side use it (a dlib
built without BLAS, ``dlib.DLIB_USE_BLAS`` False, may run its network on one thread), so
the line also reports each side's CPU seconds per wall second in its best pass
(``cpu_per_wall``, ``peer_cpu_per_wall``: about the cores it kept busy).
Prints chips/s of each (the peer: ``dlib.face_recognition_model_v1
.compute_face_descriptor`` on the batch), the best of ``--repeats`` passes over the chips
taken in turn (port, dlib, port, dlib...; every pass in ``all_chips_per_s`` and
``peer_all_chips_per_s``), after a warm-up call of each side at each batch size used, and
the smallest cosine between their descriptors.

    python bench/dlib_descriptors.py [--chips 64] [--batch 32] [--threads N] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time

from common import SHARED_DATA, emit, log

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DLIB_NUM_THREADS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads of both sides (default: the cores this process may use)")
    ap.add_argument("--repeats", type=int, default=3, help="passes of each side, in turn (best reported)")
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be at least 1")
    for name in THREAD_ENV:  # before numpy, torch and dlib start their thread pools
        os.environ[name] = str(args.threads)
    import tempfile
    from contextlib import nullcontext
    from pathlib import Path

    import dlib
    import numpy as np
    import timm
    import torch

    from data_tools.importers import import_folders
    from proxytasks.align import DlibAligner
    from proxytasks.dlib_resnet import dlib_model_path

    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(args.threads)
    except ImportError:
        limits = nullcontext()
    root = SHARED_DATA / "bbt" / "images"
    if not root.is_dir():
        raise SystemExit(f"needs {root} (see shared/data/README.md)")
    with limits:
        manifest = import_folders(root, Path(tempfile.mkdtemp(prefix="bench_dlib_")) / "bbt.jsonl")
        aligner = DlibAligner()
        chips = np.stack([np.asarray(aligner(manifest, manifest[i % len(manifest)])) for i in range(args.chips)])
        port = timm.create_model("dlib_resnet29", pretrained=True).eval()
        peer = dlib.face_recognition_model_v1(str(dlib_model_path()))
        # warm-up at every batch size a pass uses: the port's first call at a new input shape sets up
        # its kernels for that shape (several times a normal call)
        for size in {min(args.batch, len(chips)), len(chips) % args.batch} - {0}:
            port.describe(chips[:size]), peer.compute_face_descriptor(list(chips[:size]))

        def run(fn) -> tuple[np.ndarray, float, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = np.concatenate([np.array([np.array(v) for v in fn(chips[s:s + args.batch])])
                                  for s in range(0, len(chips), args.batch)])
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return out, len(chips) / wall, cpu / wall

        passes: dict[str, list[tuple[float, float]]] = {"port": [], "dlib": []}
        for _ in range(args.repeats):
            ours, speed, cpu = run(port.describe)
            passes["port"].append((speed, cpu))
            theirs, speed, cpu = run(lambda batch: peer.compute_face_descriptor(list(batch)))
            passes["dlib"].append((speed, cpu))
    (ours_speed, ours_cpu), (peer_speed, peer_cpu) = max(passes["port"]), max(passes["dlib"])
    log(f"threads {args.threads} (torch {torch.get_num_threads()}, dlib BLAS {dlib.DLIB_USE_BLAS}); chips/s and CPU s "
        f"per wall s of each pass: port {passes['port']}, dlib {passes['dlib']}")
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    emit("dlib_descriptors", "chips_per_s", round(ours_speed, 2), "chips/s", "dlib compute_face_descriptor, same chips "
         "and threads", round(peer_speed, 2), round(ours_speed / peer_speed, 2), ">= 1x dlib's speed",
         ours_speed >= peer_speed, threads=args.threads, torch_threads=torch.get_num_threads(),
         dlib_blas=bool(dlib.DLIB_USE_BLAS), cpu_per_wall=round(ours_cpu, 2), peer_cpu_per_wall=round(peer_cpu, 2),
         all_chips_per_s=[round(v, 2) for v, _ in passes["port"]],
         peer_all_chips_per_s=[round(v, 2) for v, _ in passes["dlib"]], repeats=args.repeats, chips=args.chips,
         batch=args.batch)
    emit("dlib_descriptors", "min_cosine", float(cosine.min()), "cosine", "dlib's descriptors (1.0)", 1.0,
         float(cosine.min()), ">= 0.999", bool(cosine.min() >= 0.999), threads=args.threads)


if __name__ == "__main__":
    main()
