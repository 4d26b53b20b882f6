"""Which part of a crop an ImageNet backbone should see: the whole crop, its centre, or the face
found inside it (proxytasks.locate), measured on real faces given as crops with a wide margin.

Faces: the bbt photos' faces as crops with a 50% margin (data_tools.margins: 67 faces, 43 named,
8 people) and the Yale faces (320x243 photos, the face in the middle of a wide background: 165
faces, 15 people). Per backbone and region: ROC-AUC of cosine similarity over all pairs of named
faces, and 1-shot naming by the nearest named face (mean over seeded draws). The peer is the
whole crop, what `embed` feeds ImageNet backbones (proxytasks.embedder.INPUT_REGIONS).

    python bench/input_region.py [--backbones tf_efficientnet_lite0,mobilenetv2_100] [--draws 20]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from common import SHARED_DATA, emit

REGIONS = ("crop", "center", "found-face")


def region_features(embedder, manifest, region: str) -> np.ndarray:
    """Unit trunk features of each face's ``region``."""
    import torch

    from proxytasks.locate import FaceLocator
    from proxytasks.media import read_image

    locations = FaceLocator().locate_faces(manifest, progress=False) if region == "found-face" else {}
    transform = embedder.transform()
    images = []
    for face in manifest.faces:
        image = read_image(manifest.resolve(face.crop))
        if region == "center":  # the central 2/3 of each side
            w, h = image.size
            image = image.crop((round(w / 6), round(h / 6), round(5 * w / 6), round(5 * h / 6)))
        elif region == "found-face":  # the box found, grown by a quarter on each side
            x, y, w, h = locations[face.id].box
            image = image.crop((round(x - w / 4), round(y - h / 4), round(x + 1.25 * w), round(y + 1.25 * h)))
        images.append(transform(image))
    with torch.inference_mode():
        x = torch.cat([embedder.trunk(torch.stack(images[s:s + 32])) for s in range(0, len(images), 32)]).numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scores(x: np.ndarray, identity: list, draws: int) -> tuple[float, float]:
    from proxytasks.metrics import few_shot_draw, naming_accuracy, verification_metrics

    named = np.array([i is not None for i in identity])
    x, ident = x[named], np.array([i for i in identity if i is not None], dtype=object)
    auc = verification_metrics(x, list(ident))["roc_auc"]
    accs = []
    for d in range(draws):
        shots = few_shot_draw(list(ident), 1, np.random.default_rng(d))
        rest = np.setdiff1d(np.arange(len(ident)), shots)
        nearest = shots[np.argmax(x[rest] @ x[shots].T, axis=1)]
        accs.append(naming_accuracy(list(ident[rest]), list(ident[nearest])))
    return auc, float(np.mean(accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="tf_efficientnet_lite0,mobilenetv2_100")
    ap.add_argument("--draws", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from data_tools.importers import import_pattern
    from data_tools.margins import bbt_boxes, crops_with_margin
    from proxytasks.embedder import create_embedder

    tmp = Path(tempfile.mkdtemp())
    sets = {"bbt_margin_0.5": crops_with_margin(bbt_boxes(SHARED_DATA / "bbt", tmp / "boxes"), tmp / "crops", 0.5),
            "yalefaces": import_pattern(SHARED_DATA / "yalefaces", r"(?P<identity>subject\d+)\.", tmp / "yale.jsonl")}
    for backbone in args.backbones.split(","):
        embedder = create_embedder(backbone).eval()
        for name, manifest in sets.items():
            identity = [f.identity for f in manifest.faces]
            got = {r: scores(region_features(embedder, manifest, r), identity, args.draws) for r in REGIONS}
            best = max(REGIONS, key=lambda r: got[r][1] + got[r][0])
            for metric, k in (("roc_auc", 0), ("naming_1shot", 1)):
                for region in REGIONS[1:]:
                    emit("input_region", f"{backbone}/{name}/{metric}/{region}", got[region][k], "score",
                         "whole crop", got["crop"][k], got[region][k] / got["crop"][k],
                         "report; the region a backbone sees is chosen by this", True, best_region=best)


if __name__ == "__main__":
    main()
