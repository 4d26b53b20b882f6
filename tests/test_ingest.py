"""Ingest: videos and photos -> manifest with frames, crops, shots; bad media; resume."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxytasks.errors import ProxytasksError
from proxytasks.ingest import IngestReport, ingest_media, media_keys
from proxytasks.manifest import Manifest

from .conftest import shared

av = pytest.importorskip("av")

RED, GREEN, BLUE = (200, 40, 40), (40, 200, 40), (40, 40, 200)


# --------------------------------------------------------------------------- fakes
@dataclass
class FakeDetections:
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None


class FakeDetector:
    """One fixed face per image (the last one partly outside, to test clipping); counts
    calls per dominant colour and can raise on a colour to simulate an interruption."""

    name = "fake"

    def __init__(self, raise_on: tuple[int, int, int] | None = None) -> None:
        self.raise_on = raise_on
        self.seen: list[tuple[int, int, int]] = []

    def detect(self, images: list[Image.Image]) -> list[FakeDetections]:
        out = []
        for img in images:
            colour = tuple(int(round(v / 40)) * 40 for v in np.asarray(img, dtype=float).mean((0, 1)))
            self.seen.append(colour)
            if self.raise_on is not None and _close(colour, self.raise_on):
                raise KeyboardInterrupt
            w, h = img.size
            boxes = np.array([[8, 8, 24, 24], [w - 12, h - 12, 24, 24]], dtype=np.float32)
            marks = np.tile(np.array([[12, 14], [20, 14], [16, 18], [13, 24], [19, 24]], np.float32), (2, 1, 1))
            out.append(FakeDetections(boxes, np.array([0.99, 0.8], np.float32), marks))
        return out


def _close(a, b, tol: int = 50) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def write_video(path: Path, colours: list[tuple[int, int, int]], fps: int = 10, size=(96, 64)) -> Path:
    """A video whose frame i is a flat ``colours[i]`` with a small square that moves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i, c in enumerate(colours):
            arr = np.full((size[1], size[0], 3), c, np.uint8)
            arr[20:30, 30 + i % 10:40 + i % 10] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- tests
def test_media_keys_disambiguate(tmp_path: Path) -> None:
    keys = media_keys([tmp_path / "a/clip.mp4", tmp_path / "b/clip.mp4", tmp_path / "x.jpg",
                       tmp_path / "v.mp4", tmp_path / "v_000001.jpg"])
    assert len(set(keys)) == 5
    assert keys[2] == "x" and keys[3] == "v" and keys[0].startswith("clip-") and keys[4].startswith("v_000001-")


def test_video_shots_frames_crops(tmp_path: Path) -> None:
    video = write_video(tmp_path / "media" / "clip.mp4", [RED] * 20 + [BLUE] * 20)
    out = tmp_path / "run" / "faces.jsonl"
    det = FakeDetector()
    report = ingest_media([tmp_path / "media"], out, detector=det, batch_size=7, progress=False)
    assert isinstance(report, IngestReport)
    m = Manifest.read(out)
    assert report.frames == 40 and len(det.seen) == 40
    assert report.faces == len(m) == 80
    assert report.done == ["../media/clip.mp4"] and report.shots == {"../media/clip.mp4": 2}
    assert report.frames_per_second > 0
    for f in m:
        assert f.media == "../media/clip.mp4"
        assert f.id == f"clip_{f.frame:06d}_{f.id[-1]}"
        assert f.shot == (0 if f.frame < 20 else 1)
        assert f.time == pytest.approx(f.frame / 10, abs=1e-6)
        assert f.image == f"frames/clip/{f.frame:06d}.jpg"
        assert f.crop == f"crops/clip/{f.id}.jpg" and f.score is not None and len(f.landmarks) == 5
        x, y, w, h = f.bbox
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 64  # second box was clipped
    assert sorted({f.frame for f in m}) == list(range(40))
    with Image.open(out.parent / m[0].crop) as crop:
        assert crop.size[0] > 24  # margin added
    assert (out.parent / "faces.jsonl.parts" / "clip.json").is_file()
    assert no_temp_files(tmp_path)
    assert video.is_file()


def test_stride_and_photos(tmp_path: Path) -> None:
    write_video(tmp_path / "media" / "clip.mp4", [GREEN] * 12)
    Image.new("RGB", (80, 60), RED).save(tmp_path / "media" / "clip.jpg")  # same stem as the video
    out = tmp_path / "faces.jsonl"
    report = ingest_media(tmp_path / "media", out, detector=FakeDetector(), stride=5, crops=False,
                          progress=False)
    m = Manifest.read(out)
    video = [f for f in m if f.frame is not None]
    photo = [f for f in m if f.frame is None]
    assert sorted({f.frame for f in video}) == [0, 5, 10] and report.frames == 4
    assert len(photo) == 2 and photo[0].image == "media/clip.jpg" and photo[0].shot is None
    assert all(f.crop is None for f in m)
    assert len({f.id.split("_")[0] for f in m}) == 2  # equal stems disambiguated


def test_bad_media_reported_and_skipped(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in (("good1.jpg", RED), ("good2.png", GREEN)):
        Image.new("RGB", (80, 60), colour).save(folder / name)
    good = (folder / "good1.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(good[:40] + b"\x00garbage" * 50)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "movie.mp4").write_text("this is not a video\n")
    out = tmp_path / "faces.jsonl"
    with caplog.at_level("WARNING", logger="proxytasks.ingest"):
        report = ingest_media([folder], out, detector=FakeDetector(), progress=False)
    bad = {Path(p).name for p in report.skipped}
    assert bad == {"corrupt.jpg", "empty.jpg", "text.jpg", "movie.mp4"}
    for name in bad:
        assert name in caplog.text
    m = Manifest.read(out)
    assert {Path(f.media).name for f in m} == {"good1.jpg", "good2.png"}
    assert sorted(report.done) == ["photos/good1.jpg", "photos/good2.png"]


def test_nothing_readable_raises(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.mp4").write_text("nope")
    with pytest.raises(ProxytasksError, match="could be read"):
        ingest_media(tmp_path, tmp_path / "out" / "faces.jsonl", detector=FakeDetector(), progress=False)
    assert not (tmp_path / "out" / "faces.jsonl").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProxytasksError):
        ingest_media(tmp_path / "empty", tmp_path / "o.jsonl", detector=FakeDetector(), progress=False)


def test_exif_rotated_photo_gets_a_copy(tmp_path: Path) -> None:
    img = Image.new("RGB", (80, 40), RED)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90: the upright image is 40x80
    img.save(tmp_path / "turned.jpg", exif=exif)
    out = tmp_path / "out" / "faces.jsonl"
    ingest_media(tmp_path / "turned.jpg", out, detector=FakeDetector(), progress=False)
    m = Manifest.read(out)
    assert m[0].image == "frames/turned/rotated.jpg"
    with Image.open(out.parent / m[0].image) as im:
        assert im.size == (40, 80)


def _media_for_resume(root: Path) -> Path:
    write_video(root / "a.mp4", [RED] * 6 + [GREEN] * 6)
    write_video(root / "b.mp4", [BLUE] * 8)
    Image.new("RGB", (80, 60), (200, 200, 40)).save(root / "c.png")
    return root


def test_resume_after_interrupt(tmp_path: Path) -> None:
    media = _media_for_resume(tmp_path / "media")
    ref_out = tmp_path / "ref" / "faces.jsonl"
    ingest_media(media, ref_out, detector=FakeDetector(), batch_size=4, progress=False)

    out = tmp_path / "run" / "faces.jsonl"
    with pytest.raises(KeyboardInterrupt):
        ingest_media(media, out, detector=FakeDetector(raise_on=BLUE), batch_size=4, progress=False)
    partial = Manifest.read(out)
    assert {f.media for f in partial} == {"../media/a.mp4"}
    assert no_temp_files(tmp_path)

    det = FakeDetector()
    report = ingest_media(media, out, detector=det, batch_size=4, progress=False)
    assert report.reused == ["../media/a.mp4"]
    assert report.done == ["../media/b.mp4", "../media/c.png"]
    assert not any(_close(c, RED) or _close(c, GREEN) for c in det.seen)  # a.mp4 not detected again
    assert report.shots["../media/a.mp4"] == 2 and report.faces == 2 * (12 + 8 + 1)
    assert out.read_text() == ref_out.read_text()
    assert no_temp_files(tmp_path)

    again = FakeDetector()
    report = ingest_media(media, out, detector=again, progress=False)
    assert again.seen == [] and len(report.reused) == 3 and out.read_text() == ref_out.read_text()
    # Changed settings invalidate the records.
    report = ingest_media(media, out, detector=again, margin=0.3, progress=False)
    assert report.reused == [] and len(report.done) == 3


def test_no_resume_redoes_everything(tmp_path: Path) -> None:
    media = _media_for_resume(tmp_path / "media")
    out = tmp_path / "faces.jsonl"
    ingest_media(media, out, detector=FakeDetector(), progress=False)
    report = ingest_media(media, out, detector=FakeDetector(), progress=False, resume=False)
    assert report.reused == [] and len(report.done) == 3
    parts = json.loads((tmp_path / "faces.jsonl.parts" / "a.json").read_text())
    assert parts["shots"] == 2 and len(parts["faces"]) == 24


def test_real_detector_on_hamilton_clip(tmp_path: Path) -> None:
    clip = shared("face_recognition_examples", "examples", "short_hamilton_clip.mp4")
    detect = pytest.importorskip("proxytasks.detect")
    from proxytasks.track import TrackerConfig, track_manifest

    try:
        detector = detect.create_detector()
    except (ImportError, ProxytasksError) as e:
        pytest.skip(f"default detector unavailable: {e}")
    out = tmp_path / "faces.jsonl"
    report = ingest_media(clip, out, detector=detector, stride=5, progress=False)
    m = Manifest.read(out)
    assert report.frames == 55 and report.faces == len(m) > 10
    assert all(f.shot is not None and f.frame % 5 == 0 for f in m)
    # max_gap counts frame indices: at stride 5 it must span at least one stride to link.
    tracked = track_manifest(m, TrackerConfig(max_gap=10), progress=False)
    assert len({f.track for f in tracked}) < len(tracked)
    shots_of: dict[str, set] = {}
    frames_of: dict[str, list] = {}
    for f in tracked:
        shots_of.setdefault(f.track, set()).add(f.shot)
        frames_of.setdefault(f.track, []).append(f.frame)
    assert all(len(s) == 1 for s in shots_of.values())
    assert all(len(fr) == len(set(fr)) for fr in frames_of.values())


def test_image_sequence_is_one_video(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i, colour in enumerate([RED] * 4 + [BLUE] * 4):
        Image.new("RGB", (96, 64), colour).save(seq / f"{10 + i:06d}.png")
    report = ingest_media([tmp_path], tmp_path / "out" / "m.jsonl", FakeDetector(), progress=False)
    m = Manifest.read(report.manifest)
    assert {f.media for f in m} == {"../seq"}
    assert sorted({f.frame for f in m}) == list(range(10, 18)) and all(f.time is None for f in m)
    assert {f.frame: f.shot for f in m if f.bbox[0] == 8} == {10 + i: int(i >= 4) for i in range(8)}


# --------------------------------------------------------------------------- issue 18: fast path
class FollowingDetector(FakeDetector):
    """FakeDetector that can also follow faces (``track``): records which frames got a full
    detection, which were followed, and which regions were searched again; ``lose`` names
    frame colours where following loses every face."""

    def __init__(self, lose=None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.lose = lose

    def detect(self, images):
        self.calls.extend("region" if img.size[0] < 90 else "detect" for img in images)
        return super().detect(images)

    def track(self, image, boxes):
        self.calls.append("track")
        colour = tuple(int(round(v / 40)) * 40 for v in np.asarray(image, dtype=float).mean((0, 1)))
        found = np.ones(len(boxes), bool)
        if self.lose is not None and _close(colour, self.lose):
            found[:] = False
            boxes = boxes[:0]
        return FakeDetections(np.asarray(boxes, np.float32), np.full(len(boxes), 0.95, np.float32),
                              np.zeros((len(boxes), 5, 2), np.float32) + 12), found


def test_full_detection_on_key_frames_and_cuts_only(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", [RED] * 12 + [BLUE] * 12)
    det = FollowingDetector()
    report = ingest_media(tmp_path / "clip.mp4", tmp_path / "out" / "m.jsonl", det, detect_every=5,
                          progress=False)
    # key frames: 0, 5, 10, the cut at 12, 17, 22; the others followed
    keys = [k for k, c in enumerate(c for c in det.calls if c in ("detect", "track")) if c == "detect"]
    assert keys == [0, 5, 10, 12, 17, 22]
    m = Manifest.read(report.manifest)
    assert sorted({f.frame for f in m}) == list(range(24)) and report.shots["../clip.mp4"] == 2
    # detect_every=1 (or a detector that cannot follow) detects every frame, in batches
    det = FollowingDetector()
    ingest_media(tmp_path / "clip.mp4", tmp_path / "out2" / "m.jsonl", det, detect_every=1, progress=False)
    assert det.calls == ["detect"] * 24


def test_lost_faces_are_looked_for_around_where_they_were(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", [RED] * 3 + [(200, 40, 120)] * 3, size=(192, 128))
    det = FollowingDetector(lose=(200, 40, 120))
    ingest_media(tmp_path / "clip.mp4", tmp_path / "out" / "m.jsonl", det, detect_every=10, progress=False)
    # frame 3 changes colour (a possible cut: full detection); at 4 and 5 following loses the
    # faces, and only the regions around them are searched again
    assert det.calls[:6] == ["detect", "track", "track", "detect", "track", "region"]
    assert det.calls.count("detect") == 2


def test_detector_sees_downscaled_frames_boxes_come_back(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", [GREEN] * 4, size=(192, 128))
    sizes = []

    class Recording(FakeDetector):
        def detect(self, images):
            sizes.extend(im.size for im in images)
            return super().detect(images)

    report = ingest_media(tmp_path / "clip.mp4", tmp_path / "out" / "m.jsonl", Recording(), detect_size=64,
                          progress=False)
    assert set(sizes) == {(96, 64)}
    m = Manifest.read(report.manifest)
    first = [f for f in m if f.frame == 0 and f.id.endswith("_0")][0]
    assert first.bbox == [16.0, 16.0, 48.0, 48.0] and first.landmarks[0] == [24.0, 28.0]
    with Image.open(report.manifest.parent / first.image) as im:
        assert im.size == (192, 128)  # frames stay at full resolution
    assert all(f.quality is not None and 0 <= f.quality <= 1 for f in m)


def test_progress_bar_has_a_total_from_the_headers(tmp_path: Path, capsys) -> None:
    from proxytasks.media import expected_frames

    write_video(tmp_path / "media" / "a.mp4", [RED] * 20)
    write_video(tmp_path / "media" / "b.mp4", [BLUE] * 10)
    Image.new("RGB", (80, 60), GREEN).save(tmp_path / "media" / "c.png")
    assert expected_frames(tmp_path / "media" / "a.mp4") == 20
    assert expected_frames(tmp_path / "media" / "a.mp4", stride=3) == 7
    assert expected_frames(tmp_path / "media" / "a.mp4", fps=5) == 10
    ingest_media(tmp_path / "media", tmp_path / "out" / "m.jsonl", FakeDetector(), stride=3, progress=True)
    err = capsys.readouterr().err
    assert "12/12" in err  # 7 + 4 frames + 1 photo, with an ETA while it runs
