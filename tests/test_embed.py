"""embed: unit vectors per face, files that check themselves, chunks that resume, shards that merge."""
import numpy as np
import pytest
import torch

from proxytasks.embed import (
    Embeddings,
    embed_manifest,
    embed_to_file,
    load_embeddings,
    partial_folder,
    shard_manifest,
)
from proxytasks.embedder import create_embedder
from proxytasks.errors import ProxytasksError
from proxytasks.features import head_vectors, trunk_features


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_embedder("test_efficientnet", weights="none", dim=8, input_size=32)


def test_vectors_are_the_head_on_the_trunk_features(tiny, small_episode):
    _, manifest, _ = small_episode
    emb = embed_manifest(tiny, manifest, batch_size=16, workers=0, progress=False)
    assert emb.ids == [f.id for f in manifest.faces] and emb.vectors.shape == (len(manifest), 8)
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1, atol=1e-5)
    feats = trunk_features(tiny, manifest, ("plain",), workers=0, progress=False)[0]
    assert np.allclose(emb.vectors, head_vectors(tiny, feats), atol=1e-5)
    assert emb.meta["backbone"] == "test_efficientnet" and emb.meta["model_sha256"] == tiny.fingerprint()


def test_a_killed_run_resumes_from_its_chunks(tiny, small_episode, tmp_path):
    _, manifest, _ = small_episode
    out = tmp_path / "e.npz"
    whole = embed_manifest(tiny, manifest, batch_size=8, workers=0, progress=False)
    folder = partial_folder(out)
    embed_manifest(tiny, manifest, batch_size=8, workers=0, progress=False, partial=folder, chunk_size=16)
    chunks = sorted(folder.glob("*.npz"))
    assert len(chunks) == -(-len(manifest) // 16)
    chunks[-1].unlink()  # as if killed before the last chunk
    with np.load(chunks[0]) as z:  # mark the first chunk: a resumed run must use it as it is
        kept = {k: z[k] for k in z.files}
    kept["features"] = kept["features"] + np.random.default_rng(0).standard_normal(kept["features"].shape).astype(
        np.float32)
    np.savez(chunks[0], **kept)
    emb = embed_to_file(tiny, manifest, out, batch_size=8, workers=0, progress=False, resume=True, chunk_size=16)
    assert not folder.exists()  # cleaned up once the file is written
    assert np.allclose(emb.vectors[:16], head_vectors(tiny, kept["features"]), atol=1e-5)  # reused
    assert np.allclose(emb.vectors[16:], whole.vectors[16:], atol=1e-5)  # the rest computed
    assert not np.allclose(emb.vectors[:16], whole.vectors[:16], atol=1e-3)
    back = Embeddings.load(out)
    assert back.ids == emb.ids and np.array_equal(back.vectors, emb.vectors)


def test_a_damaged_file_is_refused(tiny, small_episode, tmp_path):
    _, manifest, _ = small_episode
    out = tmp_path / "e.npz"
    emb = embed_manifest(tiny, manifest, workers=0, progress=False)
    emb.save(out)
    with np.load(out) as z:
        parts = dict(z)
    parts["vectors"] = parts["vectors"] + 1e-3
    np.savez(out, **parts)
    with pytest.raises(ProxytasksError, match="sha256"):
        Embeddings.load(out)
    with pytest.raises(ProxytasksError, match="not found"):
        Embeddings.load(tmp_path / "missing.npz")


def test_shards_merge_into_the_whole(tiny, small_episode, tmp_path):
    _, manifest, _ = small_episode
    whole = embed_manifest(tiny, manifest, workers=0, progress=False)
    paths = []
    for i in (1, 0, 2):
        part, meta = shard_manifest(manifest, i, 3)
        e = embed_manifest(tiny, part, workers=0, progress=False)
        e.meta["shard"] = meta
        paths.append(e.save(tmp_path / f"e{i}.npz"))
    merged = load_embeddings(paths)
    assert merged.ids == whole.ids and np.allclose(merged.vectors, whole.vectors, atol=1e-6)
    with pytest.raises(ProxytasksError, match="missing"):
        load_embeddings(paths[:2])
