"""Face quality (issue 18): the score's terms, the manifest field, and marked faces giving
no training pairs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from proxytasks.errors import ManifestError
from proxytasks.manifest import Face, Manifest
from proxytasks.quality import (LOW_QUALITY, combine, confidence_term, face_quality, has_colour, is_low,
                                landmark_term, sharpness_term, size_term, skin_term, terms)
from proxytasks.rules import RuleSet, low_quality_mask

FRONTAL = [[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]]  # a 100x110 box at the origin


def face_picture(skin=(200, 150, 120), size=(100, 110), texture=True) -> Image.Image:
    """A skin-coloured patch with dark eyes and mouth (and some texture)."""
    rng = np.random.default_rng(0)
    a = np.zeros((size[1], size[0], 3), np.float32) + skin
    if texture:
        a += rng.normal(0, 12, a.shape)
    for x, y in FRONTAL[:2]:
        a[y - 4:y + 4, x - 8:x + 8] = 40
    a[78:84, 35:66] = 80
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_terms_each_in_range_and_ordered():
    assert confidence_term(0.9) == pytest.approx(1 / 3) and confidence_term(0.9999) == 1.0
    assert confidence_term(None) == 1.0 and confidence_term(0.2) < 0.05
    # A detector whose scores run lower (CenterFace: sure at 0.9) is certain sooner.
    assert confidence_term(0.9, sure=0.9) == 1.0 and confidence_term(0.5, sure=0.9) == pytest.approx(0.301, abs=1e-3)
    assert face_quality(face_picture(), [0, 0, 100, 110], 0.8, FRONTAL, sure=0.9) > face_quality(
        face_picture(), [0, 0, 100, 110], 0.8, FRONTAL)
    box = [0, 0, 100, 110]
    assert landmark_term(box, FRONTAL) == 1.0 and landmark_term(box, None) == 1.0
    upside_down = [[30, 80], [70, 80], [50, 60], [35, 40], [65, 40]]
    assert landmark_term(box, upside_down) < 0.7
    assert size_term([0, 0, 24, 30]) == 0.5 and size_term(box) == 1.0
    sharp = face_picture()
    blurred = sharp.filter(ImageFilter.GaussianBlur(6))
    assert sharpness_term(sharp, box) > 0.8 > 0.3 > sharpness_term(blurred, box)


def test_skin_term_marks_grey_hair_only_in_colour_pictures():
    box = [0, 0, 100, 110]
    grey_head = face_picture(skin=(150, 150, 155))
    assert has_colour(face_picture()) and not has_colour(face_picture().convert("L"))
    assert skin_term(face_picture(), box) == 1.0
    # a grey patch in a colour frame: no skin; a greyscale photo: the term stays neutral
    frame = Image.new("RGB", (300, 200), (30, 90, 160))
    frame.paste(grey_head, (100, 50))
    assert skin_term(frame, [100, 50, 100, 110]) == 0.0
    assert skin_term(grey_head.convert("L").convert("RGB"), box) == 1.0
    # dark skin in dim light is skin
    assert skin_term(face_picture(skin=(90, 55, 40)), box) == 1.0


def test_quality_marks_the_back_of_a_head_but_not_a_blurred_face():
    box = [100, 50, 100, 110]
    frame = Image.new("RGB", (300, 200), (30, 90, 160))
    frame.paste(face_picture(skin=(150, 150, 155)), (100, 50))
    marks = (np.array(FRONTAL) + [100, 50]).tolist()
    head = face_quality(frame, box, 0.93, marks)
    assert is_low(head) and head < LOW_QUALITY
    blurred = Image.new("RGB", (300, 200), (30, 90, 160))
    blurred.paste(face_picture().filter(ImageFilter.GaussianBlur(3)), (100, 50))
    assert not is_low(face_quality(blurred, box, 0.91, marks))
    t = terms(blurred, box, 0.91, marks)
    assert set(t) == {"confidence", "landmarks", "sharpness", "size", "skin"} and 0 <= combine(t) <= 1
    assert not is_low(None)


def test_manifest_field_quality_is_checked_and_kept(tmp_path: Path):
    Image.new("RGB", (64, 64)).save(tmp_path / "f.png")
    good = {"id": "a", "media": "v", "frame": 0, "image": "f.png", "bbox": [1, 1, 20, 20], "quality": 0.42}
    (tmp_path / "m.jsonl").write_text(json.dumps(good) + "\n")
    m = Manifest.read(tmp_path / "m.jsonl")
    assert m[0].quality == 0.42 and m[0].to_dict()["quality"] == 0.42 and not m[0].extra
    for bad in (1.5, -0.1, "high"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({**good, "quality": bad}) + "\n")
        with pytest.raises(ManifestError, match="quality"):
            Manifest.read(tmp_path / "bad.jsonl")


def test_marked_faces_give_no_pairs():
    faces = [Face(id=f"f{k}", media="v", frame=k // 3, crop=f"c{k}.png", track=f"t{k % 3}", quality=q)
             for k, q in enumerate([0.9, 0.1, 0.8, 0.9, 0.2, None, 0.7, 0.9, 0.95])]
    m = Manifest(faces, Path("."))
    low = low_quality_mask(m)
    assert low.tolist() == [False, True, False, False, True, False, False, False, False]
    pairs = RuleSet("same-frame,same-track").apply(m)
    touched = set(pairs.i.tolist()) | set(pairs.j.tolist())
    assert not touched & {1, 4} and {0, 2, 3, 5} <= touched
    unscored = Manifest([Face(id=f.id, media=f.media, frame=f.frame, crop=f.crop, track=f.track) for f in faces],
                        Path("."))
    assert len(RuleSet("same-frame,same-track").apply(unscored)) > len(pairs)
