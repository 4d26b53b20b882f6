"""Finding the face inside a crop (proxytasks.locate), and what it does for dlib's path."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxytasks import align, locate
from proxytasks.align import DlibAligner
from proxytasks.errors import ProxytasksError
from proxytasks.locate import FaceLocator, Location, location_summary, needs_location
from proxytasks.manifest import Face, Manifest
from proxytasks.media import read_image
from proxytasks.metrics import verification_metrics

from .conftest import needs_dlib


class Scripted(FaceLocator):
    """A locator whose detectors return fixed boxes (x, y, w, h) and count their calls."""

    def __init__(self, hog=(), mtcnn=(), **kw):
        super().__init__(**kw)
        self.boxes = {"hog": np.array(hog, float).reshape(-1, 4), "mtcnn": np.array(mtcnn, float).reshape(-1, 4)}
        self.calls = 0

    def _hog(self, rgb):
        self.calls += 1
        return self.boxes["hog"], None

    def _mtcnn_faces(self, rgb):
        marks = np.tile(self.boxes["mtcnn"][:, None, :2], (1, 5, 1))
        return self.boxes["mtcnn"], marks


def test_nearest_plausible_face_wins() -> None:
    image = Image.new("RGB", (200, 100))
    # a big face off-centre, a tiny one at the centre (implausible), one nearer the centre
    loc = Scripted(hog=[[0, 0, 60, 60], [95, 45, 10, 10], [80, 20, 50, 50]]).locate(image)
    assert loc == Location((80.0, 20.0, 50.0, 50.0), None, "hog") and loc.found
    # HOG finds nothing plausible: MTCNN's face and its landmarks
    loc = Scripted(hog=[[95, 45, 10, 10]], mtcnn=[[70, 10, 60, 70]]).locate(image)
    assert loc.source == "mtcnn" and loc.box == (70.0, 10.0, 60.0, 70.0) and loc.landmarks.shape == (5, 2)
    # nothing at all: the central region of the crop (central 2/3 by default), counted as a fallback
    loc = Scripted().locate(image)
    assert loc.source == "center" and not loc.found
    np.testing.assert_allclose(loc.box, (200 / 6, 100 / 6, 200 / 1.5, 100 / 1.5))
    assert Scripted(fallback_margin=0.5).locate(image).box == (50.0, 25.0, 100.0, 50.0)
    # a detector left out is not asked
    assert Scripted(hog=[[80, 20, 50, 50]], mtcnn=[[70, 10, 60, 70]], detectors=("mtcnn",)).locate(image).source \
        == "mtcnn"


def test_each_crop_is_searched_once(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (80, 100), (90, 90, 90)).save(tmp_path / name)
    faces = [Face(id="a", media="m", crop="a.png"), Face(id="b", media="m", crop="b.png"),
             Face(id="framed", media="m", crop="a.png", image="a.png", bbox=[1, 1, 20, 20])]
    manifest = Manifest(faces, tmp_path)
    assert [needs_location(f) for f in faces] == [True, True, False]
    locator = Scripted(hog=[[20, 25, 40, 50]], fallback_margin=0.3)  # a fresh key: nothing cached yet
    found = locator.locate_faces(manifest, progress=False)
    assert set(found) == {"a", "b"} and locator.calls == 2
    assert location_summary(found) == {"faces": 2, "found": 2, "fallback": 0}
    locator.locate_faces(manifest, progress=False)
    aligner = DlibAligner(locator=locator)
    assert aligner.prepare(manifest, progress=False) == {"faces": 2, "found": 2, "fallback": 0}
    aligner(manifest, faces[0], method="crop")
    assert locator.calls == 2  # read from the cache, and from the aligner's locations
    # a crop rewritten since is searched again
    Image.new("RGB", (80, 100), (10, 10, 10)).save(tmp_path / "b.png")
    os.utime(tmp_path / "b.png", ns=(1, 10**18))
    locator.locate_faces(manifest, progress=False)
    assert locator.calls == 3


def test_bad_crops_and_settings_are_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not an image")
    broken = Manifest([Face(id="face-7", media="m", crop="broken.png")], tmp_path)
    with pytest.raises(ProxytasksError, match="face 'face-7'.*broken.png"):
        FaceLocator(fallback_margin=0.31).locate_faces(broken, progress=False)
    gone = Manifest([Face(id="face-8", media="m", crop="gone.png")], tmp_path)
    with pytest.raises(ProxytasksError, match="face 'face-8'.*gone.png"):
        FaceLocator().locate_faces(gone, progress=False)
    with pytest.raises(ProxytasksError, match="unknown face locator detector"):
        FaceLocator(detectors=("yunet",))
    with pytest.raises(ProxytasksError, match="min_share"):
        FaceLocator(min_share=0)
    clone = pickle.loads(pickle.dumps(FaceLocator()))
    assert clone.detectors == ("hog", "mtcnn") and clone._mtcnn is None


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def _in_frame(box, face: Face, margin: float = 0.5) -> list[float]:
    """A box in crop pixels moved back into the frame the crop was cut from (as crop_face cut it)."""
    x, y, w, h = face.bbox
    left, top = max(0, int(round(x - margin * w))), max(0, int(round(y - margin * h)))
    return [box[0] + left, box[1] + top, box[2], box[3]]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def bbt_descriptors(bbt_margin):
    """dlib's descriptors (torch port) of the bbt faces from image+bbox, from crops with a 50%
    margin (face found inside), and from the crops taken whole as the face (the old way)."""
    from proxytasks.peers import face_recognition_descriptors

    needs_dlib()
    boxes, crops = bbt_margin
    aligner = DlibAligner()
    from_crops = face_recognition_descriptors(crops, aligner=aligner, progress=False)

    class WholeCrop(DlibAligner):
        def prepare(self, manifest, progress=True):
            for f in manifest.faces:
                image = read_image(manifest.resolve(f.crop))
                self.locations[f.id] = Location((0.0, 0.0, image.width, image.height), None, "center")
            return {}

    return {"boxes": face_recognition_descriptors(boxes, progress=False), "crops": from_crops,
            "whole": face_recognition_descriptors(crops, aligner=WholeCrop(), progress=False),
            "locations": aligner.locations}


def test_faces_found_in_crops_with_margin(bbt_margin, bbt_descriptors) -> None:
    boxes, crops = bbt_margin
    assert len(boxes) == len(crops) == 67 and sum(f.identity is not None for f in boxes) == 43
    locations = bbt_descriptors["locations"]
    ious = np.array([_iou(_in_frame(locations[c.id].box, b), b.bbox) for c, b in zip(crops, boxes)])
    print(f"\nfaces found in 50%-margin crops: IoU min {ious.min():.2f}, median {np.median(ious):.2f}; "
          f"sources {sorted({loc.source for loc in locations.values()})}")
    assert np.mean(ious >= 0.5) >= 0.9
    cos = _cosine(bbt_descriptors["crops"], bbt_descriptors["boxes"])
    print(f"descriptors from crops vs image+bbox: cosine min {cos.min():.4f}, median {np.median(cos):.4f}")
    # one face (bbt2_1) sits at 0.96: HOG's box and MTCNN's box put the 5 points apart
    assert np.mean(cos >= 0.98) >= 0.95 and cos.min() >= 0.95


def test_peer_auc_on_crops_equals_its_auc_on_boxes(bbt_margin, bbt_descriptors) -> None:
    identity = [f.identity for f in bbt_margin[0]]
    auc = {k: verification_metrics(bbt_descriptors[k], identity, metric="euclidean")["roc_auc"]
           for k in ("boxes", "crops", "whole")}
    print(f"\npeer ROC-AUC on bbt: {auc}")
    assert abs(auc["crops"] - auc["boxes"]) <= 0.02
    assert auc["whole"] < auc["crops"] - 0.03  # the whole crop taken as the face: what issue 15 found


def test_peer_descriptors_equal_dlib_run_directly(bbt_margin) -> None:
    """face_recognition's own steps on each crop (HOG upsampled once, the detection nearest the
    centre, 5 points, chip, dlib's descriptor) against the peer (dlib engine)."""
    from proxytasks.align import predictor_path
    from proxytasks.dlib_resnet import dlib_model_path
    from proxytasks.peers import face_recognition_descriptors

    dlib = needs_dlib()
    crops = bbt_margin[1]
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))
    net = dlib.face_recognition_model_v1(str(dlib_model_path()))
    peer = face_recognition_descriptors(crops, progress=False, engine="dlib")
    compared = 0
    for k, face in enumerate(crops):
        rgb = np.asarray(read_image(crops.resolve(face.crop)))
        rects = list(detector(rgb, 1))
        if not rects:
            continue
        h, w = rgb.shape[:2]
        rect = min(rects, key=lambda r: np.hypot(((r.left() + r.right() + 1) / 2 - w / 2) / w,
                                                  ((r.top() + r.bottom() + 1) / 2 - h / 2) / h))
        chip = dlib.get_face_chip(rgb, predictor(rgb, rect), size=150, padding=0.25)
        want = np.array(net.compute_face_descriptor(chip))
        assert _cosine(peer[k:k + 1], want[None])[0] >= 0.999, face.id
        compared += 1
    assert compared >= 60


def test_landmarks_path_without_dlib(bbt_margin, monkeypatch: pytest.MonkeyPatch) -> None:
    """No dlib: MTCNN finds the face and its 5 points inside the crop, and the chip is warped
    from them; it matches the chip of the same face's landmarks in its photo."""
    from proxytasks.peers import face_recognition_descriptors

    needs_dlib()  # the descriptors still come from dlib's network (torch port)
    boxes, crops = bbt_margin
    monkeypatch.setattr(align, "dlib_available", lambda: False)
    monkeypatch.setattr(locate, "_hog_detector", lambda: None)
    part = Manifest(crops.faces[:12], crops.root)
    aligner = DlibAligner(locator=FaceLocator(detectors=("mtcnn",)))
    assert aligner.prepare(part, progress=False)["found"] == 12
    assert aligner.plan(part) == {"landmarks": 12}
    monkeypatch.setattr("proxytasks.peers.dlib_peer_available", lambda: (True, ""))
    got = face_recognition_descriptors(part, aligner=aligner, progress=False)
    want = face_recognition_descriptors(Manifest(boxes.faces[:12], boxes.root), progress=False)
    assert np.median(_cosine(got, want)) >= 0.98
