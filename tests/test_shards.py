"""`embed --shard I/N` as independent jobs, `merge-embeddings`, and an index built from the
shard files: the same vectors as one `embed` run; wrong or missing shards refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.cli import cli
from proxytasks.embed import Embeddings, merge_shards, parse_shard, shard_manifest
from proxytasks.errors import ProxytasksError
from proxytasks.index import FaceIndex
from proxytasks.manifest import Manifest

from .conftest import tiny_embedder


def cli_ok(*args):
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def cli_bad(*args, culprits=()):
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    for text in culprits:
        assert str(text) in res.output, (text, res.output)
    return res


@pytest.fixture(scope="module")
def sharded(small_episode, tmp_path_factory):
    """One `embed` of the small episode and the 3 shard files of the same model."""
    folder, manifest, _ = small_episode
    out = tmp_path_factory.mktemp("shards")
    tiny_embedder(dim=16).save(out / "run")  # any model: the shards must equal the whole
    m = folder / "tracked.jsonl"
    cli_ok("embed", out / "run", m, "-o", out / "whole.npz", "--batch-size", "16")
    for i in (2, 0, 1):  # any order, as independent jobs finish
        res = cli_ok("embed", out / "run", m, "-o", out / f"part{i}.npz", "--shard", f"{i}/3", "--batch-size", "16")
        assert f"shard {i}/3 of {len(manifest)} faces" in res.output
    return out, manifest, [out / f"part{i}.npz" for i in range(3)]


def test_shards_are_contiguous_blocks_that_cover_the_manifest(sharded):
    _, manifest, parts = sharded
    shards = [Embeddings.load(p) for p in parts]
    ids = [f.id for f in manifest.faces]
    assert [x for e in shards for x in e.ids] == ids
    sizes = [len(e.ids) for e in shards]
    assert max(sizes) - min(sizes) <= 1 and all(sizes)
    assert [e.meta["shard"]["start"] for e in shards] == [0, sizes[0], sizes[0] + sizes[1]]


def test_merged_shards_equal_one_embed_run(sharded):
    out, _, parts = sharded
    cli_ok("merge-embeddings", parts[1], parts[2], parts[0], "-o", out / "merged.npz")
    whole, merged = Embeddings.load(out / "whole.npz"), Embeddings.load(out / "merged.npz")
    assert merged.ids == whole.ids
    assert np.allclose(merged.vectors, whole.vectors, atol=1e-5)  # batch boundaries may move an ulp
    assert "shard" not in merged.meta
    assert {k: merged.meta[k] for k in ("backbone", "head", "model_sha256")} == \
        {k: whole.meta[k] for k in ("backbone", "head", "model_sha256")}


def test_index_from_the_shard_files_answers_like_the_whole(sharded, tmp_path):
    out, _, parts = sharded
    cli_ok("index", *parts, "-o", tmp_path / "from_shards")
    cli_ok("index", out / "whole.npz", "-o", tmp_path / "from_whole")
    a, b = FaceIndex.load(tmp_path / "from_shards"), FaceIndex.load(tmp_path / "from_whole")
    assert a.ids == b.ids
    whole = Embeddings.load(out / "whole.npz")
    sa, ia = a.search(whole.vectors[:5], 4)
    sb, ib = b.search(whole.vectors[:5], 4)
    assert np.array_equal(ia[:, 0], ib[:, 0]) and np.allclose(sa, sb, atol=1e-4)
    res = CliRunner().invoke(cli, ["search", str(tmp_path / "from_shards"), str(out / "whole.npz"),
                                   "--id", whole.ids[0], "-k", "1"])
    assert res.exit_code == 0 and res.output.split("\t")[2] == whole.ids[0]  # the source model is recorded


def test_missing_duplicate_and_foreign_shards_are_refused(sharded, tmp_path):
    out, _, parts = sharded
    cli_bad("merge-embeddings", parts[0], parts[2], "-o", tmp_path / "m.npz", culprits=("shards 1 of 3 are missing",))
    cli_bad("index", parts[0], parts[1], "-o", tmp_path / "i", culprits=("shards 2 of 3",))
    cli_bad("merge-embeddings", parts[0], parts[0], parts[1], "-o", tmp_path / "m.npz",
            culprits=("shard 0 is also", "part0.npz"))
    cli_bad("merge-embeddings", parts[0], out / "whole.npz", "-o", tmp_path / "m.npz",
            culprits=("whole.npz", "not a shard"))
    other = Embeddings.load(parts[1])
    other.meta["model_sha256"] = "b" * 64
    other.save(tmp_path / "other1.npz")
    cli_bad("merge-embeddings", parts[0], tmp_path / "other1.npz", parts[2], "-o", tmp_path / "m.npz",
            culprits=("other1.npz", "another model", "model_sha256"))
    split = Embeddings.load(parts[1])
    split.meta["shard"] = {**split.meta["shard"], "count": 4}
    split.save(tmp_path / "split.npz")
    cli_bad("merge-embeddings", parts[0], tmp_path / "split.npz", parts[2], "-o", tmp_path / "m.npz",
            culprits=("split.npz", "another manifest or split"))
    assert not (tmp_path / "m.npz").exists()


def test_shard_option_is_checked(sharded, tmp_path):
    out, _, _ = sharded
    for text in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ProxytasksError, match="--shard"):
            parse_shard(text)
    cli_bad("embed", out / "run", out / "missing.jsonl", "-o", tmp_path / "e.npz", "--shard", "0/2",
            culprits=("missing.jsonl",))
    cli_bad("embed", out / "run", out / "missing.jsonl", "-o", tmp_path / "e.npz", "--shard", "2/2",
            culprits=("--shard",))


def test_more_shards_than_faces_leave_empty_shards_that_still_merge():
    from proxytasks.manifest import Face

    m = Manifest([Face(id=f"f{i}", media="v", frame=i, crop=f"c{i}.png") for i in range(2)], Path("."))
    blocks = [shard_manifest(m, i, 3) for i in range(3)]
    assert [len(p) for p, _ in blocks] == [1, 1, 0]
    meta = {"backbone": "b", "head": "linear", "model_sha256": "a" * 64}
    parts = [Embeddings(np.eye(2, dtype=np.float32)[i:i + len(p)], [f.id for f in p.faces], {**meta, "shard": s})
             for i, (p, s) in enumerate(blocks)]
    merged = merge_shards(parts, ["a", "b", "c"])
    assert merged.ids == ["f0", "f1"] and np.array_equal(merged.vectors, np.eye(2, dtype=np.float32))
    json.dumps(merged.meta)  # a header that saves
