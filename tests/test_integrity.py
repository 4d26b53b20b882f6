"""Integrity: embeddings, models, indexes and checkpoints carry a version, shape, model and
checksum; a truncated, altered or mismatched file is refused naming it, never a crash.

Alterations that keep the container valid (a re-saved .npz, a re-saved torch zip, a
flipped byte in safetensors tensor data) are what only a checksum can catch.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from proxytasks.cli import cli
from proxytasks.embed import Embeddings
from proxytasks.embedder import Embedder, create_embedder
from proxytasks.errors import ProxytasksError
from proxytasks.train import TrainConfig, train

MODEL_A = {"backbone": "tf_efficientnet_lite0", "head": "linear", "model_sha256": "a" * 64}
MODEL_B = {**MODEL_A, "model_sha256": "b" * 64}


def bad(args, *culprits: str):
    """The command exits 2 with a message naming every culprit, and no traceback."""
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2, res.output
    for text in culprits:
        assert str(text) in res.output, f"{text!r} not in {res.output!r}"
    return res


def ok(args):
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embeddings(path, n=6, d=8, seed=0, meta=MODEL_A):
    return Embeddings(unit(n, d, seed), [f"f{i}" for i in range(n)], dict(meta)).save(path)


def resave(path, **override):
    """Rewrite an embeddings .npz with some arrays replaced: a valid zip, the old header."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(override)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


# --------------------------------------------------------------------------- embeddings
def test_truncated_embeddings_are_refused(tmp_path):
    raw = embeddings(tmp_path / "e.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ProxytasksError, match="cut.npz"):
        Embeddings.load(tmp_path / "cut.npz")
    bad(["index", tmp_path / "cut.npz", "-o", tmp_path / "idx"], "cut.npz")


def test_altered_vectors_are_refused_by_their_checksum(tmp_path):
    path = embeddings(tmp_path / "e.npz")
    e = Embeddings.load(path)
    assert e.meta["vectors_sha256"] == Embeddings.digest(e.vectors)
    vectors = e.vectors.copy()
    vectors[2, 3] = np.nextafter(vectors[2, 3], np.float32(2))  # one bit of one float
    resave(path, vectors=vectors)
    with pytest.raises(ProxytasksError, match=r"e\.npz: the vectors do not match the sha256"):
        Embeddings.load(path)
    bad(["index", path, "-o", tmp_path / "idx"], "e.npz", "sha256")
    assert not (tmp_path / "idx").exists()


def test_flipped_byte_in_the_file_is_refused(tmp_path):
    path = embeddings(tmp_path / "e.npz")
    raw = bytearray(path.read_bytes())
    at = raw.find(np.ascontiguousarray(Embeddings.load(path).vectors[1]).tobytes())
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ProxytasksError, match="e.npz"):
        Embeddings.load(path)


def test_embeddings_of_an_older_format_are_refused(tmp_path):
    path = embeddings(tmp_path / "e.npz")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    del meta["vectors_sha256"]
    resave(path, meta=np.array(json.dumps({**meta, "format_version": 1})))
    bad(["index", path, "-o", tmp_path / "idx"], "e.npz", "older proxytasks", "proxytasks embed")


# --------------------------------------------------------------------------- index
def test_index_records_the_model_and_search_refuses_another(tmp_path):
    a = embeddings(tmp_path / "a.npz", meta=MODEL_A)
    b = embeddings(tmp_path / "b.npz", meta=MODEL_B)  # same faces, same width, another model
    ok(["index", a, "-o", tmp_path / "idx"])
    infos = json.loads((tmp_path / "idx" / "index_infos.json").read_text())
    assert infos["source"] == MODEL_A and infos["dim"] == 8
    assert "f0" in ok(["search", tmp_path / "idx", a, "--id", "f0", "-k", 2]).output
    res = bad(["search", tmp_path / "idx", b, "--id", "f0"], "b.npz", "idx", "bbbbbbbbbbbb", "aaaaaaaaaaaa")
    assert "backbone tf_efficientnet_lite0, head linear" in res.output
    bad(["index", b, "-o", tmp_path / "idx", "--add"], "b.npz", "idx")
    assert json.loads((tmp_path / "idx" / "ids.json").read_text()) == [f"f{i}" for i in range(6)]


def test_search_and_add_refuse_another_dimension(tmp_path):
    ok(["index", embeddings(tmp_path / "a.npz", d=8), "-o", tmp_path / "idx"])
    wide = embeddings(tmp_path / "wide.npz", d=16)
    bad(["search", tmp_path / "idx", wide, "--id", "f0"], "wide.npz", "idx", "dimension 16", "dimension 8")
    bad(["index", wide, "-o", tmp_path / "idx", "--add"], "wide.npz", "idx", "dimension 16")


def test_truncated_index_is_refused(tmp_path):
    a = embeddings(tmp_path / "a.npz")
    ok(["index", a, "-o", tmp_path / "idx"])
    path = tmp_path / "idx" / "index.faiss"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7])
    bad(["search", tmp_path / "idx", a, "--id", "f0"], "index.faiss", "truncated")
    path.write_bytes(raw[:-7] + bytes([raw[-7] ^ 1]) + raw[-6:])  # same size, one bit off
    bad(["search", tmp_path / "idx", a, "--id", "f0"], "index.faiss", "digest")


def test_index_of_an_older_format_is_refused(tmp_path):
    a = embeddings(tmp_path / "a.npz")
    ok(["index", a, "-o", tmp_path / "idx"])
    infos_path = tmp_path / "idx" / "index_infos.json"
    infos = json.loads(infos_path.read_text())
    del infos["source"]
    infos_path.write_text(json.dumps({**infos, "format_version": 1}))
    bad(["search", tmp_path / "idx", a, "--id", "f0"], "index_infos.json", "format version 1", "rebuild")


# --------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "run"
    embedder = create_embedder("tf_efficientnet_lite0", dim=16)
    embedder.save(folder)
    return embedder, folder


def test_model_fingerprint_is_the_sha256_of_its_weights_file(model, tmp_path):
    import hashlib

    embedder, folder = model
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert Embedder.load(folder).fingerprint() == embedder.fingerprint() == cfg["model_sha256"]
    other = create_embedder("tf_efficientnet_lite0", dim=16)
    with torch.no_grad():
        other.head.weight.mul_(-1)
    assert other.fingerprint() != embedder.fingerprint()


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_model_file_is_refused(model, tmp_path, damage):
    _, folder = model
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((folder / "config.json").read_bytes())
    raw = bytearray((folder / "model.safetensors").read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) - 1000]
    else:
        raw[-100] ^= 0x04  # inside the last tensor: safetensors alone would load it
    (run / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ProxytasksError, match=r"model\.safetensors: cannot read the saved model: its sha256"):
        Embedder.load(run)
    Image.new("RGB", (32, 32), (90, 60, 30)).save(tmp_path / "c.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "f0", "media": "v", "frame": 0, "crop": "c.png"}) + "\n")
    bad(["embed", run, tmp_path / "m.jsonl", "-o", tmp_path / "e.npz"], "model.safetensors", "sha256")


def test_model_of_an_older_format_is_refused(model, tmp_path):
    _, folder = model
    run = tmp_path / "run"
    run.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["model_sha256"]
    (run / "config.json").write_text(json.dumps({**cfg, "format_version": 1}))
    (run / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ProxytasksError, match="config.json: model format 1.*older proxytasks"):
        Embedder.load(run)


def test_name_refuses_embeddings_of_another_model(model, tmp_path):
    embedder, folder = model
    (tmp_path / "labels.csv").write_text("id,name\nf0,Ann\nf1,Bob\n")
    other = embeddings(tmp_path / "other.npz", d=16, meta=MODEL_B)
    bad(["name", folder, other, tmp_path / "labels.csv", "-o", tmp_path / "n.csv"], "other.npz",
        "not embedded with the model")
    mine = embeddings(tmp_path / "mine.npz", d=16, meta={**MODEL_B, "model_sha256": embedder.fingerprint()})
    ok(["name", folder, mine, tmp_path / "labels.csv", "-o", tmp_path / "n.csv"])


# --------------------------------------------------------------------------- checkpoint
@pytest.fixture(scope="module")
def trained(small_episode, tmp_path_factory):
    """A 10-step run on random trunk features (fast; the checkpoint is what matters)."""
    _, manifest, pairs = small_episode
    feats = np.random.default_rng(0).standard_normal((2, len(manifest), 1280)).astype(np.float32)
    cfg = dict(steps=10, eval_every=10, dim=32)
    folder = tmp_path_factory.mktemp("trained") / "run"
    train(manifest, pairs, folder, TrainConfig(**cfg), progress=False, features=feats)
    return manifest, pairs, feats, cfg, folder


def resume(trained, tmp_path, edit=None, **changes):
    """Resume a copy of the trained run, its checkpoint first passed through ``edit``."""
    manifest, pairs, feats, cfg, folder = trained
    run = tmp_path / "run"
    run.mkdir()
    raw = (folder / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(edit(raw) if edit else raw)
    return train(manifest, pairs, run, TrainConfig(**{**cfg, "steps": 20, **changes}), resume=True,
                 progress=False, features=feats)


def rewrite(change):
    """A checkpoint edit that loads the dict, changes it, and saves it as a valid torch zip."""
    def edit(raw: bytes) -> bytes:
        import io

        state = torch.load(io.BytesIO(raw), weights_only=True)
        change(state)
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    return edit


def test_checkpoint_carries_a_header_and_resumes(trained, tmp_path):
    state = torch.load(trained[-1] / "checkpoint.pt", weights_only=True)
    header = state["header"]
    assert {k: header[k] for k in ("backbone", "head", "in_dim", "dim")} == \
        {"backbone": "tf_efficientnet_lite0", "head": "linear", "in_dim": 1280, "dim": 32}
    assert resume(trained, tmp_path)["steps"] == 20


def test_resume_refuses_a_checkpoint_of_another_dim(trained, tmp_path):
    with pytest.raises(ProxytasksError, match=r"checkpoint\.pt: cannot resume.*1280 -> 32.*1280 -> 16"):
        resume(trained, tmp_path, dim=16)


def test_resume_refuses_a_checkpoint_of_another_backbone(trained, tmp_path):
    edit = rewrite(lambda s: s["header"].update(backbone="resnet18", in_dim=512))
    with pytest.raises(ProxytasksError, match=r"checkpoint\.pt: cannot resume.*resnet18 with a linear head 512"):
        resume(trained, tmp_path, edit)


def test_resume_refuses_a_truncated_checkpoint(trained, tmp_path):
    with pytest.raises(ProxytasksError, match=r"checkpoint\.pt: cannot resume from this checkpoint.*afresh"):
        resume(trained, tmp_path, lambda raw: raw[: len(raw) // 2])


def test_resume_refuses_an_altered_checkpoint(trained, tmp_path):
    edit = rewrite(lambda s: s["head"]["weight"].view(-1)[7].add_(1e-3))
    with pytest.raises(ProxytasksError, match=r"checkpoint\.pt: .*does not match the sha256"):
        resume(trained, tmp_path, edit)


def test_resume_refuses_a_checkpoint_without_header(trained, tmp_path):
    with pytest.raises(ProxytasksError, match=r"checkpoint\.pt: .*older proxytasks"):
        resume(trained, tmp_path, rewrite(lambda s: s.pop("header")))
