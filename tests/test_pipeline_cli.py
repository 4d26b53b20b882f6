"""train -> embed -> index -> search -> cluster -> name through the command line."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.embed import Embeddings
from proxytasks.errors import ProxytasksError


def invoke(*args):
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    return res


@pytest.fixture(scope="module")
def pipeline(small_episode, tmp_path_factory):
    folder, manifest, _ = small_episode
    out = tmp_path_factory.mktemp("pipeline")
    tracked, pairs = folder / "tracked.jsonl", folder / "pairs.npz"
    res = invoke("train", tracked, pairs, "-o", out / "run", "--steps", 20, "--dim", 32)
    assert res.exit_code == 0, res.output
    res = invoke("embed", out / "run", tracked, "-o", out / "emb.npz")
    assert res.exit_code == 0, res.output
    return out, tracked, pairs, manifest


def test_embeddings_file(pipeline):
    out, _, _, manifest = pipeline
    e = Embeddings.load(out / "emb.npz")
    assert e.ids == [f.id for f in manifest] and e.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1, atol=1e-5)
    raw = (out / "emb.npz").read_bytes()
    (out / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ProxytasksError, match="not a proxytasks embeddings file"):
        Embeddings.load(out / "cut.npz")


def test_index_search_add(pipeline):
    out, _, _, manifest = pipeline
    res = invoke("index", out / "emb.npz", "-o", out / "index")
    assert res.exit_code == 0, res.output
    infos = json.loads((out / "index" / "index_infos.json").read_text())
    assert infos["factory"] == "Flat" and infos["n"] == len(manifest)
    first = manifest[0].id
    res = invoke("search", out / "index", out / "emb.npz", "--id", first, "-k", 3)
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.output.strip().splitlines()]
    sims = [float(r[3]) for r in rows]
    assert len(rows) == 3 and sims == sorted(sims, reverse=True) and sims[0] == pytest.approx(1.0, abs=1e-4)
    # the face itself comes first, or tied with a near-duplicate of its track (a trained head
    # maps successive faces of one track to the same vector, up to rounding)
    assert first in [r[2] for r, s in zip(rows, sims) if s == pytest.approx(1.0, abs=1e-4)]
    assert invoke("index", out / "emb.npz", "-o", out / "index", "--add").output.startswith("added 0 faces")
    res = invoke("search", out / "index", out / "emb.npz", "--id", "nobody")
    assert res.exit_code == 2 and "nobody" in res.output


def test_cluster_and_name(pipeline, tmp_path):
    out, tracked, pairs, manifest = pipeline
    res = invoke("cluster", out / "emb.npz", tracked, pairs, "-o", out / "clusters.csv")
    assert res.exit_code == 0, res.output
    assert "bcubed_f1" in res.output
    clusters = {r["id"]: int(r["cluster"]) for r in csv.DictReader(open(out / "clusters.csv"))}
    by_track = {}
    for f in manifest:
        by_track.setdefault(f.track, set()).add(clusters[f.id])
    assert all(len(c) == 1 for c in by_track.values())  # tracks never split
    first = {}
    for f in manifest:
        first.setdefault(f.identity, f.id)
    (tmp_path / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for n, i in first.items()))
    res = invoke("name", out / "run", out / "emb.npz", tmp_path / "labels.csv", "-o", out / "names.csv",
                 "--manifest", tracked, "--clusters", out / "clusters.csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "names.csv")))
    truth = {f.id: f.identity for f in manifest}
    accuracy = np.mean([r["name"] == truth[r["id"]] for r in rows])
    assert accuracy > 0.8
    assert all(r["name"] == truth[r["id"]] and r["source"] == "given" for r in rows if r["id"] in first.values())
    (tmp_path / "bad.csv").write_text("id,name\nnobody,Ann\n")
    res = invoke("name", out / "run", out / "emb.npz", tmp_path / "bad.csv", "-o", tmp_path / "n.csv")
    assert res.exit_code == 2 and "bad.csv:2" in res.output and "nobody" in res.output


def test_missing_run_and_weights_errors(tmp_path, pipeline):
    _, tracked, _, _ = pipeline
    res = invoke("embed", tmp_path / "norun", tracked, "-o", tmp_path / "e.npz")
    assert res.exit_code == 2 and "run folder" in res.output
    res = invoke("train", tracked, tmp_path / "missing.npz", "-o", tmp_path / "r")
    assert res.exit_code == 2 and "pairs file not found" in res.output


def test_naming_rounds_cli(pipeline, tmp_path):
    """cluster -> suggest -> simulate -> name, twice; the answers feed pairs; a removal sticks."""
    out, tracked, pairs, manifest = pipeline
    emb, clusters = out / "emb.npz", tmp_path / "clusters.csv"
    assert invoke("cluster", emb, tracked, pairs, "-o", clusters).exit_code == 0
    common = (emb, tracked, "--clusters", clusters)
    res = invoke("suggest", *common, "-n", 3, "-o", tmp_path / "s1.csv")
    assert res.exit_code == 0 and "3 faces to name" in res.output, res.output
    res = invoke("simulate", tmp_path / "s1.csv", tracked, "-o", tmp_path / "a1.csv")
    assert res.exit_code == 0 and "3 of 3 questions answered" in res.output, res.output
    res = invoke("suggest", *common, "--labels", tmp_path / "a1.csv", "-n", 3, "--pairs", 2, "-o", tmp_path / "s2.csv")
    assert res.exit_code == 0 and "2 same-person questions (3 faces named so far)" in res.output, res.output
    asked = {r["id"] for r in csv.DictReader(open(tmp_path / "s1.csv"))}
    again = [r for r in csv.DictReader(open(tmp_path / "s2.csv")) if r["kind"] == "name"]
    assert len(again) == 3 and not asked & {r["id"] for r in again}  # never the same face twice
    assert invoke("simulate", tmp_path / "s2.csv", tracked, "-o", tmp_path / "a2.csv").exit_code == 0
    rounds = [tmp_path / "a1.csv", tmp_path / "a2.csv"]
    res = invoke("name", out / "run", emb, *rounds, "-o", tmp_path / "names.csv", "--manifest", tracked,
                 "--clusters", clusters)
    assert res.exit_code == 0, res.output
    names = {r["id"]: r for r in csv.DictReader(open(tmp_path / "names.csv"))}
    truth = {f.id: f.identity for f in manifest}
    assert np.mean([r["name"] == truth[i] for i, r in names.items()]) > 0.6
    # a person removes a predicted name from a face: it stays removed in the next round
    victim = next(i for i, r in names.items() if r["source"] != "given" and r["name"])
    (tmp_path / "a3.csv").write_text(f"id,not_name\n{victim},{names[victim]['name']}\n")
    res = invoke("name", out / "run", emb, *rounds, tmp_path / "a3.csv", "-o", tmp_path / "names3.csv",
                 "--manifest", tracked, "--clusters", clusters)
    assert res.exit_code == 0, res.output
    after = {r["id"]: r["name"] for r in csv.DictReader(open(tmp_path / "names3.csv"))}
    assert after[victim] != names[victim]["name"]
    # the answers become pairs for the next training round
    res = invoke("pairs", tracked, "-o", tmp_path / "p.npz", "--labels", rounds[0], "--labels", rounds[1],
                 "--labels", tmp_path / "a3.csv", "--rules", "same-frame,same-track")
    assert res.exit_code == 0 and "human-same" in res.output and "human-different" in res.output, res.output
    res = invoke("suggest", *common, "--strategy", "nope", "-o", tmp_path / "x.csv")
    assert res.exit_code == 2 and "unknown suggestion strategy 'nope'" in res.output
