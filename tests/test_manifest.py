import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.errors import ManifestError
from proxytasks.manifest import Face, Manifest


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def good(i: int = 0, **kw) -> dict:
    rec = {"id": f"f{i}", "media": "v.mp4", "frame": i, "image": "frame.png", "bbox": [1, 2, 20, 20]}
    rec.update(kw)
    return rec


def test_roundtrip_jsonl_and_gz(tmp_path, frame_image):
    faces = [Face(id="a", media="v", frame=3, time=0.12, image="frame.png", bbox=[1.0, 2.0, 10.0, 12.0],
                  score=0.9, landmarks=[[5.0, 6.0]], track="t1", shot=0, identity="ann",
                  extra={"note": "kept"}),
             Face(id="b", media="p.jpg", crop="frame.png")]
    m = Manifest(faces, tmp_path)
    for name in ("m.jsonl", "m.jsonl.gz"):
        m.write(tmp_path / name)
        back = Manifest.read(tmp_path / name)
        assert [f.to_dict() for f in back] == [f.to_dict() for f in faces]
    with gzip.open(tmp_path / "m.jsonl.gz", "rt") as fh:
        assert json.loads(fh.readline())["id"] == "a"
    # photos keep an explicit null frame
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[1])["frame"] is None


def test_write_rebases_relative_paths(tmp_path, frame_image):
    m = Manifest([Face(id="a", media="v", crop="frame.png")], tmp_path)
    out = tmp_path / "sub" / "deeper" / "m.jsonl"
    m.write(out)
    back = Manifest.read(out)
    assert back[0].crop == "../../frame.png"
    assert back.resolve(back[0].crop).resolve() == frame_image.resolve()


def test_summary_counts(tmp_path, frame_image):
    lines = [good(0, identity="a", track="t1"), good(1, identity="b", track="t1"),
             good(2, id="x", frame=1, media="w.mp4", identity="a"),
             {"id": "p", "media": "photo.jpg", "frame": None, "crop": "frame.png"}]
    m = Manifest.read(write_lines(tmp_path / "m.jsonl", lines))
    s = m.summary()
    assert (s["faces"], s["media"], s["frames"], s["tracks"], s["identities"]) == (4, 3, 3, 1, 2)


DEFECTS = {
    "missing id": ({"media": "v", "crop": "frame.png"}, "field 'id' is required"),
    "missing media": ({"id": "a", "crop": "frame.png"}, "field 'media' is required"),
    "id not a string": ({"id": 12, "media": "v", "crop": "frame.png"}, "field 'id': expected a non-empty string"),
    "no crop nor box": ({"id": "a", "media": "v"}, "needs 'crop', or 'image' with 'bbox'"),
    "image without box": ({"id": "a", "media": "v", "image": "frame.png"}, "only 'image' is given"),
    "box outside image": (good(bbox=[50, 40, 20, 20]), "lies outside image"),
    "box of 3 numbers": (good(bbox=[1, 2, 3]), "field 'bbox': expected [x, y, w, h]"),
    "box with zero width": (good(bbox=[1, 2, 0, 5]), "positive width and height"),
    "NaN in box": ('{"id": "a", "media": "v", "image": "frame.png", "bbox": [NaN, 1, 2, 3]}', "NaN"),
    "Infinity score": ('{"id": "a", "media": "v", "crop": "frame.png", "score": Infinity}', "Infinity"),
    "missing image file": (good(image="nowhere.png"), "field 'image': cannot read"),
    "unreadable crop": ({"id": "a", "media": "v", "crop": "notes.txt"}, "field 'crop': cannot read"),
    "negative frame": (good(frame=-3), "field 'frame': expected a non-negative integer"),
    "frame as string": (good(frame="7"), "field 'frame': expected a non-negative integer"),
    "frame as bool": (good(frame=True), "field 'frame'"),
    "track as number": (good(track=5), "field 'track': expected a non-empty string"),
    "bad landmarks": (good(landmarks=[[1, 2, 3]]), "field 'landmarks'"),
    "negative time": (good(time=-1.0), "field 'time'"),
    "not JSON": ("{id: a}", "not valid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
}


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_validate_rejects_defect_naming_the_line(tmp_path, frame_image, kind):
    (tmp_path / "notes.txt").write_text("not an image")
    record, expected = DEFECTS[kind]
    path = write_lines(tmp_path / "bad.jsonl", [good(0), good(1), record])
    with pytest.raises(ManifestError) as err:
        Manifest.read(path)
    assert "bad.jsonl:3:" in str(err.value)
    assert expected in str(err.value)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "bad.jsonl:3:" in result.output and expected in result.output
    assert "Traceback" not in result.output


def test_duplicate_id_names_both_lines(tmp_path, frame_image):
    path = write_lines(tmp_path / "dup.jsonl", [good(0), good(1), good(0)])
    with pytest.raises(ManifestError, match=r"dup.jsonl:3: field 'id': duplicate id 'f0' \(first on line 1\)"):
        Manifest.read(path)


def test_empty_and_missing_manifest(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="holds no faces"):
        Manifest.read(tmp_path / "empty.jsonl")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 2 and "manifest not found" in result.output
    (tmp_path / "bin.jsonl.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        Manifest.read(tmp_path / "bin.jsonl.gz")


def test_every_problem_is_listed(tmp_path, frame_image):
    path = write_lines(tmp_path / "m.jsonl", [good(0, frame=-1), good(1), good(2, bbox=[0, 0, 100, 100])])
    with pytest.raises(ManifestError) as err:
        Manifest.read(path)
    assert len(err.value.problems) == 2
    assert "m.jsonl:1:" in str(err.value) and "m.jsonl:3:" in str(err.value)


def test_validate_prints_summary(tmp_path, frame_image):
    path = write_lines(tmp_path / "m.jsonl", [good(0, identity="a"), good(1, identity="b")])
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "identities" in result.output


def test_write_is_atomic_on_failure(tmp_path, frame_image):
    path = tmp_path / "m.jsonl"
    Manifest([Face(id="a", media="v", crop="frame.png")], tmp_path).write(path)
    before = path.read_bytes()
    bad = Manifest([Face(id="a", media="v", crop="frame.png", score=float("nan"))], tmp_path)
    with pytest.raises(ValueError):
        bad.write(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".m.jsonl.*"))


def test_written_files_get_the_permissions_open_would_give(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = Manifest([Face(id="a", media="v", crop="frame.png")], tmp_path).write(tmp_path / "m.jsonl")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
