"""Bad input through the command line: exit code 2, the culprit named, never a traceback.

Each case builds its input in tmp_path and runs one command. A few cases are inputs
that must be *accepted* (grey, CMYK, 16-bit and RGBA faces; names with path
separators): those assert exit code 0.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from proxytasks.cli import cli
from proxytasks.embed import Embeddings

from .conftest import tiny_embedder

BOX = [8, 8, 32, 32]


def invoke(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def no_traceback(res) -> None:
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def bad(args, *culprits: str):
    """Run the command; it must fail with exit code 2 naming every culprit."""
    res = invoke(*args)
    no_traceback(res)
    assert res.exit_code == 2, res.output
    for text in culprits:
        assert str(text) in res.output, f"{text!r} not in {res.output!r}"
    return res


def ok(args):
    res = invoke(*args)
    no_traceback(res)
    assert res.exit_code == 0, res.output
    return res


def write_manifest(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def face(i: int, image: str, **more) -> dict:
    return {"id": f"f{i}", "media": "v", "frame": i, "image": image, "bbox": list(BOX),
            "track": f"t{i // 2}", "identity": "Ann" if i % 2 else "Bob", **more}


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height and holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid 4-face manifest with real PNGs, its pairs, a run folder and embeddings."""
    d = tmp_path_factory.mktemp("bad_input_base")
    records = []
    for i in range(4):
        Image.new("RGB", (48, 48), (40 * i, 90, 200 - 30 * i)).save(d / f"img{i}.png")
        records.append(face(i, f"img{i}.png"))
    manifest = write_manifest(d / "m.jsonl", records)
    ok(["pairs", manifest, "-o", d / "pairs.npz"])
    tiny_embedder(dim=16).save(d / "run")  # bad input is refused whatever the model
    ok(["embed", d / "run", manifest, "-o", d / "emb.npz"])
    (d / "labels.csv").write_text("id,name\nf0,Bob\nf1,Ann\n")
    (d / "clusters.csv").write_text("id,cluster\nf0,0\nf1,1\nf2,0\nf3,1\n")
    (d / "names.csv").write_text("id,name,confidence,source\n" + "".join(
        f"f{i},{'Ann' if i % 2 else 'Bob'},1.0,given\n" for i in range(4)))
    (d / "names1.csv").write_text("id,name,confidence,source\nf0,Bob,1.0,given\n")
    return d


def one_face_manifest(tmp_path: Path, image_name: str, **more) -> Path:
    return write_manifest(tmp_path / "one.jsonl", [face(0, image_name, **more)])


# ============================================================== missing files
def test_validate_missing_manifest(tmp_path):
    bad(["validate", tmp_path / "nope.jsonl"], "nope.jsonl", "not found")


def test_pairs_missing_manifest(tmp_path):
    bad(["pairs", tmp_path / "nope.jsonl", "-o", tmp_path / "p.npz"], "nope.jsonl")


def test_train_missing_pairs(base, tmp_path):
    bad(["train", base / "m.jsonl", tmp_path / "nope.npz", "-o", tmp_path / "run"], "nope.npz")


def test_audit_missing_pairs(base, tmp_path):
    bad(["audit", base / "m.jsonl", tmp_path / "nope.npz"], "nope.npz")


def test_embed_missing_run_folder(base, tmp_path):
    bad(["embed", tmp_path / "norun", base / "m.jsonl", "-o", tmp_path / "e.npz"], "norun")


def test_embed_run_folder_without_weights(base, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((base / "run" / "config.json").read_text())
    bad(["embed", run, base / "m.jsonl", "-o", tmp_path / "e.npz"], "model.safetensors")


def test_index_missing_embeddings(tmp_path):
    bad(["index", tmp_path / "nope.npz", "-o", tmp_path / "idx"], "nope.npz", "not found")


def test_name_missing_labels(base, tmp_path):
    bad(["name", base / "run", base / "emb.npz", tmp_path / "nolabels.csv", "-o", tmp_path / "n.csv"],
        "nolabels.csv")


def test_run_missing_recipe(tmp_path):
    bad(["run", tmp_path / "nope.yaml"], "nope.yaml")


def test_train_missing_weights_file(base, tmp_path):
    bad(["train", base / "m.jsonl", base / "pairs.npz", "-o", tmp_path / "run", "--steps", 1,
         "--weights", tmp_path / "noweights.pth"], "noweights.pth")


def test_cluster_missing_pairs(base, tmp_path):
    bad(["cluster", base / "emb.npz", base / "m.jsonl", tmp_path / "nope.npz", "-o", tmp_path / "c.csv"],
        "nope.npz")


def test_export_missing_names(base, tmp_path):
    bad(["export", base / "m.jsonl", tmp_path / "nonames.csv", "-o", tmp_path / "out"], "nonames.csv")


def test_ingest_missing_media(tmp_path):
    bad(["ingest", tmp_path / "nothing.mp4", "-o", tmp_path / "m.jsonl", "--detector", "haar"], "nothing.mp4")


# ============================================================== zero-byte files
def test_validate_empty_manifest(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    bad(["validate", tmp_path / "empty.jsonl"], "empty.jsonl", "no faces")


def test_audit_empty_pairs(base, tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    bad(["audit", base / "m.jsonl", tmp_path / "empty.npz"], "empty.npz")


def test_index_empty_embeddings(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    bad(["index", tmp_path / "empty.npz", "-o", tmp_path / "idx"], "empty.npz")


def test_name_empty_labels(base, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    bad(["name", base / "run", base / "emb.npz", tmp_path / "empty.csv", "-o", tmp_path / "n.csv"], "empty.csv")


def test_validate_empty_image(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    m = one_face_manifest(tmp_path, "zero.png")
    bad(["validate", m], "one.jsonl:1", "'image'", "zero.png")


def test_export_empty_image(base, tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    m = one_face_manifest(tmp_path, "zero.png")
    bad(["export", m, base / "names1.csv", "-o", tmp_path / "out"], "zero.png")


# ============================================================== truncated / corrupt files
def _half_jpeg(tmp_path: Path) -> Path:
    Image.effect_noise((48, 48), 60).convert("RGB").save(tmp_path / "full.jpg", quality=90)
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(raw[: len(raw) // 2])
    return tmp_path / "half.jpg"


def test_embed_truncated_jpeg(base, tmp_path):
    _half_jpeg(tmp_path)
    m = one_face_manifest(tmp_path, "half.jpg")
    bad(["embed", base / "run", m, "-o", tmp_path / "e.npz"], "half.jpg")


def test_export_truncated_jpeg(base, tmp_path):
    _half_jpeg(tmp_path)
    m = one_face_manifest(tmp_path, "half.jpg")
    bad(["export", m, base / "names1.csv", "-o", tmp_path / "out"], "half.jpg")


def test_validate_text_named_jpg(tmp_path):
    (tmp_path / "fake.jpg").write_text("this is not a picture\n")
    m = one_face_manifest(tmp_path, "fake.jpg")
    bad(["validate", m], "one.jsonl:1", "fake.jpg")


def test_audit_pairs_not_a_zip(base, tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip archive at all")
    bad(["audit", base / "m.jsonl", tmp_path / "junk.npz"], "junk.npz", "not a proxytasks pairs file")


def test_train_pairs_not_a_zip(base, tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip archive at all")
    bad(["train", base / "m.jsonl", tmp_path / "junk.npz", "-o", tmp_path / "run"], "junk.npz")


def test_cluster_truncated_pairs(base, tmp_path):
    raw = (base / "pairs.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    bad(["cluster", base / "emb.npz", base / "m.jsonl", tmp_path / "cut.npz", "-o", tmp_path / "c.csv"],
        "cut.npz")


def test_index_embeddings_wrong_keys(tmp_path):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 4), np.float32), names=np.array(["a", "b"]))
    bad(["index", tmp_path / "wrong.npz", "-o", tmp_path / "idx"], "wrong.npz", "not a proxytasks embeddings")


def test_index_embeddings_meta_not_an_object(tmp_path):
    np.savez(tmp_path / "meta.npz", vectors=np.eye(2, dtype=np.float32), ids=np.array(["a", "b"]),
             meta=np.array(json.dumps([1, 2])))
    bad(["index", tmp_path / "meta.npz", "-o", tmp_path / "idx"], "meta.npz")


def test_search_truncated_embeddings(base, tmp_path):
    ok(["index", base / "emb.npz", "-o", tmp_path / "idx"])
    raw = (base / "emb.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    bad(["search", tmp_path / "idx", tmp_path / "cut.npz", "--id", "f0"], "cut.npz")


class OneFaceDetector:
    """A stand-in detector: one fixed face per image (ingest's own detectors need real faces)."""

    name = "one-face"

    def __init__(self, **kwargs) -> None:
        pass

    def detect(self, images):
        from types import SimpleNamespace

        return [SimpleNamespace(boxes=np.array([[8, 8, 24, 24]], np.float32), scores=np.array([0.99], np.float32),
                                landmarks=None) for _ in images]


def test_ingest_corrupt_mp4_is_skipped(tmp_path, monkeypatch):
    """Ingest skips a bad file, names it and still writes the manifest for the rest (exit 0)."""
    from proxytasks.detect import DETECTORS

    monkeypatch.setitem(DETECTORS._items, "one-face", OneFaceDetector)
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "photo.png")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    out = tmp_path / "out" / "m.jsonl"
    res = ok(["ingest", tmp_path / "photo.png", tmp_path / "broken.mp4", "-o", out, "--detector", "one-face"])
    assert "skipped" in res.output and "broken.mp4" in res.output
    ok(["validate", out])


def test_ingest_only_corrupt_mp4(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    bad(["ingest", tmp_path / "broken.mp4", "-o", tmp_path / "m.jsonl", "--detector", "haar"], "broken.mp4")


def test_run_recipe_not_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [unclosed\n  - : :\n")
    bad(["run", tmp_path / "bad.yaml"], "bad.yaml")


# ============================================================== bad manifests
def test_validate_nan_bbox(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    rec = json.dumps(face(0, "a.png")).replace(json.dumps(BOX), "[NaN, 8, 32, 32]")
    m = write_manifest(tmp_path / "nan.jsonl", [rec])
    bad(["validate", m], "nan.jsonl:1", "NaN")


def test_validate_infinite_score(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    rec = json.dumps(face(0, "a.png"))[:-1] + ', "score": Infinity}'
    m = write_manifest(tmp_path / "inf.jsonl", [rec])
    bad(["validate", m], "inf.jsonl:1", "Infinity")


def test_validate_overflowing_score(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    rec = json.dumps(face(0, "a.png"))[:-1] + ', "score": 1e999}'
    m = write_manifest(tmp_path / "big.jsonl", [rec])
    bad(["validate", m], "big.jsonl:1")


def test_validate_duplicate_ids(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    m = write_manifest(tmp_path / "dup.jsonl", [face(0, "a.png"), face(0, "a.png")])
    bad(["validate", m], "dup.jsonl:2", "field 'id'", "duplicate")


def test_pairs_manifest_of_blank_lines(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    bad(["pairs", tmp_path / "blank.jsonl", "-o", tmp_path / "p.npz"], "blank.jsonl", "no faces")


def test_validate_box_outside_image(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    m = write_manifest(tmp_path / "out.jsonl", [face(0, "a.png", bbox=[30, 30, 40, 40])])
    bad(["validate", m], "out.jsonl:1", "field 'bbox'", "outside")


def test_validate_wrong_types(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    m = write_manifest(tmp_path / "types.jsonl", [face(0, "a.png", frame="three"),
                                                  face(1, "a.png", bbox="8,8,32,32")])
    bad(["validate", m], "types.jsonl:1", "field 'frame'", "types.jsonl:2", "field 'bbox'")


def test_validate_not_a_json_object(tmp_path):
    m = write_manifest(tmp_path / "list.jsonl", ["[1, 2, 3]"])
    bad(["validate", m], "list.jsonl:1", "JSON object")


def test_validate_non_utf8(tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    line = json.dumps(face(0, "a.png", identity="ZZZ")).encode().replace(b"ZZZ", b"Ren\xe9")
    (tmp_path / "latin.jsonl").write_bytes(line + b"\n")
    bad(["validate", tmp_path / "latin.jsonl"], "latin.jsonl:1", "UTF-8")


def test_validate_gzip_manifest_corrupt(tmp_path):
    (tmp_path / "m.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    bad(["validate", tmp_path / "m.jsonl.gz"], "m.jsonl.gz")


def test_track_truth_not_jsonl(base, tmp_path):
    (tmp_path / "truth.jsonl").write_text("not json\n")
    bad(["track", base / "m.jsonl", "-o", tmp_path / "t.jsonl", "--appearance", "none",
         "--truth", tmp_path / "truth.jsonl"], "truth.jsonl")


# ============================================================== unusual images: accepted
def _mode_image(tmp_path: Path, mode: str) -> str:
    if mode == "CMYK":
        Image.new("CMYK", (48, 48), (10, 200, 30, 5)).save(tmp_path / "face.jpg")
        return "face.jpg"
    if mode == "I;16":
        im = Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16))
        assert im.mode.startswith("I;16")
        im.save(tmp_path / "face.png")
        return "face.png"
    colour = {"L": 120, "RGBA": (200, 10, 10, 128), "LA": (90, 200), "P": 3}[mode]
    Image.new(mode, (48, 48), colour).save(tmp_path / "face.png")
    return "face.png"


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "RGBA"])
def test_accepted_image_modes_validate_and_embed(base, tmp_path, mode):
    """Accepted: grey, CMYK, 16-bit and RGBA faces validate and embed (exit 0)."""
    m = one_face_manifest(tmp_path, _mode_image(tmp_path, mode))
    ok(["validate", m])
    ok(["embed", base / "run", m, "-o", tmp_path / "e.npz"])
    e = Embeddings.load(tmp_path / "e.npz")
    assert e.ids == ["f0"] and np.isfinite(e.vectors).all()


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_accepted_image_modes_export(base, tmp_path, mode):
    """Accepted: grey+alpha and palette faces export (exit 0)."""
    m = one_face_manifest(tmp_path, _mode_image(tmp_path, mode))
    ok(["export", m, base / "names1.csv", "-o", tmp_path / "out"])
    assert any((tmp_path / "out").rglob("*.*"))


def test_huge_image_refused_by_validate(tmp_path):
    png_header(tmp_path / "huge.png", 100_000, 100_000)
    m = one_face_manifest(tmp_path, "huge.png")
    bad(["validate", m], "one.jsonl:1", "huge.png")


def test_huge_image_refused_by_export(base, tmp_path):
    """read_image refuses it as a decompression bomb, naming the file."""
    png_header(tmp_path / "huge.png", 100_000, 100_000)
    m = one_face_manifest(tmp_path, "huge.png")
    bad(["export", m, base / "names1.csv", "-o", tmp_path / "out"], "huge.png", "decompression bomb")


# ============================================================== labels, names, ids
def test_name_labels_unknown_ids(base, tmp_path):
    (tmp_path / "labels.csv").write_text("id,name\nf0,Bob\nnobody,Ann\n")
    bad(["name", base / "run", base / "emb.npz", tmp_path / "labels.csv", "-o", tmp_path / "n.csv"],
        "labels.csv", "nobody")


def test_suggest_labels_unknown_ids(base, tmp_path):
    (tmp_path / "labels.csv").write_text("id,name\nghost,Ann\n")
    bad(["suggest", base / "emb.npz", base / "m.jsonl", "-o", tmp_path / "s.csv",
         "--labels", tmp_path / "labels.csv"], "labels.csv", "ghost")


def test_name_labels_without_columns(base, tmp_path):
    (tmp_path / "labels.csv").write_text("who,what\nf0,Bob\n")
    bad(["name", base / "run", base / "emb.npz", tmp_path / "labels.csv", "-o", tmp_path / "n.csv"], "labels.csv")


def test_name_clusters_unknown_ids(base, tmp_path):
    (tmp_path / "clusters.csv").write_text("id,cluster\nf0,0\nzz,1\n")
    bad(["name", base / "run", base / "emb.npz", base / "labels.csv", "-o", tmp_path / "n.csv",
         "--clusters", tmp_path / "clusters.csv"], "clusters.csv", "zz")


def test_export_names_unknown_ids(base, tmp_path):
    (tmp_path / "names.csv").write_text("id,name,confidence,source\nstranger,Ann,1.0,given\n")
    bad(["export", base / "m.jsonl", tmp_path / "names.csv", "-o", tmp_path / "out"], "names.csv", "stranger")


def test_accepted_export_names_with_path_separators(base, tmp_path):
    """Accepted: a name with path separators is sanitised into one folder (exit 0)."""
    (tmp_path / "names.csv").write_text("id,name,confidence,source\n" + "".join(
        f"f{i},../../etc/Ann\\x,1.0,given\n" for i in range(4)))
    ok(["export", base / "m.jsonl", tmp_path / "names.csv", "-o", tmp_path / "out"])
    assert not (tmp_path / "etc").exists()
    assert all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in (tmp_path / "out").rglob("*"))


def _other_embeddings(base: Path, tmp_path: Path) -> Path:
    e = Embeddings.load(base / "emb.npz")
    Embeddings(e.vectors, [f"x{i}" for i in range(len(e.ids))], e.meta).save(tmp_path / "other.npz")
    return tmp_path / "other.npz"


def test_name_embeddings_not_of_manifest(base, tmp_path):
    other = _other_embeddings(base, tmp_path)
    bad(["name", base / "run", other, base / "labels.csv", "-o", tmp_path / "n.csv", "--manifest", base / "m.jsonl"],
        "m.jsonl", "other.npz")


def test_suggest_embeddings_not_of_manifest(base, tmp_path):
    other = _other_embeddings(base, tmp_path)
    bad(["suggest", other, base / "m.jsonl", "-o", tmp_path / "s.csv"], "m.jsonl", "other.npz")


def test_cluster_embeddings_not_of_manifest(base, tmp_path):
    other = _other_embeddings(base, tmp_path)
    bad(["cluster", other, base / "m.jsonl", base / "pairs.npz", "-o", tmp_path / "c.csv"], "other.npz", "m.jsonl")


def test_audit_pairs_of_another_manifest(base, tmp_path):
    Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
    m = write_manifest(tmp_path / "two.jsonl", [face(7, "a.png"), face(8, "a.png")])
    ok(["pairs", m, "-o", tmp_path / "p.npz"])
    bad(["audit", base / "m.jsonl", tmp_path / "p.npz"], "p.npz")


def test_simulate_sheet_missing(base, tmp_path):
    bad(["simulate", tmp_path / "nosheet.csv", base / "m.jsonl", "-o", tmp_path / "a.csv"], "nosheet.csv")


# ============================================================== wrong option values
def test_benchmark_shots_not_numbers(base, tmp_path):
    bad(["benchmark", base / "m.jsonl", "-o", tmp_path / "b", "--shots", "one"], "--shots", "one")


def test_train_negative_time_budget(base, tmp_path):
    bad(["train", base / "m.jsonl", base / "pairs.npz", "-o", tmp_path / "run", "--time-budget", -1],
        "time", "-1")


def test_benchmark_zero_time_budget(base, tmp_path):
    bad(["benchmark", base / "m.jsonl", "-o", tmp_path / "b", "--time-budget", 0], "--time-budget")


def test_pairs_unknown_rule(base, tmp_path):
    bad(["pairs", base / "m.jsonl", "-o", tmp_path / "p.npz", "--rules", "same-frame,telepathy"], "telepathy")


def test_pairs_rule_weight_not_a_number(base, tmp_path):
    bad(["pairs", base / "m.jsonl", "-o", tmp_path / "p.npz", "--rules", "same-frame:heavy"], "heavy")


def test_train_unknown_backbone(base, tmp_path):
    bad(["train", base / "m.jsonl", base / "pairs.npz", "-o", tmp_path / "run", "--steps", 1,
         "--backbone", "no_such_net_xyz"], "no_such_net_xyz")


def test_suggest_unknown_strategy(base, tmp_path):
    bad(["suggest", base / "emb.npz", base / "m.jsonl", "-o", tmp_path / "s.csv", "--strategy", "psychic"],
        "psychic")


def test_ingest_unknown_detector(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    bad(["ingest", tmp_path / "photo.png", "-o", tmp_path / "m.jsonl", "--detector", "eyeball"], "eyeball")


def test_train_weights_not_a_weights_file(base, tmp_path):
    (tmp_path / "notes.pth").write_text("these are my notes, not tensors\n")
    bad(["train", base / "m.jsonl", base / "pairs.npz", "-o", tmp_path / "run", "--steps", 1,
         "--weights", tmp_path / "notes.pth"], "notes.pth")


def test_track_weights_not_a_weights_file(base, tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 64)
    bad(["track", base / "m.jsonl", "-o", tmp_path / "t.jsonl", "--appearance", "backbone",
         "--weights", tmp_path / "w.safetensors"], "w.safetensors")


def test_export_min_confidence_out_of_range(base, tmp_path):
    bad(["export", base / "m.jsonl", base / "names.csv", "-o", tmp_path / "out", "--min-confidence", 7],
        "min_confidence", "7")


# ============================================================== more commands
def test_search_missing_index(base, tmp_path):
    bad(["search", tmp_path / "noindex", base / "emb.npz", "--id", "f0"], "noindex")


def test_report_missing_run_folder(tmp_path):
    bad(["report", tmp_path / "norun"], "norun")


def test_import_folders_missing_root(tmp_path):
    bad(["import", "folders", tmp_path / "noroot", "-o", tmp_path / "m.jsonl"], "noroot")


def test_simulate_sheet_unknown_ids(base, tmp_path):
    ok(["suggest", base / "emb.npz", base / "m.jsonl", "-o", tmp_path / "s.csv", "-n", 2])
    text = (tmp_path / "s.csv").read_text().replace("f0", "ghost").replace("f1", "ghost").replace(
        "f2", "ghost").replace("f3", "ghost")
    (tmp_path / "s.csv").write_text(text)
    bad(["simulate", tmp_path / "s.csv", base / "m.jsonl", "-o", tmp_path / "a.csv"], "s.csv", "ghost")


def test_synth_identities_missing(tmp_path):
    bad(["synth", "-o", tmp_path / "ep", "--identities", tmp_path / "noids.jsonl"], "noids.jsonl")


def test_audit_pairs_meta_not_an_object(base, tmp_path):
    np.savez(tmp_path / "meta.npz", i=np.zeros(1, np.int64), j=np.ones(1, np.int64), rule=np.zeros(1, np.uint8),
             meta=np.array(json.dumps("just a string")))
    bad(["audit", base / "m.jsonl", tmp_path / "meta.npz"], "meta.npz", "not a proxytasks pairs file")
