"""Tests for data_tools.importers: real datasets beside the repo and tiny fixtures."""
from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from data_tools.importers import (import_crops, import_detections, import_folders,
                                  import_pattern)
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Manifest

from .conftest import SHARED_DATA as SHARED, unavailable


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        unavailable(f"real data {path} is absent (it lives beside the repo, never in it)")
    return path


def _image(path: Path, size: tuple[int, int] = (32, 24), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path, format=fmt)
    return path


def _ids(manifest: Manifest) -> list[str]:
    return [f.id for f in manifest]


# --------------------------------------------------------------------------- real data
def test_orl_identity_folders(tmp_path):
    root = _shared("orl_faces")
    out = tmp_path / "orl.jsonl"
    manifest = import_folders(root, out)
    assert len(manifest) == 380
    assert manifest.summary()["identities"] == 38
    assert manifest[0].id == "s3/1" and manifest[0].identity == "s3"
    assert manifest[0].media == "s3/1.pgm" and manifest[0].frame is None
    read = Manifest.read(out)
    assert _ids(read) == _ids(manifest)


def test_yale_pattern_without_extensions(tmp_path):
    root = _shared("yalefaces")
    on_disk = [p for p in root.iterdir()
               if p.is_file() and re.search(r"subject\d+\.", p.name) and not p.name.startswith(".")]
    out = tmp_path / "yale.jsonl.gz"
    manifest = import_pattern(root, r"(?P<identity>subject\d+)\.", out)
    assert len(manifest) == len(on_disk)
    assert manifest.summary()["identities"] == 15
    assert len(set(_ids(manifest))) == len(manifest)
    assert Manifest.read(out).summary()["faces"] == len(on_disk)


def test_bbt_skips_group_photos_in_root(tmp_path, caplog):
    root = _shared("bbt/images")
    out = tmp_path / "bbt.jsonl"
    with caplog.at_level(logging.INFO, logger="data_tools.importers"):
        manifest = import_folders(root, out)
    assert len(manifest) == 40
    assert manifest.summary()["identities"] == 8
    assert not any(f.media.startswith("bbt") for f in manifest)
    assert "not in an identity folder" in caplog.text and "bbt1.jpg" in caplog.text
    Manifest.read(out)


# --------------------------------------------------------------------------- folders
def test_folders_skips_hidden_and_non_images(tmp_path, caplog):
    root = tmp_path / "data"
    _image(root / "ann" / "2.png")
    _image(root / "ann" / "10.JPG")
    _image(root / "bob" / "a.webp")
    _image(root / "ann" / ".hidden.png")
    _image(root / ".cache" / "x.png")
    (root / "bob" / "notes.txt").write_text("hi")
    _image(root / "loose.png")
    with caplog.at_level(logging.INFO, logger="data_tools.importers"):
        manifest = import_folders(root, tmp_path / "out" / "m.jsonl")
    assert _ids(manifest) == ["ann/2", "ann/10", "bob/a"]
    assert [f.identity for f in manifest] == ["ann", "ann", "bob"]
    assert "notes.txt" in caplog.text and "loose.png" in caplog.text
    Manifest.read(tmp_path / "out" / "m.jsonl")


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(ProxytasksError, match="not found"):
        import_folders(tmp_path / "nope", tmp_path / "m.jsonl")
    (tmp_path / "empty" / "ann").mkdir(parents=True)
    with pytest.raises(ProxytasksError, match="no images found"):
        import_folders(tmp_path / "empty", tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


# --------------------------------------------------------------------------- pattern
def test_pattern_with_frame_and_unreadable(tmp_path, caplog):
    root = tmp_path / "flat"
    _image(root / "ep1-f0007-ann", fmt="GIF")
    _image(root / "ep1-f0012-bob.png")
    _image(root / "ep2-f0003-ann.jpg")
    (root / "ep2-f0004-bob.jpg").write_text("not an image")
    (root / "README").write_text("x")
    regex = r"(?P<media>ep\d+)-f(?P<frame>\d+)-(?P<identity>[a-z]+)"
    out = tmp_path / "out" / "m.jsonl"
    with caplog.at_level(logging.INFO, logger="data_tools.importers"):
        manifest = import_pattern(root, regex, out)
    assert [(f.media, f.frame, f.identity) for f in manifest] == [
        ("ep1", 7, "ann"), ("ep1", 12, "bob"), ("ep2", 3, "ann")]
    assert _ids(manifest) == ["ep1-f0007-ann", "ep1-f0012-bob", "ep2-f0003-ann"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ep2-f0004-bob.jpg" in warnings[0].getMessage()
    assert "README" in caplog.text
    Manifest.read(out)


def test_pattern_recursive_and_default_media(tmp_path):
    root = tmp_path / "flat"
    _image(root / "top_ann.png")
    _image(root / "sub" / "deep_bob.png")
    flat = import_pattern(root, r"_(?P<identity>[a-z]+)\.", tmp_path / "a.jsonl")
    assert [(f.media, f.frame) for f in flat] == [("top_ann.png", None)]
    deep = import_pattern(root, r"_(?P<identity>[a-z]+)\.", tmp_path / "b.jsonl", recursive=True)
    assert sorted(f.media for f in deep) == ["sub/deep_bob.png", "top_ann.png"]


def test_pattern_without_identity_group_refused(tmp_path):
    _image(tmp_path / "flat" / "a_1.png")
    with pytest.raises(ProxytasksError, match="identity"):
        import_pattern(tmp_path / "flat", r"(?P<name>[a-z]+)_", tmp_path / "m.jsonl")
    with pytest.raises(ProxytasksError, match="invalid regex"):
        import_pattern(tmp_path / "flat", r"(?P<identity>[a-z", tmp_path / "m.jsonl")
    with pytest.raises(ProxytasksError, match="no readable image matches"):
        import_pattern(tmp_path / "flat", r"(?P<identity>zzz)", tmp_path / "m.jsonl")


# --------------------------------------------------------------------------- crops
def test_crops_mixed_layout(tmp_path, caplog):
    root = tmp_path / "crops"
    _image(root / "ann" / "ep1_000012_0.jpg")
    _image(root / "ann" / "ep1_000013_1.jpg")
    _image(root / "bob" / "ep1_000012_1.png")
    _image(root / "ep1_000012_2.jpg")
    _image(root / "cover.jpg")
    _image(root / "ann" / "deeper" / "ep1_000020_0.jpg")
    out = tmp_path / "elsewhere" / "crops.jsonl"
    with caplog.at_level(logging.INFO, logger="data_tools.importers"):
        manifest = import_crops(root, out)
    by_id = {f.id: f for f in manifest}
    assert sorted(by_id) == ["ann/ep1_000012_0", "ann/ep1_000013_1", "bob/ep1_000012_1",
                             "ep1_000012_2"]
    assert by_id["ann/ep1_000013_1"].frame == 13
    assert by_id["bob/ep1_000012_1"].identity == "bob"
    assert by_id["ep1_000012_2"].identity is None and by_id["ep1_000012_2"].frame == 12
    assert {f.media for f in manifest} == {"ep1"}
    assert "cover.jpg" in caplog.text and "deeper" in caplog.text
    read = Manifest.read(out)
    assert read.resolve(read[0].crop).resolve() == (root / read[0].id).with_suffix(".jpg").resolve()

    named = import_crops(root, tmp_path / "named.jsonl", media="videos/ep1.mp4")
    assert {f.media for f in named} == {"videos/ep1.mp4"}


def test_crops_none_found(tmp_path):
    _image(tmp_path / "crops" / "face.jpg")
    with pytest.raises(ProxytasksError, match="no crops found"):
        import_crops(tmp_path / "crops", tmp_path / "m.jsonl")


# --------------------------------------------------------------------------- detections
@pytest.fixture()
def frames(tmp_path: Path) -> Path:
    """A table folder with two extracted frames and one photo."""
    base = tmp_path / "det"
    _image(base / "frames" / "ep1" / "000003.jpg", (100, 80))
    _image(base / "frames" / "ep1" / "000004.jpg", (100, 80))
    _image(base / "photos" / "party.jpg", (100, 80))
    return base


def test_detections_csv_with_image_column(frames, tmp_path):
    (frames / "det.csv").write_text(
        "media,frame,x,y,w,h,score,image,identity,extra\n"
        "videos/ep1.mp4,3,10,10,20,20,0.9,frames/ep1/000003.jpg,ann,q\n"
        "videos/ep1.mp4,3,50,10,20,20,0.8,frames/ep1/000003.jpg,,q\n"
        "videos/ep1.mp4,4,12,10,20,20,,frames/ep1/000004.jpg,ann,q\n"
        "photos/party.jpg,,5,5,30,30,0.7,,,q\n")
    out = tmp_path / "other" / "faces.jsonl"
    manifest = import_detections(frames / "det.csv", out)
    assert _ids(manifest) == ["ep1_3_0", "ep1_3_1", "ep1_4_0", "party_0"]
    assert [f.frame for f in manifest] == [3, 3, 4, None]
    assert manifest[0].identity == "ann" and manifest[1].identity is None
    assert manifest[2].score is None and manifest[0].score == pytest.approx(0.9)
    assert manifest[3].bbox == [5.0, 5.0, 30.0, 30.0]
    read = Manifest.read(out)
    assert read.resolve(read[3].image).resolve() == (frames / "photos" / "party.jpg").resolve()


def test_detections_jsonl_with_template(frames, tmp_path):
    rows = [{"media": "videos/ep1.mp4", "frame": 3, "x": 1, "y": 2, "w": 30, "h": 30,
             "time": 0.12, "track": "t1"},
            {"media": "videos/ep1.mp4", "frame": 4, "x": 3, "y": 2, "w": 30, "h": 30,
             "track": "t1", "id": "custom"},
            {"media": "photos/party.jpg", "frame": None, "x": 0, "y": 0, "w": 10, "h": 10}]
    table = frames / "det.jsonl.gz"
    with gzip.open(table, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.jsonl"
    manifest = import_detections(table, out, image_template="frames/{media_stem}/{frame:06d}.jpg")
    assert _ids(manifest) == ["ep1_3_0", "custom", "party_0"]
    assert manifest[0].time == pytest.approx(0.12) and manifest[1].track == "t1"
    read = Manifest.read(out)
    assert read.resolve(read[1].image).resolve() == (frames / "frames/ep1/000004.jpg").resolve()


def test_detections_tsv_needs_an_image(frames, tmp_path):
    (frames / "det.tsv").write_text("media\tframe\tx\ty\tw\th\nvideos/ep1.mp4\t3\t1\t1\t5\t5\n")
    with pytest.raises(ProxytasksError, match=r"det\.tsv:2: no image"):
        import_detections(frames / "det.tsv", tmp_path / "m.jsonl")


@pytest.mark.parametrize("body, line, column", [
    ("videos/a.mp4,3,1,1,5,5,f.jpg\nvideos/a.mp4,3,1,1,nan,5,f.jpg\n", 3, "w"),
    ("videos/a.mp4,3,1,1,5,5,f.jpg\nvideos/a.mp4,3,1,abc,5,5,f.jpg\n", 3, "y"),
    ("videos/a.mp4,3,1,1,5,-5,f.jpg\n", 2, "h"),
    ("videos/a.mp4,3,1,1,5,5,f.jpg\nvideos/a.mp4,3,1,1\n", 3, "w"),
    ("videos/a.mp4,x3,1,1,5,5,f.jpg\n", 2, "frame"),
])
def test_detections_bad_csv_rows(tmp_path, body, line, column):
    table = tmp_path / "det.csv"
    table.write_text("media,frame,x,y,w,h,image\n" + body)
    with pytest.raises(ProxytasksError) as info:
        import_detections(table, tmp_path / "m.jsonl")
    assert f"det.csv:{line}:" in str(info.value)
    assert f"'{column}'" in str(info.value)
    assert not (tmp_path / "m.jsonl").exists()


def test_detections_bad_jsonl_rows(tmp_path):
    table = tmp_path / "det.jsonl"
    good = {"media": "a.mp4", "frame": 1, "x": 0, "y": 0, "w": 5, "h": 5, "image": "f.jpg"}
    table.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "x": float("nan")}) + "\n")
    with pytest.raises(ProxytasksError, match=r"det\.jsonl:3: column 'x'"):
        import_detections(table, tmp_path / "m.jsonl")
    table.write_text(json.dumps({k: v for k, v in good.items() if k != "h"}) + "\n")
    with pytest.raises(ProxytasksError, match=r"det\.jsonl:1: column 'h' missing"):
        import_detections(table, tmp_path / "m.jsonl")


def test_detections_missing_header_columns(tmp_path):
    table = tmp_path / "det.csv"
    table.write_text("media,frame,left,top,w,h\na.jpg,,1,1,5,5\n")
    with pytest.raises(ProxytasksError) as info:
        import_detections(table, tmp_path / "m.jsonl")
    message = str(info.value)
    assert "det.csv:1" in message and "x, y" in message and "left, top" in message
