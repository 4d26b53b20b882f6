"""Training throughput: `proxytasks.train.train` against a bare forward+backward loop of the
same model and batches.

`train` keeps the pretrained trunk frozen: it caches trunk features of a few views of
every face once, then trains the projection head on them. Two honest throughputs follow,
both in training images (faces of a batch, summed over steps) per second:

- `cached`: `train(..., features=F, steps=S)` on features already cached, wall time of
  the whole call (constraints, KISSME start, batch sampling, validation 8 times per run,
  a checkpoint at the end, saving the model), against a bare loop over the very same batches (the
  same faces and views, index tuples built beforehand) doing only head forward, the same
  loss, backward and AdamW step. `cached_loop`: the same run's loop alone, from its
  train_log.jsonl (steps after the first validation, validations and checkpoints
  between them included; the one-off start, mostly the KISSME fit, left out).
- `end_to_end`: `train(..., steps=E)` from images, its feature pass (three views of
  every face) included, against a bare loop that trains the same model (frozen trunk +
  head) without a cache: trunk forward on ready image tensors, head forward, loss,
  backward, step, at the mean batch size of `train`'s batches, same threads. Fixed steps,
  not a time budget: on a loaded machine the feature pass alone can outlast a budget
  (see bench/README.md), and the ratio grows with E as the cache is amortised.

Faces: a synthetic episode of real ORL faces (drawn faces without ../shared/data; 10
people, 20 shots, 1,101 faces), tracked by `track_manifest`, pairs by the default rules.

Target (issues 8 and 16): images/s of the loop at least 0.8x the bare loop.

    python bench/training.py [--steps 500 --e2e-steps 1000 --peer-steps 5]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, episode, log, wait_for_quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=10)
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--steps", type=int, default=500, help="steps of the cached-feature comparison")
    ap.add_argument("--e2e-steps", type=int, default=1000, help="steps of the end-to-end train run")
    ap.add_argument("--peer-steps", type=int, default=5, help="steps of the bare trunk+head loop")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from proxytasks.embedder import create_embedder
    from proxytasks.features import FaceDataset, run_cache
    from proxytasks.losses import make_loss
    from proxytasks.manifest import Manifest
    from proxytasks.rules import RuleSet
    from proxytasks.track import track_manifest
    from proxytasks.train import (
        Constraints,
        GroupBatcher,
        TrainConfig,
        holdout_mask,
        train,
    )

    manifest = track_manifest(Manifest.read(episode(args.identities, args.shots)), progress=False)
    pairs = RuleSet().apply(manifest)
    out = Path(tempfile.mkdtemp(prefix="bench_training_"))
    log(f"{len(manifest)} faces, {len(pairs)} pairs, torch threads {torch.get_num_threads()}")
    wait_for_quiet()

    # ---- end to end: train from images, its feature pass included
    cfg = TrainConfig(time_budget=None, steps=args.e2e_steps)
    start = time.perf_counter()
    summary = train(manifest, pairs, out / "e2e", cfg, progress=False)
    wall = time.perf_counter() - start
    feats = run_cache(out / "e2e", [f.id for f in manifest.faces]).features
    val = holdout_mask(manifest, cfg.holdout, cfg.seed)
    batcher = GroupBatcher(Constraints.from_pairs(pairs, ~val), ~val, len(feats), cfg)
    e2e_images = sum(len(batcher.batch(s)[0]) for s in range(summary["steps"]))
    e2e = e2e_images / wall
    log(f"end to end: {summary['steps']} steps, {e2e_images} images, {wall:.1f} s (views cached: {len(feats)})")

    # ---- the bare loop of the same model without a cache: trunk forward on ready tensors + head
    mean_batch = round(float(np.mean([len(batcher.batch(s)[0]) for s in range(100)])))
    model = create_embedder(cfg.backbone, cfg.weights, cfg.dim, cfg.head, cfg.input_size)
    data = FaceDataset(manifest, model.transform())
    batches = [batcher.batch(s) for s in range(args.peer_steps + 1)]
    images = torch.stack([data[int(i)] for i in np.resize(np.concatenate([b[0] for b in batches]), mean_batch)])
    loss_fn = make_loss(summary["loss"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    model.trunk.eval()
    model.head.train()

    def bare_trunk_step(tup) -> None:
        emb = model(images)
        loss = loss_fn(emb, tup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tups = []
    for faces, views, tup in batches:  # index tuples cut to the batch of mean size
        a1, p, a2, n = tup
        keep_p, keep_n = (a1 < mean_batch) & (p < mean_batch), (a2 < mean_batch) & (n < mean_batch)
        tups.append((a1[keep_p], p[keep_p], a2[keep_n], n[keep_n]))
    bare_trunk_step(tups[0])  # warm-up
    start = time.perf_counter()
    for tup in tups[1:]:
        bare_trunk_step(tup)
    bare_e2e = args.peer_steps * mean_batch / (time.perf_counter() - start)
    log(f"bare trunk+head loop: {bare_e2e:.1f} images/s at batch {mean_batch}")

    # ---- cached: train on given features for a fixed number of steps vs the bare head loop, same batches
    cfg_steps = TrainConfig(steps=args.steps, time_budget=None, views=cfg.views[:len(feats)])
    steps_batches = [batcher.batch(s) for s in range(args.steps)]
    images_cached = sum(len(b[0]) for b in steps_batches)
    rows = torch.from_numpy(feats).reshape(-1, feats.shape[-1])  # the gather `train` does: one index_select
    prepared = [(torch.from_numpy(v * feats.shape[1] + f), tup) for f, v, tup in steps_batches]

    def bare_head() -> float:
        head_model = create_embedder(cfg.backbone, cfg.weights, cfg.dim, cfg.head, cfg.input_size)
        head_opt = torch.optim.AdamW([p for p in head_model.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        head_model.train()
        start = time.perf_counter()
        for at, tup in prepared:
            emb = head_model.embed_features(rows.index_select(0, at))
            loss = loss_fn(emb, tup)
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            head_opt.step()
        return images_cached / (time.perf_counter() - start)

    sizes = np.array([len(b[0]) for b in steps_batches])

    def ours_cached(k: int) -> tuple[float, float]:
        """images/s of the whole call, and of its loop alone (from train_log.jsonl: the steps
        after the first validation, with the validations and checkpoints between them)."""
        start = time.perf_counter()
        s = train(manifest, pairs, out / f"cached{k}", cfg_steps, progress=False, features=feats)
        whole = images_cached / (time.perf_counter() - start)
        assert s["steps"] == args.steps
        rows = [json.loads(line) for line in (out / f"cached{k}" / "train_log.jsonl").read_text().splitlines()]
        first, last = rows[0], rows[-1]
        loop = sizes[first["step"]:last["step"]].sum() / (last["seconds"] - first["seconds"])
        return whole, loop

    ours_speeds, loop_speeds, bare_speeds = [], [], []
    for k in range(args.repeats):
        whole, loop = ours_cached(k)
        ours_speeds.append(whole)
        loop_speeds.append(loop)
        bare_speeds.append(bare_head())
    log(f"cached features, {args.steps} steps, {images_cached} images: train {[round(x) for x in ours_speeds]} "
        f"(its loop alone {[round(x) for x in loop_speeds]}), bare head loop {[round(x) for x in bare_speeds]} "
        f"images/s")
    a, loop, b = max(ours_speeds), max(loop_speeds), max(bare_speeds)
    peer = "bare head forward+backward+AdamW loop, same batches and loss"
    emit("training", "images_per_s_cached", round(a, 1), "images/s", peer, round(b, 1), round(a / b, 3),
         ">= 0.8x the bare loop", a / b >= 0.8)
    emit("training", "images_per_s_cached_loop", round(loop, 1), "images/s", peer, round(b, 1), round(loop / b, 3),
         ">= 0.8x the bare loop", loop / b >= 0.8)
    emit("training", "images_per_s_end_to_end", round(e2e, 1), "images/s", "bare trunk+head forward+backward loop "
         "on ready tensors (no cache), same batch size", round(bare_e2e, 1), round(e2e / bare_e2e, 3),
         ">= 0.8x the bare loop", e2e / bare_e2e >= 0.8)


if __name__ == "__main__":
    main()
