"""The library people import: the README's example run as it is, the pipeline's glue
functions, the public names, and a help text for every option of every command."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import proxytasks
from proxytasks import pipeline
from proxytasks.cli import cli
from proxytasks.errors import ProxytasksError
from proxytasks.manifest import Face, Manifest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use as a library", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "README.md: no python block under 'Use as a library'"
    return found.group(1)


@pytest.mark.slow  # end to end, like the recipes
def test_readme_library_example_runs(tmp_path: Path) -> None:
    """The README's library block, run as a script in an empty folder, does the demo's work."""
    code = readme_example()
    assert 20 <= len(code.strip().splitlines()) <= 40  # "about 30 lines"
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "library"
    right, total, given = map(int, re.search(r"(\d+) of (\d+) faces named right from (\d+) names",
                                             done.stdout).groups())
    assert total == len(Manifest.read(out / "tracked.jsonl", check_files=False)) and given <= 6
    assert right >= total // 2  # a few names carried along tracks and clusters name most faces
    assert (out / "run" / "model.safetensors").is_file() and (out / "names.csv").is_file()
    assert any((out / "dataset").iterdir())
    metrics = json.loads((out / "benchmark" / "metrics.json").read_text())
    assert set(metrics["methods"]) >= {"pretrained", "proxy"} and metrics["train"]["steps"] == 30


def test_public_names_load_lazily_and_resolve() -> None:
    for name in proxytasks.__all__:
        assert getattr(proxytasks, name) is not None, name
    assert proxytasks.rule_pairs is pipeline.rule_pairs and "train_model" in dir(proxytasks)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        proxytasks.nope  # noqa: B018


def faces_of(spec) -> Manifest:
    """(media, frame, track, identity) rows as a manifest of crops."""
    return Manifest([Face(id=f"f{k}", media=m, frame=fr, track=t, identity=i, crop="c.png")
                     for k, (m, fr, t, i) in enumerate(spec)], root=".")


def test_untracked_video_faces_warn_and_pairs_says_to_track(tmp_path: Path, caplog) -> None:
    video = faces_of([("v", 0, None, "a"), ("v", 0, None, "b"), ("v", 1, None, "a")])
    photos = faces_of([("p.jpg", None, None, "a"), ("p.jpg", None, None, "b")])
    assert pipeline.untracked(video) and not pipeline.untracked(photos)
    assert not pipeline.untracked(video.replace(track=["t0", "t1", "t0"]))
    with caplog.at_level(logging.WARNING, logger="proxytasks.pipeline"):
        ps = pipeline.rule_pairs(video, source="ep.jsonl")
    assert "ep.jsonl has video faces but no tracks" in caplog.text and "proxytasks track ep.jsonl" in caplog.text
    assert ps.counts() == {"same-frame": 1, "same-track": 0, "track-cooccurrence": 0, "same-photo": 0}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="proxytasks.pipeline"):
        pipeline.rule_pairs(photos)
    assert "no tracks" not in caplog.text


def test_manifest_tracks_and_checks_name_the_files(tmp_path: Path) -> None:
    m = faces_of([("v", 0, "A", None), ("v", 1, "A", None), ("w", 0, "A", None), ("v", 2, None, None)])
    assert pipeline.manifest_tracks(m, ["f0", "f1", "f2", "f3"], "e.npz").tolist() == [0, 0, 1, -1]
    with pytest.raises(ProxytasksError, match="does not hold the faces of e.npz in order"):
        pipeline.manifest_tracks(m, ["f1", "f0", "f2", "f3"], "e.npz")
    assert pipeline.frame_links(faces_of([("v", 0, None, None), ("v", 0, None, None), ("v", 1, None, None)])
                                ).tolist() == [[0, 1]]
    with pytest.raises(ProxytasksError, match="no such run folder"):
        pipeline.check_model(tmp_path / "missing", {}, "e.npz")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"backbone": "a", "model_sha256": "x"}))
    pipeline.check_model(run, {"backbone": "a", "model_sha256": "x"}, "e.npz")
    with pytest.raises(ProxytasksError, match="e.npz was not embedded with the model of"):
        pipeline.check_model(run, {"backbone": "a", "model_sha256": "y"}, "e.npz")
    with pytest.raises(ProxytasksError, match="TrainConfig|unexpected"):
        pipeline.train_model(m, None, run, no_such_option=1)


def test_best_strategy_and_index_add_new() -> None:
    from proxytasks.active import best_strategy
    from proxytasks.index import FaceIndex

    assert best_strategy({"margin": 8, "clusters": 6, "random": 12}) == ("clusters", 6, 2.0)
    assert best_strategy({"margin": None, "random": 12}) is None
    assert best_strategy({"margin": 5, "random": None}) is None
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    idx = FaceIndex.build(x[:4], ["a", "b", "c", "d"], factory="Flat", device="cpu")
    assert idx.add_new(x, ["a", "b", "c", "d", "e", "f"]) == 2 and idx.ids == ["a", "b", "c", "d", "e", "f"]
    assert idx.add_new(x[:2], ["a", "e"]) == 0 and len(idx) == 6


def walk(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, path + (name,))


def test_every_option_has_help_and_says_its_default() -> None:
    """Each option has help; one with a value shows it ([default: x]); one without a value
    (None) says in its help what happens without it ("default: ...")."""
    missing = []
    for path, command in walk(cli):
        for p in command.params:
            if not isinstance(p, click.Option) or p.name in ("help", "version"):
                continue
            where = f"{' '.join(path) or 'proxytasks'} {p.opts[-1]}"
            text = p.help or ""
            if not text.strip():
                missing.append(f"{where}: no help")
            elif p.is_flag or p.required or p.multiple:
                continue
            elif p.default is None:
                if "default" not in text.lower():
                    missing.append(f"{where}: does not say what it does when not given")
            elif not p.show_default and "[default" not in text:
                missing.append(f"{where}: default {p.default!r} not shown")
    assert not missing, "\n".join(missing)


def test_cli_choices_are_the_library_names() -> None:
    """Fixed choices are click.Choice of the library's names; registries (strategies, detectors)
    stay open text, checked by the library, and their help names them."""
    from proxytasks.active import SUGGESTION_STRATEGIES
    from proxytasks.detect import DETECTORS
    from proxytasks.finetune import FINETUNE_STRATEGIES
    from proxytasks.naming import NAMING_HEADS

    def choices(command: str, option: str) -> list[str]:
        found = [p for p in cli.commands[command].params if option in p.opts]
        assert found and isinstance(found[0].type, click.Choice), (command, option)
        return list(found[0].type.choices)

    strategy = [p for p in cli.commands["suggest"].params if "--strategy" in p.opts][0]
    assert all(name in strategy.help for name in SUGGESTION_STRATEGIES.names())  # a registry: text, checked there
    strategy = [p for p in cli.commands["name"].params if "--strategy" in p.opts][0]
    assert all(name in strategy.help for name in FINETUNE_STRATEGIES)
    assert sorted(choices("name", "--head")) == sorted(NAMING_HEADS)
    assert {"mtcnn", "haar"} <= set(DETECTORS.names())


def test_helpful_refusals(tmp_path: Path) -> None:
    runner = CliRunner()
    # a file that is not a manifest: a few problems, then one line that says so
    table = tmp_path / "table.csv"
    table.write_text("id,name\n" + "".join(f"f{k},x\n" for k in range(200)))
    res = runner.invoke(cli, ["validate", str(table)])
    assert res.exit_code == 2 and "this does not look like a manifest" in res.output
    assert res.output.count("not valid JSON") <= 5
    # name on a run folder that is not there
    emb = tmp_path / "e.npz"
    from proxytasks.embed import Embeddings

    Embeddings(np.eye(2, dtype=np.float32), ["a", "b"], {"backbone": "x"}).save(emb)
    labels = tmp_path / "l.csv"
    labels.write_text("id,name\na,ann\n")
    res = runner.invoke(cli, ["name", str(tmp_path / "nope"), str(emb), str(labels), "-o", str(tmp_path / "n.csv")])
    assert res.exit_code == 2 and "no such run folder" in res.output
    # the precomputed detector is not an ingest detector: import detections is the way in
    res = runner.invoke(cli, ["ingest", str(tmp_path), "-o", str(tmp_path / "m.jsonl"), "--detector", "precomputed"])
    assert res.exit_code == 2 and "import detections" in res.output
    with pytest.raises(ProxytasksError, match="import detections"):
        proxytasks.ingest_media([tmp_path], tmp_path / "m.jsonl", detector="precomputed", progress=False)
