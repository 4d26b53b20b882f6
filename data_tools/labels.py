"""Simulated names: the few labels a person would type, drawn from ground truth.

Used by the demo and by evaluation; the library never reads ``identity`` to train.
"""
from __future__ import annotations

import os

import numpy as np

from proxytasks.fileio import atomic_write
from proxytasks.manifest import Manifest
from proxytasks.metrics import few_shot_draw


def draw_labels(manifest: Manifest, per_identity: int = 1, seed: int = 0) -> dict[str, str]:
    """``per_identity`` faces of each identity (seeded), as ``{face id: name}``."""
    known = [f for f in manifest.faces if f.identity is not None]
    picked = few_shot_draw(np.array([f.identity for f in known], dtype=object), per_identity,
                           np.random.default_rng(seed))
    return {known[i].id: known[i].identity for i in picked}


def write_labels(path: str | os.PathLike, labels: dict[str, str]) -> None:
    """Write ``id,name`` CSV atomically."""
    import csv

    with atomic_write(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "name"])
        writer.writerows(sorted(labels.items()))
