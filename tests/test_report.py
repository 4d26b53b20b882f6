"""The HTML run report: sections, escaping, missing inputs, the CLI, and a real browser."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.cluster import write_clusters
from proxytasks.errors import ProxytasksError
from proxytasks.plots import line_plot
from proxytasks.report import SECTIONS, write_report

EVIL = "<script>alert(1)</script>"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def run_dir(small_episode, tmp_path_factory) -> tuple[Path, int]:
    """A run folder as a recipe leaves it; returns (folder, number of clusters)."""
    _, tracked, pairs = small_episode
    run = tmp_path_factory.mktemp("report_run")
    tracked.write(run / "tracked.jsonl")
    pairs.save(run / "pairs.npz")
    ids = [f.id for f in tracked.faces]
    tracks = sorted({f.track for f in tracked.faces})
    # One cluster per track, except the last track: unclustered.
    labels = np.array([-1 if f.track == tracks[-1] else tracks.index(f.track) for f in tracked.faces])
    write_clusters(run / "clusters.csv", ids, labels)
    names = [[face_id, f.identity if k % 7 else "", f"{0.5 + (k % 5) / 10:.4f}", "classifier"]
             for k, (face_id, f) in enumerate(zip(ids, tracked.faces))]
    names[1][1] = EVIL
    _write_csv(run / "names.csv", ["id", "name", "confidence", "source"], names)
    _write_csv(run / "suggestions.csv", ["rank", "kind", "strategy", "id", "id2", "cluster", "score", "reason",
                                         "name", "answer"],
               [[1, "name", "cluster-centre", ids[0], "", 0, 0.93, "largest unnamed cluster", "", ""],
                [2, "name", "uncertainty", ids[5], "", labels[5], "", "low margin", "Ann & <b>Bo</b>", ""],
                [3, "same", "uncertainty", ids[2], ids[40], "", 0.51, "near the threshold", "", "yes"]])
    method = {"naming": {"1": 0.61, "5": None}, "naming_macro_f1": {"1": 0.5, "5": None},
              "clustering": {"wcp": 0.9, "nmi": 0.8, "bcubed_f1": 0.7, "clusters": 9},
              "verification": {"roc_auc": 0.93, "tar_at_far_1e-3": 0.2}}
    metrics = {"dataset": {"faces": len(ids), "identities": 4, "media": 1, "frames": 70},
               "rules": {"same-frame": {"pairs": 10, "label": "different", "precision": 1.0, "faces_covered": 9}},
               "methods": {"pretrained": method, "proxy": {**method, "naming": {"1": 0.8, "5": 0.95}}},
               "train": {"seconds": 12.5, "pairs": len(pairs), "steps": 200}, "seconds": 40.0,
               "active": {"cluster-centre": [[0, 0.0], [4, 0.7], [8, 0.92], [12, 0.97]],
                          "random": [[0, 0.0], [4, 0.4], [8, None], [12, 0.8]]}}
    (run / "benchmark").mkdir()
    (run / "benchmark" / "metrics.json").write_text(json.dumps(metrics))
    (run / "run").mkdir()
    log = [{"step": s, "loss": 1.0 / s, "val_auc": None if s % 20 else 0.8 + s / 2000} for s in range(10, 210, 10)]
    (run / "run" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (run / "run" / "config.json").write_text(json.dumps(
        {"backbone": "test", "train": {"selected": "trained", "steps": 200, "seconds": 12.5, "best_step": 200,
                                       "scores": {"pretrained": 0.7, "trained": 0.9}}}))
    (run / "recipe.yaml").write_text("out: x\nsteps:\n- track: {manifest: m.jsonl, out: t.jsonl}\n")
    config = {"strategy": "sequential", "backbone": "<b>bb</b>", "fraction": 1.0, "steps": 50, "lr_schedule": "constant",
              "joint_steps": 0, "pairs": 9, "predicted_s": 8.0, "actual_s": 7.5, "error": 0.25, "status": "run"}
    (run / "budget").mkdir()
    (run / "budget" / "budget.json").write_text(json.dumps({
        "error": "1 - naming accuracy", "conclusion": "The same configuration is best at every budget",
        "budgets": {"10": {"configs": [config], "best": config, "winner": "sequential",
                           "by_strategy": {"sequential": config}, "over_budget": 0},
                    "20": {"configs": [], "best": config, "winner": "sequential",
                           "by_strategy": {"sequential": config}, "over_budget": 2}}}))
    return run, len(tracks) - 1


def _sections(text: str) -> list[str]:
    return re.findall(r'<section id="(\w+)"', text)


def test_full_report_has_every_section_and_escapes_names(run_dir, tmp_path):
    run, n_clusters = run_dir
    summary = write_report(run, tmp_path / "r.html", progress=False)
    text = (tmp_path / "r.html").read_text()
    assert _sections(text) == list(SECTIONS)
    assert summary["sections"] == list(SECTIONS) and summary["missing"] == []
    assert summary["clusters_shown"] == n_clusters == text.count('class="cluster"')
    assert summary["thumbnails"] > n_clusters and summary["unreadable"] == 0
    assert summary["bytes"] == len(text.encode())
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Ann &amp; &lt;b&gt;Bo&lt;/b&gt;" in text
    assert text.count('class="plot"') == 6 and "recipe (1 step)" in text
    assert "The same configuration is best" in text and "sequential &lt;b&gt;bb&lt;/b&gt;" in text
    assert "src=\"http" not in text and "href=\"http" not in text     # self-contained
    assert re.search(r"<td[^>]*>cluster-centre</td><td[^>]*>8</td>", text)   # names to reach 90%
    assert re.search(r"<td[^>]*>random</td><td[^>]*>—</td>", text)


def test_limits_and_placeholders(run_dir, tmp_path):
    run, _ = run_dir
    summary = write_report(run, tmp_path / "r.html", max_clusters=3, per_cluster=2, progress=False)
    text = (tmp_path / "r.html").read_text()
    assert summary["clusters_shown"] == 3 and text.count('class="cluster"') == 3
    block = text.split('class="cluster"')[1].split("</div></div>")[0]
    assert block.count("<img") == 2
    shutil.copytree(run, tmp_path / "broken")
    for frame in (tmp_path / "broken").rglob("*.jpg"):
        frame.write_bytes(b"not a jpeg")
    summary = write_report(tmp_path / "broken", tmp_path / "b.html", progress=False,
                           manifest=tmp_path / "broken" / "tracked.jsonl")
    assert summary["unreadable"] == summary["thumbnails"] > 0
    assert "image unreadable" in (tmp_path / "b.html").read_text()


def test_missing_inputs_give_a_line_not_a_crash(tmp_path):
    (tmp_path / "empty").mkdir()
    summary = write_report(tmp_path / "empty", tmp_path / "r.html", progress=False)
    text = (tmp_path / "r.html").read_text()
    assert _sections(text) == list(SECTIONS) and summary["sections"] == []
    assert "pairs.npz" in text and "clusters.csv" in text and "suggestions.csv" in text
    assert text.count('class="missing"') >= len(SECTIONS)


def test_partial_run_uses_metrics_rules(run_dir, tmp_path):
    run, _ = run_dir
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(run / "benchmark" / "metrics.json", part / "metrics.json")
    summary = write_report(part, tmp_path / "r.html", progress=False)
    assert summary["sections"] == ["audit", "methods", "active"]
    assert "From metrics.json" in (tmp_path / "r.html").read_text()


def test_bad_inputs_are_errors_naming_the_file(run_dir, tmp_path):
    run, _ = run_dir
    with pytest.raises(ProxytasksError, match="nowhere.csv"):
        write_report(run, tmp_path / "r.html", names=tmp_path / "nowhere.csv", progress=False)
    with pytest.raises(ProxytasksError, match="run folder not found"):
        write_report(tmp_path / "no_run", tmp_path / "r.html", progress=False)
    bad_json = tmp_path / "metrics.json"
    bad_json.write_text("{not json")
    with pytest.raises(ProxytasksError, match="metrics.json"):
        write_report(run, tmp_path / "r.html", metrics=bad_json, progress=False)
    bad_csv = tmp_path / "names.csv"
    bad_csv.write_text("face,who\nx,y\n")
    with pytest.raises(ProxytasksError, match="names.csv"):
        write_report(run, tmp_path / "r.html", names=bad_csv, progress=False)
    bad_csv.write_text("id,name,confidence\nno-such-face,a,0.5\n")
    with pytest.raises(ProxytasksError, match="names.csv:2: unknown face id"):
        write_report(run, tmp_path / "r.html", names=bad_csv, progress=False)
    bad_budget = tmp_path / "budget.json"
    bad_budget.write_text('{"budgets": {"60": {"best": null}}}')
    with pytest.raises(ProxytasksError, match="budget.json: expected a budget sweep"):
        write_report(run, tmp_path / "r.html", budget=bad_budget, progress=False)
    assert not (tmp_path / "r.html").exists()


def test_line_plot_skips_missing_values():
    svg = line_plot([("a", [(1, None), (2, float("nan")), (3, 0.5), (4, 0.7)]), ("b", [(1, None)])],
                    title="t", xlabel="x", ylabel="y")
    assert "nan" not in svg.lower() and "None" not in svg and svg.count("<polyline") == 1
    assert "no values" in line_plot([("a", [(1, None)])], title="t", xlabel="x", ylabel="y")
    assert svg.count("<polyline") == 1 and 'class="plot"' in line_plot([("c", [(5, 5)])], title="t",
                                                                       xlabel="x", ylabel="y")


def test_cli_report(run_dir, tmp_path):
    run, _ = run_dir
    res = CliRunner().invoke(cli, ["-q", "report", str(run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").is_file() and "galleries" in res.output
    res = CliRunner().invoke(cli, ["-q", "report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "nowhere" in res.output
    res = CliRunner().invoke(cli, ["-q", "report", str(run), "--pairs", str(tmp_path / "gone.npz")])
    assert res.exit_code == 2 and "gone.npz" in res.output


def test_report_renders_in_a_browser(run_dir, tmp_path):
    """Headless Chromium: no console error, every image decoded, plots drawn with a size."""
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if os.environ.get("CI") != "true":  # CI installs both (make test): there this test must run
        pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
        if browser_path is None:
            pytest.skip("no chromium executable on PATH (Debian package 'chromium')")
    from playwright import sync_api
    run, n_clusters = run_dir
    out = tmp_path / "r.html"
    write_report(run, out, progress=False)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(out.as_uri(), wait_until="load")
            assert errors == []
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert widths and min(widths) > 0
            assert page.locator("#galleries .cluster").count() == n_clusters
            assert page.locator("script").count() == 0
            plots = page.locator("svg.plot")
            assert plots.count() >= 2
            for k in range(plots.count()):
                box = plots.nth(k).bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0
                points = plots.nth(k).locator("polyline").evaluate_all("ls => ls.map(l => l.points.numberOfItems)")
                assert points and min(points) > 0
        finally:
            browser.close()


def test_methods_show_protocol_alignment_and_peer_variants(run_dir, tmp_path):
    run, _ = run_dir
    metrics = json.loads((run / "benchmark" / "metrics.json").read_text())
    peer = dict(metrics["methods"]["proxy"])
    metrics.update(protocol="track-disjoint", alignment={"faces": 40, "found": 30, "fallback": 10},
                   peer_variants={"face_recognition": {"whispers_0.5": peer, "knn": peer}})
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "metrics.json").write_text(json.dumps(metrics))
    write_report(tmp_path / "part", tmp_path / "r.html", progress=False)
    text = (tmp_path / "r.html").read_text()
    assert "face_recognition (whispers_0.5)" in text and "face_recognition (knn)" in text
    assert "scored track-disjoint" in text
    assert "the central region used for 10 (25.0%)" in text


def test_sections_of_steps_the_recipe_never_ran_are_left_out(run_dir, tmp_path):
    run, _ = run_dir
    part = tmp_path / "part"
    shutil.copytree(run, part)
    shutil.rmtree(part / "budget")
    (part / "clusters.csv").unlink()
    steps = "".join(f"- {name}: {{out: x}}\n" for name in ("track", "pairs", "train", "cluster", "name", "suggest",
                                                            "benchmark"))
    (part / "recipe.yaml").write_text(f"out: x\nsteps:\n{steps}")
    summary = write_report(part, tmp_path / "r.html", progress=False)
    text = (tmp_path / "r.html").read_text()
    # no budget step: no budget section, no "Missing" for it; a cluster step whose output is gone: Missing
    assert "budget" not in _sections(text) and summary["left_out"] == ["budget"]
    assert text.count('class="missing"') == 1 and "clusters.csv: no galleries" in text
    assert summary["missing"] == [str(part / "clusters.csv")]
    (part / "recipe.yaml").write_text(f"out: x\nsteps:\n{steps.replace('- cluster', '- embed')}")
    summary = write_report(part, tmp_path / "r.html", progress=False)
    text = (tmp_path / "r.html").read_text()
    assert 'class="missing"' not in text and summary["left_out"] == ["budget", "galleries"]
    assert _sections(text) == [s for s in SECTIONS if s not in ("budget", "galleries")]


def test_training_without_validation_shows_the_loss_curve_alone(run_dir, tmp_path):
    run, _ = run_dir
    part = tmp_path / "part"
    shutil.copytree(run, part)
    log = [{"step": s, "loss": 1.0 / s, "val_auc": None} for s in range(10, 110, 10)]
    (part / "run" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    write_report(part, tmp_path / "r.html", progress=False)
    training = (tmp_path / "r.html").read_text().split('<section id="training">')[1].split("</section>")[0]
    assert training.count('<svg class="plot"') == 1 and 'aria-label="training loss"' in training
    assert "No validation AUC" in training and "Dashed line" not in training
