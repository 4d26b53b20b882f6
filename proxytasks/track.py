"""Tracking: link faces of one media across successive frames, cut at shot boundaries.

With boxes, faces are linked by the IoU of each track's predicted box with the new
boxes plus appearance similarity; without boxes (crops only) by appearance similarity
alone, from a pretrained backbone. Each frame is matched to the tracks alive in the
previous ``max_gap + 1`` frames with optimal assignment (Hungarian), and a match is
accepted only when it passes every gate. Shot boundaries come from frame histograms
when the frame images are available, from a jump otherwise (a frame gap longer than
``max_gap + 1`` frames, or a frame none of whose faces continues a track); tracks never
cross them. Given ``shot`` values in the manifest are kept.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from .errors import ProxytasksError
from .manifest import Manifest
from .media import read_image

logger = logging.getLogger(__name__)

APPEARANCES = ("auto", "thumb", "backbone", "none")
_THUMB = 12  # side of the colour thumbnail used as a cheap appearance descriptor
_HIST_BINS = 4  # per channel, for shot detection


@dataclass
class TrackerConfig:
    """Tracker settings; the defaults suit 5 to 30 fps video with face boxes.

    Attributes:
        max_gap: kept frames a track may skip (missed detections) and still continue;
            when frames were sampled (every 5th, say) the gap counts sampled frames.
        min_iou: least IoU between a track's predicted box and a new box.
        min_similarity: least appearance cosine similarity for a link. Without boxes
            and with ``adaptive_similarity``, the gate rises to the ``similarity_quantile``
            of the similarity of faces sharing a frame (known different people) in the
            same media. With boxes the IoU gate does most of the work and appearance breaks
            ties (crossings), so a strict gate would only cut tracks at occlusions.
        appearance: "thumb" (colour thumbnail, fast), "backbone" (pretrained CNN),
            "none", or "auto" (thumb with boxes, backbone for crops only).
        input_size: backbone input side in pixels for appearance (faces are small).
        shot_threshold: histogram distance that always means a cut; the adaptive
            threshold is ``median + shot_k * MAD`` of successive distances, floored at
            ``shot_min``.
    """

    max_gap: int = 2
    min_iou: float = 0.2
    min_similarity: float = 0.3
    adaptive_similarity: bool = True
    similarity_quantile: float = 0.99
    appearance: str = "auto"
    appearance_momentum: float = 0.7
    shot_k: float = 6.0
    shot_min: float = 0.05
    shot_threshold: float = 0.6
    backbone: str = "tf_efficientnet_lite0"
    weights: str | None = None
    batch_size: int = 32
    input_size: int = 128

    def __post_init__(self) -> None:
        if self.appearance not in APPEARANCES:
            raise ProxytasksError(f"unknown appearance {self.appearance!r}; use one of {', '.join(APPEARANCES)}")
        if self.max_gap < 0 or not 0 <= self.min_iou <= 1:
            raise ProxytasksError("max_gap must be >= 0 and min_iou within [0, 1]")


# --------------------------------------------------------------------------- geometry
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes ``a`` (n, 4) and ``b`` (m, 4), boxes as [x, y, w, h]."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-9)


# --------------------------------------------------------------------------- linking
def frame_step(frame: np.ndarray) -> int:
    """The usual distance between successive kept frames (1 unless frames were sampled)."""
    gaps = np.diff(np.unique(frame))
    return max(1, int(np.median(gaps))) if len(gaps) else 1


def link(frame: np.ndarray, shot: np.ndarray, boxes: np.ndarray | None = None,
         features: np.ndarray | None = None, cfg: TrackerConfig | None = None,
         min_similarity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track index per detection of one media, and whether each detection continued a track.

    Args:
        frame: frame index per detection.
        shot: shot index per detection; tracks never cross shots.
        boxes: (n, 4) [x, y, w, h] or None.
        features: (n, d) L2-normalised appearance vectors or None.
        cfg: tracker settings.
        min_similarity: appearance gate (defaults to ``cfg.min_similarity``).
    """
    cfg = cfg or TrackerConfig()
    if boxes is None and features is None:
        raise ProxytasksError("tracking needs boxes or appearance features")
    gate = cfg.min_similarity if min_similarity is None else min_similarity
    reach = (cfg.max_gap + 1) * frame_step(frame)  # gaps count kept frames, not decoded ones
    n = len(frame)
    track = np.full(n, -1, dtype=np.int64)
    linked = np.zeros(n, dtype=bool)
    order = np.lexsort((frame, shot))
    bounds = np.flatnonzero(np.r_[True, (np.diff(frame[order]) != 0) | (np.diff(shot[order]) != 0), True])
    # State of every track: last frame, shot, last box, velocity, appearance.
    t_frame: list[int] = []
    t_shot: list[int] = []
    t_box: list[np.ndarray] = []
    t_vel: list[np.ndarray] = []
    t_feat: list[np.ndarray] = []
    alive: list[int] = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        dets = order[s:e]
        f, sh = int(frame[dets[0]]), int(shot[dets[0]])
        alive = [t for t in alive if t_shot[t] == sh and f - t_frame[t] <= reach]
        pairs: list[tuple[int, int]] = []
        if alive:
            valid = np.ones((len(alive), len(dets)), dtype=bool)
            score = np.zeros((len(alive), len(dets)))
            if boxes is not None:
                dt = np.array([f - t_frame[t] for t in alive], dtype=float)[:, None]
                last = np.stack([t_box[t] for t in alive])
                pred = last + np.stack([t_vel[t] for t in alive]) * dt
                iou = np.maximum(iou_matrix(pred, boxes[dets]), iou_matrix(last, boxes[dets]))
                valid &= iou >= cfg.min_iou
                score += iou
            if features is not None:
                sim = np.stack([t_feat[t] for t in alive]) @ features[dets].T
                valid &= sim >= gate
                score += sim
            rows, cols = linear_sum_assignment(np.where(valid, -score, 1e6))
            pairs = [(alive[r], dets[c]) for r, c in zip(rows, cols) if valid[r, c]]
        matched = set()
        for t, d in pairs:
            if boxes is not None:
                t_vel[t] = (boxes[d] - t_box[t]) / max(f - t_frame[t], 1)
                t_box[t] = boxes[d]
            if features is not None:
                v = cfg.appearance_momentum * t_feat[t] + (1 - cfg.appearance_momentum) * features[d]
                t_feat[t] = v / max(np.linalg.norm(v), 1e-12)
            t_frame[t] = f
            track[d] = t
            linked[d] = True
            matched.add(d)
        for d in dets:
            if d in matched:
                continue
            track[d] = len(t_frame)
            alive.append(track[d])
            t_frame.append(f)
            t_shot.append(sh)
            t_box.append(boxes[d] if boxes is not None else np.zeros(4))
            t_vel.append(np.zeros(4))
            t_feat.append(features[d] if features is not None else np.zeros(0))
    return track, linked


# --------------------------------------------------------------------------- appearance
def frame_histogram(img: Image.Image) -> np.ndarray:
    """A normalised joint RGB histogram of a downscaled frame."""
    small = np.asarray(img.convert("RGB").resize((64, 36), Image.BILINEAR), dtype=np.int64)
    q = small // (256 // _HIST_BINS)
    code = (q[..., 0] * _HIST_BINS + q[..., 1]) * _HIST_BINS + q[..., 2]
    h = np.bincount(code.ravel(), minlength=_HIST_BINS ** 3).astype(np.float64)
    return h / h.sum()


def thumbnail_feature(img: Image.Image, box: Sequence[float]) -> np.ndarray:
    """A zero-mean unit-norm colour thumbnail of the box: cheap appearance for tracking."""
    x, y, w, h = box
    crop = img.convert("RGB").resize((_THUMB, _THUMB), Image.BILINEAR, box=(x, y, x + w, y + h))
    v = np.asarray(crop, dtype=np.float32).ravel()
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def detect_cuts(distances: np.ndarray, cfg: TrackerConfig) -> np.ndarray:
    """Boolean per distance between successive frames: is it a shot cut?"""
    if not len(distances):
        return np.zeros(0, dtype=bool)
    med = float(np.median(distances))
    mad = float(np.median(np.abs(distances - med))) * 1.4826
    threshold = min(max(med + cfg.shot_k * mad, cfg.shot_min), cfg.shot_threshold)
    return distances > threshold


# --------------------------------------------------------------------------- manifest
def track_manifest(manifest: Manifest, cfg: TrackerConfig | None = None, progress: bool = True,
                   embed: Callable[[list[Image.Image]], np.ndarray] | None = None) -> Manifest:
    """A copy of ``manifest`` with ``track`` and ``shot`` written for every video face.

    Photos (``frame`` null) keep no track. Existing tracks are replaced; existing shots
    are kept when every face of a media has one.

    Args:
        manifest: the faces.
        cfg: tracker settings.
        progress: show a progress bar over frames.
        embed: appearance function for crops (list of images -> (n, d) unit vectors);
            defaults to the pretrained backbone named in ``cfg``.
    """
    cfg = cfg or TrackerConfig()
    by_media: dict[str, list[int]] = defaultdict(list)
    for idx, f in enumerate(manifest.faces):
        if f.frame is not None:
            by_media[f.media].append(idx)
    tracks: list[str | None] = [f.track if f.frame is None else None for f in manifest.faces]
    shots: list[int | None] = [f.shot for f in manifest.faces]
    n_frames = len({(manifest[i].media, manifest[i].frame) for ids in by_media.values() for i in ids})
    bar = tqdm(total=n_frames, desc="track", unit="frame", disable=not progress)
    for media, idx in by_media.items():
        faces = [manifest[i] for i in idx]
        frame = np.array([f.frame for f in faces], dtype=np.int64)
        with_boxes = all(f.bbox is not None and f.image is not None for f in faces)
        mode = cfg.appearance
        if mode == "auto":
            mode = "thumb" if with_boxes else "backbone"
        if not with_boxes and mode in ("thumb", "none"):
            if any(f.crop is None for f in faces):
                raise ProxytasksError(f"media {media!r}: faces without boxes need crops to track")
            mode = "backbone"
        boxes = np.array([f.bbox for f in faces], dtype=np.float64) if with_boxes else None
        features, hist_shots = _read_media(manifest, faces, mode, cfg, embed, bar)
        given = [f.shot for f in faces]
        if all(s is not None for s in given):
            shot = np.array(given, dtype=np.int64)
        elif hist_shots is not None:
            shot = hist_shots
        else:
            shot = np.zeros(len(faces), dtype=np.int64)
        gate = cfg.min_similarity
        if features is not None and boxes is None and cfg.adaptive_similarity:
            gate = _adaptive_gate(frame, shot, features, cfg)
        track, linked = link(frame, shot, boxes, features, cfg, gate)
        if hist_shots is None and not all(s is not None for s in given):
            shot = _jump_shots(frame, linked, cfg)
            track, _ = link(frame, shot, boxes, features, cfg, gate)
        logger.info("media %s: %d faces, %d tracks, %d shots, appearance=%s, gate=%.3f",
                    media, len(faces), len(np.unique(track)), len(np.unique(shot)), mode, gate)
        for k, i in enumerate(idx):
            tracks[i] = f"{media}#t{track[k]}"
            shots[i] = int(shot[k])
    bar.close()
    return manifest.replace(track=tracks, shot=shots)


def _read_media(manifest: Manifest, faces: list, mode: str, cfg: TrackerConfig,
                embed: Callable | None, bar: tqdm) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Appearance features per face and histogram shots per face (None when no frames)."""
    frames = sorted({f.frame for f in faces})
    frame_pos = {fr: k for k, fr in enumerate(frames)}
    with_images = all(f.image is not None for f in faces)
    features = None
    hists = []
    if with_images:
        by_frame: dict[int, list[int]] = defaultdict(list)
        for k, f in enumerate(faces):
            by_frame[f.frame].append(k)
        feats = np.zeros((len(faces), 3 * _THUMB * _THUMB), dtype=np.float32) if mode == "thumb" else None
        for fr in frames:
            members = by_frame[fr]
            path = manifest.resolve(faces[members[0]].image)
            img = read_image(path)
            hists.append(frame_histogram(img))
            if feats is not None:
                for k in members:
                    feats[k] = thumbnail_feature(img, faces[k].bbox)
            bar.update(1)
        features = feats
    else:
        bar.update(len(frames))
    if mode == "backbone":
        features = _backbone_features(manifest, faces, cfg, embed)
    if not with_images:
        return features, None
    d = np.array([0.5 * np.abs(a - b).sum() for a, b in zip(hists[:-1], hists[1:])])
    shot_of_frame = np.r_[0, np.cumsum(detect_cuts(d, cfg))]
    return features, shot_of_frame[[frame_pos[f.frame] for f in faces]]


def _backbone_features(manifest: Manifest, faces: list, cfg: TrackerConfig,
                       embed: Callable | None) -> np.ndarray:
    from .embed import load_face

    if embed is None:
        from .models import FeatureExtractor, create_backbone

        embed = FeatureExtractor(create_backbone(cfg.backbone, weights=cfg.weights),
                                 batch_size=cfg.batch_size, input_size=cfg.input_size)
    out = []
    for s in range(0, len(faces), 256):
        images = [load_face(manifest, f) for f in faces[s:s + 256]]
        out.append(np.asarray(embed(images), dtype=np.float32))
    return np.concatenate(out)


def _adaptive_gate(frame: np.ndarray, shot: np.ndarray, features: np.ndarray, cfg: TrackerConfig) -> float:
    """Raise the similarity gate above what faces of different people (same frame) reach."""
    order = np.lexsort((frame, shot))  # by (shot, frame); a composite key could overflow int64
    s, f = shot[order], frame[order]
    sims = []
    for grp in np.split(order, np.flatnonzero((s[1:] != s[:-1]) | (f[1:] != f[:-1])) + 1):
        if len(grp) >= 2:
            s = features[grp] @ features[grp].T
            sims.append(s[np.triu_indices(len(grp), 1)])
    if not sims:
        return cfg.min_similarity
    return max(cfg.min_similarity, float(np.quantile(np.concatenate(sims), cfg.similarity_quantile)))


def _jump_shots(frame: np.ndarray, linked: np.ndarray, cfg: TrackerConfig) -> np.ndarray:
    """Shots without frame images: cut where the frame gap exceeds ``max_gap + 1`` or where
    a frame with faces continues no track although the previous frame had faces."""
    frames = np.unique(frame)
    any_linked = np.zeros(len(frames), dtype=bool)
    np.logical_or.at(any_linked, np.searchsorted(frames, frame), linked)
    cut = np.r_[False, (np.diff(frames) > (cfg.max_gap + 1) * frame_step(frames)) | ~any_linked[1:]]
    return np.cumsum(cut)[np.searchsorted(frames, frame)]
