"""A face-quality score per detected face (0..1), from what ingest already has at hand.

Detectors also fire on things that are not usable faces: the back of a head, a hand, a
blurred face in the background, a face a few pixels tall. Such boxes stay in the manifest
(never dropped silently) but are *marked*: their ``quality`` is below :data:`LOW_QUALITY`.
Marked faces give no training pairs (:mod:`proxytasks.rules`) and should be named
"unknown" unless a person names them.

The score is ``skin x landmarks x (confidence x sharpness x size) ** (1/3)``: the first
two gate (a face without skin in its middle, or with landmarks no face has, is not a usable
face however sharp), the last three grade. Each term is in 0..1:

- ``confidence``: the detector's score on a log-odds scale, 1 from the score at which the
  detector is sure (its ``sure_score``: 0.999 for MTCNN, where 0.9 -> 0.33 and 0.99 ->
  0.67; 0.9 for CenterFace, whose heatmap peaks are lower: its median on the Hamilton
  clip's faces that MTCNN also finds with a good quality is 0.76 -> 0.62); a detector
  without scores gives 1.
- ``landmarks``: how plausible the 5 points are for a face seen from the front or the
  side (eyes above the nose above the mouth, left of right, inside the box, eye distance a
  sensible share of the box); a detector without landmarks gives 1.
- ``sharpness``: variance of the Laplacian of the face brought to 64x64 grey pixels,
  saturating (a blurred or featureless patch, such as smooth hair, scores low).
- ``size``: the shorter box side against :data:`GOOD_SIZE` pixels of the source picture.
- ``skin``: the share of skin-coloured pixels (YCbCr rule of Chai and Ngan 1999, widened
  for dim light) in the middle of the box, from 10% (0) to 50% (1); neutral (1) when the
  picture itself has no colour (greyscale photos, night footage).

Measured on the Hamilton clip (bench/README.md): the back of a grey head scores 0.04-0.2,
the blurriest and darkest real faces 0.35 and up.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

QUALITY_VERSION = 2  # 2: the detector's sure_score; box reductions before resizing
LOW_QUALITY = 0.25   # below this a face is marked: no training pairs, named "unknown" by default
GOOD_SIZE = 48.0     # pixels of the shorter box side from which size stops lowering the score
SHARP = 60.0         # Laplacian variance (64x64 grey, 0..255) at which sharpness is ~0.75
SURE_SCORE = 0.999  # the detector score that counts as certain, unless the detector says otherwise
_FLOOR = 0.02        # no term below this, so one bad term cannot zero the mean on its own


def confidence_term(score: float | None, sure: float = SURE_SCORE) -> float:
    """The detector score on a log-odds scale, 0..1 (1 from ``sure`` up)."""
    if score is None or not math.isfinite(score):
        return 1.0
    score = min(max(float(score), 0.0), 1.0 - 1e-6)
    return float(min(max(math.log(1.0 / (1.0 - score)) / math.log(1.0 / (1.0 - sure)), 0.0), 1.0))


def landmark_term(box: Sequence[float], landmarks: Sequence[Sequence[float]] | None) -> float:
    """Share of the face-geometry checks that the 5 landmarks pass (1 without landmarks)."""
    if landmarks is None:
        return 1.0
    p = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if p.shape[0] != 5 or not np.isfinite(p).all():
        return 1.0
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        return 0.0
    q = (p - [x, y]) / [w, h]                      # box units
    le, re, nose, lm, rm = q
    eye_y, mouth_y = (le[1] + re[1]) / 2, (lm[1] + rm[1]) / 2
    eye_dist = float(np.hypot(*(re - le)))
    checks = [
        bool(((q > -0.1) & (q < 1.1)).all()),       # every point inside the (slightly grown) box
        mouth_y - eye_y > 0.15,                     # eyes well above the mouth
        eye_y < nose[1] < mouth_y + 0.05,           # the nose between them
        le[0] < re[0] and lm[0] < rm[0],            # left points left of right ones
        0.15 < eye_dist < 0.75,                     # eye distance a sensible share of the box
        0.1 < eye_y < 0.65,                         # eyes in the upper part of the box
    ]
    return sum(checks) / len(checks)


def sharpness_term(image: Image.Image, box: Sequence[float]) -> float:
    """Laplacian variance of the box at 64x64 grey pixels, mapped to 0..1 (saturating)."""
    x, y, w, h = (float(v) for v in box)
    if w < 1 or h < 1:
        return 0.0
    patch = image.resize((64, 64), Image.BILINEAR, box=(x, y, x + w, y + h), reducing_gap=2.0).convert("L")
    a = np.asarray(patch, dtype=np.float32)
    lap = (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1])
    var = float(lap.var())
    return float(1.0 - math.exp(-var / (SHARP / math.log(4.0))))


def has_colour(image: Image.Image) -> bool:
    """Whether the picture has colour at all (a greyscale photo or night footage has none)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # reducing_gap: a box reduction first, then bilinear (a whole frame comes in here).
    a = np.asarray(rgb.resize((64, 36), Image.BILINEAR, reducing_gap=2.0).convert("YCbCr"), dtype=np.int16)
    return float(np.abs(a[..., 1:] - 128).mean()) >= 3.0


def skin_term(image: Image.Image, box: Sequence[float], colour: bool | None = None) -> float:
    """Share of skin-coloured pixels in the middle of the box, 10%..50% mapped to 0..1;
    1 when the picture has no colour (``colour``: known already, else measured)."""
    if colour is None:
        colour = has_colour(image)
    if not colour:
        return 1.0
    x, y, w, h = (float(v) for v in box)
    if w < 1 or h < 1:
        return 0.0
    patch = image.resize((32, 32), Image.BILINEAR, box=(x + 0.2 * w, y + 0.25 * h, x + 0.8 * w, y + 0.85 * h),
                         reducing_gap=2.0)
    a = np.asarray(patch.convert("YCbCr"), dtype=np.int16)
    cb, cr = a[..., 1], a[..., 2]
    share = float(((cr >= 133) & (cr <= 180) & (cb >= 70) & (cb <= 130)).mean())
    return float(min(max((share - 0.1) / 0.4, 0.0), 1.0))


def size_term(box: Sequence[float]) -> float:
    """The shorter box side against :data:`GOOD_SIZE`, 0..1."""
    side = min(float(box[2]), float(box[3]))
    return float(min(max(side / GOOD_SIZE, 0.0), 1.0))


def terms(image: Image.Image, box: Sequence[float], score: float | None = None,
          landmarks: Sequence[Sequence[float]] | None = None, colour: bool | None = None,
          sure: float = SURE_SCORE) -> dict[str, float]:
    """The five terms by name (for reports and for tuning :data:`LOW_QUALITY`)."""
    return {"confidence": confidence_term(score, sure), "landmarks": landmark_term(box, landmarks),
            "sharpness": sharpness_term(image, box), "size": size_term(box),
            "skin": skin_term(image, box, colour)}


def combine(t: dict[str, float]) -> float:
    """The quality from its terms: the gates times the geometric mean of the grades."""
    grade = math.exp(sum(math.log(max(t[k], _FLOOR)) for k in ("confidence", "sharpness", "size")) / 3)
    return round(float(t["skin"] * t["landmarks"] * grade), 4)


def face_quality(image: Image.Image, box: Sequence[float], score: float | None = None,
                 landmarks: Sequence[Sequence[float]] | None = None, colour: bool | None = None,
                 sure: float = SURE_SCORE) -> float:
    """The quality of one face in ``image`` (source pixels), 0..1, rounded to 4 places.
    ``colour``: whether the picture has colour (:func:`has_colour`), when known already;
    ``sure``: the detector's score that counts as certain (its ``sure_score``)."""
    return combine(terms(image, box, score, landmarks, colour, sure))


def is_low(quality: float | None) -> bool:
    """Whether a face is marked: a quality below :data:`LOW_QUALITY` (None: not scored, not marked)."""
    return quality is not None and quality < LOW_QUALITY
