"""The naming app's JSON API (Contract 3): every route, bad input, concurrent posts, two
servers on one folder, a server killed mid-action; the round files the app appends."""
from __future__ import annotations

import contextlib
import csv
import http.client
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the app extra is not installed: pip install -e '.[app]'")
import uvicorn  # noqa: E402

from proxytasks.app.server import bind, create_app  # noqa: E402
from proxytasks.app.state import Workspace  # noqa: E402
from proxytasks.cluster import write_clusters  # noqa: E402
from proxytasks.embed import Embeddings  # noqa: E402
from proxytasks.manifest import Manifest  # noqa: E402
from proxytasks.naming import read_annotations  # noqa: E402
from .conftest import start_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def app_template(small_episode, tmp_path_factory) -> Path:
    """A working folder as a recipe leaves it, on the small synthetic episode: vectors
    that separate the people, one person split in two clusters, one track unclustered."""
    _, tracked, pairs = small_episode
    folder = tmp_path_factory.mktemp("app_template")
    tracked.write(folder / "tracked.jsonl")
    pairs.save(folder / "pairs.npz")
    ids = [f.id for f in tracked.faces]
    people = sorted({f.identity for f in tracked.faces})
    rng = np.random.default_rng(0)
    x = np.zeros((len(ids), 16), np.float32)
    for k, f in enumerate(tracked.faces):
        x[k, people.index(f.identity)] = 1.0
    x += rng.normal(0, 0.15, x.shape).astype(np.float32)
    Embeddings(x / np.linalg.norm(x, axis=1, keepdims=True), ids, {"backbone": "test"}).save(folder / "embeddings.npz")
    tracks = sorted({f.track for f in tracked.faces})
    labels = np.array([people.index(f.identity) for f in tracked.faces])
    first = tracked.faces[0].identity
    split = [k for k, f in enumerate(tracked.faces) if f.identity == first and tracks.index(f.track) % 2]
    labels[split] = len(people)  # one person in two clusters: something to merge
    labels[[k for k, f in enumerate(tracked.faces) if f.track == tracks[-1]]] = -1
    write_clusters(folder / "clusters.csv", ids, labels)
    main = int(np.bincount(labels[[k for k, f in enumerate(tracked.faces) if f.identity == first]] + 1).argmax()) - 1
    (folder / "split.json").write_text(json.dumps([main, len(people)]))  # the one person in two clusters
    return folder


@pytest.fixture
def folder(app_template, tmp_path) -> Path:
    """A fresh copy of the working folder (its manifest's paths rebased)."""
    work = tmp_path / "work"
    shutil.copytree(app_template, work, ignore=shutil.ignore_patterns("tracked.jsonl"))
    Manifest.read(app_template / "tracked.jsonl", check_files=False).write(work / "tracked.jsonl")
    return work


@contextlib.contextmanager
def serving(folder: Path):
    """The app on a free port of 127.0.0.1 in a thread; yields its base URL."""
    app = create_app(folder)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, object]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            payload = res.read()
            kind = res.headers.get("Content-Type", "")
            return res.status, json.loads(payload) if "json" in kind else (kind, payload)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rounds(folder: Path) -> list[Path]:
    return sorted((folder / "app" / "rounds").glob("*.csv"))


def test_people_person_and_face_images(folder):
    with serving(folder) as url:
        status, people = call(f"{url}/api/people")
        assert status == 200 and set(people) >= {"people", "faces", "named"}
        n = sum(p["faces"] for p in people["people"])
        assert n == people["faces"] > 0 and people["named"] == 0
        sizes = [p["faces"] for p in people["people"]]
        assert sizes == sorted(sizes, reverse=True)
        for p in people["people"]:
            assert set(p) >= {"cluster", "name", "confidence", "faces", "named"} and p["name"] is None
        c = people["people"][0]["cluster"]
        status, person = call(f"{url}/api/people/{c}")
        assert status == 200 and person["cluster"] == c and set(person) >= {"cluster", "name", "tracks"}
        faces = [f for t in person["tracks"] for f in t["faces"]]
        assert len(faces) == people["people"][0]["faces"]
        assert set(faces[0]) >= {"id", "name", "confidence", "source"}
        assert all(len({f["id"] for f in t["faces"]}) == len(t["faces"]) and t["track"] for t in person["tracks"])
        status, (kind, data) = call(f"{url}/api/faces/{faces[0]['id']}/image")
        assert status == 200 and kind == "image/jpeg" and data[:2] == b"\xff\xd8"
        for bad in ("nope", "../tracked.jsonl", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "tracked.jsonl"):
            status, body = call(f"{url}/api/faces/{bad}/image")
            assert status == 404 and "error" in body, bad
        assert call(f"{url}/api/people/999")[0] == 404
        assert call(f"{url}/api/people/abc")[0] == 400
        assert call(f"{url}/api/nowhere")[0] == 404
        status, (kind, page) = call(f"{url}/")
        assert status == 200 and b"/static/app.js" in page and b"http" not in page.replace(b"http-equiv", b"")
        status, (kind, js) = call(f"{url}/static/app.js")
        assert status == 200 and b"innerHTML" not in js


def test_actions_are_round_files_and_survive_a_restart(folder):
    with serving(folder) as url:
        people = call(f"{url}/api/people")[1]["people"]
        big, small = people[0]["cluster"], people[1]["cluster"]
        person = call(f"{url}/api/people/{big}")[1]
        face_ids = [f["id"] for t in person["tracks"] for f in t["faces"]]
        assert call(f"{url}/api/name", {"cluster": big, "name": "Ann"})[1]["ok"]
        assert call(f"{url}/api/name", {"faces": face_ids[:1], "name": "Ann Lee"})[0] == 200
        assert call(f"{url}/api/not", {"faces": face_ids[1:2], "name": "Ann"})[0] == 200
        status, merged = call(f"{url}/api/merge", {"clusters": [big, small]})
        assert status == 200 and merged["cluster"] == big
        status, split = call(f"{url}/api/split", {"faces": face_ids[-2:]})
        assert status == 200 and split["cluster"] not in (big, small)
        questions = call(f"{url}/api/suggestions?strategy=margin&n=3&pairs=2")[1]
        assert set(questions) == {"faces", "questions"} and questions["faces"]
        q = questions["questions"][0]
        assert call(f"{url}/api/answer", {"faces": [q["id"], q["id2"]], "answer": "different"})[0] == 200
        view = call(f"{url}/api/people")[1]
        assert view["named"] >= len(face_ids) - 3
        assert {p["cluster"] for p in view["people"]} >= {big, split["cluster"]}
        assert small not in {p["cluster"] for p in view["people"]}
        history = call(f"{url}/api/history")[1]["actions"]
        assert [a["action"] for a in history][::-1] == ["name-cluster", "name", "not", "merge", "split", "answer"]
    files = rounds(folder)
    assert [re.sub(r"^\d+-", "", f.stem) for f in files] == ["name-cluster", "name", "not", "merge", "split",
                                                            "answer"]
    first = list(csv.DictReader(open(files[0])))
    assert first == [{**first[0], "cluster": str(big), "name": "Ann", "id": "", "action": "name-cluster"}]
    assert list(csv.DictReader(open(files[2])))[0]["not_name"] == "Ann"
    # a restarted app shows exactly the same, and the library reads the files as rounds
    ws = Workspace(folder)
    assert ws.people() == {**view, "names_version": ws.result_version, "stale": ws.result_version != ws.applied}
    ann = read_annotations([folder / "app" / "labels.csv"], ws.ids)
    forbidden = {k: v for k, v in ws.ann.forbidden.items() if v}
    assert (ann.named, ann.forbidden, ann.same, ann.different) == (ws.ann.named, forbidden, ws.ann.same,
                                                                   ws.ann.different)
    assert ws.ann.named[ws.index[face_ids[0]]] == "Ann Lee"
    assert ws.index[face_ids[1]] not in ws.ann.named


def test_undo_appends_the_reverse(folder):
    with serving(folder) as url:
        assert call(f"{url}/api/undo", {})[0] == 409
        people = call(f"{url}/api/people")[1]
        a, b = people["people"][0]["cluster"], people["people"][1]["cluster"]
        call(f"{url}/api/name", {"cluster": a, "name": "Bo"})
        named = call(f"{url}/api/people")[1]["named"]
        call(f"{url}/api/merge", {"clusters": [a, b]})
        assert len(call(f"{url}/api/people")[1]["people"]) == len(people["people"]) - 1
        status, out = call(f"{url}/api/undo", {})
        assert status == 200 and out["action"] == "merge"
        after = call(f"{url}/api/people")[1]
        assert [p["cluster"] for p in after["people"]] == [p["cluster"] for p in people["people"]]
        assert after["named"] == named
        assert call(f"{url}/api/undo", {})[1]["action"] == "name-cluster"
        assert call(f"{url}/api/people")[1]["named"] == 0
    names = [f.name for f in rounds(folder)]
    assert names[-2:] == ["000003-undo-000002.csv", "000004-undo-000001.csv"]
    assert list(csv.DictReader(open(rounds(folder)[2])))[0]["answer"] == "different"  # the merge's reverse


BAD = [
    ("name", {"cluster": 0, "name": ""}, 400), ("name", {"cluster": 0, "name": "   "}, 400),
    ("name", {"cluster": 0, "name": "a\nb"}, 400), ("name", {"cluster": 0, "name": ".."}, 400),
    ("name", {"cluster": 0, "name": "x" * 300}, 400), ("name", {"cluster": 0}, 400),
    ("name", {"cluster": 12345, "name": "A"}, 404), ("name", {"cluster": True, "name": "A"}, 400),
    ("name", {"cluster": "0; rm", "name": "A"}, 400), ("name", {"faces": ["../tracked.jsonl"], "name": "A"}, 404),
    ("name", {"faces": "f1", "name": "A"}, 400), ("name", {"faces": [], "name": "A"}, 400),
    ("name", {"faces": [1, 2], "name": "A"}, 400), ("name", {"cluster": 0, "faces": [], "name": "A"}, 400),
    ("name", {"cluster": 0, "name": "A", "extra": 1}, 400), ("name", [1, 2], 400), ("name", None, 400),
    ("not", {"faces": ["/etc/passwd"], "name": "A"}, 404), ("not", {"faces": ["FACE"], "name": ""}, 400),
    ("merge", {"clusters": [0]}, 400), ("merge", {"clusters": [0, 0]}, 400), ("merge", {"clusters": [0, 999]}, 404),
    ("merge", {"clusters": "0,1"}, 400), ("split", {"faces": []}, 400), ("split", {"faces": ["nope"]}, 404),
    ("answer", {"faces": ["FACE", "FACE"], "answer": "same"}, 400), ("answer", {"faces": ["FACE"], "answer": "same"}, 400),
    ("answer", {"faces": ["FACE", "FACE2"], "answer": "maybe"}, 400),
    ("update", {"budget": -1}, 400), ("update", {"retrain": "yes"}, 400), ("update", {}, 409),
    ("export", {"min_confidence": 2}, 400), ("export", {}, 409), ("undo", {"x": 1}, 400), ("undo", {}, 409),
]


def test_bad_requests_answer_4xx_and_change_nothing(folder):
    with serving(folder) as url:
        people = call(f"{url}/api/people")[1]
        ids = [f["id"] for t in call(f"{url}/api/people/0")[1]["tracks"] for f in t["faces"]]
        other = next(p["cluster"] for p in people["people"] if p["cluster"] != 0)
        other_id = call(f"{url}/api/people/{other}")[1]["tracks"][0]["faces"][0]["id"]
        for route, body, status in BAD:
            text = json.dumps(body).replace('"FACE"', json.dumps(ids[0])).replace('"FACE2"', json.dumps(other_id))
            got, answer = call(f"{url}/api/{route}", raw=text.encode())
            assert (got, route) == (status, route) and isinstance(answer["error"], str) and answer["error"], body
        for raw in (b"{not json", b"\xff\xfe", b"[" * 10000):
            got, answer = call(f"{url}/api/name", raw=raw)
            assert got == 400 and "error" in answer
        # split every face of a cluster, or faces of two clusters
        assert call(f"{url}/api/split", {"faces": ids})[0] == 400
        assert call(f"{url}/api/split", {"faces": [ids[0], other_id]})[0] == 400
        for query in ("strategy=nope", "n=abc", "n=-1", "pairs=1000"):
            assert call(f"{url}/api/suggestions?{query}")[0] == 400
        assert call(f"{url}/api/people")[1] == people
    assert rounds(folder) == [] and not (folder / "app" / "names.csv").exists()


def test_concurrent_posts_from_two_tabs_and_two_servers(folder):
    ids = [f.id for f in Workspace(folder).manifest.faces][:24]
    with serving(folder) as one, serving(folder) as two:
        def post(k: int) -> int:
            return call(f"{(one, two)[k % 2]}/api/name", {"faces": [ids[k]], "name": f"P{k}"})[0]

        threads = [threading.Thread(target=lambda k=k: results.append(post(k))) for k in range(len(ids))]
        results: list[int] = []
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * len(ids)
        for url in (one, two):
            assert call(f"{url}/api/people")[1]["named"] == len(ids)
    files = rounds(folder)
    assert [int(f.name[:6]) for f in files] == list(range(1, len(ids) + 1))
    ann = read_annotations(files, [f.id for f in Workspace(folder).manifest.faces])
    assert {ann.named[k]: k for k in ann.named} == {f"P{k}": k for k in range(len(ids))}


def test_a_killed_server_loses_no_earlier_action(folder):
    ids = [f.id for f in Workspace(folder).manifest.faces]

    def start() -> tuple[subprocess.Popen, str]:
        return start_app(folder)

    proc, url = start()
    acknowledged = []
    try:
        stop = threading.Event()

        def hammer() -> None:
            k = 0
            while not stop.is_set() and k < len(ids):
                try:
                    if call(f"{url}/api/name", {"faces": [ids[k]], "name": f"N{k}"})[0] == 200:
                        acknowledged.append(k)
                except (OSError, http.client.HTTPException):  # the server killed mid-answer
                    return
                k += 1

        t = threading.Thread(target=hammer)
        t.start()
        while len(acknowledged) < 5:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        t.join(30)
    finally:
        proc.kill()
        proc.stdout.close()
    proc, url = start()
    try:
        named = Workspace(folder).ann.named
        for k in acknowledged:
            assert named[k] == f"N{k}"
        assert call(f"{url}/api/people")[1]["named"] == len(named) >= len(acknowledged)
        assert call(f"{url}/api/name", {"faces": [ids[-1]], "name": "after"})[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        proc.stdout.close()


def test_update_and_export(folder):
    a, b = json.loads((folder / "split.json").read_text())
    with serving(folder) as url:
        assert call(f"{url}/api/update")[1]["state"] == "idle"
        other = next(p["cluster"] for p in call(f"{url}/api/people")[1]["people"] if p["cluster"] not in (a, b))
        call(f"{url}/api/name", {"cluster": a, "name": "Ann"})
        call(f"{url}/api/name", {"cluster": other, "name": "Bob"})
        before = {p["cluster"]: p for p in call(f"{url}/api/people")[1]["people"]}
        assert call(f"{url}/api/people")[1]["stale"] and before[b]["name"] is None
        status, job = call(f"{url}/api/update", {"retrain": False})
        assert status == 202 and job["state"] == "running"
        deadline = time.time() + 60
        while (job := call(f"{url}/api/update")[1])["state"] == "running" and time.time() < deadline:
            time.sleep(0.1)
        assert job["state"] == "done" and job["progress"] == 1.0 and job["changed"] > 0, job
        after = call(f"{url}/api/people")[1]
        by_cluster = {p["cluster"]: p for p in after["people"]}
        assert not after["stale"] and by_cluster[b]["name"] == "Ann" and by_cluster[b]["named"] == 0
        assert 0 < by_cluster[b]["confidence"] <= 1
        assert (folder / "app" / "names.csv").is_file()
        status, out = call(f"{url}/api/export", {})
        assert status == 200 and out["faces"] == after["faces"] and out["named"] > before[a]["faces"]
        assert json.loads((folder / "app" / "dataset" / "names.json").read_text())["folders"]["Ann"]["faces"] > 0
        assert call(f"{url}/api/export", {"min_confidence": 0.99})[0] == 200  # replaces its own export


def test_the_command_line_keeps_a_filled_sheet_and_runs(folder, tmp_path):
    """`suggest -o` and a recipe re-run leave a filled sheet byte for byte; `train -o` keeps
    a finished run; `name` on a sheet nobody filled stops; an unknown --set key is refused."""
    from click.testing import CliRunner

    from proxytasks.cli import cli

    def invoke(*args):
        return CliRunner().invoke(cli, ["-q", *map(str, args)])

    sheet = folder / "round1" / "suggestions.csv"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"out: {folder}\nn: 4\nsteps:\n  - suggest:\n      emb: '{{out}}/embeddings.npz'\n"
                      f"      manifest: '{{out}}/tracked.jsonl'\n      clusters: '{{out}}/clusters.csv'\n"
                      f"      n: '{{n}}'\n      pairs: 2\n      out: '{{out}}/round1/suggestions.csv'\n"
                      f"  - name:\n      run: '{{out}}/run'\n      emb: '{{out}}/embeddings.npz'\n"
                      f"      labels: ['{{out}}/round1/suggestions.csv']\n      out: '{{out}}/names.csv'\n")
    res = invoke("run", recipe, "--to", "suggest")
    assert res.exit_code == 0, res.output
    assert f"fill the 'name' column of {sheet}" in res.output and f"proxytasks app {folder}" in res.output
    assert f"proxytasks run {recipe} --from name" in res.output
    assert invoke("run", recipe, "--to", "suggest").exit_code == 0  # its own, unfilled sheet: replaced
    rows = list(csv.DictReader(open(sheet)))
    assert rows and all(r["image"] and (sheet.parent / r["image"]).is_file() for r in rows if r["kind"] == "name")
    res = invoke("run", recipe, "--from", "name")
    assert res.exit_code == 2 and "no face is named" in res.output and f"proxytasks app {folder}" in res.output
    assert not (folder / "names.csv").exists()
    rows[0]["name"] = "Ann"
    with open(sheet, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    filled = sheet.read_bytes()
    res = invoke("suggest", folder / "embeddings.npz", folder / "tracked.jsonl", "-o", sheet)
    assert res.exit_code == 2 and "1 answer(s) a person typed" in res.output and "--overwrite" in res.output
    res = invoke("run", recipe, "--to", "suggest", "--set", "n=6")
    assert res.exit_code == 2 and "stops before running anything" in res.output
    assert sheet.read_bytes() == filled
    res = invoke("run", recipe, "--set", "medai=x.mp4")
    assert res.exit_code == 2 and "no variable 'medai'" in res.output and "n, out" in res.output
    (folder / "run").mkdir()
    (folder / "run" / "model.safetensors").write_bytes(b"x")
    (folder / "run" / "config.json").write_text(json.dumps({"train": {"steps": 436}}))
    res = invoke("train", folder / "tracked.jsonl", folder / "pairs.npz", "-o", folder / "run", "--time-budget", 1)
    assert res.exit_code == 2 and "a trained model (436 steps)" in res.output and "--resume" in res.output
    assert (folder / "run" / "model.safetensors").read_bytes() == b"x"
