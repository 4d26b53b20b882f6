"""Synthetic TV episodes: frames, a face manifest with true identities, and the truth kept aside.

:func:`make_episode` renders a deterministic episode made of shots (one background per
shot, so frame histograms jump at cuts) in which a few people move smoothly, turn their
heads, talk, change scale and lighting, get partly covered by objects, leave the frame
and come back, and walk past each other. Faces are procedural drawings
(:mod:`data_tools.faces`) or real face images taken from an identity-labelled manifest.

With real face images the episode is realistic: **one photo per appearance**. A person
keeps the same photo while on screen in a shot, and moves only by small frame-to-frame
jitter (scale, shift, blur, noise, lighting, slight rotation, head turn), as the faces
of one real track are near-duplicates of successive frames; different photos of a
person appear only in different appearances (shots). ``switch_rate`` brings back the
old behaviour (the photo changes mid-appearance in that share of appearances): it gives
must-links across photos that no real video gives, and flatters training; keep it for
comparisons only.

Outputs in ``out_dir``:

- ``frames/000000.jpg`` ...: the frames;
- ``manifest.jsonl``: one line per annotated face (Contract 1) with ``identity`` but no
  ``track`` nor ``shot`` (finding those is the tracker's job);
- ``truth.jsonl``: ``{"id", "identity", "appearance", "shot", "occluded"}`` per face; an
  appearance ends only when the person leaves the frame or the shot ends;
- ``episode.json``: the parameters, shots, counts and the hard-case events.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from proxytasks.errors import ProxytasksError
from proxytasks.fileio import atomic_write
from proxytasks.manifest import Face, Manifest

from .faces import (BACKGROUNDS, FACE_ASPECT, FaceParams, colour, draw_background, draw_face,
                    random_faces, shade, soft_face)

logger = logging.getLogger(__name__)

VISIBLE_MIN = 0.6   # fraction of a face box inside the frame needed to annotate it
HIDDEN_MIN = 0.6    # a face covered more than this by people in front is not annotated
MAX_IMAGES = 12     # face images kept per real identity


@dataclass
class _Person:
    """One person in one shot; arrays run over the shot's frames."""

    ident: int
    depth: float                 # drawing order: larger is closer to the camera
    box: np.ndarray              # (n, 4) int x, y, w, h of the face patch (may leave the frame)
    yaw: np.ndarray
    mouth: np.ndarray
    roll: np.ndarray
    light: np.ndarray            # (n, 3) brightness, contrast, side light
    source: np.ndarray           # (n,) index of the identity's face image, -1 for procedural
    body: tuple[int, int, int]
    role: str = ""               # "", "cross_front", "cross_back" or "reentry"
    bars: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Shot:
    index: int
    start: int
    n: int
    background: dict[str, Any]
    people: list[_Person]


@dataclass
class _Looks:
    """What identities look like: procedural parameters or real RGBA face images."""

    names: list[str]
    params: list[FaceParams] | None = None
    images: list[list[Image.Image]] | None = None
    skins: list[list[tuple[int, int, int]]] | None = None
    sources: list[list[str]] | None = None

    def aspects(self, i: int) -> list[float]:
        if self.images is None:
            return [FACE_ASPECT]
        return [im.height / im.width for im in self.images[i]]


def _check_args(n_identities: int, n_shots: int, shot_seconds: tuple[float, float], fps: float,
                size: tuple[int, int], max_people: int, face_size: tuple[int, int],
                miss_rate: float) -> None:
    problems = []
    if n_identities < 1:
        problems.append(f"n_identities must be at least 1, got {n_identities}")
    if n_shots < 1:
        problems.append(f"n_shots must be at least 1, got {n_shots}")
    if not (fps > 0 and math.isfinite(fps)):
        problems.append(f"fps must be a positive number, got {fps}")
    if len(shot_seconds) != 2 or not 0 < shot_seconds[0] <= shot_seconds[1]:
        problems.append(f"shot_seconds must be (min, max) with 0 < min <= max, got {shot_seconds}")
    if len(size) != 2 or min(size) < 32:
        problems.append(f"size must be (width, height) of at least 32 pixels each, got {size}")
    if max_people < 1:
        problems.append(f"max_people must be at least 1, got {max_people}")
    if len(face_size) != 2 or not 8 <= face_size[0] <= face_size[1]:
        problems.append(f"face_size must be (min, max) widths with 8 <= min <= max, got {face_size}")
    elif len(size) == 2 and (face_size[1] > size[0] / 2 or face_size[1] * FACE_ASPECT > 0.8 * size[1]):
        problems.append(f"face_size {face_size} is too large for frames of {size[0]}x{size[1]}: "
                        f"the widest face must fit twice across and its height in 80% of the frame")
    if not 0 <= miss_rate < 1:
        problems.append(f"miss_rate must be in [0, 1), got {miss_rate}")
    if problems:
        raise ProxytasksError("make_episode: " + "; ".join(problems))


def _load_real(identities: Manifest, n: int, rng: np.random.Generator) -> _Looks:
    """Pick ``n`` identities with at least 2 usable faces and load their images as RGBA."""
    groups: dict[str, list[Face]] = {}
    for f in identities:
        if f.identity is not None and (f.crop is not None or (f.image and f.bbox)):
            groups.setdefault(f.identity, []).append(f)
    usable = sorted(k for k, v in groups.items() if len(v) >= 2)
    if len(usable) < 2:
        raise ProxytasksError(f"the identities manifest has {len(usable)} usable identities (an "
                              "'identity' with at least 2 faces that have 'crop' or 'image'+'bbox'); "
                              "at least 2 are needed")
    if n > len(usable):
        raise ProxytasksError(f"n_identities={n} but the identities manifest has only {len(usable)} "
                              "identities with at least 2 usable faces; ask for fewer")
    names = [usable[i] for i in sorted(rng.choice(len(usable), size=n, replace=False))]
    looks = _Looks(names=names, images=[], skins=[], sources=[])
    for name in names:
        faces = groups[name]
        keep = sorted(rng.choice(len(faces), size=min(MAX_IMAGES, len(faces)), replace=False))
        ims, skins, paths = [], [], []
        for k in keep:
            rgba, skin, path = _real_face(identities, faces[k])
            ims.append(rgba)
            skins.append(skin)
            paths.append(path)
        looks.images.append(ims)  # type: ignore[union-attr]
        looks.skins.append(skins)  # type: ignore[union-attr]
        looks.sources.append(paths)  # type: ignore[union-attr]
    return looks


def _real_face(identities: Manifest, face: Face) -> tuple[Image.Image, tuple[int, int, int], str]:
    """One face image as RGBA with a soft elliptic alpha, its mean centre colour, its path."""
    path = identities.resolve(face.crop if face.crop is not None else face.image)  # type: ignore
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ProxytasksError(f"cannot read face image {str(path)!r} (face {face.id!r}): {e}") from None
    if face.crop is None:
        x, y, w, h = face.bbox  # type: ignore[misc]
        box = (max(0, round(x)), max(0, round(y)), min(rgb.width, round(x + w)),
               min(rgb.height, round(y + h)))
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            raise ProxytasksError(f"face {face.id!r}: box {face.bbox} leaves no image in {str(path)!r}")
        rgb = rgb.crop(box)
    rgba, skin = soft_face(rgb)
    return rgba, skin, str(path)


def _plan(rng: np.random.Generator, looks: _Looks, n_shots: int, shot_seconds: tuple[float, float],
          fps: float, size: tuple[int, int], max_people: int, face_size: tuple[int, int],
          hard_cases: bool, switch_rate: float = 0.0) -> list[_Shot]:
    """Decide every shot, person, trajectory and occluder; no pixels yet."""
    W, H = size
    n_ids = len(looks.names)
    lengths = [max(1, int(round(rng.uniform(*shot_seconds) * fps))) for _ in range(n_shots)]
    by_length = sorted(range(n_shots), key=lambda s: (-lengths[s], s))
    reentry_shot = by_length[0] if hard_cases else -1
    crossing_shot = (by_length[min(1, n_shots - 1)] if hard_cases and n_ids >= 2 else -1)
    n_images = [len(a) for a in (looks.images or [[None]] * n_ids)]
    cycles = [[int(v) for v in rng.permutation(k)] for k in n_images]
    used = [0] * n_ids

    def next_image(i: int) -> int:
        used[i] += 1
        return cycles[i][(used[i] - 1) % n_images[i]]

    shots, start, hue, kind = [], 0, float(rng.uniform()), ""
    shown = [0] * n_ids  # shots each identity appeared in so far
    fmin, fmax = face_size
    for s, n in enumerate(lengths):
        hue = (hue + rng.uniform(0.22, 0.78)) % 1.0
        kind = str(rng.choice([k for k in BACKGROUNDS if k != kind]))
        background = {"kind": kind, "hue": round(hue, 4), "value": round(float(rng.uniform(0.3, 0.9)), 4),
                      "seed": int(rng.integers(2**31))}
        kmax = min(max_people, n_ids)
        crossing, reentry = s == crossing_shot, s == reentry_shot
        k = int(rng.integers(1, kmax + 1))
        if crossing:
            k = max(k, min(3 if reentry else 2, kmax))
        unseen = sum(c == 0 for c in shown)
        k = max(k, min(kmax, -(-unseen // (n_shots - s))))  # everyone appears when possible
        tiebreak = rng.uniform(size=n_ids)
        ids = rng.permutation(sorted(range(n_ids), key=lambda i: (shown[i], tiebreak[i]))[:k])
        for i in ids:
            shown[i] += 1
        lanes = rng.permutation(k)
        t = np.arange(n, dtype=np.float64)
        u = t / (n - 1) - 0.5 if n > 1 else np.zeros(n)
        light_side, light_level = rng.uniform(-1, 1), rng.uniform(0.85, 1.15)
        people = []
        for j, ident in enumerate(ids):
            ident = int(ident)
            role = ""
            if crossing and j < 2:
                role = ("cross_front", "cross_back")[j]
            elif reentry and j == k - 1:
                role = "reentry"
            source = np.full(n, -1, dtype=np.int64)
            if looks.images is not None:
                source[:] = next_image(ident)
                # draws as the old episodes did, whether the photo switches or not, so that a
                # seed renders the same scenes at every switch_rate
                draw = rng.uniform() if n >= 4 and n_images[ident] > 1 else 1.0
                if draw < max(switch_rate, 0.35):
                    cut, other = int(rng.integers(n // 4, n - n // 4)), next_image(ident)
                    if draw < switch_rate:
                        source[cut:] = other
            aspect = np.array(looks.aspects(ident))[np.maximum(source, 0)]
            lane_w = W / k
            w0 = float(rng.uniform(fmin, fmax))
            if role == "cross_front":
                w0 = float(rng.uniform(min(fmax, fmin / 0.8), fmax))
                front_w0 = w0
            elif role == "cross_back":
                w0 = min(max(fmin, 0.8 * front_w0), front_w0)
            w0 = min(w0, 0.8 * H / float(aspect.max()))
            still = role.startswith("cross")
            zoom = 0.0 if still else rng.uniform(-0.25, 0.25)
            w = w0 * (1 + zoom * u) * (1 + rng.normal(0, 0.01 if still else 0.015, n))
            rel = (w0 - fmin) / (fmax - fmin + 1e-9)
            cy = H * (0.36 + 0.12 * rel) + rng.normal(0, 0.03 * H) \
                + 0.015 * H * np.sin(2 * np.pi * t / (rng.uniform(2, 5) * fps) + rng.uniform(0, 6.3))
            cx = (lanes[j] + 0.5 + rng.uniform(-0.15, 0.15) + rng.uniform(-0.3, 0.3) * u) * lane_w \
                + rng.uniform(0, 0.1) * lane_w * np.sin(2 * np.pi * t / (rng.uniform(2, 6) * fps)
                                                        + rng.uniform(0, 6.3))
            if role == "cross_front":
                xc, span, mid = W * rng.uniform(0.4, 0.6), W * rng.uniform(0.5, 0.65), n // 2
                direction = float(rng.choice([-1.0, 1.0]))
                cx = xc + direction * span / max(n - 1, 1) * (t - mid)
                cross_cx, cross_cy, cross_h = cx, H * 0.42 + rng.normal(0, 0.02 * H), w0 * aspect
                cy = np.full(n, cross_cy)
            elif role == "cross_back":
                cx = 2 * xc - cross_cx
                cy = cross_cy - 0.05 * cross_h
            wi = np.maximum(4, np.round(w)).astype(np.int64)
            hi = np.maximum(4, np.round(wi * aspect)).astype(np.int64)
            cx = np.clip(cx, wi / 2 + 1, W - wi / 2 - 1)
            cy = np.clip(cy, hi / 2 + 1, H - hi / 2 - 1)
            if role == "reentry":
                side = -1 if (k > 1 and lanes[j] < k / 2) or (k == 1 and rng.uniform() < 0.5) else 1
                t0 = int(round(n * rng.uniform(0.08, 0.2)))
                t1 = n - 1 - int(round(n * rng.uniform(0.08, 0.2)))
                bump = np.zeros(n)
                if t1 > t0:
                    inside = (t >= t0) & (t <= t1)
                    bump[inside] = np.sin(np.pi * (t[inside] - t0) / (t1 - t0)) ** 2
                x_out = -1.0 * w0 if side < 0 else W + 1.0 * w0
                cx = cx + (x_out - cx) * bump
            box = np.stack([np.round(cx - wi / 2), np.round(cy - hi / 2), wi, hi], 1).astype(np.int64)
            yaw = rng.uniform(-0.5, 0.5) + 0.35 * np.sin(2 * np.pi * t / (rng.uniform(2, 5) * fps)
                                                         + rng.uniform(0, 6.3)) + rng.normal(0, 0.05, n)
            talks = rng.uniform() < 0.6
            mouth = np.clip(rng.uniform(-0.3, 1.0, n), 0, 1) * talks
            roll = rng.uniform(-3, 3) + rng.normal(0, 1.2, n)
            light = np.stack([light_level * (1 + rng.normal(0, 0.03, n)),
                              rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.03, n)),
                              light_side + rng.normal(0, 0.1, n)], 1)
            body = colour(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.85))
            depth = w0 + (0.5 if role == "cross_front" else 0.0)
            people.append(_Person(ident, depth, box, yaw, mouth, roll, light, source, body, role))
        for p in people:
            if rng.uniform() < 0.2:
                p.bars.append(_bar(rng, n))
        shots.append(_Shot(s, start, n, background, people))
        start += n
    if hard_cases and not any(p.bars for sh in shots for p in sh.people):
        shots[0].people[0].bars.append(_bar(rng, shots[0].n))
    return shots


def _bar(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """An object partly covering a face for a few frames (shot-local frames)."""
    length = int(rng.integers(2, 7))
    first = int(rng.integers(0, max(1, n - length + 1)))
    thick = float(rng.uniform(0.2, 0.45))
    return {"first": first, "last": min(n - 1, first + length - 1), "orient": str(rng.choice(["v", "h"])),
            "thick": thick, "offset": float(rng.uniform(0, 1 - thick)),
            "colour": colour(rng.uniform(), rng.uniform(0, 0.9), rng.uniform(0.1, 0.95))}


def _rects(p: _Person, t: int, H: int) -> list[tuple[int, int, int, int]]:
    """Face and body rectangles (x0, y0, x1, y1) of a person at shot frame ``t``."""
    x, y, w, h = (int(v) for v in p.box[t])
    cx = x + w / 2
    return [(x, y, x + w, y + h), (round(cx - 0.85 * w), round(y + 0.95 * h), round(cx + 0.85 * w), H)]


def _annotate(shots: list[_Shot], looks: _Looks, size: tuple[int, int], fps: float, media: str,
              miss_rate: float, rng: np.random.Generator
              ) -> tuple[list[Face], list[dict[str, Any]], dict[str, list]]:
    """Faces for the manifest, truth records and events (hidden, missed) from the plan."""
    W, H = size
    faces: list[Face] = []
    truth: list[dict[str, Any]] = []
    hidden: list[dict[str, Any]] = []
    missed: list[dict[str, Any]] = []
    for shot in shots:
        people = shot.people
        order = sorted(range(len(people)), key=lambda i: people[i].depth)
        was_in = [False] * len(people)
        appearances = [0] * len(people)
        for t in range(shot.n):
            frame = shot.start + t
            found = []
            for rank, i in enumerate(order):
                p, name = people[i], looks.names[people[i].ident]
                x, y, w, h = (int(v) for v in p.box[t])
                x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
                inside = x1 > x0 and y1 > y0 and (x1 - x0) * (y1 - y0) >= VISIBLE_MIN * w * h
                if inside and not was_in[i]:
                    appearances[i] += 1
                was_in[i] = inside
                if not inside:
                    continue
                mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
                cover_by: dict[int, float] = {}
                for j in order[rank + 1:]:
                    mine = np.zeros_like(mask)
                    for a0, b0, a1, b1 in _rects(people[j], t, H):
                        mine[max(b0 - y0, 0):max(b1 - y0, 0), max(a0 - x0, 0):max(a1 - x0, 0)] = True
                    cover_by[j] = float(mine.mean())
                    mask |= mine
                if mask.mean() > HIDDEN_MIN:
                    by = max(cover_by, key=lambda j: (cover_by[j], -j))
                    hidden.append({"shot": shot.index, "frame": frame, "identity": name,
                                   "by": looks.names[people[by].ident]})
                    continue
                if miss_rate > 0 and rng.uniform() < miss_rate:
                    missed.append({"shot": shot.index, "frame": frame, "identity": name})
                    continue
                occluded = any(b["first"] <= t <= b["last"] for b in p.bars)
                found.append((x0, y0, x1 - x0, y1 - y0, name,
                              f"{shot.index:03d}/{name}/{appearances[i]}", occluded))
            for k, (x, y, w, h, name, appearance, occluded) in enumerate(sorted(found)):
                fid = f"f{frame:06d}_{k}"
                faces.append(Face(id=fid, media=media, frame=frame, time=round(frame / fps, 6),
                                  image=f"frames/{frame:06d}.jpg",
                                  bbox=[float(x), float(y), float(w), float(h)], score=1.0,
                                  identity=name))
                truth.append({"id": fid, "identity": name, "appearance": appearance,
                              "shot": shot.index, "occluded": occluded})
    return faces, truth, {"hidden": hidden, "missed": missed}


def _events(shots: list[_Shot], looks: _Looks, truth: list[dict[str, Any]],
            found: dict[str, list]) -> dict[str, Any]:
    """Hard cases as they came out: re-entries, crossings (hidden stretches), occlusions, misses."""
    apps: dict[tuple[int, str], set[str]] = {}
    for r in truth:
        apps.setdefault((r["shot"], r["identity"]), set()).add(r["appearance"])
    reentries = [{"shot": s, "identity": name, "appearances": sorted(a)}
                 for (s, name), a in sorted(apps.items()) if len(a) > 1]
    crossings: list[dict[str, Any]] = []
    for h in found["hidden"]:
        last = crossings[-1] if crossings else None
        if last and (last["shot"], last["identity"], last["by"]) == (h["shot"], h["identity"], h["by"]) \
                and last["last"] == h["frame"] - 1:
            last["last"] = h["frame"]
        else:
            crossings.append({"shot": h["shot"], "identity": h["identity"], "by": h["by"],
                              "first": h["frame"], "last": h["frame"]})
    occlusions = [{"shot": sh.index, "identity": looks.names[p.ident], "first": sh.start + b["first"],
                   "last": sh.start + b["last"]} for sh in shots for p in sh.people for b in p.bars]
    return {"reentries": reentries, "crossings": crossings, "occlusions": occlusions,
            "missed": found["missed"]}


def _face_patch(p: _Person, t: int, looks: _Looks) -> Image.Image:
    """The face of a person at shot frame ``t`` as an RGBA patch of its box size."""
    _, _, w, h = (int(v) for v in p.box[t])
    yaw = float(np.clip(p.yaw[t], -1, 1))
    if looks.params is not None:
        patch = draw_face(looks.params[p.ident], w, h, yaw=yaw, mouth=float(p.mouth[t]))
    else:
        src = looks.images[p.ident][int(p.source[t])]  # type: ignore[index]
        w2 = max(2, round(w * (1 - 0.12 * abs(yaw))))
        patch = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        patch.paste(src.resize((w2, h), Image.BILINEAR), ((w - w2) // 2 + round(yaw * (w - w2) / 2), 0))
    brightness, contrast, side = (float(v) for v in p.light[t])
    patch = shade(patch, brightness, contrast, side)
    return patch.rotate(float(p.roll[t]), resample=Image.BICUBIC)


def _render(shots: list[_Shot], looks: _Looks, size: tuple[int, int], frames_dir: Path,
            rng: np.random.Generator, progress: bool) -> None:
    """Draw and save every frame, one at a time."""
    W, H = size
    total = sum(s.n for s in shots)
    with tqdm(total=total, disable=not progress, desc="synthetic episode", unit="frame") as bar:
        for shot in shots:
            bg = draw_background(shot.background, W, H).astype(np.int16)
            order = sorted(shot.people, key=lambda p: p.depth)
            for t in range(shot.n):
                noise = rng.integers(-3, 4, size=(H, W, 1), dtype=np.int16)
                im = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
                d = ImageDraw.Draw(im)
                for p in order:
                    x, y, w, h = (int(v) for v in p.box[t])
                    if x + w <= 0 or x >= W:
                        continue
                    skin = looks.params[p.ident].skin if looks.params is not None \
                        else looks.skins[p.ident][int(p.source[t])]  # type: ignore[index]
                    cx = x + w / 2
                    d.rectangle([cx - 0.18 * w, y + 0.75 * h, cx + 0.18 * w, y + 1.02 * h], fill=skin)
                    d.rounded_rectangle([cx - 0.85 * w, y + 0.95 * h, cx + 0.85 * w, H + 0.5 * h],
                                        radius=0.3 * w, fill=p.body)
                    patch = _face_patch(p, t, looks)
                    if rng.uniform() < 0.3:  # focus and motion blur come and go
                        patch = patch.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
                    im.paste(patch, (x, y), patch)
                    for b in p.bars:
                        if b["first"] <= t <= b["last"]:
                            if b["orient"] == "v":
                                a = x + b["offset"] * w
                                rect = [a, y - 0.1 * h, a + b["thick"] * w, y + 1.1 * h]
                            else:
                                a = y + b["offset"] * h
                                rect = [x - 0.1 * w, a, x + 1.1 * w, a + b["thick"] * h]
                            d.rectangle(rect, fill=b["colour"])
                im.save(frames_dir / f"{shot.start + t:06d}.jpg", quality=90)
                bar.update(1)


def make_episode(out_dir: str | Path, identities: Manifest | None = None, *, n_identities: int = 6,
                 n_shots: int = 10, shot_seconds: tuple[float, float] = (2.0, 5.0), fps: float = 8.0,
                 size: tuple[int, int] = (480, 270), max_people: int = 4,
                 face_size: tuple[int, int] = (40, 90), miss_rate: float = 0.02, seed: int = 0,
                 progress: bool = True, media: str = "episode", hard_cases: bool = True,
                 switch_rate: float = 0.0) -> Path:
    """Render a deterministic synthetic episode with a face manifest and the truth.

    Args:
        out_dir: output folder (created); see the module docstring for what goes in it.
        identities: identity-labelled faces (``crop``, or ``image`` + ``bbox``) to paste;
            None draws procedural faces named ``person_00`` ...
        n_identities: people in the episode.
        n_shots: shots, each ``shot_seconds`` (min, max) long at ``fps`` frames a second.
        size: frame (width, height) in pixels.
        max_people: most people in one shot.
        face_size: (min, max) face box width in pixels (height is about 1.22 times it).
        miss_rate: probability that a visible face is left out of the manifest (missed detection).
        seed: the whole episode follows from it; same arguments give the same bytes.
        progress: show a progress bar over frames.
        media: the ``media`` name written in the manifest.
        hard_cases: force a re-entry, a crossing and an occluding object into the episode.
        switch_rate: share of appearances whose real photo changes mid-appearance (0: one
            photo per appearance, as in real video; 0.35 was the old default, which flatters
            training with cross-photo must-links).

    Returns:
        The path of ``manifest.jsonl``.
    """
    _check_args(n_identities, n_shots, shot_seconds, fps, size, max_people, face_size, miss_rate)
    size = (int(size[0]), int(size[1]))
    plan_seq, pixel_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(plan_seq)
    if identities is None:
        looks = _Looks(names=[f"person_{i:02d}" for i in range(n_identities)],
                       params=random_faces(rng, n_identities))
    else:
        looks = _load_real(identities, n_identities, rng)
    if not 0 <= switch_rate <= 1:
        raise ProxytasksError(f"make_episode: switch_rate must be in [0, 1], got {switch_rate}")
    shots = _plan(rng, looks, n_shots, shot_seconds, fps, size, max_people, face_size, hard_cases, switch_rate)
    faces, truth, found = _annotate(shots, looks, size, fps, media, miss_rate, rng)
    if not faces:
        raise ProxytasksError("make_episode: no face is visible in the whole episode; use more shots "
                              "or longer ones")
    out_dir = Path(out_dir)
    frames_dir = out_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    n_frames = sum(s.n for s in shots)
    for old in frames_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):
        if int(old.stem) >= n_frames:
            old.unlink()
    _render(shots, looks, size, frames_dir, np.random.default_rng(pixel_seq), progress)
    path = Manifest(faces, out_dir).write(out_dir / "manifest.jsonl")
    with atomic_write(out_dir / "truth.jsonl") as fh:
        for r in truth:
            fh.write(json.dumps(r) + "\n")
    episode = {
        "seed": seed,
        "params": {"n_identities": n_identities, "n_shots": n_shots, "shot_seconds": list(shot_seconds),
                   "fps": fps, "size": list(size), "max_people": max_people,
                   "face_size": list(face_size), "miss_rate": miss_rate, "media": media,
                   "hard_cases": hard_cases, "switch_rate": switch_rate,
                   "identity_source": "procedural" if identities is None else "manifest"},
        "frames": n_frames, "faces": len(faces), "identities": looks.names,
        "shot_starts": [s.start for s in shots],
        "shots": [{"index": s.index, "start": s.start, "frames": s.n, "background": s.background,
                   "people": [looks.names[p.ident] for p in s.people],
                   "roles": {looks.names[p.ident]: p.role for p in s.people if p.role},
                   **({"images": {looks.names[p.ident]: [int(v) for v in dict.fromkeys(p.source)]
                                  for p in s.people}} if looks.images is not None else {})}
                  for s in shots],
        "events": _events(shots, looks, truth, found),
    }
    if looks.sources is not None:
        episode["sources"] = dict(zip(looks.names, looks.sources))
    with atomic_write(out_dir / "episode.json") as fh:
        fh.write(json.dumps(episode, indent=1) + "\n")
    ev = episode["events"]
    logger.info("synthetic episode in %s: %d frames, %d shots, %d faces, %d identities, %d re-entries, "
                "%d hidden stretches, %d missed", out_dir, n_frames, len(shots), len(faces),
                len(looks.names), len(ev["reentries"]), len(ev["crossings"]), len(ev["missed"]))
    return path


def load_truth(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The truth of an episode made by :func:`make_episode`: face id -> truth record."""
    path = Path(out_dir) / "truth.jsonl"
    if not path.is_file():
        raise ProxytasksError(f"no truth file {str(path)!r}: is {str(out_dir)!r} a synthetic episode?")
    out = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                out[r["id"]] = r
    return out
