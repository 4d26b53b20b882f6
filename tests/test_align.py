"""Face chips for dlib's network: dlib's own chips, the landmark template, the crop fallback."""
from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxytasks import align
from proxytasks.align import (CHIP_SIZE, DLIB_CHIP_TEMPLATE, DlibAligner, _warp, dlib_available,
                              plan_message, predictor_path)
from proxytasks.detect import similarity_transform
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest
from proxytasks.media import read_image

from .conftest import needs_dlib, shared

PHOTOS = (("bbt", "images", "bbt4.jpg"),
          ("face_recognition_examples", "examples", "obama_small.jpg"),
          ("face_recognition_examples", "examples", "two_people.jpg"))
CORNERS = np.array([[0, 0], [149, 0], [149, 149], [0, 149]], dtype=np.float64)


@pytest.fixture(scope="module")
def dlib():
    return needs_dlib()


@pytest.fixture(scope="module")
def predictor(dlib):
    return dlib.shape_predictor(str(predictor_path()))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Manifest:
    """Faces found by MTCNN (boxes and 5 landmarks) in three real photos: 9 faces."""
    from proxytasks.detect import create_detector

    detector = create_detector("mtcnn", min_face=40)
    faces = []
    for parts in PHOTOS:
        path = shared(*parts)
        found = detector.detect([read_image(path)])[0]
        for k, (box, marks) in enumerate(zip(found.boxes, found.landmarks)):
            faces.append(Face(id=f"{path.stem}_{k}", media=path.name, image=str(path),
                              bbox=[float(v) for v in box], landmarks=marks.tolist()))
    assert len(faces) == 9
    return Manifest(faces, tmp_path_factory.mktemp("photos"))


def _rect(dlib, box: list[float]):
    x, y, w, h = box
    return dlib.rectangle(round(x), round(y), round(x + w) - 1, round(y + h) - 1)


def _chip_matrix(details) -> np.ndarray:
    """dlib's image -> chip affine map (``get_mapping_to_chip`` of interpolation.h)."""
    r = details.rect
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    c, s = math.cos(details.angle), math.sin(details.angle)
    turn = np.array([[c, -s], [s, c]])
    src = [centre + turn @ (np.array(p) - centre)
           for p in ((r.left(), r.top()), (r.right(), r.top()), (r.right(), r.bottom()))]
    dst = [(0, 0), (details.cols - 1, 0), (details.cols - 1, details.rows - 1)]
    return np.linalg.solve(np.array([[x, y, 1.0] for x, y in src]), np.array(dst, float)).T


def test_dlib_chips_equal_dlib_get_face_chip(photos: Manifest, dlib, predictor) -> None:
    aligner = DlibAligner()
    assert aligner.plan(photos) == Counter({"dlib-5pt": 9})
    for face in photos:
        rgb = np.asarray(read_image(photos.resolve(face.image)))
        want = dlib.get_face_chip(rgb, predictor(rgb, _rect(dlib, face.bbox)), size=150,
                                  padding=0.25)
        got = aligner(photos, face)
        assert got.mode == "RGB" and got.size == (CHIP_SIZE, CHIP_SIZE)
        assert np.abs(np.asarray(got, np.int16) - want).max() <= 1, face.id


def test_warp_reproduces_dlib_chip_geometry(photos: Manifest, dlib, predictor) -> None:
    """The landmark path's warp with dlib's own chip matrix gives dlib's chip."""
    face = photos[0]
    image = read_image(photos.resolve(face.image))
    rgb = np.asarray(image)
    shape = predictor(rgb, _rect(dlib, face.bbox))
    matrix = _chip_matrix(dlib.get_face_chip_details(shape, size=150, padding=0.25))
    want = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
    assert np.abs(np.asarray(_warp(image, matrix, 150), np.int16) - want).max() <= 1


def test_landmark_template_reproduces_dlib_chips(photos: Manifest, dlib, predictor) -> None:
    """Chips from MTCNN landmarks + the template land where dlib's chips do."""
    import timm

    from proxytasks import dlib_resnet  # noqa: F401 - registers dlib_resnet29

    net = timm.create_model("dlib_resnet29", pretrained=True).eval()
    aligner = DlibAligner()
    errors, chips = [], {"dlib-5pt": [], "landmarks": [], "crop": []}
    for face in photos:
        rgb = np.asarray(read_image(photos.resolve(face.image)))
        shape = predictor(rgb, _rect(dlib, face.bbox))
        to_dlib = np.vstack([_chip_matrix(dlib.get_face_chip_details(shape, 150, 0.25)),
                             [0, 0, 1]])
        to_template = similarity_transform(face.landmarks, DLIB_CHIP_TEMPLATE)
        in_image = (np.linalg.inv(to_dlib) @ np.c_[CORNERS, np.ones(4)].T)[:2]
        moved = (to_template[:, :2] @ in_image).T + to_template[:, 2]
        errors.append(np.linalg.norm(moved - CORNERS, axis=1).mean())
        for method, found in chips.items():
            found.append(np.asarray(aligner(photos, face, method=method)))
    vectors = {m: net.describe(np.stack(c)) for m, c in chips.items()}

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    marks = cosine(vectors["landmarks"], vectors["dlib-5pt"])
    crops = cosine(vectors["crop"], vectors["dlib-5pt"])
    print(f"\ncorner error {np.mean(errors):.2f} px (max {np.max(errors):.2f}); descriptor cosine "
          f"to dlib's chip: landmarks {marks.mean():.4f} (min {marks.min():.4f}), "
          f"crop {crops.mean():.4f} (min {crops.min():.4f})")
    assert np.mean(errors) < 8.0
    assert marks.min() > 0.98 and marks.mean() > 0.99
    assert marks.mean() > crops.mean()


def test_method_choice_without_dlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """What each face gets, read from its fields only (the files do not exist)."""
    marks = [[1.0, 2.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0], [3.0, 4.0]]
    faces = [Face(id="a", media="m", image="none.jpg", bbox=[0, 0, 5, 5], landmarks=marks),
             Face(id="b", media="m", image="none.jpg", bbox=[0, 0, 5, 5], landmarks=marks[:4]),
             Face(id="c", media="m", image="none.jpg", bbox=[0, 0, 5, 5]),
             Face(id="d", media="m", crop="none.jpg", landmarks=marks),  # no image for them
             Face(id="e", media="m", crop="none.jpg")]
    manifest = Manifest(faces, "/nonexistent")
    aligner = DlibAligner()
    monkeypatch.setattr(align, "dlib_available", lambda: False)
    assert [aligner.method(f) for f in faces] == ["landmarks", "crop", "crop", "crop", "crop"]
    assert aligner.plan(manifest) == Counter({"landmarks": 1, "crop": 4})
    assert plan_message(aligner.plan(manifest)) == (
        "0 faces aligned with dlib's 5-point model, 1 from detector landmarks, 4 unaligned crops")
    monkeypatch.setattr(align, "dlib_available", lambda: True)
    assert aligner.plan(manifest) == Counter({"dlib-5pt": 5})


def test_dlib_available_matches_installation() -> None:
    try:
        import dlib  # noqa: F401
        have = predictor_path() is not None
    except ImportError:
        have = False
    assert dlib_available() is have


def test_crop_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(align, "dlib_available", lambda: False)
    Image.new("RGB", (200, 100), (200, 150, 100)).save(tmp_path / "frame.png")
    Image.new("RGB", (60, 80), (10, 250, 10)).save(tmp_path / "crop.png")
    corner = Face(id="corner", media="m", image="frame.png", bbox=[0, 0, 40, 40])
    crop = Face(id="crop", media="m", crop="crop.png")
    manifest = Manifest([corner, crop], tmp_path)
    aligner = DlibAligner()
    chip = np.asarray(aligner(manifest, corner))
    assert chip.shape == (150, 150, 3)
    # the square is 40 * 1.5 = 60 pixels around the box centre (20, 20): 10 px outside, black
    assert (chip[:20, :20] == 0).all() and (chip[40:, 40:] == (200, 150, 100)).all()
    chip = np.asarray(aligner(manifest, crop))
    assert chip.shape == (150, 150, 3)
    assert (chip[75, 75] == (10, 250, 10)).all() and (chip[75, :5] == 0).all()


@pytest.mark.parametrize("with_dlib", [False, True])
def test_unreadable_image_names_the_face(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         with_dlib: bool) -> None:
    if with_dlib:
        needs_dlib()
    monkeypatch.setattr(align, "dlib_available", lambda: with_dlib)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    face = Face(id="face-42", media="m", image="broken.jpg", bbox=[0, 0, 10, 10])
    with pytest.raises(ProxytasksError, match="face 'face-42'.*broken.jpg"):
        DlibAligner()(Manifest([face], tmp_path), face)
    missing = Face(id="face-43", media="m", crop="gone.png")
    with pytest.raises(ProxytasksError, match="face 'face-43'.*no such file"):
        DlibAligner()(Manifest([missing], tmp_path), missing)


def test_forced_method_must_apply(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    Image.new("RGB", (60, 80), (10, 250, 10)).save(tmp_path / "c.png")  # no face in it: no landmarks
    face = Face(id="x", media="m", crop="c.png")
    monkeypatch.setattr(align, "dlib_available", lambda: False)
    with pytest.raises(ProxytasksError, match="face 'x'.*dlib-bin"):
        DlibAligner()(Manifest([face], tmp_path), face, method="dlib-5pt")
    with pytest.raises(ProxytasksError, match="face 'x'.*5 'landmarks'"):
        DlibAligner()(Manifest([face], tmp_path), face, method="landmarks")
    with pytest.raises(ProxytasksError, match="unknown alignment"):
        DlibAligner()(Manifest([face], tmp_path), face, method="affine")


def test_picklable_after_use(photos: Manifest, predictor) -> None:
    aligner = DlibAligner()
    first = np.asarray(aligner(photos, photos[1]))
    assert aligner._predictor is not None
    clone = pickle.loads(pickle.dumps(aligner))
    assert clone._predictor is None and clone._cached is None
    np.testing.assert_array_equal(np.asarray(clone(photos, photos[1])), first)
