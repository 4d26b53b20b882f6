"""Exporting the named dataset: folders per name, unknowns apart, hostile names kept inside."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from proxytasks.cli import cli
from proxytasks.errors import ProxytasksError
from proxytasks.export import MAX_BYTES, MAX_CHARS, export_dataset, safe_name
from proxytasks.manifest import Face, Manifest

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (90, 90, 90), (250, 250, 250), (10, 10, 10), (150, 100, 50), (50, 100, 150), (120, 180, 60),
           (180, 60, 120), (60, 120, 180), (240, 140, 40), (40, 140, 240)]


def make_source(root: Path, ids: list[str]) -> Path:
    """A manifest of solid-colour 24x24 PNG crops (face k: COLOURS[k]); the last face is a box in a frame."""
    root.mkdir(parents=True, exist_ok=True)
    faces = []
    for k, face_id in enumerate(ids[:-1]):
        Image.new("RGB", (24, 24), COLOURS[k % len(COLOURS)]).save(root / f"c{k}.png")
        faces.append(Face(id=face_id, media="ep.mp4", frame=k, time=k / 25, crop=f"c{k}.png",
                          track=f"t{k // 2}", shot=0, identity="truth", extra={"note": k}))
    frame = Image.new("RGB", (64, 48), (0, 0, 0))
    frame.paste(COLOURS[(len(ids) - 1) % len(COLOURS)], (10, 8, 40, 38))
    frame.save(root / "frame.png")
    faces.append(Face(id=ids[-1], media="photo.png", image="frame.png", bbox=[10, 8, 30, 30], score=0.9))
    return Manifest(faces, root).write(root / "faces.jsonl")


def write_names(path: Path, rows: list[tuple[str, str, object, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "name", "confidence", "source"])
        w.writerows(rows)
    return path


def tree(root: Path) -> set[Path]:
    out = set()
    for folder, dirs, files in os.walk(root):
        out.update(Path(folder, n) for n in dirs + files)
    return out


def mean_colour(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path]:
    manifest = make_source(tmp_path / "src", ["f0", "f1", "f2", "f3", "f4", "f5"])
    names = write_names(tmp_path / "names.csv", [
        ("f0", "Alice", "1.0000", "given"),
        ("f1", "Alice", "0.9000", "classifier"),
        ("f2", "Bob", "0.8000", "track"),
        ("f3", "", "0.3000", "unknown"),
        ("f5", "Bob", "0.5000", "given"),   # f4 is not listed: unknown
    ])
    return manifest, names


def test_export_writes_folders_manifest_and_index(tmp_path, source):
    manifest, names = source
    out = tmp_path / "out"
    summary = export_dataset(manifest, names, out, progress=False)
    assert summary == {"faces": 6, "named": 4, "unknown": 2, "names": 2, "folders": 3}
    assert {p.relative_to(out).as_posix() for p in tree(out)} == {
        "Alice", "Alice/f0.jpg", "Alice/f1.jpg", "Bob", "Bob/f2.jpg", "Bob/f5.jpg",
        "_unknown", "_unknown/f3.jpg", "_unknown/f4.jpg", "manifest.jsonl", "names.json"}
    for k, rel in enumerate(["Alice/f0.jpg", "Alice/f1.jpg", "Bob/f2.jpg", "_unknown/f3.jpg",
                             "_unknown/f4.jpg", "Bob/f5.jpg"]):
        assert np.abs(mean_colour(out / rel) - COLOURS[k]).max() < 4, rel
        with Image.open(out / rel) as im:
            assert im.format == "JPEG" and im.size == ((24, 24) if k < 5 else (30, 30))

    m = Manifest.read(out / "manifest.jsonl", check_files=True)
    by_id = {f.id: f for f in m.faces}
    assert [f.id for f in m.faces] == ["f0", "f1", "f2", "f3", "f4", "f5"]
    assert by_id["f1"].identity == "Alice" and by_id["f1"].extra["confidence"] == 0.9
    assert by_id["f1"].extra["source"] == "classifier" and by_id["f1"].crop == "Alice/f1.jpg"
    assert by_id["f3"].identity is None and by_id["f3"].extra["source"] == "unknown"
    assert by_id["f4"].identity is None and by_id["f4"].extra["confidence"] is None
    f2 = by_id["f2"]
    assert (f2.media, f2.frame, f2.time, f2.track, f2.shot, f2.extra["note"]) == ("ep.mp4", 2, 0.08, "t1", 0, 2)
    f5 = by_id["f5"]
    assert f5.image is None and f5.bbox is None and f5.frame is None and f5.score == 0.9

    index = json.loads((out / "names.json").read_text())
    assert index["folders"] == {"Alice": {"name": "Alice", "faces": 2}, "Bob": {"name": "Bob", "faces": 2},
                                "_unknown": {"name": None, "faces": 2}}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # usual permissions, not mkdtemp's 0700


def test_reads_the_names_file_that_naming_writes(tmp_path):
    from proxytasks.naming import NamingResult
    from proxytasks.naming import write_names as write_naming_result

    ids = ["a/0", "a/1", "b/0"]
    manifest = make_source(tmp_path / "src", ids)
    result = NamingResult(["Ann, the \"first\"", None, "Bo"], np.array([1.0, 0.2, 0.7], np.float32),
                          ["given", "unknown", "cluster"])
    write_naming_result(tmp_path / "names.csv", ids, result)
    export_dataset(manifest, tmp_path / "names.csv", tmp_path / "out", progress=False)
    faces = {f.id: f for f in Manifest.read(tmp_path / "out" / "manifest.jsonl", check_files=True)}
    assert faces["a/0"].identity == 'Ann, the "first"' and faces["a/0"].crop == "Ann_ the _first_/a_0.jpg"
    assert faces["a/1"].crop == "_unknown/a_1.jpg" and faces["b/0"].extra["source"] == "cluster"


def test_min_confidence_moves_predictions_but_keeps_given_names(tmp_path, source):
    manifest, names = source
    out = tmp_path / "out"
    summary = export_dataset(manifest, names, out, min_confidence=0.85, progress=False)
    assert summary["unknown"] == 3
    assert sorted(p.name for p in (out / "Bob").iterdir()) == ["f5.jpg"]  # given at 0.5: stays
    assert sorted(p.name for p in (out / "Alice").iterdir()) == ["f0.jpg", "f1.jpg"]
    assert sorted(p.name for p in (out / "_unknown").iterdir()) == ["f2.jpg", "f3.jpg", "f4.jpg"]
    f2 = {f.id: f for f in Manifest.read(out / "manifest.jsonl")}["f2"]
    assert f2.identity is None and f2.extra == {"note": 2, "confidence": 0.8, "source": "track"}
    with pytest.raises(ProxytasksError, match="min_confidence"):
        export_dataset(manifest, names, tmp_path / "o2", min_confidence=1.5, progress=False)


HOSTILE = ["../../etc", "a/b", "a_b", "a\\b", "..\\..\\win", "/abs/path", "CON", "nul.txt", "x\x00y",
           "_unknown", "manifest.jsonl", "names.json", "Ann", "ann", ".hidden", "tab\there"]


def test_hostile_names_stay_inside_and_get_distinct_safe_folders(tmp_path):
    ids = [f"v.mp4/{k:06d}_0" for k in range(len(HOSTILE))] + ["v.mp4/unknown"]
    manifest = make_source(tmp_path / "src", ids)
    names = write_names(tmp_path / "names.csv", [(i, n, "0.9", "cluster") for i, n in zip(ids, HOSTILE)])
    out = tmp_path / "out"
    before = tree(tmp_path)
    export_dataset(manifest, names, out, progress=False)
    new = tree(tmp_path) - before
    assert new and all(p == out or out in p.parents for p in new)
    assert not (tmp_path / "etc").exists() and not Path("/abs/path").exists()

    index = json.loads((out / "names.json").read_text())["folders"]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(index)
    assert len({f.casefold() for f in folders}) == len(folders) == len(HOSTILE) + 1
    assert sorted(v["name"] for v in index.values() if v["name"] is not None) == sorted(HOSTILE)
    folder_of = {v["name"]: f for f, v in index.items()}
    assert folder_of[None] == "_unknown" and folder_of["_unknown"] == "_unknown-2"
    assert folder_of["a_b"] == "a_b" and folder_of["a/b"] != "a_b"
    assert folder_of["../../etc"] == "etc" and folder_of["CON"] == "_CON" and folder_of["nul.txt"] == "_nul.txt"
    assert folder_of["manifest.jsonl"] != "manifest.jsonl" and folder_of["names.json"] != "names.json"
    assert folder_of["x\x00y"] == "x_y" and folder_of[".hidden"] == "hidden"
    for f in folders:
        assert f == safe_name(f) and f not in (".", "..") and not f.startswith(".")
        assert (out / f).resolve().parent == out.resolve()
        files = list((out / f).iterdir())
        assert len(files) == 1 and files[0].suffix == ".jpg" and "/" not in files[0].name

    m = Manifest.read(out / "manifest.jsonl", check_files=True)
    assert {f.identity for f in m.faces} == set(HOSTILE) | {None}
    assert all((out / f.crop).resolve().parent.parent == out.resolve() for f in m.faces)


def test_ids_that_sanitise_alike_give_distinct_files(tmp_path):
    ids = ["v.mp4/000001_0", "v.mp4_000001_0", "../x", "x", "..", "V.MP4_000001_0"]
    manifest = make_source(tmp_path / "src", ids)
    names = write_names(tmp_path / "names.csv", [(i, "Zoe", "1.0", "given") for i in ids])
    export_dataset(manifest, names, tmp_path / "out", progress=False)
    files = sorted(p.name for p in (tmp_path / "out" / "Zoe").iterdir())
    assert len(files) == len(ids) == len({f.casefold() for f in files})
    assert "x.jpg" in files and "v.mp4_000001_0.jpg" in files
    crops = {f.id: f.crop for f in Manifest.read(tmp_path / "out" / "manifest.jsonl", check_files=True)}
    assert crops["x"] == "Zoe/x.jpg" and crops["v.mp4_000001_0"] == "Zoe/v.mp4_000001_0.jpg"


@pytest.mark.parametrize("bad", ["..", "/", "   ", "\\", "./..", "..//.."])
def test_name_that_sanitises_to_empty_is_refused_with_its_line(tmp_path, source, bad):
    manifest, _ = source
    names = write_names(tmp_path / "bad.csv", [("f0", "Alice", "1", "given"), ("f1", bad, "0.9", "cluster")])
    before = tree(tmp_path)
    with pytest.raises(ProxytasksError) as e:
        export_dataset(manifest, names, tmp_path / "out", progress=False)
    assert f"{names}:3" in str(e.value) and repr(bad) in str(e.value)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("row, message", [
    (("nobody", "Alice", "1", "given"), "id 'nobody' is not a face of the manifest"),
    (("f1", "Alice", "abc", "classifier"), "confidence 'abc'"),
    (("f1", "Alice", "nan", "classifier"), "confidence 'nan'"),
    (("f1", "Alice", "1.5", "classifier"), "confidence '1.5'"),
    (("f1", "Alice", "-0.1", "classifier"), "confidence '-0.1'"),
    (("f1", "Alice", "0.5", "oracle"), "source 'oracle'"),
    (("f0", "Bob", "0.5", "track"), "appears again (first on line 2)"),
    (("f1", "Alice"), "expected 4 columns"),
])
def test_bad_names_rows_name_file_and_line(tmp_path, source, row, message):
    manifest, _ = source
    names = write_names(tmp_path / "bad.csv", [("f0", "Alice", "1", "given"), row])
    with pytest.raises(ProxytasksError, match="^" + str(names) + ":3: ") as e:
        export_dataset(manifest, names, tmp_path / "out", progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_names_header_must_have_the_columns(tmp_path, source):
    manifest, _ = source
    (tmp_path / "labels.csv").write_text("id,name\nf0,Alice\n")
    with pytest.raises(ProxytasksError, match=r"labels\.csv:1: .*missing confidence, source"):
        export_dataset(manifest, tmp_path / "labels.csv", tmp_path / "out", progress=False)


def test_existing_folder_needs_overwrite_and_only_replaces_an_export(tmp_path, source):
    manifest, names = source
    out = tmp_path / "out"
    out.mkdir()
    export_dataset(manifest, names, out, progress=False)  # an empty folder is fine
    (out / "Alice" / "stray.txt").write_text("left from before")
    with pytest.raises(ProxytasksError, match="not empty.*--overwrite"):
        export_dataset(manifest, names, out, progress=False)
    export_dataset(manifest, names, out, min_confidence=0.85, overwrite=True, progress=False)
    assert not (out / "Alice" / "stray.txt").exists() and (out / "_unknown" / "f2.jpg").is_file()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(ProxytasksError, match="not an earlier export"):
        export_dataset(manifest, names, precious, overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.csv", "out", "precious", "src"]


def test_reexport_from_the_export_itself(tmp_path, source):
    manifest, names = source
    out = tmp_path / "out"
    export_dataset(manifest, names, out, progress=False)
    renamed = write_names(tmp_path / "renamed.csv", [("f0", "Carol", "1", "given")])
    summary = export_dataset(out / "manifest.jsonl", renamed, out, overwrite=True, progress=False)
    assert summary == {"faces": 6, "named": 1, "unknown": 5, "names": 1, "folders": 2}
    assert Manifest.read(out / "manifest.jsonl", check_files=True)[0].identity == "Carol"
    assert np.abs(mean_colour(out / "Carol" / "f0.jpg") - COLOURS[0]).max() < 6


def test_failure_midway_leaves_no_half_written_folder(tmp_path, source):
    manifest, names = source
    out = tmp_path / "out"
    export_dataset(manifest, names, out, progress=False)
    before = tree(tmp_path)
    (tmp_path / "src" / "c3.png").unlink()
    with pytest.raises(ProxytasksError, match="f3"):
        export_dataset(manifest, names, out, overwrite=True, progress=False)
    assert tree(tmp_path) == before - {tmp_path / "src" / "c3.png"}  # old export intact, no temp folder
    with pytest.raises(ProxytasksError, match="f3"):
        export_dataset(manifest, names, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_failed_swap_puts_the_earlier_export_back(tmp_path, source, monkeypatch):
    manifest, names = source
    out = tmp_path / "out"
    export_dataset(manifest, names, out, progress=False)
    before = tree(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == out and ".tmp" in Path(src).name:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export_dataset(manifest, names, out, min_confidence=0.85, overwrite=True, progress=False)
    assert tree(tmp_path) == before


def test_cli_export(tmp_path, source):
    manifest, names = source
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["-q", "export", str(manifest), str(names), "-o", str(out),
                                   "--min-confidence", "0.85"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and "unknown 3" in " ".join(res.output.split())
    res = CliRunner().invoke(cli, ["-q", "export", str(manifest), str(names), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    bad = write_names(tmp_path / "bad.csv", [("ghost", "Alice", "1", "given")])
    res = CliRunner().invoke(cli, ["-q", "export", str(manifest), str(bad), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and f"{bad}:2: id 'ghost'" in res.output and "Traceback" not in res.output


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("root")


HOSTILE_TEXT = st.text(alphabet=st.sampled_from(["/", "\\", ".", " ", "\x00", "\n", "a", "C", "O", "N",
                                                 "_", "-", "é", "\u0301", "‥", "／", "ﬁ", "😀", "\ud800"]),
                       max_size=30)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=300), HOSTILE_TEXT))
def test_safe_name_is_one_component_inside_the_folder(root, text):
    name = safe_name(text)
    if name == "":
        return
    assert "/" not in name and "\\" not in name and name not in (".", "..")
    assert name == name.strip(". ") and all(c.isprintable() for c in name)
    assert len(name) <= MAX_CHARS and len(name.encode("utf-8", "surrogatepass")) <= MAX_BYTES
    assert (root / name).resolve().parent == root.resolve()
    assert safe_name(name) == name
