"""Tests for the synthetic episode maker (data_tools.synthetic)."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.synthetic import load_truth, make_episode
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest

from .conftest import SHARED_DATA, unavailable

ORL = SHARED_DATA / "orl_faces"
SMALL = dict(n_identities=5, n_shots=3, fps=4.0, progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    make_episode(out, seed=1, **SMALL)
    return out


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default")
    make_episode(out, progress=False)
    return out


def _episode(out: Path) -> dict:
    return json.loads((out / "episode.json").read_text())


def _by_frame(manifest: Manifest) -> dict[int, list[Face]]:
    frames: dict[int, list[Face]] = defaultdict(list)
    for f in manifest:
        frames[f.frame].append(f)
    return frames


def test_manifest_is_valid_and_holds_no_tracks(small):
    manifest = Manifest.read(small / "manifest.jsonl")  # checks files and boxes
    ep = _episode(small)
    for line in (small / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert "track" not in record and "shot" not in record
        assert record["media"] == "episode" and record["score"] == 1.0
        assert record["image"] == f"frames/{record['frame']:06d}.jpg"
        assert record["time"] == pytest.approx(record["frame"] / 4.0)
        assert re.fullmatch(r"f\d{6}_\d+", record["id"])
    assert len(ep["identities"]) == 5
    assert {f.identity for f in manifest} == set(ep["identities"])
    assert ep["frames"] == len(list((small / "frames").glob("*.jpg")))
    assert ep["faces"] == len(manifest)
    for f in manifest:
        x, y, w, h = f.bbox
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 480 and y + h <= 270


def test_default_episode_counts(default):
    manifest = Manifest.read(default / "manifest.jsonl")
    ep = _episode(default)
    assert manifest.summary()["identities"] == 6
    assert len(ep["shot_starts"]) == 10 and ep["shot_starts"][0] == 0
    assert 10 * 2 * 8 <= ep["frames"] <= 10 * 5 * 8
    assert ep["events"]["occlusions"], "an object covers a face at least once"
    truth = load_truth(default)
    assert any(r["occluded"] for r in truth.values())


def test_deterministic(small, tmp_path):
    again = tmp_path / "again"
    make_episode(again, seed=1, **SMALL)
    for name in ("manifest.jsonl", "truth.jsonl", "episode.json"):
        assert (again / name).read_bytes() == (small / name).read_bytes(), name
    assert (again / "frames" / "000005.jpg").read_bytes() == (small / "frames" / "000005.jpg").read_bytes()
    other = tmp_path / "other"
    make_episode(other, seed=2, **SMALL)
    assert (other / "manifest.jsonl").read_bytes() != (small / "manifest.jsonl").read_bytes()
    # rewriting a folder with a shorter episode leaves no stale frames behind
    make_episode(other, seed=1, **{**SMALL, "n_shots": 1})
    assert len(list((other / "frames").glob("*.jpg"))) == _episode(other)["frames"]


def test_truth_covers_manifest_and_frames_are_consistent(small):
    manifest = Manifest.read(small / "manifest.jsonl")
    truth = load_truth(small)
    ep = _episode(small)
    assert set(truth) == {f.id for f in manifest}
    starts = ep["shot_starts"] + [ep["frames"]]
    for f in manifest:
        r = truth[f.id]
        assert r["identity"] == f.identity
        assert starts[r["shot"]] <= f.frame < starts[r["shot"] + 1]
        assert r["appearance"].startswith(f"{r['shot']:03d}/{f.identity}/")
    frames = _by_frame(manifest)
    assert any(len(faces) > 1 for faces in frames.values()), "no multi-face frame"
    for faces in frames.values():
        names = [f.identity for f in faces]
        assert len(names) == len(set(names)), "two faces of one frame share an identity"


def test_shot_cuts_show_in_histograms(small):
    ep = _episode(small)

    def hist(i: int) -> np.ndarray:
        a = np.asarray(Image.open(small / "frames" / f"{i:06d}.jpg").convert("RGB")) // 32
        h = np.bincount((a[..., 0] * 64 + a[..., 1] * 8 + a[..., 2]).ravel(), minlength=512)
        return h / h.sum()

    hists = [hist(i) for i in range(ep["frames"])]
    diff = [0.5 * np.abs(hists[i + 1] - hists[i]).sum() for i in range(len(hists) - 1)]
    cuts = {s - 1 for s in ep["shot_starts"][1:]}
    within = [d for i, d in enumerate(diff) if i not in cuts]
    assert min(diff[i] for i in cuts) > max(within)


def test_reentry_makes_two_appearances(default):
    manifest = Manifest.read(default / "manifest.jsonl")
    truth = load_truth(default)
    reentries = _episode(default)["events"]["reentries"]
    assert reentries
    for event in reentries:
        frames = {a: sorted(f.frame for f in manifest if truth[f.id]["appearance"] == a)
                  for a in event["appearances"]}
        first, second = frames[event["appearances"][0]], frames[event["appearances"][1]]
        assert first[-1] < second[0]
        gap = set(range(first[-1] + 1, second[0]))
        assert gap, "leaving the frame takes at least one frame"
        assert not any(f.frame in gap and f.identity == event["identity"] for f in manifest)


def test_crossing_hides_the_face_behind(default):
    manifest = Manifest.read(default / "manifest.jsonl")
    truth = load_truth(default)
    frames = _by_frame(manifest)
    crossings = _episode(default)["events"]["crossings"]
    assert crossings
    for event in crossings:
        for frame in range(event["first"], event["last"] + 1):
            names = {f.identity for f in frames.get(frame, [])}
            assert event["identity"] not in names
        # the hidden stretch does not end the appearance of the person behind
        around = [truth[f.id]["appearance"] for fr in (event["first"] - 1, event["last"] + 1)
                  for f in frames.get(fr, []) if f.identity == event["identity"]]
        assert len(set(around)) <= 1


def test_no_misses_when_miss_rate_is_zero(tmp_path):
    make_episode(tmp_path, seed=4, miss_rate=0.0, **SMALL)
    assert _episode(tmp_path)["events"]["missed"] == []


@pytest.mark.parametrize("bad", [dict(fps=0), dict(n_shots=0), dict(shot_seconds=(3.0, 1.0)),
                                 dict(face_size=(40, 200)), dict(miss_rate=1.0)])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(ProxytasksError):
        make_episode(tmp_path, progress=False, **bad)


def test_identities_manifest_needs_two_usable_identities(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 50), (128, 100, 90)).save(img)
    one = Manifest([Face(id=f"a{i}", media="a", crop=str(img), identity="alice") for i in range(3)]
                   + [Face(id="b0", media="b", crop=str(img), identity="bob")])
    with pytest.raises(ProxytasksError, match="usable identities"):
        make_episode(tmp_path / "out", one, n_identities=2, progress=False)
    with pytest.raises(ProxytasksError):
        load_truth(tmp_path / "nothing")


def test_real_identities_from_orl(tmp_path):
    if not ORL.is_dir():
        unavailable(f"ORL faces not found at {ORL}")
    faces = [Face(id=f"{d.name}_{i}", media=f"{d.name}/{i}.pgm", frame=None, crop=str(d / f"{i}.pgm"),
                  identity=d.name)
             for d in sorted(ORL.iterdir()) if d.is_dir()
             for i in range(1, 11) if (d / f"{i}.pgm").is_file()]
    folders = {f.identity for f in faces}
    if len(folders) < 4:
        pytest.skip(f"too few ORL identity folders in {ORL}")
    with pytest.raises(ProxytasksError, match="only"):
        make_episode(tmp_path / "x", Manifest(faces), n_identities=len(folders) + 1, progress=False)
    path = make_episode(tmp_path / "orl", Manifest(faces), n_identities=4, n_shots=3, fps=4.0, seed=5,
                        progress=False)
    manifest = Manifest.read(path)
    ep = _episode(tmp_path / "orl")
    names = {f.identity for f in manifest}
    assert names == set(ep["identities"]) and len(names) == 4
    assert names <= folders and all(re.fullmatch(r"s\d+", n) for n in names)
    assert set(load_truth(tmp_path / "orl")) == {f.id for f in manifest}
    for name, sources in ep["sources"].items():
        assert len(set(sources)) >= 2 and all(Path(s).parent.name == name for s in sources)
    # a person looks different from one shot to the next: another image opens each shot;
    # inside a shot (an appearance) the photo stays the same, as the faces of a real track
    opening: dict[str, list[int]] = defaultdict(list)
    for shot in ep["shots"]:
        for name, images in shot["images"].items():
            assert len(images) == 1 and 0 <= images[0] < len(ep["sources"][name])
            opening[name].append(images[0])
    assert any(len(v) > 1 for v in opening.values())
    assert all(len(set(v)) == len(v) for v in opening.values())
    assert ep["params"]["switch_rate"] == 0.0
    # the old episodes (switch_rate) change the photo inside some appearances
    make_episode(tmp_path / "old", Manifest(faces), n_identities=4, n_shots=6, fps=4.0, seed=5, progress=False,
                 switch_rate=1.0)
    switched = [len(images) for shot in _episode(tmp_path / "old")["shots"] for images in shot["images"].values()]
    assert max(switched) == 2
    with pytest.raises(ProxytasksError, match="switch_rate"):
        make_episode(tmp_path / "bad", Manifest(faces), n_identities=4, progress=False, switch_rate=1.5)
