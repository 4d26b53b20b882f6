"""End-to-end `embed_manifest` (decode the frame, cut the box, timm transform, trunk and head
forward) against the bare forward of the same model on ready tensors.

Faces: a synthetic episode of real ORL faces (drawn faces without ../shared/data),
`image` + `bbox` faces cut from 480x270 JPEG frames, cycled to `--faces`. The peer is
`embedder.trunk` then `embedder.embed_features` under `torch.inference_mode()` on the same
faces already decoded and transformed into batches, same batch size and
`torch.get_num_threads()`. The library runs with its defaults (`workers=1`: one DataLoader
process decodes while the main process runs the model). Runs alternate, the best of each
is kept.

Target (issue 8): embed at least 0.85x the bare forward's throughput.

    python bench/embedding.py [--faces 1024 --batch-size 64 --workers 1 --repeats 2]
"""
from __future__ import annotations

import argparse
import logging
import time

from common import emit, episode, log, wait_for_quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="embed_manifest's DataLoader workers")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from proxytasks.embed import FaceDataset, embed_manifest
    from proxytasks.embedder import create_embedder
    from proxytasks.manifest import Manifest

    source = Manifest.read(episode())
    faces = [source.faces[i % len(source)] for i in range(args.faces)]
    import dataclasses

    manifest = Manifest([dataclasses.replace(f, id=f"{f.id}#{k}") for k, f in enumerate(faces)], source.root)
    embedder = create_embedder(args.backbone).eval()
    data = FaceDataset(manifest, embedder.transform())
    tensors = torch.stack([data[i] for i in range(len(manifest))])
    batches = list(torch.split(tensors, args.batch_size))
    threads = torch.get_num_threads()
    log(f"{len(manifest)} faces, input {tuple(tensors.shape[1:])}, batch {args.batch_size}, torch threads {threads}")

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                embedder.embed_features(embedder.trunk(x))
        return len(manifest) / (time.perf_counter() - start)

    def ours() -> float:
        start = time.perf_counter()
        emb = embed_manifest(embedder, manifest, batch_size=args.batch_size, workers=args.workers, progress=False)
        assert emb.vectors.shape[0] == len(manifest)
        return len(manifest) / (time.perf_counter() - start)

    with torch.inference_mode():  # warm-up
        embedder.embed_features(embedder.trunk(batches[0]))
    wait_for_quiet()
    speeds = {"ours": [], "bare": []}
    for _ in range(args.repeats):
        speeds["ours"].append(ours())
        speeds["bare"].append(bare())
        assert torch.get_num_threads() == threads
    log(f"faces/s: embed {[round(s, 1) for s in speeds['ours']]}, bare forward {[round(s, 1) for s in speeds['bare']]}")
    a, b = max(speeds["ours"]), max(speeds["bare"])
    emit("embedding", "faces_per_s", round(a, 1), "faces/s", "bare trunk+head forward on ready tensors, same batch "
         "and threads", round(b, 1), round(a / b, 3), ">= 0.85x the bare forward", a / b >= 0.85)


if __name__ == "__main__":
    main()
