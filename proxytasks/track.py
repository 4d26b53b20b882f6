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

from .defaults import DEFAULT_BACKBONE
from .errors import ProxytasksError
from .manifest import Manifest
from .media import read_image
from .vectors import l2_normalize

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
    backbone: str = DEFAULT_BACKBONE
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
    gaps = np.diff(np.sort(frame))
    gaps = gaps[gaps != 0]  # np.diff(np.unique(frame)), without numpy's slower hash-based unique
    return max(1, int(np.median(gaps))) if len(gaps) else 1


def link(frame: np.ndarray, shot: np.ndarray, boxes: np.ndarray | None = None,
         features: np.ndarray | None = None, cfg: TrackerConfig | None = None,
         min_similarity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track index per detection of one media, and whether each detection continued a track.

    Frames are taken in (shot, frame) order. A track is alive in its shot while its last
    detection is at most ``(max_gap + 1) * frame_step(frame)`` frames back. The detections
    of a frame are matched to the alive tracks by optimal assignment (Hungarian) on the
    sum of the IoU (the larger of the velocity-predicted box's and the last box's) and the
    appearance similarity, and a match is kept only when it passes every gate (``min_iou``,
    the similarity gate); unmatched detections start tracks. A match updates the track's
    box, velocity (box change per frame) and appearance (momentum average, renormalised).
    Tracks are numbered in the order they start.

    Tracks never cross shots, so all shots are processed in lockstep: step ``k`` takes the
    ``k``-th frame of every shot at once and scores the (alive track, detection) pairs of
    every shot in one batch. A valid pair whose track and detection have no other valid
    pair is in every optimal assignment and is accepted directly; the Hungarian assignment
    runs only for the shots with contested pairs, on the shot's whole matrix as frame by
    frame, and similarities are the same matrix products, so the result is the same as
    frame by frame. The Python loop runs as many times as the longest shot has frames.

    Args:
        frame: frame index per detection.
        shot: shot index per detection; tracks never cross shots.
        boxes: (n, 4) [x, y, w, h] or None (taken as float64).
        features: (n, d) L2-normalised appearance vectors or None.
        cfg: tracker settings.
        min_similarity: appearance gate (defaults to ``cfg.min_similarity``).
    """
    cfg = cfg or TrackerConfig()
    if boxes is None and features is None:
        raise ProxytasksError("tracking needs boxes or appearance features")
    gate = cfg.min_similarity if min_similarity is None else min_similarity
    frame = np.asarray(frame, dtype=np.int64)
    shot = np.asarray(shot)
    n = len(frame)
    track = np.full(n, -1, dtype=np.int64)
    linked = np.zeros(n, dtype=bool)
    if n == 0:
        return track, linked
    reach = (cfg.max_gap + 1) * frame_step(frame)  # gaps count kept frames, not decoded ones

    # Groups: the (shot, frame)s in sorted order; k: the rank of a group in its shot.
    order = np.lexsort((frame, shot))
    fs, ss = frame[order], shot[order]
    new_shot = np.r_[True, ss[1:] != ss[:-1]]
    g_start = np.flatnonzero(new_shot | np.r_[True, fs[1:] != fs[:-1]])
    g_size = np.diff(np.r_[g_start, n])
    g_shot = (np.cumsum(new_shot) - 1)[g_start]
    shot_groups = np.bincount(g_shot)
    g_k = np.arange(len(g_start)) - (np.cumsum(shot_groups) - shot_groups)[g_shot]
    # Shots ranked longest first, so that the shots with a k-th frame are ranks 0 .. J-1.
    rank = np.empty(len(shot_groups), dtype=np.int64)
    rank[np.argsort(-shot_groups, kind="stable")] = np.arange(len(shot_groups))
    # Step-major order: groups by (k, shot rank); detections by (k, shot rank, sorted position).
    g_order = np.lexsort((rank[g_shot], g_k))
    G_rank, G_frame, G_size = rank[g_shot][g_order], fs[g_start][g_order], g_size[g_order]
    per_step = np.bincount(g_k)
    step_groups = np.r_[0, np.cumsum(per_step)].tolist()
    step_dets = np.r_[0, np.cumsum(np.bincount(g_k, weights=g_size)).astype(np.int64)].tolist()
    G_end = np.cumsum(G_size)
    G_off = G_end - G_size - np.repeat(np.array(step_dets[:-1], dtype=np.int64), per_step)  # offset in its step
    pos = np.repeat(g_start[g_order] - (G_end - G_size), G_size) + np.arange(n)  # sorted position, step-major
    det = order[pos]
    # A new track's integer state [id (set later), shot rank, frame], per step-major detection.
    d_int = np.stack([np.zeros(n, dtype=np.int64), np.repeat(G_rank, G_size), np.repeat(G_frame, G_size)])

    use_boxes, use_features = boxes is not None, features is not None
    if use_boxes:
        boxes = np.asarray(boxes, dtype=np.float64)
        d_bv = np.zeros((8, n))  # a new track's box and velocity, per detection
        d_bv[:4] = boxes.T
        x1, y1, w, h = d_bv[:4]
        d_terms = np.stack([x1, y1, x1 + w, y1 + h, w * h])  # as iou_matrix computes them
    if use_features:
        features = np.asarray(features)
    momentum = cfg.appearance_momentum
    # The alive tracks, sorted by (shot rank, id): [id, shot rank, last frame], [box; velocity], appearance.
    a_int = np.zeros((3, 0), dtype=np.int64)
    a_bv = np.zeros((8, 0))
    a_feat = np.zeros((0, features.shape[1]), dtype=features.dtype) if use_features else None
    first_pos = np.empty(n, dtype=np.int64)  # sorted position of each track's first detection
    n_tracks = 0
    for k in range(len(step_groups) - 1):
        g0, g1 = step_groups[k], step_groups[k + 1]
        n_act = g1 - g0  # shots with a k-th frame: ranks 0 .. n_act - 1
        cur, nd, d_off = G_frame[g0:g1], G_size[g0:g1], G_off[g0:g1]
        s0, s1 = step_dets[k], step_dets[k + 1]
        dets = det[s0:s1]
        matched = np.zeros(s1 - s0, dtype=bool)
        # Alive: the tracks of an active shot whose last frame is within reach.
        cut = int(a_int[1].searchsorted(n_act))
        gap = cur.take(a_int[1, :cut]) - a_int[2, :cut]
        keep = (gap <= reach).nonzero()[0]
        if len(keep):
            j = a_int[1].take(keep)  # shot rank = index into this step's shots
            gap = gap.take(keep)
            cnt = nd.take(j)
            p_start = cnt.cumsum()
            n_pairs = int(p_start[-1])
            p_start -= cnt
            pa = np.arange(len(keep)).repeat(cnt)  # alive row of each (track, detection) pair
            pd = (d_off.take(j) - p_start).repeat(cnt) + np.arange(n_pairs)  # its detection in the step
            if use_boxes:
                kb = a_bv.take(keep, 1)
                # Terms of the predicted and the last box, as iou_matrix computes them: (5, 2, alive).
                t = np.empty((5, 2, len(keep)))
                np.multiply(kb[4:], gap, out=t[:4, 0])
                np.add(kb[:4], t[:4, 0], out=t[:4, 0])
                t[:4, 1] = kb[:4]
                np.multiply(t[2], t[3], out=t[4])
                np.add(t[0], t[2], out=t[2])
                np.add(t[1], t[3], out=t[3])
                tx1, ty1, tx2, ty2, ta = t.take(pa, 2)
                dx1, dy1, dx2, dy2, da = d_terms.take(dets.take(pd), 1)
                iw = np.minimum(tx2, dx2)
                iw -= np.maximum(tx1, dx1)
                np.maximum(iw, 0, out=iw)
                ih = np.minimum(ty2, dy2)
                ih -= np.maximum(ty1, dy1)
                np.maximum(ih, 0, out=ih)
                iw *= ih  # intersection
                union = ta + da
                union -= iw
                np.maximum(union, 1e-9, out=union)
                iw /= union
                score = np.maximum(iw[0], iw[1])
                valid = score >= cfg.min_iou
            if use_features:
                na = np.bincount(j, minlength=n_act)  # alive tracks per shot
                a_off = na.cumsum() - na
                # Similarity shot by shot, by the same product as frame by frame (same rounding);
                # with boxes only for the shots where some pair passed the IoU gate.
                if use_boxes:
                    need = np.zeros(n_act, dtype=bool)
                    need[j.take(pa[valid])] = True
                    need = need.nonzero()[0]
                else:
                    need = na.nonzero()[0]
                sim = np.zeros(n_pairs, dtype=features.dtype)
                for r0, n_rows, d0, n_cols in zip(a_off.take(need).tolist(), na.take(need).tolist(),
                                                  d_off.take(need).tolist(), nd.take(need).tolist()):
                    p0 = int(p_start[r0])
                    block = a_feat.take(keep[r0:r0 + n_rows], 0) @ features.take(dets[d0:d0 + n_cols], 0).T
                    sim[p0:p0 + n_rows * n_cols] = block.ravel()
                if use_boxes:
                    valid &= sim >= gate
                    score = score + sim
                else:
                    valid = sim >= gate
                    score = sim.astype(np.float64)
            vp = valid.nonzero()[0]
            if len(vp):
                ra, rd = pa.take(vp), pd.take(vp)
                iso = np.bincount(ra, minlength=len(keep)).take(ra) == 1
                iso &= np.bincount(rd, minlength=len(dets)).take(rd) == 1
                if iso.all():
                    ma, md = ra, rd
                else:
                    # Shots with a contested pair: the Hungarian assignment on the shot's whole matrix.
                    contested = np.zeros(n_act, dtype=bool)
                    contested[j.take(ra[~iso])] = True
                    take = ~contested.take(j.take(ra))
                    ma_parts, md_parts = [ra[take]], [rd[take]]
                    if not use_features:
                        na = np.bincount(j, minlength=n_act)
                        a_off = na.cumsum() - na
                    cost = np.where(valid, -score, 1e6)
                    for c in contested.nonzero()[0].tolist():
                        n_rows, n_cols, r0 = int(na[c]), int(nd[c]), int(a_off[c])
                        p0 = int(p_start[r0])
                        r, q = linear_sum_assignment(cost[p0:p0 + n_rows * n_cols].reshape(n_rows, n_cols))
                        ok = valid.take(p0 + r * n_cols + q)
                        ma_parts.append(r0 + r[ok])
                        md_parts.append(d_off[c] + q[ok])
                    ma, md = np.concatenate(ma_parts), np.concatenate(md_parts)
                rows = keep.take(ma)
                d = dets.take(md)
                if use_boxes:
                    upd = d_bv.take(d, 1)
                    upd[4:] = (upd[:4] - kb[:4].take(ma, 1)) / np.maximum(gap.take(ma), 1)
                    a_bv[:, rows] = upd
                if use_features:
                    v = momentum * a_feat.take(rows, 0) + (1 - momentum) * features.take(d, 0)
                    norm = np.sqrt(np.matmul(v[:, None, :], v[:, :, None])[:, 0, 0])  # as np.linalg.norm
                    a_feat[rows] = v / np.maximum(norm, 1e-12)[:, None]
                a_int[2][rows] = cur.take(j.take(ma))
                track[d] = a_int[0].take(rows)
                linked[d] = True
                matched[md] = True
        # Unmatched detections start tracks (renumbered by their sorted position at the end).
        new = (~matched).nonzero()[0]
        ids = np.arange(n_tracks, n_tracks + len(new))
        n_tracks += len(new)
        new_d = dets.take(new)
        track[new_d] = ids
        first_pos[ids] = pos[s0:s1].take(new)
        new_int = d_int[:, s0:s1].take(new, 1)
        new_int[0] = ids
        a_int = np.concatenate([a_int.take(keep, 1), new_int], 1)
        idx = a_int[1].argsort(kind="stable") if n_act > 1 else None  # new tracks after their shot's
        if idx is not None:
            a_int = a_int.take(idx, 1)
        if use_boxes:
            a_bv = np.concatenate([a_bv.take(keep, 1), d_bv.take(new_d, 1)], 1)
            if idx is not None:
                a_bv = a_bv.take(idx, 1)
        if use_features:
            a_feat = np.concatenate([a_feat.take(keep, 0), features.take(new_d, 0)])
            if idx is not None:
                a_feat = a_feat.take(idx, 0)
    # Frame by frame numbers tracks in the (shot, frame, detection) order of their first detection.
    number = np.empty(n_tracks, dtype=np.int64)
    number[np.argsort(first_pos[:n_tracks])] = np.arange(n_tracks)
    return number[track], linked


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
    return l2_normalize(v)


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
