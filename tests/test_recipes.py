"""The recipes in recipes/: each checks out step by step, the demo runs end to end once
(its outputs, its report and its last lines checked on that one run), and the two that
wait for a person run in two parts on real media (--to suggest, a filled sheet, --from name)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.pairs import PairSet

from .conftest import shared

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def run(*args) -> str:
    res = CliRunner().invoke(cli, ["-q", "run", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res.output


def test_the_three_recipes_exist():
    assert {"demo.yaml", "video_face_naming.yaml", "photo_album.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_step_resolves(recipe, tmp_path):
    out = run(recipe, "--dry-run", "--set", f"out={tmp_path}")
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert steps and steps[-1].startswith(f"[{len(steps)}/{len(steps)}]")
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_from_and_to_pick_steps(tmp_path):
    recipe = REPO / "recipes" / "video_face_naming.yaml"
    out = run(recipe, "--dry-run", "--set", f"out={tmp_path}", "--to", "suggest")
    assert out.splitlines()[-1].split()[2] == "suggest" and "--labels" not in out
    out = run(recipe, "--dry-run", "--set", f"out={tmp_path}", "--from", "name")
    first = out.splitlines()[0].split()
    assert first[2] == "name" and "round1/suggestions.csv" in out
    res = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--dry-run", "--from", "nope"])
    assert res.exit_code == 2 and "no step 'nope'" in res.output


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """One run of recipes/demo.yaml (the tests below share it): (its folder, its console output)."""
    out = tmp_path_factory.mktemp("demo")
    return out, run(REPO / "recipes" / "demo.yaml", "--set", f"out={out}")


@pytest.mark.slow
def test_demo_recipe_end_to_end(demo):
    out, output = demo
    for name in ("episode/manifest.jsonl", "tracked.jsonl", "pairs.npz", "recipe.yaml", "names.csv",
                 "benchmark/metrics.json", "report.html"):
        assert (out / name).is_file(), name
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["out"] == str(out) and saved["steps"][0]["synth"]["out"] == f"{out}/episode"
    assert re.search(r"same-track\s+same\s+\d+\s+1\.0000", output), output
    audit = CliRunner().invoke(cli, ["-q", "audit", str(out / "tracked.jsonl"), str(out / "pairs.npz"), "--json"])
    rules = json.loads(audit.output)["rules"]
    assert rules["same-frame"]["precision"] == 1.0 and rules["same-track"]["precision"] >= 0.99
    check_outputs(out, "clusters.csv")
    # every step's wall and CPU seconds, in order
    log = [json.loads(line) for line in (out / "recipe_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(saved["steps"]) + 1))
    # (a step may take under a millisecond on a quiet machine: only the whole run must take time)
    assert all(r["seconds"] >= 0 and r["cpu_seconds"] >= 0 for r in log) and sum(r["seconds"] for r in log) > 1


@pytest.mark.slow
def test_demo_report_shows_training_and_nothing_missing(demo):
    out, _ = demo
    steps = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) >= 2 and steps[-1]["step"] > steps[0]["step"] >= 1  # the demo trains
    html = (out / "report.html").read_text()
    training = html.split('<section id="training">')[1].split("</section>")[0]
    curve = training.split('aria-label="training loss"')[1].split("</svg>")[0]  # the loss curve, drawn
    assert "<polyline" in curve and curve.count("<circle") >= 2
    assert "is empty" not in training
    # the demo asks for no budget sweep: no section for it, and nothing "Missing"
    assert 'class="missing"' not in html and "Missing" not in html
    assert '<section id="budget">' not in html
    for section in ("audit", "methods", "active", "galleries", "suggestions"):
        assert f'<section id="{section}">' in html, section


@pytest.mark.slow
def test_demo_ends_saying_where_the_dataset_and_report_are(demo):
    out, output = demo
    last = output.strip().splitlines()[-4:]
    assert last[0].strip() == f"named dataset: {out}/dataset/  (a folder of face crops per name, _unknown/ " \
                               "apart; manifest.jsonl: every face with its name and confidence)"
    assert last[1].strip().startswith(f"benchmark:     {out}/benchmark/metrics.json")
    assert last[2].strip() == f"report:        {out}/report.html"
    assert last[3] == f"open {out}/report.html in a web browser; to check and correct the names: proxytasks app {out}"
    assert re.match(rf"done in \d+ s \(.*; every step in {re.escape(str(out))}/recipe_log.jsonl\)",
                    output.strip().splitlines()[-5])


def fill_sheet(sheet: Path, clusters: Path) -> int:
    """A person's answers: each face to name gets its cluster's name; 'same' questions
    answered by cluster too. Returns the number of names typed."""
    cluster_of = {r["id"]: r["cluster"] for r in csv.DictReader(open(clusters))}
    rows = list(csv.DictReader(open(sheet)))
    for r in rows:
        if r["kind"] == "name":
            r["name"] = f"person {cluster_of[r['id']]}"
        else:
            r["answer"] = "same" if cluster_of[r["id"]] == cluster_of[r["id2"]] else "different"
    with open(sheet, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return sum(r["kind"] == "name" for r in rows)


def check_outputs(out: Path, clusters: str) -> None:
    names = list(csv.DictReader(open(out / "names.csv")))
    assert names and all(r["name"] for r in names if r["source"] == "given")
    exported = json.loads((out / "dataset" / "names.json").read_text())["folders"]
    assert exported and all((out / "dataset" / folder).is_dir() for folder in exported)
    assert sum(1 for _ in open(out / "dataset" / "manifest.jsonl")) == len(names)
    html = (out / "report.html").read_text()
    assert 'id="galleries"' in html and "<img" in html
    assert (out / "suggestions.csv").is_file() and (out / clusters).is_file()


@pytest.mark.slow
def test_video_recipe_in_two_parts(tmp_path):
    clip = shared("face_recognition_examples", "examples", "short_hamilton_clip.mp4")
    recipe = REPO / "recipes" / "video_face_naming.yaml"
    opts = ["--set", f"out={tmp_path}", "--set", f"media={clip}", "--set", "fps=3", "--set", "budget=8",
            "--set", "questions=4"]
    part1 = run(recipe, *opts, "--to", "suggest")
    assert not (tmp_path / "names.csv").exists()
    sheet = tmp_path / "round1" / "suggestions.csv"
    # part 1 says which file to fill, how to open the app, and the command that continues
    assert f"fill the 'name' column of {sheet}" in part1 and f"proxytasks app {tmp_path}" in part1
    assert f"--set fps=3 --set budget=8 --set questions=4 --from name" in part1
    rows = list(csv.DictReader(open(sheet)))
    assert all((tmp_path / "round1" / r["image"]).is_file() for r in rows)  # each face's picture
    # --from name on the sheet nobody filled stops at once, exit 2, saying what to fill
    res = CliRunner().invoke(cli, ["-q", "run", str(recipe), *opts, "--from", "name"])
    assert res.exit_code == 2 and "no face is named" in res.output and "proxytasks app" in res.output
    assert not (tmp_path / "names1.csv").exists() and not (tmp_path / "run").exists()
    assert fill_sheet(sheet, tmp_path / "clusters1.csv") > 0
    filled = sheet.read_bytes()
    # the filled sheet survives `suggest -o` and a re-run of part 1, byte for byte
    res = CliRunner().invoke(cli, ["-q", "suggest", str(tmp_path / "embeddings1.npz"), str(tmp_path / "tracked.jsonl"),
                                   "--clusters", str(tmp_path / "clusters1.csv"), "-o", str(sheet)])
    assert res.exit_code == 2 and "answer(s) a person typed" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(cli, ["-q", "run", str(recipe), *opts, "--to", "suggest"])
    assert res.exit_code == 2 and "stops before running anything" in res.output and "--from name" in res.output
    assert sheet.read_bytes() == filled
    run(recipe, *opts, "--from", "name")
    check_outputs(tmp_path, "clusters.csv")
    assert sheet.read_bytes() == filled
    # the second training round saw the person's answers as pairs
    pairs = PairSet.load(tmp_path / "pairs_human.npz")
    human = {r.name: int((pairs.rule == k).sum()) for k, r in enumerate(pairs.rules) if r.name.startswith("human-")}
    assert sum(human.values()) > 0, human


@pytest.mark.slow
def test_photo_album_recipe_in_two_parts(tmp_path):
    examples = shared("face_recognition_examples", "examples")
    photos = tmp_path / "album"  # a small album: portraits and group photos (same-photo pairs)
    photos.mkdir()
    for src in [examples / n for n in ("two_people.jpg", "obama_small.jpg", "biden.jpg", "alex-lacamoire.png",
                                       "lin-manuel-miranda.png")] + [shared("bbt", "images", "bbt4.jpg")]:
        (photos / src.name).symlink_to(src)
    tmp_path = tmp_path / "run"
    recipe = REPO / "recipes" / "photo_album.yaml"
    opts = ["--set", f"out={tmp_path}", "--set", f"photos={photos}", "--set", "budget=8",
            "--set", "questions=4"]
    run(recipe, *opts, "--to", "suggest")
    assert fill_sheet(tmp_path / "round1" / "suggestions.csv", tmp_path / "clusters.csv") > 0
    run(recipe, *opts, "--from", "name")
    check_outputs(tmp_path, "clusters.csv")
