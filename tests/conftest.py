"""Shared fixtures: the real-data folder beside the repo and tiny hand-made manifests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

SHARED_DATA = Path(os.environ.get("PROXYTASKS_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (see shared/data/README.md)")
    return path


@pytest.fixture
def frame_image(tmp_path: Path) -> Path:
    """A 64x48 RGB frame image in tmp_path."""
    path = tmp_path / "frame.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(path)
    return path


@pytest.fixture(scope="session")
def episode(tmp_path_factory) -> Path:
    """A default-size synthetic episode with drawn faces (about 260 frames, 2 s to make)."""
    from data_tools.synthetic import make_episode

    out = tmp_path_factory.mktemp("episode")
    make_episode(out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def orl_identities(tmp_path_factory):
    """An identity-folder manifest of the real ORL faces (skips when absent)."""
    from data_tools.importers import import_folders

    root = shared("orl_faces")
    return import_folders(root, tmp_path_factory.mktemp("orl") / "orl.jsonl")


@pytest.fixture(scope="session")
def small_episode(tmp_path_factory):
    """A small tracked episode with its rule pairs: (folder, manifest, pairs)."""
    from data_tools.synthetic import make_episode
    from proxytasks.manifest import Manifest
    from proxytasks.rules import RuleSet
    from proxytasks.track import track_manifest

    out = tmp_path_factory.mktemp("small_episode")
    make_episode(out / "ep", n_identities=4, n_shots=4, fps=4, seed=2, progress=False)
    tracked = track_manifest(Manifest.read(out / "ep" / "manifest.jsonl"), progress=False)
    tracked.write(out / "tracked.jsonl")
    tracked = Manifest.read(out / "tracked.jsonl")
    pairs = RuleSet("same-frame,same-track,track-cooccurrence").apply(tracked)
    pairs.save(out / "pairs.npz")
    return out, tracked, pairs
