"""The naming app in headless Chromium on a real clip (../shared/data), as a person uses
it: name a person, remove a face, merge two people, answer a question, reload, Update.
Also: retraining from the app, and the README's screenshot (a synthetic episode of drawn
faces, no real photo)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxytasks.cli import cli

from .conftest import shared, start_app, unavailable
from .test_app import app_template, call, serving  # noqa: F401 (a fixture and helpers shared with the API tests)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-extensions", "--disable-sync"]


def chromium() -> str:
    """Debian's chromium for Playwright (no browser download), or skip (fail under CI=true)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("playwright is not installed (dev extra)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("no chromium executable on PATH (Debian package 'chromium'; `make chromium` installs it)")
    return path


def ok(*args) -> str:
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    """The first part of the video recipe on the Hamilton clip, kept short: 2 frames a
    second, a 3-second training run on the plain view (about 40 s on 2 cores)."""
    from proxytasks.manifest import Manifest
    from proxytasks.pairs import PairSet
    from proxytasks.train import TrainConfig, train

    pytest.importorskip("starlette", reason="the app extra is not installed: pip install -e '.[app]'")
    clip = shared("face_recognition_examples", "examples", "short_hamilton_clip.mp4")
    out = tmp_path_factory.mktemp("app_clip")
    ok("ingest", clip, "-o", out / "faces.jsonl", "--fps", 2)
    ok("track", out / "faces.jsonl", "-o", out / "tracked.jsonl")
    ok("pairs", out / "tracked.jsonl", "-o", out / "pairs.npz", "--rules", "same-frame,same-track,track-cooccurrence")
    m = Manifest.read(out / "tracked.jsonl")
    train(m, PairSet.load(out / "pairs.npz", face_ids=[f.id for f in m.faces]), out / "run",
          TrainConfig(time_budget=3, views=("plain",), seed=0), progress=False)
    ok("embed", out / "run", out / "tracked.jsonl", "-o", out / "embeddings.npz")
    ok("cluster", out / "embeddings.npz", out / "tracked.jsonl", out / "pairs.npz", "-o", out / "clusters.csv")
    ok("suggest", out / "embeddings.npz", out / "tracked.jsonl", "--clusters", out / "clusters.csv",
       "--strategy", "breadth", "-n", 6, "--pairs", 4, "-o", out / "round1" / "suggestions.csv")
    return out


@pytest.fixture
def clip_copy(clip_folder, tmp_path) -> Path:
    shutil.copytree(clip_folder, tmp_path / "work")  # every path of the manifest lies inside the folder
    return tmp_path / "work"


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """``proxytasks app DIR --port 0`` as a person starts it; returns (process, URL)."""
    proc, url = start_app(folder)
    return proc, url + "/"


def launch(pw, path: str):
    return pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


def test_a_person_names_people_in_the_browser(clip_copy):
    from playwright import sync_api

    path = chromium()
    proc, url = start_server(clip_copy)
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = launch(pw, path)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            cards = page.locator("#people .card")
            cards.first.wait_for()
            n_people = cards.count()
            assert n_people >= 3
            page.wait_for_function("[...document.querySelectorAll('#people .card:first-child img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")  # thumbnails load lazily
            assert page.locator("script[src^='http'], link[href^='http']").count() == 0  # no CDN
            # name the largest person
            first = cards.first
            cluster = first.get_attribute("data-cluster")
            first.locator(".name-input").fill("Lin-Manuel")
            first.locator(".name-input").press("Enter")
            page.locator(f".card[data-cluster='{cluster}'] span.name", has_text="Lin-Manuel").wait_for()
            # "not this person": one of its faces
            page.locator(f".card[data-cluster='{cluster}'] .thumbs").click()
            page.locator(".track .face").first.wait_for()
            removed = page.locator(".track .face").first.get_attribute("data-id")
            page.locator(".track .face").first.click()
            page.locator("#not-person").click()
            page.locator(f".face[data-id='{removed}'] figcaption", has_text="unnamed").wait_for()
            # merge two other people (keyboard: g back to the people, space selects, m merges)
            page.keyboard.press("g")
            page.locator("#people .card").first.wait_for()
            others = [c for c in page.locator("#people .card").all() if c.get_attribute("data-cluster") != cluster]
            merged = [others[0].get_attribute("data-cluster"), others[1].get_attribute("data-cluster")]
            for c in others[:2]:
                c.focus()
                page.keyboard.press(" ")
            assert page.locator("#merge").is_enabled()
            page.keyboard.press("m")
            page.wait_for_function(f"document.querySelectorAll('#people .card').length === {n_people - 1}")
            # answer one "same person?" question
            page.keyboard.press("q")
            page.locator(".question.pair").first.wait_for()
            pair = page.locator(".question.pair img").evaluate_all("els => els.map(e => e.alt)")[:2]
            page.locator(".question.pair .different").first.click()
            page.locator("#toast", has_text="different people").wait_for()
            # reload: all of it is still there
            page.goto(url)
            page.reload()
            page.locator("#people .card").first.wait_for()
            assert page.locator("#people .card").count() == n_people - 1
            assert page.locator(f".card[data-cluster='{cluster}'] span.name").inner_text() == "Lin-Manuel"
            assert page.locator(f".card[data-cluster='{merged[1]}']").count() == 0
            page.goto(f"{url}#/person/{cluster}")
            page.locator(f".face[data-id='{removed}'] figcaption", has_text="unnamed").wait_for()
            page.goto(url)
            page.locator("#people .card").first.wait_for()
            shown = "[...document.querySelectorAll('#people .card h3')].map(h => h.textContent).join('|')"
            before = page.evaluate(shown)
            # Update: names and confidences change on the page
            page.locator("#update").click()
            page.wait_for_selector("#status[data-state='done']", timeout=60_000)
            page.wait_for_function(f"{shown} !== {json.dumps(before)}")
            assert "names updated" in page.locator("#status-text").inner_text()
            assert "faces named" in page.locator("#counts").inner_text()
            # the help opens with ?, and the search finds the person by name
            page.keyboard.press("?")
            assert page.locator("#help").is_visible()
            page.keyboard.press("Escape")
            page.locator("#search").fill("lin-man")
            # the page may still be redrawing after Update: wait until the filter shows (a timeout fails)
            page.wait_for_function("(() => { const names = [...document.querySelectorAll('#people .card span.name')];"
                                   " return names.length >= 1 && names.every(s => s.textContent.includes('Lin-Manuel'));"
                                   " })()")
            assert all("Lin-Manuel" in t for t in page.locator("#people .card span.name").all_inner_texts())
            browser.close()
        assert errors == []
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    # ... and in the round files, in the formats `proxytasks name` reads
    files = sorted((clip_copy / "app" / "rounds").glob("*.csv"))
    kinds = [re.sub(r"^\d+-", "", f.stem) for f in files]
    assert kinds == ["name-cluster", "not", "merge", "answer"]
    rows = [list(csv.DictReader(open(f))) for f in files]
    assert rows[0][0]["cluster"] == cluster and rows[0][0]["name"] == "Lin-Manuel"
    assert rows[1] == [{**rows[1][0], "id": removed, "not_name": "Lin-Manuel"}]
    assert rows[2][0]["answer"] == "same" and rows[3][0]["answer"] == "different"
    assert [rows[3][0]["id"], rows[3][0]["id2"]] == [a.removeprefix("face ") for a in pair]
    names = list(csv.DictReader(open(clip_copy / "app" / "names.csv")))
    assert sum(r["source"] == "given" for r in names) > 0


def test_update_retrains_within_its_budget(clip_copy):
    with serving(clip_copy) as url:
        people = call(f"{url}/api/people")[1]["people"]
        call(f"{url}/api/name", {"cluster": people[0]["cluster"], "name": "A"})
        call(f"{url}/api/name", {"cluster": people[1]["cluster"], "name": "B"})
        assert call(f"{url}/api/update", {"retrain": True, "budget": 4})[0] == 202
        deadline, progress = time.time() + 180, []
        while (job := call(f"{url}/api/update")[1])["state"] == "running" and time.time() < deadline:
            progress.append(job["progress"])
            time.sleep(0.3)
        assert job["state"] == "done" and job["retrain"], job
        assert progress == sorted(progress) and len(set(progress)) > 1
    app = clip_copy / "app"
    assert (app / "run" / "model.safetensors").is_file() and (app / "embeddings.npz").is_file()
    assert not (app / "run.next").exists() and not (app / "embeddings.next.npz").exists()
    config = json.loads((app / "run" / "config.json").read_text())
    assert config["train"]["seconds"] < 4 + 30
    assert config["options"]["workers"] == 0  # no worker process forked from the server's threads
    from proxytasks.app.state import find_sources

    assert find_sources(clip_copy).emb == app / "embeddings.npz"  # a restarted app names on it


def test_readme_screenshot(app_template, tmp_path):
    """The people page on a synthetic episode of drawn faces (docs/app.png is one such shot;
    PROXYTASKS_SCREENSHOT=path writes it there)."""
    from PIL import Image
    from playwright import sync_api

    from proxytasks.manifest import Manifest

    path = chromium()
    work = tmp_path / "work"
    shutil.copytree(app_template, work, ignore=shutil.ignore_patterns("tracked.jsonl"))
    Manifest.read(app_template / "tracked.jsonl", check_files=False).write(work / "tracked.jsonl")
    a, b = json.loads((work / "split.json").read_text())
    with serving(work) as url:
        people = [p["cluster"] for p in call(f"{url}/api/people")[1]["people"] if p["cluster"] not in (a, b)]
        call(f"{url}/api/name", {"cluster": a, "name": "Ada"})
        call(f"{url}/api/name", {"cluster": people[0], "name": "Grace"})
        call(f"{url}/api/update", {})
        while call(f"{url}/api/update")[1]["state"] == "running":
            time.sleep(0.1)
        with sync_api.sync_playwright() as pw:
            browser = launch(pw, path)
            page = browser.new_page(viewport={"width": 1100, "height": 660})
            page.goto(f"{url}/")
            page.locator("#people .card").first.wait_for()
            page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            page.locator("#people .card").nth(2).locator(".pick").check()
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot))
            browser.close()
    img = Image.open(shot).convert("RGB").quantize(colors=128)
    img.save(shot, optimize=True)
    assert img.size == (1100, 660) and shot.stat().st_size < 300_000
    if os.environ.get("PROXYTASKS_SCREENSHOT"):
        shutil.copy(shot, os.environ["PROXYTASKS_SCREENSHOT"])
