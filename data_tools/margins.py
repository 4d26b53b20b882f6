"""Faces as other tools deliver them: crops with a wide margin, no box.

:func:`crops_with_margin` turns a manifest of faces given as ``image`` + ``bbox`` into the
same faces given only as crops grown by a margin on every side (clipped at the image's
edges, as :func:`proxytasks.ingest.crop_face` cuts them): the input that
:mod:`proxytasks.locate` must find the face in. :func:`bbt_boxes` builds the check set
for that from ``../shared/data/bbt``: every face MTCNN finds in its photos, with its box
and landmarks, named where the source says who it is.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.media import read_image


def crops_with_margin(manifest: Manifest, out: str | os.PathLike, margin: float = 0.5) -> Manifest:
    """The faces of ``manifest`` as crops with ``margin`` (a share of the box on each side).

    Writes ``out/crops/<n>.png`` and ``out/manifest.jsonl``: the same ids, media, frames,
    tracks and identities, with ``crop`` and neither ``image``, ``bbox`` nor ``landmarks``.
    """
    from proxytasks.ingest import crop_face

    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    faces = []
    for n, face in enumerate(manifest.faces):
        if face.image is None or face.bbox is None:
            raise ProxytasksError(f"face {face.id!r}: crops_with_margin needs 'image' and 'bbox'")
        rel = f"crops/{n:06d}.png"
        crop_face(read_image(manifest.resolve(face.image)), list(face.bbox), margin).save(out / rel)
        faces.append(Face(id=face.id, media=face.media, frame=face.frame, crop=rel, track=face.track,
                          shot=face.shot, identity=face.identity))
    result = Manifest(faces, out)
    result.write(out / "manifest.jsonl")
    return Manifest.read(out / "manifest.jsonl")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def bbt_boxes(root: str | os.PathLike, out: str | os.PathLike, min_face: int = 40) -> Manifest:
    """Every face MTCNN finds in ``root/images`` of the bbt set, as ``image`` + ``bbox`` + ``landmarks``.

    The portraits ``images/<name>/<name>K.png`` are named after their folder; the faces of
    ``images/bbt4.jpg`` after ``bbt4_faces_labels.tsv`` (the labelled box with IoU above
    0.5); the faces of the other photos have no identity. Writes ``out/manifest.jsonl``.
    """
    from proxytasks.detect import create_detector

    root = Path(root)
    labels = {}
    with open(root / "bbt4_faces_labels.tsv", newline="") as fh:
        rows = csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")
        for row in rows:
            labels[row["character"]] = np.array([float(row[k]) for k in "xywh"])
    images = sorted((root / "images").glob("*.jpg")) + sorted((root / "images").glob("*/*.png"))
    detector = create_detector("mtcnn", min_face=min_face)
    faces = []
    for path in images:
        found = detector.detect([read_image(path)])[0]
        for k, (box, marks) in enumerate(zip(found.boxes, found.landmarks)):
            identity = path.parent.name if path.parent.name != "images" else None
            if path.name == "bbt4.jpg":
                identity = next((name for name, b in labels.items() if _iou(box, b) > 0.5), None)
            faces.append(Face(id=f"{path.stem}_{k}", media=path.name, image=str(path.resolve()),
                              bbox=[float(v) for v in box], landmarks=marks.tolist(), identity=identity))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    Manifest(faces, out).write(out / "manifest.jsonl")
    return Manifest.read(out / "manifest.jsonl")
