"""Drawing for the synthetic scene maker: procedural faces, real face patches, backgrounds.

Each identity is a :class:`FaceParams` (skin, hair style and colour, eye spacing,
nose, mouth, glasses, beard ...). :func:`draw_face` renders one as an RGBA patch
(transparent around the head) for a given pose (yaw) and expression (mouth), so one
identity varies from frame to frame while different identities stay distinct.
:func:`shade` applies lighting (brightness, contrast, a light from one side),
:func:`soft_face` turns a real face image into a patch with a soft elliptic edge, and
:func:`draw_background` paints the fixed background of one shot.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FACE_ASPECT = 112 / 92  # height / width of a face patch, as in ORL crops

HAIR_STYLES = ("short", "long", "bald", "curly", "bob", "spiky")
HAIR_COLOURS = ((28, 22, 20), (100, 62, 32), (222, 188, 112), (170, 68, 28),
                (172, 172, 176), (238, 236, 228))
SKIN_TONES = ((255, 226, 200), (240, 196, 160), (222, 170, 122), (196, 134, 88),
              (142, 88, 56), (96, 62, 42))
EXTRAS = ("none", "glasses", "beard", "glasses+beard")
BACKGROUNDS = ("gradient", "room", "stripes", "tiles")
IRIS_COLOURS = ((60, 40, 25), (40, 90, 160), (60, 120, 70), (110, 80, 40), (30, 30, 30))


@dataclass(frozen=True)
class FaceParams:
    """The look of one procedural identity (lengths are fractions of the head)."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    aspect: float            # head width / head height
    eye_spacing: float       # between eye centres, fraction of head width
    eye_height: float        # eye line, fraction of head height from its top
    eye_size: float
    iris: tuple[int, int, int]
    brow_thickness: float
    brow_tilt: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_height: float
    lip: tuple[int, int, int]
    glasses: str | None      # None, "round" or "square"
    glasses_colour: tuple[int, int, int]
    beard: str               # "none", "stubble", "full", "moustache" or "goatee"
    ear_size: float


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))[:3]  # type: ignore[return-value]


def colour(h: float, s: float, v: float) -> tuple[int, int, int]:
    """An RGB colour from hue (wrapped), saturation and value in [0, 1]."""
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore


def random_faces(rng: np.random.Generator, n: int) -> list[FaceParams]:
    """``n`` clearly different identities: categorical traits chosen far apart, then continuous ones.

    The combination (hair style, hair colour, skin tone, glasses/beard) is picked greedily
    to maximise the smallest number of differing traits to the identities already chosen.
    """
    dims = (len(HAIR_STYLES), len(HAIR_COLOURS), len(SKIN_TONES), len(EXTRAS))
    chosen: list[tuple[int, ...]] = [tuple(int(rng.integers(d)) for d in dims)]
    while len(chosen) < n:
        cands = [tuple(int(rng.integers(d)) for d in dims) for _ in range(48)]
        dist = [min(sum(a != b for a, b in zip(c, o)) for o in chosen) for c in cands]
        chosen.append(cands[int(np.argmax(dist))])
    faces = []
    for style, hair, skin, extra in chosen:
        extra_name = EXTRAS[extra]
        glasses = str(rng.choice(["round", "square"])) if "glasses" in extra_name else None
        beard = str(rng.choice(["stubble", "full", "moustache", "goatee"])) \
            if "beard" in extra_name else "none"
        lip_h = rng.uniform(0.95, 1.0)
        faces.append(FaceParams(
            skin=SKIN_TONES[skin], hair=HAIR_COLOURS[hair], hair_style=HAIR_STYLES[style],
            aspect=float(rng.uniform(0.68, 0.86)), eye_spacing=float(rng.uniform(0.30, 0.44)),
            eye_height=float(rng.uniform(0.40, 0.50)), eye_size=float(rng.uniform(0.8, 1.25)),
            iris=IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))],
            brow_thickness=float(rng.uniform(0.6, 1.6)), brow_tilt=float(rng.uniform(-0.5, 0.5)),
            nose_length=float(rng.uniform(0.12, 0.22)), nose_width=float(rng.uniform(0.10, 0.22)),
            mouth_width=float(rng.uniform(0.26, 0.46)), mouth_height=float(rng.uniform(0.74, 0.80)),
            lip=tuple(int(255 * c) for c in colorsys.hsv_to_rgb(lip_h, rng.uniform(0.35, 0.7),
                                                                  rng.uniform(0.45, 0.75))),
            glasses=glasses,
            glasses_colour=_mix((20, 20, 20), (150, 40, 40), float(rng.uniform(0, 1))),
            beard=beard, ear_size=float(rng.uniform(0.8, 1.2)),
        ))
    return faces


def draw_face(p: FaceParams, width: int, height: int, yaw: float = 0.0, mouth: float = 0.0,
              supersample: int = 3) -> Image.Image:
    """Render one face as an RGBA patch of ``width`` x ``height`` pixels.

    Args:
        p: the identity's look.
        width, height: patch size in pixels; the head fills most of it.
        yaw: head turn in [-1, 1] (positive: towards the viewer's right); features shift,
            the far eye shrinks and the near ear hides.
        mouth: mouth opening in [0, 1] (talking).
        supersample: drawing scale before the anti-aliasing resize.
    """
    s = supersample
    W, H = width * s, height * s
    im = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    yaw = float(np.clip(yaw, -1, 1))
    head_h = 0.80 * H
    hw = min(p.aspect * head_h, 0.88 * W)
    top = 0.15 * H
    cx = W / 2 + yaw * 0.03 * W
    fx = cx + yaw * 0.20 * hw  # where the features sit
    hair, skin = p.hair + (255,), p.skin + (255,)
    dark_skin = _mix(p.skin, (60, 30, 20), 0.25) + (255,)
    lw = max(1, round(0.022 * W))

    if p.hair_style == "long":
        d.rounded_rectangle([cx - 0.60 * hw, top - 0.03 * H, cx + 0.60 * hw, H + 0.2 * H],
                            radius=0.4 * hw, fill=hair)
    elif p.hair_style == "bob":
        d.ellipse([cx - 0.60 * hw, top - 0.04 * H, cx + 0.60 * hw, top + 0.92 * head_h], fill=hair)
    # ears, drawn behind the head; the one on the side the face turns to hides
    ey = top + p.eye_height * head_h
    for side in (-1, 1):
        ex = cx + side * hw / 2 * (1 - 0.45 * max(0.0, side * yaw))
        ew, eh = 0.13 * hw * p.ear_size, 0.22 * head_h * p.ear_size
        d.ellipse([ex - ew, ey - 0.2 * eh, ex + ew, ey + 0.9 * eh], fill=dark_skin)
    d.ellipse([cx - hw / 2, top, cx + hw / 2, top + head_h], fill=skin)
    if p.beard == "full":
        d.pieslice([cx - hw / 2, top + 0.3 * head_h, cx + hw / 2, top + head_h], 0, 180, fill=hair)
    elif p.beard == "stubble":
        d.pieslice([cx - hw / 2, top + 0.3 * head_h, cx + hw / 2, top + head_h], 0, 180,
                   fill=_mix(p.skin, p.hair, 0.45) + (255,))
    elif p.beard == "goatee":
        d.ellipse([fx - 0.14 * hw, top + 0.86 * head_h, fx + 0.14 * hw, top + 1.0 * head_h], fill=hair)
    # hair on top
    if p.hair_style != "bald":
        low = {"bob": 0.62, "long": 0.52}.get(p.hair_style, 0.50)
        cap = [cx - 0.53 * hw + yaw * 0.04 * W, top - 0.05 * H,
               cx + 0.53 * hw + yaw * 0.04 * W, top + low * head_h]
        d.pieslice(cap, 180, 360, fill=hair)
        ccx, ccy = (cap[0] + cap[2]) / 2, (cap[1] + cap[3]) / 2
        rx, ry = (cap[2] - cap[0]) / 2, (cap[3] - cap[1]) / 2
        if p.hair_style == "curly":
            for a in np.linspace(np.pi, 2 * np.pi, 9):
                x, y, r = ccx + rx * np.cos(a), ccy + ry * np.sin(a), 0.11 * hw
                d.ellipse([x - r, y - r, x + r, y + r], fill=hair)
        elif p.hair_style == "spiky":
            pts = []
            for i, a in enumerate(np.linspace(np.pi * 1.05, np.pi * 1.95, 11)):
                k = 1.18 if i % 2 else 0.95
                pts.append((ccx + rx * k * np.cos(a), ccy + ry * k * np.sin(a)))
            d.polygon(pts + [(ccx, ccy)], fill=hair)
    else:
        for side in (-1, 1):
            x = cx + side * hw * 0.47
            d.ellipse([x - 0.07 * hw, ey - 0.12 * head_h, x + 0.07 * hw, ey + 0.05 * head_h], fill=hair)
    # eyes and brows
    spacing = p.eye_spacing * hw * (1 - 0.25 * abs(yaw))
    brow = _mix(p.hair, (0, 0, 0), 0.4) + (255,) if p.hair_style != "bald" else (50, 40, 35, 255)
    for side in (-1, 1):
        k = 1 - 0.22 * side * yaw
        ex = fx + side * spacing / 2
        ew, eh = 0.10 * hw * p.eye_size * k, 0.055 * head_h * p.eye_size
        d.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=(250, 250, 250, 255))
        ix, r = ex + yaw * 0.35 * ew, eh * 0.85
        d.ellipse([ix - r, ey - r, ix + r, ey + r], fill=p.iris + (255,))
        d.ellipse([ix - r / 2.2, ey - r / 2.2, ix + r / 2.2, ey + r / 2.2], fill=(10, 10, 10, 255))
        by = ey - 2.0 * eh
        tilt = p.brow_tilt * eh * side
        d.line([(ex - 1.1 * ew, by + tilt), (ex + 1.1 * ew, by - tilt)], fill=brow,
               width=max(1, round(lw * 1.4 * p.brow_thickness)))
        if p.glasses == "round":
            r = 1.45 * max(ew, eh)
            d.ellipse([ex - r, ey - r, ex + r, ey + r], outline=p.glasses_colour + (255,), width=lw)
        elif p.glasses == "square":
            d.rectangle([ex - 1.45 * ew, ey - 2.0 * eh, ex + 1.45 * ew, ey + 1.7 * eh],
                        outline=p.glasses_colour + (255,), width=lw)
    if p.glasses:
        gap = spacing / 2 - 1.4 * 0.10 * hw * p.eye_size
        d.line([(fx - gap, ey - 0.3 * lw), (fx + gap, ey - 0.3 * lw)], fill=p.glasses_colour + (255,),
               width=lw)
    # nose
    tip_y = ey + p.nose_length * head_h + 0.04 * head_h
    tip_x = fx + yaw * 0.10 * hw
    nw = p.nose_width * hw / 2
    d.polygon([(fx, ey + 0.02 * head_h), (tip_x - nw, tip_y), (tip_x + nw, tip_y)], fill=dark_skin)
    # mouth
    my = top + p.mouth_height * head_h
    mw = p.mouth_width * hw * (1 - 0.2 * abs(yaw)) / 2
    mx = fx + yaw * 0.05 * hw
    if p.beard == "moustache":
        d.polygon([(mx - mw * 1.1, my - 0.01 * head_h), (mx, my - 0.07 * head_h),
                   (mx + mw * 1.1, my - 0.01 * head_h), (mx, my - 0.03 * head_h)], fill=hair)
    opening = float(np.clip(mouth, 0, 1)) * 0.08 * head_h
    if opening > lw:
        d.ellipse([mx - mw, my - opening / 2, mx + mw, my + opening / 2], fill=(90, 25, 30, 255),
                  outline=p.lip + (255,), width=lw)
    else:
        d.line([(mx - mw, my - lw), (mx, my + lw / 2), (mx + mw, my - lw)], fill=p.lip + (255,),
               width=max(1, round(lw * 1.5)), joint="curve")
    return im.resize((width, height), Image.LANCZOS)


def shade(patch: Image.Image, brightness: float = 1.0, contrast: float = 1.0,
          side_light: float = 0.0) -> Image.Image:
    """Lighting on an RGBA (or RGB) patch: contrast about mid-grey, brightness, a side gradient.

    Args:
        side_light: in [-1, 1]; positive lights the right side of the patch.
    """
    arr = np.asarray(patch, dtype=np.float32)
    rgb = arr[..., :3]
    gradient = 1 + 0.25 * side_light * np.linspace(-1, 1, arr.shape[1], dtype=np.float32)
    rgb = ((rgb - 128) * contrast + 128) * brightness * gradient[None, :, None]
    out = arr.copy()
    out[..., :3] = np.clip(rgb, 0, 255)
    return Image.fromarray(out.round().astype(np.uint8), patch.mode)


def soft_face(rgb: Image.Image) -> tuple[Image.Image, tuple[int, int, int]]:
    """A real face image as RGBA with a soft elliptic edge, and the mean colour of its centre."""
    rgb = rgb.convert("RGB")
    w, h = rgb.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([0.05 * w, 0.03 * h, 0.95 * w, 0.99 * h], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, 0.04 * w)))
    rgba = rgb.copy()
    rgba.putalpha(mask)
    centre = np.asarray(rgb)[h // 3: 2 * h // 3, w // 3: 2 * w // 3].reshape(-1, 3).mean(0)
    return rgba, tuple(int(c) for c in centre)  # type: ignore[return-value]


def draw_background(spec: dict[str, Any], W: int, H: int) -> np.ndarray:
    """The fixed background of one shot as an (H, W, 3) uint8 array.

    Args:
        spec: ``kind`` (one of :data:`BACKGROUNDS`), ``hue`` and ``value`` of the main colour
            in [0, 1], and ``seed`` for the layout (blocks, stripes, blobs, texture).
        W, H: frame width and height.
    """
    r = np.random.default_rng(spec["seed"])
    hue, val, kind = spec["hue"], spec["value"], spec["kind"]
    c1 = np.array(colour(hue, r.uniform(0.3, 0.8), val), np.float32)
    c2 = np.array(colour(hue + r.uniform(-0.1, 0.1), r.uniform(0.2, 0.9),
                         float(np.clip(val + r.uniform(-0.35, 0.35), 0.1, 1))), np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if kind == "gradient":
        a = r.uniform(0, 2 * np.pi)
        g = xx * np.cos(a) + yy * np.sin(a)
        g = (g - g.min()) / (np.ptp(g) + 1e-6)
        arr = c1 * (1 - g[..., None]) + c2 * g[..., None]
    elif kind == "stripes":
        edges = np.cumsum(r.integers(8, 40, size=W))
        arr = np.where((np.searchsorted(edges, xx[0]) % 2 == 0)[None, :, None], c1, c2) \
            * np.ones((H, 1, 1), np.float32)
    elif kind == "tiles":
        cell = int(r.integers(18, 45))
        arr = np.where((((xx // cell) + (yy // cell)) % 2 == 0)[..., None], c1, c2)
    else:  # room: wall, floor, windows, doors, pictures
        arr = np.broadcast_to(c1, (H, W, 3)).copy()
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    if kind in ("room", "stripes"):
        d.rectangle([0, int(H * r.uniform(0.68, 0.8)), W, H],
                    fill=colour(hue + 0.5 + r.uniform(-0.1, 0.1), r.uniform(0.2, 0.6), r.uniform(0.2, 0.5)))
    for _ in range(int(r.integers(2, 7))):
        x0, y0 = r.uniform(0, W), r.uniform(0, H * 0.7)
        x1, y1 = x0 + r.uniform(0.05, 0.3) * W, y0 + r.uniform(0.1, 0.5) * H
        fill = colour(hue + r.uniform(-0.5, 0.5), r.uniform(0.1, 0.9), r.uniform(0.1, 1.0))
        if kind == "gradient":
            d.ellipse([x0, y0, x1, y1], fill=fill)
        else:
            d.rectangle([x0, y0, x1, y1], fill=fill, outline=(40, 40, 40), width=2)
    if kind == "gradient":
        im = im.filter(ImageFilter.GaussianBlur(6))
    arr = np.asarray(im, np.float32) + r.normal(0, 3.0, (H, W, 1)).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)
