"""Media reading: streamed video frames, photos in every mode, clear errors on bad files."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxytasks.errors import ProxytasksError
from proxytasks.media import (Frame, find_media, is_video, iter_video, read_image, video_info)

from .conftest import shared


def hamilton() -> Path:
    return shared("face_recognition_examples", "examples", "short_hamilton_clip.mp4")


def test_iter_video_all_frames() -> None:
    frames = iter_video(hamilton())
    assert inspect.isgenerator(frames)
    count, last_index, last_time = 0, -1, -1.0
    for frame in frames:  # streamed: nothing kept but the counters
        assert isinstance(frame, Frame)
        assert frame.index == last_index + 1 and frame.time > last_time
        assert frame.image.mode == "RGB" and frame.image.size == (640, 360)
        count, last_index, last_time = count + 1, frame.index, frame.time
    assert count == 275 and last_index == 274


def test_iter_video_stride_and_fps() -> None:
    assert [f.index for f in iter_video(hamilton(), stride=10)] == list(range(0, 275, 10))
    kept = list(iter_video(hamilton(), fps=5))
    duration = kept[-1].time - kept[0].time
    assert abs(len(kept) - 5 * 275 / 29.97) <= 2
    assert abs((len(kept) - 1) / duration - 5) < 0.3
    steps = np.diff([f.index for f in kept])
    assert set(steps.tolist()) <= {5, 6, 7}
    with pytest.raises(ProxytasksError):
        next(iter_video(hamilton(), fps=5, stride=2))


def test_iter_video_is_lazy() -> None:
    frames = iter_video(hamilton(), stride=1)
    first = next(frames)
    second = next(frames)
    assert (first.index, second.index) == (0, 1)
    frames.close()  # closing early releases the container


def test_video_info() -> None:
    info = video_info(hamilton())
    assert info["frames"] == 275 and abs(info["fps"] - 29.97) < 0.01
    assert (info["width"], info["height"]) == (640, 360)
    assert 9.0 < info["duration"] < 9.3


def test_bbt_five_frames() -> None:
    path = shared("bbt", "video_5frames.mp4")
    frames = list(iter_video(path))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert video_info(path)["frames"] == 5
    assert frames[0].time == 0.0


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 10])
def test_bad_video_names_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "episode.mp4"
    path.write_bytes(content)
    with pytest.raises(ProxytasksError, match="episode.mp4"):
        list(iter_video(path))
    with pytest.raises(ProxytasksError, match="episode.mp4"):
        video_info(path)


def test_truncated_video(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    path.write_bytes(hamilton().read_bytes()[:20_000])
    with pytest.raises(ProxytasksError, match="cut.mp4"):
        list(iter_video(path))


def test_missing_video(tmp_path: Path) -> None:
    with pytest.raises(ProxytasksError, match="no such file"):
        list(iter_video(tmp_path / "none.mp4"))


def test_read_image_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (200, 100), (10, 200, 30)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("hello, not a photo")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for bad in (truncated, text, empty, tmp_path / "missing.jpg"):
        with pytest.raises(ProxytasksError, match=bad.name):
            read_image(bad)


def test_read_image_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 30))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.size == (30, 60)
    top = np.asarray(out)[:5, 15]
    assert top[:, 2].mean() > 200 and top[:, 0].mean() < 60  # the strip is now on top


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "L", "I;16", "P", "LA", "F"])
def test_read_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    if mode == "I;16":
        image = Image.fromarray(np.full((20, 30), 40000, np.uint16))
        suffix = ".png"
    elif mode == "F":
        image = Image.fromarray(np.full((20, 30), 0.5, np.float32))
        suffix = ".tif"
    else:
        image = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
        suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{suffix}"
    image.save(path)
    out = read_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":
        assert abs(int(np.asarray(out)[0, 0, 0]) - 40000 // 257) <= 1


def test_read_image_bomb_guard(tmp_path: Path, monkeypatch) -> None:
    import proxytasks.media as media

    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ProxytasksError, match="decompression bomb"):
        read_image(path)


def test_find_media(tmp_path: Path) -> None:
    seq = tmp_path / "shots" / "seq"
    seq.mkdir(parents=True)
    for i in (1, 2, 10):
        Image.new("RGB", (8, 8)).save(seq / f"{i:06d}.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "f2.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "f10.png")
    Image.new("L", (8, 8)).save(tmp_path / "subject01.glasses", format="GIF")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "a.jpg").write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_media([tmp_path])]
    assert found == ["clip.mp4", "f2.png", "f10.png", "shots/seq", "subject01.glasses"]
    assert is_video(tmp_path / "shots" / "seq") and not is_video(tmp_path / "shots")
    frames = list(iter_video(tmp_path / "shots" / "seq"))
    assert [f.index for f in frames] == [1, 2, 10] and frames[0].time is None
    assert [f.index for f in iter_video(tmp_path / "shots" / "seq", stride=2)] == [1, 10]
    with pytest.raises(ProxytasksError, match="no time stamps"):
        next(iter_video(tmp_path / "shots" / "seq", fps=5))
    assert find_media([tmp_path / "f2.png", tmp_path / "f2.png"]) == [tmp_path / "f2.png"]
    with pytest.raises(ProxytasksError, match="notes.txt"):
        find_media([tmp_path / "notes.txt"])
    with pytest.raises(ProxytasksError, match="nope"):
        find_media([tmp_path / "nope"])
    assert is_video("a/B.MKV") and not is_video("a.jpg")


def test_truncated_faststart_video_warns(tmp_path: Path, caplog) -> None:
    """A cut file with its index up front decodes partly: a warning says so."""
    import av

    whole = tmp_path / "faststart.mp4"
    with av.open(str(hamilton())) as src, \
            av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = whole.read_bytes()
    cut = tmp_path / "cut_faststart.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="proxytasks.media"):
        frames = sum(1 for _ in iter_video(cut))
    assert 0 < frames < 275
    assert "cut_faststart.mp4" in caplog.text and "truncated" in caplog.text
    corrupt = bytearray(data)
    corrupt[len(data) // 2: len(data) // 2 + 5000] = b"\x07" * 5000
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ProxytasksError, match=r"corrupt.mp4: decoding failed at frame \d+"):
        for _ in iter_video(bad):
            pass
