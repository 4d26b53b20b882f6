"""`ingest --shard I/N` as independent jobs and `merge-manifests`: 3 shards give exactly
the manifest of one unsharded run; missing, duplicated and foreign shards are named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from proxytasks.cli import cli
from proxytasks.detect import DETECTORS, Detections, Detector
from proxytasks.errors import ProxytasksError
from proxytasks.ingest import ingest_media, merge_manifests, shard_record_path
from proxytasks.manifest import Manifest

from .test_ingest import BLUE, GREEN, RED, FakeDetector, write_video

pytest.importorskip("av")


@DETECTORS.register("fake-shards")
class _NamedFake(Detector):
    """FakeDetector's boxes behind a registry name, so the CLI can use it."""

    name = "fake-shards"

    def detect(self, images):
        return [Detections(d.boxes, d.scores, d.landmarks) for d in FakeDetector().detect(images)]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Five media: three videos (two with the same stem: keys with a hash), two photos."""
    root = tmp_path_factory.mktemp("shard_media")
    write_video(root / "a" / "clip.mp4", [RED] * 5 + [BLUE] * 5)
    write_video(root / "b" / "clip.mp4", [GREEN] * 6)
    write_video(root / "c.mp4", [BLUE] * 4)
    Image.new("RGB", (80, 60), RED).save(root / "d.jpg")
    Image.new("RGB", (80, 60), GREEN).save(root / "e.png")
    return root


def test_three_shards_equal_one_run(media, tmp_path):
    whole = ingest_media(media, tmp_path / "whole" / "m.jsonl", FakeDetector(), progress=False)
    out = tmp_path / "run"
    parts = []
    for i in (2, 0, 1):  # any order, as independent jobs finish
        m = out / f"m.{i}.jsonl"
        report = ingest_media(media, m, FakeDetector(), progress=False, shard=(i, 3))
        assert len(report.done) in (1, 2)
        record = json.loads(shard_record_path(m).read_text())
        assert record["index"] == i and record["count"] == 3 and record["media"] == 5
        parts.append(m)
    merged = merge_manifests(parts, out / "m.jsonl")
    reference = Manifest.read(whole.manifest)
    assert [f.id for f in merged] == [f.id for f in reference]
    # Same folder layout as the unsharded run: the same lines, frames and crops.
    assert (out / "m.jsonl").read_text() == whole.manifest.read_text()
    assert sorted(p.relative_to(out).as_posix() for p in (out / "crops").rglob("*.jpg")) == \
        sorted(p.relative_to(tmp_path / "whole").as_posix() for p in (tmp_path / "whole" / "crops").rglob("*.jpg"))
    Manifest.read(out / "m.jsonl")  # every file is there


def test_merge_into_another_folder_rebases_paths(media, tmp_path):
    parts = [tmp_path / "s" / f"m.{i}.jsonl" for i in range(2)]
    for i, m in enumerate(parts):
        ingest_media(media, m, FakeDetector(), progress=False, shard=(i, 2), crops=False)
    merged = merge_manifests(parts, tmp_path / "elsewhere" / "all.jsonl")
    again = Manifest.read(tmp_path / "elsewhere" / "all.jsonl")  # files resolve from the new folder
    assert len(again) == len(merged) and again[0].image.startswith("../s/")


def test_missing_duplicate_and_foreign_shards_are_named(media, tmp_path):
    runner = CliRunner()
    parts = []
    for i in range(3):
        m = tmp_path / f"m.{i}.jsonl"
        res = runner.invoke(cli, ["-q", "ingest", str(media), "-o", str(m), "--detector", "fake-shards",
                                  "--shard", f"{i}/3"])
        assert res.exit_code == 0, res.output
        assert f"(shard {i}/3)" in res.output
        parts.append(m)

    def bad(*args, culprits=()):
        res = runner.invoke(cli, ["-q", "merge-manifests", *map(str, args), "-o", str(tmp_path / "x.jsonl")])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        for text in culprits:
            assert text in res.output, (text, res.output)

    bad(parts[0], parts[2], culprits=("shards 1 of 3 are missing",))
    bad(parts[0], parts[1], parts[1], parts[2], culprits=("shard 1 is also", "m.1.jsonl"))
    other = tmp_path / "other"
    ingest_media(media / "a", other / "m.0.jsonl", FakeDetector(), progress=False, shard=(0, 3))
    bad(parts[0], other / "m.0.jsonl", culprits=("another run", "other/m.0.jsonl"))
    ingest_media(media, tmp_path / "m.1b.jsonl", FakeDetector(), progress=False, shard=(1, 3), margin=0.3)
    bad(parts[0], tmp_path / "m.1b.jsonl", parts[2], culprits=("other settings", "margin", "m.1b.jsonl"))
    plain = tmp_path / "plain.jsonl"
    ingest_media(media, plain, FakeDetector(), progress=False)
    bad(plain, culprits=("not a shard", "plain.jsonl"))
    assert not (tmp_path / "x.jsonl").exists()
    res = runner.invoke(cli, ["-q", "merge-manifests", *map(str, parts), "-o", str(tmp_path / "all.jsonl")])
    assert res.exit_code == 0 and len(Manifest.read(tmp_path / "all.jsonl")) == len(Manifest.read(plain))


def test_shard_without_faces_and_bad_shard_option(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (40, 30), RED).save(root / name)

    class Nothing:
        name = "nothing-here"

        def detect(self, images):
            return [Detections.empty() for _ in images]

    report = ingest_media(root, tmp_path / "m.0.jsonl", Nothing(), progress=False, shard=(0, 2))
    assert report.faces == 0 and (tmp_path / "m.0.jsonl").read_text() == ""
    ingest_media(root, tmp_path / "m.1.jsonl", Nothing(), progress=False, shard=(1, 2))
    with pytest.raises(ProxytasksError, match="no face in any"):
        merge_manifests([tmp_path / "m.0.jsonl", tmp_path / "m.1.jsonl"], tmp_path / "all.jsonl")
    with pytest.raises(ProxytasksError, match="--shard"):
        ingest_media(root, tmp_path / "x.jsonl", Nothing(), progress=False, shard=(2, 2))
    res = CliRunner().invoke(cli, ["-q", "ingest", str(root), "-o", str(tmp_path / "y.jsonl"), "--shard", "a/b"])
    assert res.exit_code == 2 and "--shard" in res.output


def test_more_shards_than_media(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    Image.new("RGB", (80, 60), RED).save(root / "only.jpg")
    parts = [tmp_path / f"m.{i}.jsonl" for i in range(3)]
    for i, m in enumerate(parts):
        ingest_media(root, m, FakeDetector(), progress=False, shard=(i, 3))
    assert [json.loads(shard_record_path(m).read_text())["block_media"] for m in parts][1:] == [[], []]
    assert len(merge_manifests(parts, tmp_path / "all.jsonl")) == 2
    assert np.all([f.media == "media/only.jpg" for f in Manifest.read(tmp_path / "all.jsonl")])
